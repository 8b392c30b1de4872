"""Checkpoints: safetensors weights + a JSON sidecar; never pickle.

``<name>.safetensors`` holds the tensors (policy weights, normaliser statistics as buffers,
and for training states the optimiser moments and torch RNG state). ``<name>.json`` (the
sidecar) holds everything else:

``{"format": "safetwin-checkpoint/1", "kind": "policy"|"train_state", "weights_sha256",
"policy_class", "policy_hparams", "config", "step", "lambda", "normalizer",
"safety_spec_sha256", "scene": {"name", "path"}, "extra": {...}}``

Both files are written atomically (weights first, then the sidecar, which carries the
weights' SHA-256), so a crash leaves whole files, and a weights/sidecar pair from two
different saves is detected on load. Loading refuses a file that is not safetensors and a
checkpoint whose safety-spec hash differs from the scene's.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from safetwin.safety.runio import atomic_write_bytes, atomic_write_json

from .language import LanguageEncoder
from .policy import CompactVLA, PolicyConfig, VLAPolicy
from .residual import BaseFn, ResidualPolicy

FORMAT = "safetwin-checkpoint/1"
POLICY_CLASSES = {"CompactVLA": CompactVLA, "ResidualPolicy": ResidualPolicy}


class CheckpointError(ValueError):
    """A checkpoint is missing, not safetensors, inconsistent, or for another safety spec."""


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    return Path(path).with_suffix(".json")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    data = path.read_bytes()
    header_ok = False
    if len(data) >= 9:
        (n,) = struct.unpack("<Q", data[:8])
        header_ok = 0 < n <= len(data) - 8 and data[8:9] == b"{"
    if path.suffix != ".safetensors" or not header_ok:
        raise CheckpointError(f"{path}: not a safetensors file (refusing to load; SafeTwin "
                              "checkpoints are safetensors + JSON, never pickle)")
    try:
        return st_load(data)
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: malformed safetensors file: {exc}") from exc


def save_tensors(path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor],
                 meta: Mapping[str, Any]) -> Path:
    """Write ``tensors`` (safetensors) and ``meta`` (+ weights hash) as the JSON sidecar."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: checkpoint files must end in .safetensors")
    blob = st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    atomic_write_bytes(path, blob)
    side = {**meta, "format": FORMAT, "weights_sha256": hashlib.sha256(blob).hexdigest()}
    atomic_write_json(sidecar_path(path), side)
    return path


def load_tensors(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint pair; checks the format and that weights and sidecar belong together."""
    path = Path(path)
    tensors = _read_safetensors(path)
    side_path = sidecar_path(path)
    if not side_path.is_file():
        raise CheckpointError(f"{side_path}: sidecar JSON of {path.name} not found")
    try:
        meta = json.loads(side_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{side_path}: malformed JSON: {exc.msg}") from exc
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{side_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if meta.get("weights_sha256") != digest:
        raise CheckpointError(f"{path}: weights do not match the sidecar {side_path.name} "
                              "(weights_sha256 differs; the pair comes from two different saves)")
    return tensors, meta


def policy_meta(policy: VLAPolicy) -> dict[str, Any]:
    """Class name and hyper-parameters needed to rebuild ``policy`` (base included)."""
    meta: dict[str, Any] = {"policy_class": type(policy).__name__, "policy_hparams": policy.hparams()}
    if isinstance(policy, ResidualPolicy):
        base = policy.base_policy
        meta["base"] = ({"embedded": True, **policy_meta(base)} if base is not None
                        else {"embedded": False})
    return meta


def save_policy(path: str | os.PathLike[str], policy: VLAPolicy, *, safety_spec_sha256: str,
                scene: Mapping[str, Any], step: int, lam: float, config: Mapping[str, Any],
                extra: Mapping[str, Any] | None = None, safety_spec: Mapping[str, Any] | None = None) -> Path:
    """Save a deployable policy checkpoint (weights + sidecar).

    ``safety_spec``: the scene's ``SafetySpec.to_dict()`` (stored for the audit), whose
    ``sha256()`` is ``safety_spec_sha256``.
    """
    meta = {"kind": "policy", **policy_meta(policy), "config": dict(config), "step": int(step),
            "lambda": float(lam), "safety_spec_sha256": safety_spec_sha256, "scene": dict(scene),
            "safety_spec": dict(safety_spec) if safety_spec is not None else None,
            "normalizer": {"proprio": policy.proprio_rms.stats(), "privileged": policy.priv_rms.stats()},
            "extra": dict(extra or {})}
    return save_tensors(path, policy.state_dict(), meta)


def build_policy(meta: Mapping[str, Any], base: BaseFn | None = None,
                 language: LanguageEncoder | None = None) -> VLAPolicy:
    """An untrained policy of the class and hyper-parameters recorded in ``meta``."""
    name = meta.get("policy_class")
    if name not in POLICY_CLASSES:
        raise CheckpointError(f"unknown policy_class {name!r}; known: {sorted(POLICY_CLASSES)}")
    cfg = PolicyConfig(**meta["policy_hparams"])
    if name == "ResidualPolicy":
        base_meta = meta.get("base", {})
        if base_meta.get("embedded"):
            return ResidualPolicy(cfg, build_policy(base_meta, language=language), language)
        if base is None:
            raise CheckpointError("this ResidualPolicy checkpoint has an external base policy; "
                                  "pass base=<callable obs_batch -> chunk>")
        return ResidualPolicy(cfg, base, language)
    return POLICY_CLASSES[name](cfg, language)


def check_spec(meta: Mapping[str, Any], scene: Any, where: str) -> None:
    """Refuse a checkpoint trained under a different safety spec than ``scene``'s."""
    expected = scene.safety.sha256()
    found = meta.get("safety_spec_sha256")
    if found != expected:
        name = getattr(scene, "name", "?")
        raise CheckpointError(f"{where}: safety spec mismatch: checkpoint was trained with spec "
                              f"sha256 {found}, scene {name!r} has {expected}; retrain or use the "
                              "matching scene")


def load_policy(checkpoint_path: str | os.PathLike[str], scene: Any = None, base: BaseFn | None = None,
                language: LanguageEncoder | None = None) -> VLAPolicy:
    """Load a policy for inference (eval mode); ``policy.predict(obs) -> (k, 7)`` float32.

    With ``scene`` given, the checkpoint's safety-spec hash must equal ``scene.safety.sha256()``.
    """
    tensors, meta = load_tensors(checkpoint_path)
    if meta.get("kind") != "policy":
        raise CheckpointError(f"{checkpoint_path}: kind {meta.get('kind')!r} is not a policy checkpoint")
    if scene is not None:
        check_spec(meta, scene, str(checkpoint_path))
    policy = build_policy(meta, base, language)
    try:
        policy.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{checkpoint_path}: weights do not fit {meta['policy_class']}: {exc}") from exc
    policy.eval()
    policy.checkpoint_meta = meta  # type: ignore[attr-defined]
    return policy
