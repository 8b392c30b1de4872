"""State features of the safety critic: only what exists on the robot.

:class:`PolicyFeaturizer` keeps a frozen copy of the (pre-trained) VLA policy and returns its
trunk output (the camera image through the CNN, FiLM-modulated by the instruction embedding,
fused with the proprioception) and the normalised proprioception itself (joint positions rad,
velocities rad/s, gripper). With the robot's kinematics given, :class:`EEFeatures` adds the
end-effector pose and the lowest point of the arm's collision spheres, computed by forward
kinematics from the measured joint positions (what the robot's own controller computes). No
privileged twin state enters, so the critic runs unchanged at deployment. The copy is frozen so
the critic's input distribution does not drift while PPO fine-tunes the task policy, and it is
saved with the critic (``feat.*`` tensors of the safe-explore checkpoint).

Why the EE features: most violations of a near-expert policy are contacts (fingertips pressing
on the table, the wrist brushing the glass) that depend on where the fingers are, a nonlinear
function of all joint angles that a small critic learns poorly from a few thousand decisions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import build_policy, policy_meta
from .policy import VLAPolicy

Featurizer = Callable[[Mapping[str, Any]], torch.Tensor]
"""``obs_batch -> features (B, F)`` float32 (obs batch as in :mod:`safetwin.train.policy`)."""


EE_POS_SCALE = 10.0
"""EE features are positions in m times this (decimetres), so they share the O(1) scale of the
normalised proprio and the trunk features."""


class EEFeatures:
    """Forward-kinematics features of the arm, base frame: ``q (B, n) rad -> (B, 13)``.

    Columns: EE position (3) and the lowest collision-sphere bottom ``min(z_i - r_i)`` (1), both
    m times :data:`EE_POS_SCALE`; the EE rotation matrix, row-major (9). The kinematics is any
    object with ``joint_names``, ``ee_pose(q) -> (pos (3,), rot (3, 3))`` and ``spheres(q) ->
    (centres (m, 3), radii (m,), ...)`` (:class:`safetwin.twin.kinematics.Kinematics`).
    """

    dim = 13

    def __init__(self, kinematics: Any) -> None:
        self.kin = kinematics
        self.n = len(kinematics.joint_names)

    def identity(self) -> dict[str, Any]:
        """What must match at load time: the controlled joints, in order, and the EE link."""
        return {"joints": list(self.kin.joint_names), "ee_link": str(self.kin.ee_link)}

    def __call__(self, q: np.ndarray) -> np.ndarray:
        q = np.asarray(q, dtype=np.float64)
        if q.ndim != 2 or q.shape[1] < self.n:
            raise ValueError(f"EEFeatures: need joint positions (B, >= {self.n}), got {q.shape}")
        out = np.empty((q.shape[0], self.dim), dtype=np.float32)
        for i, qi in enumerate(q[:, :self.n]):
            pos, rot = self.kin.ee_pose(qi)
            centres, radii = self.kin.spheres(qi)[:2]
            lowest = float(np.min(centres[:, 2] - radii)) if len(radii) else float(pos[2])
            out[i, :3] = EE_POS_SCALE * np.asarray(pos)
            out[i, 3] = EE_POS_SCALE * lowest
            out[i, 4:] = np.asarray(rot).reshape(-1)
        return out


class PolicyFeaturizer(nn.Module):
    """Frozen copy of ``policy``; ``forward(obs_batch) -> (B, hidden + P [+ 13] [+ k*7])``: the
    trunk features, the normalised proprio (the policy's running statistics, frozen), with
    ``kinematics`` the :class:`EEFeatures` of the measured joint positions (the first n proprio
    entries, rad), and with ``mode_chunk`` the frozen policy's noise-free chunk, flattened, as
    the last columns (the base of a residual recovery, see :mod:`safetwin.train.recovery`).

    Args:
        policy: a VLAPolicy with a ``trunk`` (CompactVLA, or ResidualPolicy with an embedded base).
        meta: the ``policy_meta`` to rebuild from (when loading; None: taken from ``policy``).
        kinematics: the robot's kinematics for the EE features (None: none). When ``meta`` says
            the features were trained with EE features (``meta["ee_features"]``), the kinematics
            must be given and match its joints and EE link.
        mode_chunk: append the noise-free chunk (when loading, ``meta["mode_chunk"]`` decides).
    """

    def __init__(self, policy: VLAPolicy, meta: Mapping[str, Any] | None = None, kinematics: Any = None,
                 mode_chunk: bool = False) -> None:
        super().__init__()
        self.meta = dict(meta) if meta is not None else {**policy_meta(policy), "mode_chunk": bool(mode_chunk)}
        self.mode_chunk = bool(self.meta.get("mode_chunk", False))
        self.ee = EEFeatures(kinematics) if kinematics is not None else None
        wanted = self.meta.get("ee_features")
        if meta is not None and (wanted is None) != (self.ee is None):
            raise ValueError("PolicyFeaturizer: the critic was trained " + ("with" if wanted else "without")
                             + " EE features; " + ("give the robot's kinematics" if wanted else "drop the kinematics"))
        if self.ee is not None:
            if wanted is not None and wanted != self.ee.identity():
                raise ValueError(f"PolicyFeaturizer: EE features were trained on {wanted}, this robot is "
                                 f"{self.ee.identity()}")
            self.meta["ee_features"] = self.ee.identity()
        frozen = build_policy(self.meta, language=policy.language)
        frozen.load_state_dict(policy.state_dict())
        for p in frozen.parameters():
            p.requires_grad_(False)
        self.policy = frozen.eval()
        if not isinstance(getattr(self.policy, "trunk", None), nn.Module):
            raise TypeError(f"PolicyFeaturizer: {type(policy).__name__} has no trunk module")

    @property
    def feature_dim(self) -> int:
        cfg = self.policy.cfg
        return int(cfg.hidden + cfg.proprio_dim + (EEFeatures.dim if self.ee else 0)
                   + (cfg.chunk_len * cfg.action_dim if self.mode_chunk else 0))

    @property
    def lowest_column(self) -> int:
        """Column of the arm's lowest point (m x ``EE_POS_SCALE``) in the features; -1 without
        EE features."""
        cfg = self.policy.cfg
        return int(cfg.hidden + cfg.proprio_dim + 3) if self.ee is not None else -1

    def train(self, mode: bool = True) -> PolicyFeaturizer:  # always frozen, always eval
        super().train(False)
        return self

    @torch.no_grad()
    def forward(self, obs: Mapping[str, Any]) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        handle = self.policy.trunk.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            mode = self.policy.mean_chunk(obs)
        finally:
            handle.remove()
        parts = [captured[-1].float(), self.policy.proprio(obs)]
        if self.ee is not None:
            parts.append(torch.as_tensor(self.ee(np.asarray(obs["proprio"]))))
        if self.mode_chunk:
            parts.append(mode.reshape(mode.shape[0], -1).float())
        feat = torch.cat(parts, dim=-1)
        if not torch.isfinite(feat).all():
            raise FloatingPointError("safety-critic features are not finite")
        return feat


def batch_one(obs: Mapping[str, Any]) -> dict[str, Any]:
    """One unbatched twin observation -> a batch of one (arrays get a leading 1)."""
    out: dict[str, Any] = {k: np.asarray(v)[None] for k, v in obs.items() if k != "instruction"}
    out["instruction"] = [str(obs.get("instruction", ""))]
    return out
