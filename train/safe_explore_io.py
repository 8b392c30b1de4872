"""Saving and loading the safe-exploration screen (critic + recovery + featurizer + epsilon).

``<dir>/safe_explore.safetensors`` (tensors ``critic.*``, ``recovery.*``, ``feat.*``, the frozen
policy copy that computes the critic's features) and its JSON sidecar (kind ``safe_explore``,
sizes, the recovery's residual bound, base, lift, clearance and lowest-point column, epsilon,
max_resamples, chunk shape, calibration, the featurizer's policy class and hyper-parameters, the
safety-spec hash). Written with the checkpoint module's atomic weights-then-sidecar pair; never
pickle.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError, load_tensors, save_tensors
from .recovery import RecoveryPolicy
from .safe_explore_features import PolicyFeaturizer
from .safety_critic import SafetyCritic
from .screening import SafeExploreScreen

FILE_NAME = "safe_explore.safetensors"


def save_safe_explore(path: str | os.PathLike[str], screen: SafeExploreScreen, *,
                      safety_spec_sha256: str, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``screen`` (its featurizer must be a :class:`PolicyFeaturizer`) to ``path``."""
    feat = screen.featurize
    if not isinstance(feat, PolicyFeaturizer):
        raise TypeError("save_safe_explore: only a PolicyFeaturizer can be saved with the critic")
    tensors = {**{f"critic.{k}": v for k, v in screen.critic.state_dict().items()},
               **{f"recovery.{k}": v for k, v in screen.recovery.state_dict().items()},
               **{f"feat.{k}": v for k, v in feat.policy.state_dict().items()}}
    meta = {"kind": "safe_explore", "feature_dim": screen.critic.feature_dim,
            "action_dim": screen.critic.action_dim, "hidden": screen.critic.hidden,
            "recovery_hidden": screen.recovery.hidden, "recovery_residual": screen.recovery.residual_scale,
            "recovery_base": screen.recovery.base_kind, "recovery_lift": screen.recovery.lift,
            "recovery_clearance": screen.recovery.clearance, "recovery_height_column": screen.recovery.height_column,
            "epsilon": screen.epsilon,
            "max_resamples": screen.max_resamples, "chunk_shape": list(screen.chunk_shape),
            "hold_candidate": screen.hold_candidate,
            "featurizer": feat.meta, "safety_spec_sha256": safety_spec_sha256,
            "extra": {**screen.meta, **dict(extra or {})}}
    return save_tensors(path, tensors, meta)


def _resolve(path: Path) -> Path:
    """A safe-explore file, or the ``safe_explore.safetensors`` next to a policy checkpoint."""
    if path.name == FILE_NAME or path.with_suffix(".json").name == "safe_explore.json":
        return path
    sibling = path.parent / FILE_NAME
    if not sibling.is_file():
        raise CheckpointError(f"{path}: no {FILE_NAME} next to this checkpoint (train with "
                              "safe_explore.enabled=true to get a safety critic and recovery policy)")
    return sibling


