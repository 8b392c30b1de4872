"""PPO-Lagrangian checkpoints for ``--resume`` (one folder per checkpoint, a ``latest.json``).

``checkpoints/iter_<NNNNNN>/policy.safetensors`` (+ ``.json``): the deployable policy;
``checkpoints/iter_<NNNNNN>/train_state.safetensors`` (+ ``.json``): the frozen reference
(BC) policy's weights (``ref.*``), Adam moments (``optim.*``), the torch RNG state, and in the
sidecar the iteration, env-step count, Lagrange state, numpy RNG state and the last episode
metrics; with self-imitation on, its replay ring (``sil.*``, instructions in the sidecar).
``checkpoints/latest.json`` is replaced atomically only after the folder is complete, so a kill
at any moment leaves the previous checkpoint usable. ``checkpoints/policy.safetensors``
is a copy of the newest policy (the run's output). The two newest folders are kept.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from safetwin.safety.runio import atomic_write_json, atomic_write_text, config_to_dict, read_jsonl

from .checkpoint import CheckpointError, load_tensors, save_policy, save_tensors
from .config import TrainConfig
from .lagrange import LagrangeAdam, PIDLagrange
from .policy import VLAPolicy
from .self_imitation import SelfImitationReplay
from .state import optimizer_from_tensors, optimizer_to_tensors, rng_from_state, rng_to_state

logger = logging.getLogger(__name__)
KEEP = 2


@dataclass
class PPOState:
    """Loop state that a resume must restore (besides weights and optimiser moments)."""

    rng: np.random.Generator
    iteration: int = 0
    global_step: int = 0
    lam: float = 0.0
    last_episode_metrics: dict[str, float] = field(default_factory=dict)


def _policy_kwargs(state: PPOState, cfg: TrainConfig, scene_info: dict[str, Any]) -> dict[str, Any]:
    return {"safety_spec_sha256": scene_info["safety_spec_sha256"], "safety_spec": scene_info.get("safety_spec"),
            "scene": {"name": scene_info["name"], "path": str(scene_info["path"])},
            "step": state.global_step, "lam": state.lam, "config": config_to_dict(cfg),
            "extra": {"iteration": state.iteration, "episode_metrics": state.last_episode_metrics}}


def save_iteration(ckpt_dir: Path, state: PPOState, policy: VLAPolicy, ref: VLAPolicy,
                   optim: torch.optim.Optimizer, lagrange: LagrangeAdam | PIDLagrange | None,
                   cfg: TrainConfig, scene_info: dict[str, Any], replay: SelfImitationReplay | None = None) -> Path:
    """Write one complete checkpoint folder, then point ``latest.json`` at it (with ``replay``, the
    self-imitation ring goes into the train state as ``sil.*`` tensors)."""
    folder = ckpt_dir / f"iter_{state.iteration:06d}"
    kwargs = _policy_kwargs(state, cfg, scene_info)
    save_policy(folder / "policy.safetensors", policy, **kwargs)
    opt_t, opt_meta = optimizer_to_tensors(optim, "optim")
    rng_t, rng_meta = rng_to_state(state.rng)
    sil_t, sil_meta = replay.state_tensors() if replay is not None else ({}, None)
    tensors = {**{f"ref.{k}": v for k, v in ref.state_dict().items()}, **opt_t, **rng_t, **sil_t}
    meta = {"kind": "train_state", "iteration": state.iteration, "global_step": state.global_step,
            "lambda": state.lam, "lagrange": lagrange.state_dict() if lagrange is not None else None,
            "optimizer": opt_meta, "rng": rng_meta, "episode_metrics": state.last_episode_metrics,
            "safety_spec_sha256": scene_info["safety_spec_sha256"], "config": kwargs["config"],
            "self_imitation": sil_meta}
    save_tensors(folder / "train_state.safetensors", tensors, meta)
    atomic_write_json(ckpt_dir / "latest.json", {"iteration": state.iteration, "dir": folder.name})
    save_policy(ckpt_dir / "policy.safetensors", policy, **kwargs)
    old = sorted(p for p in ckpt_dir.glob("iter_*") if p.is_dir() and p != folder)
    for stale in old[:-(KEEP - 1)] if KEEP > 1 else old:
        shutil.rmtree(stale, ignore_errors=True)
    logger.info("checkpoint %s (step %d, lambda %.4f)", folder, state.global_step, state.lam)
    return folder


def load_latest(ckpt_dir: Path, policy: VLAPolicy, ref: VLAPolicy, optim: torch.optim.Optimizer,
                lagrange: LagrangeAdam | PIDLagrange | None, scene_info: dict[str, Any],
                replay: SelfImitationReplay | None = None) -> PPOState:
    """Restore everything written by :func:`save_iteration` into the given objects."""
    latest = ckpt_dir / "latest.json"
    if not latest.is_file():
        raise CheckpointError(f"{latest}: no checkpoint to resume from")
    folder = ckpt_dir / json.loads(latest.read_text(encoding="utf-8"))["dir"]
    tensors, meta = load_tensors(folder / "train_state.safetensors")
    if meta.get("safety_spec_sha256") != scene_info["safety_spec_sha256"]:
        raise CheckpointError(f"{folder}: safety spec mismatch: checkpoint sha256 "
                              f"{meta.get('safety_spec_sha256')}, scene {scene_info['name']!r} has "
                              f"{scene_info['safety_spec_sha256']}")
    weights, _ = load_tensors(folder / "policy.safetensors")
    policy.load_state_dict(weights, strict=True)
    ref.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ref.")}, strict=True)
    groups = len(meta["optimizer"]["param_groups"])
    if groups != len(optim.param_groups):
        raise CheckpointError(f"{folder}: the optimiser state has {groups} parameter group(s), this trainer "
                              f"uses {len(optim.param_groups)} (actor, critics): it was written by an older "
                              "trainer; start a new run from its policy with --pretrained")
    optimizer_from_tensors(optim, tensors, meta["optimizer"], "optim")
    if lagrange is not None:
        if meta["lagrange"] is None or meta["lagrange"]["rule"] != lagrange.name:
            raise CheckpointError(f"{folder}: lagrange rule differs from the config's {lagrange.name!r}")
        lagrange.load_state_dict(meta["lagrange"])
    if replay is not None:
        if meta.get("self_imitation") is None:
            raise CheckpointError(f"{folder}: no self-imitation replay in the checkpoint, but the config enables it")
        replay.load_state(tensors, meta["self_imitation"])
    rng = rng_from_state(tensors, meta["rng"])
    logger.info("resuming from %s (iteration %d, step %d)", folder, meta["iteration"], meta["global_step"])
    return PPOState(rng=rng, iteration=int(meta["iteration"]), global_step=int(meta["global_step"]),
                    lam=float(meta["lambda"]), last_episode_metrics=dict(meta["episode_metrics"]))


def truncate_metrics(path: Path, iteration: int) -> None:
    """Drop metric records written after the checkpoint being resumed (atomic rewrite)."""
    if not path.is_file():
        return
    keep = [r for r in read_jsonl(path) if int(r.get("iteration", 0)) <= iteration]
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in keep))
