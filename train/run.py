"""``safetwin train``: scripted-expert demos -> behaviour cloning -> PPO-Lagrangian.

``run_train(cfg)`` writes ``runs/train/<id>/``: ``config.yaml`` + ``meta.json`` (resolved
config, seed, versions), ``demos/`` (the BC dataset), ``checkpoints/bc.safetensors`` (the BC
policy), ``metrics.jsonl``, ``tb/`` (TensorBoard), ``checkpoints/iter_*/`` (resume points)
and ``checkpoints/policy.safetensors`` + ``policy.json`` (the final policy).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from safetwin.safety.runio import ConfigError, config_to_dict, inside, new_run_dir, save_config

from .bc import train_bc
from .checkpoint import build_policy, load_policy, policy_meta, save_policy
from .config import TrainConfig
from .demos import load_demos, record_demos
from .envs import ChunkedEnv, import_env_package
from .policy import CompactVLA, PolicyConfig, VLAPolicy
from .ppo_lag import train_ppo_lag
from .residual import ResidualPolicy

__all__ = ["TrainConfig", "run_train", "scene_info"]
logger = logging.getLogger(__name__)


def scene_info(scene: Any) -> dict[str, Any]:
    """What the trainer records about a scene: name, path, safety-spec hash, cost limit."""
    return {"name": str(getattr(scene, "name", "?")), "path": str(getattr(scene, "path", "")),
            "safety_spec_sha256": scene.safety.sha256(), "cost_limit": float(scene.safety.cost_limit),
            "safety_spec": scene.safety.to_dict()}


def _probe_dims(cfg: TrainConfig) -> tuple[int, int]:
    """(proprio_dim, privileged_dim) of the env."""
    import_env_package(cfg.env_id)
    env = ChunkedEnv(gym.make(cfg.env_id, **cfg.env_kwargs()), cfg.chunk_len, cfg.gamma)
    try:
        spaces = env.observation_space.spaces
        return int(spaces["proprio"].shape[0]), int(spaces["privileged"].shape[0])
    finally:
        env.close()


def _run_dir(cfg: TrainConfig) -> Path:
    root = Path(cfg.run_root)
    if cfg.resume:
        path = inside(root, cfg.run_id, "train.run_id")
        if not (path / "checkpoints" / "latest.json").is_file():
            raise ConfigError(f"train.resume: {path} has no checkpoints/latest.json to resume from")
        return path
    if cfg.run_id:
        path = inside(root, cfg.run_id, "train.run_id")
        if path.exists() and any(path.iterdir()):
            raise ConfigError(f"train.run_id: {path} exists and is not empty (use resume)")
        path.mkdir(parents=True, exist_ok=True)
        return path
    return new_run_dir(root)


def pretrain(cfg: TrainConfig, run_dir: Path, info: dict[str, Any]) -> VLAPolicy:
    """The starting policy: a given checkpoint, or demos + BC (saved as checkpoints/bc)."""
    if cfg.pretrained:
        scene_like = _SceneHash(info)
        return load_policy(cfg.pretrained, scene=scene_like)
    proprio_dim, priv_dim = _probe_dims(cfg)
    demos_dir = record_demos(cfg.env_id, cfg.env_kwargs(), cfg.demo_episodes, cfg.seed + 1_000_000,
                             run_dir / "demos", progress=cfg.progress, noise=cfg.demo_noise)
    policy = CompactVLA(PolicyConfig(proprio_dim=proprio_dim, privileged_dim=priv_dim, chunk_len=cfg.chunk_len,
                                     use_wrist=cfg.wrist_camera))
    losses = train_bc(policy, load_demos(demos_dir), cfg.bc_epochs, cfg.bc_batch_size, cfg.bc_lr,
                      cfg.seed, progress=cfg.progress, shift=cfg.bc_shift, loss=cfg.bc_loss)
    save_policy(run_dir / "checkpoints" / "bc.safetensors", policy, safety_spec_sha256=info["safety_spec_sha256"],
                scene={"name": info["name"], "path": info["path"]}, step=0, lam=0.0,
                config=config_to_dict(cfg), extra={"bc_losses": losses}, safety_spec=info["safety_spec"])
    return policy


class _SceneHash:
    """Adapter so :func:`load_policy` can check a spec hash without the scene object."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.name, self._sha = info["name"], info["safety_spec_sha256"]
        self.safety = self

    def sha256(self) -> str:
        return self._sha


def _frozen_copy(policy: VLAPolicy) -> VLAPolicy:
    copy = build_policy(policy_meta(policy), language=policy.language)
    copy.load_state_dict(policy.state_dict())
    for p in copy.parameters():
        p.requires_grad_(False)
    return copy.eval()


def run_train(cfg: TrainConfig, scene: Any = None, callback: Any = None) -> Path:
    """BC (unless ``cfg.pretrained``) then PPO-Lagrangian; returns the run directory.

    ``scene``: the loaded scene (``safetwin.twin.scene.load_scene(cfg.scene)`` when None).
    """
    if scene is None:
        from safetwin.twin.scene import load_scene

        scene = load_scene(cfg.scene)
    info = scene_info(scene)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % (2 ** 32))
    run_dir = _run_dir(cfg)
    save_config(run_dir, cfg, cfg.seed)
    logger.info("training run %s on scene %s (cost limit %.3f)", run_dir, info["name"], info["cost_limit"])
    if cfg.resume:
        import json

        from .checkpoint import load_tensors

        latest = json.loads((run_dir / "checkpoints" / "latest.json").read_text(encoding="utf-8"))
        _, meta = load_tensors(run_dir / "checkpoints" / latest["dir"] / "policy.safetensors")
        policy = build_policy(meta)
        ref = _frozen_copy(policy)  # its weights are replaced by the checkpoint's reference policy
    else:
        base = pretrain(cfg, run_dir, info)
        if cfg.policy == "residual":
            policy = ResidualPolicy(PolicyConfig(**{**base.hparams(), "init_log_std": -1.5}), base)
            policy.proprio_rms.load_state_dict(base.proprio_rms.state_dict())
            policy.priv_rms.load_state_dict(base.priv_rms.state_dict())
        else:
            policy = base
            if cfg.total_steps > 0:
                with torch.no_grad():
                    policy.log_std.fill_(cfg.finetune_log_std)
        ref = _frozen_copy(policy)
    if cfg.total_steps > 0:
        train_ppo_lag(cfg, policy, ref, run_dir, info, resume=cfg.resume, callback=callback)
    else:
        save_policy(run_dir / "checkpoints" / "policy.safetensors", policy,
                    safety_spec_sha256=info["safety_spec_sha256"],
                    scene={"name": info["name"], "path": info["path"]}, step=0, lam=0.0,
                    config=config_to_dict(cfg), safety_spec=info["safety_spec"])
    return run_dir