def load_safe_explore(checkpoint_path: str | os.PathLike[str], scene: Any = None,
                      kinematics: Any = None) -> SafeExploreScreen:
    """Load the screen saved with a training run (eval mode).

    ``checkpoint_path``: the ``safe_explore.safetensors`` file or a policy checkpoint next to
    it. With ``scene`` given, the safety-spec hash must match ``scene.safety.sha256()``; a
    critic trained with EE features (``feature_dim`` includes the forward kinematics of the
    joints) needs the robot's ``kinematics``, or ``scene`` to build them from.
    Use: ``chunk, info = screen.screen(obs, propose_fn)`` before the QP filter.
    """
    path = _resolve(Path(checkpoint_path))
    tensors, meta = load_tensors(path)
    if meta.get("kind") != "safe_explore":
        raise CheckpointError(f"{path}: kind {meta.get('kind')!r} is not a safe_explore checkpoint")
    if scene is not None and meta.get("safety_spec_sha256") != scene.safety.sha256():
        raise CheckpointError(f"{path}: safety spec mismatch: critic trained with spec sha256 "
                              f"{meta.get('safety_spec_sha256')}, scene has {scene.safety.sha256()}")
    from .checkpoint import build_policy

    if meta.get("featurizer", {}).get("ee_features") is None:
        kinematics = None
    elif kinematics is None:
        if scene is None:
            raise CheckpointError(f"{path}: this critic uses end-effector features; load it with the scene "
                                  "(its robot's kinematics computes them)")
        from safetwin.twin.kinematics import Kinematics

        kinematics = Kinematics.for_scene(scene)
    try:
        feat_policy = build_policy(meta["featurizer"])
        feat_policy.load_state_dict(_prefixed(tensors, "feat."), strict=True)
        featurizer = PolicyFeaturizer(feat_policy, meta["featurizer"], kinematics)
        critic = SafetyCritic(int(meta["feature_dim"]), int(meta["action_dim"]), int(meta["hidden"]))
        critic.load_state_dict(_prefixed(tensors, "critic."), strict=True)
        recovery = RecoveryPolicy(int(meta["feature_dim"]), int(meta["action_dim"]), int(meta["recovery_hidden"]),
                                  residual_scale=float(meta.get("recovery_residual", 0.0)),
                                  base=str(meta.get("recovery_base", "policy")),
                                  lift=float(meta.get("recovery_lift", 0.0)),
                                  clearance=float(meta.get("recovery_clearance", 0.0)),
                                  height_column=int(meta.get("recovery_height_column", -1)))
        recovery.load_state_dict(_prefixed(tensors, "recovery."), strict=True)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path}: does not fit the safe-explore networks: {exc}") from exc
    chunk = meta["chunk_shape"]
    screen = SafeExploreScreen(critic.eval(), recovery.eval(), featurizer, float(meta["epsilon"]),
                               int(meta["max_resamples"]), (int(chunk[0]), int(chunk[1])),
                               hold_candidate=bool(meta.get("hold_candidate", False)))
    screen.meta = dict(meta.get("extra", {}))
    return screen


def _prefixed(tensors: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


class ScreenedPolicy:
    """Deploy-side policy callable ``obs -> chunk (k, 7)``: the task policy screened by the critic.

    The first proposal of a decision is the policy's deterministic chunk, re-draws sample from
    it. A screen fault raises ``RuntimeError``, so the deploy policy thread publishes nothing
    and the supervisor's staleness/heartbeat stop applies (fail closed). ``last_info`` holds
    the newest :class:`~safetwin.train.screening.ScreenInfo`.

    Args:
        policy: the task policy (a loaded VLAPolicy).
        screen: the loaded screen (:func:`load_safe_explore`).
    """

    def __init__(self, policy: Any, screen: SafeExploreScreen) -> None:
        self.policy, self.screen = policy, screen
        self.last_info: Any = None
        self.decisions = self.rejections = self.recoveries = self.faults = 0

    @property
    def cfg(self) -> Any:
        """The task policy's config: the deploy observer reads its image size and wrist camera."""
        return self.policy.cfg

    def reset_counters(self) -> None:
        self.decisions = self.rejections = self.recoveries = self.faults = 0

    def counters(self) -> dict[str, int]:
        """Totals for the deploy summary: decisions screened, proposals rejected, recovery chunks, faults."""
        return {"decisions": self.decisions, "critic_rejections": self.rejections,
                "recovery_chunks": self.recoveries, "screen_faults": self.faults}

    def __call__(self, obs: Mapping[str, Any]) -> Any:
        import numpy as np
        import torch

        from .safe_explore_features import batch_one

        calls = [0]

        def propose(o: Mapping[str, Any]) -> np.ndarray:
            calls[0] += 1
            if calls[0] == 1:
                return self.policy.predict(o)
            with torch.no_grad():
                return self.policy.act(batch_one(o))[0][0].cpu().numpy()

        chunk, info = self.screen.screen(obs, propose)
        self.last_info = info
        self.decisions += 1
        self.rejections += info.rejections
        self.recoveries += int(info.recovery)
        self.faults += int(bool(info.fault))
        if info.fault:
            raise RuntimeError(f"safe-explore screen fault: {info.fault}")
        return chunk
