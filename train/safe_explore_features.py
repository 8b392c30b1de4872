"""State features of the safety critic: only what exists on the robot.

:class:`PolicyFeaturizer` keeps a frozen copy of the (pre-trained) VLA policy and returns its
trunk output (the camera image through the CNN, FiLM-modulated by the instruction embedding,
fused with the proprioception) and the normalised proprioception itself (joint positions rad,
velocities rad/s, gripper). No
privileged twin state enters, so the critic runs unchanged at deployment. The copy is frozen so
the critic's input distribution does not drift while PPO fine-tunes the task policy, and it is
saved with the critic (``feat.*`` tensors of the safe-explore checkpoint).
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


class PolicyFeaturizer(nn.Module):
    """Frozen copy of ``policy``; ``forward(obs_batch) -> (B, hidden + P)``: the trunk features
    and the normalised proprio (the policy's running statistics, frozen).

    Args:
        policy: a VLAPolicy with a ``trunk`` (CompactVLA, or ResidualPolicy with an embedded base).
        meta: the ``policy_meta`` to rebuild from (when loading; None: taken from ``policy``).
    """

    def __init__(self, policy: VLAPolicy, meta: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.meta = dict(meta) if meta is not None else policy_meta(policy)
        frozen = build_policy(self.meta, language=policy.language)
        frozen.load_state_dict(policy.state_dict())
        for p in frozen.parameters():
            p.requires_grad_(False)
        self.policy = frozen.eval()
        if not isinstance(getattr(self.policy, "trunk", None), nn.Module):
            raise TypeError(f"PolicyFeaturizer: {type(policy).__name__} has no trunk module")

    @property
    def feature_dim(self) -> int:
        return int(self.policy.cfg.hidden + self.policy.cfg.proprio_dim)

    def train(self, mode: bool = True) -> PolicyFeaturizer:  # always frozen, always eval
        super().train(False)
        return self

    @torch.no_grad()
    def forward(self, obs: Mapping[str, Any]) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        handle = self.policy.trunk.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            self.policy.mean_chunk(obs)
        finally:
            handle.remove()
        feat = torch.cat([captured[-1].float(), self.policy.proprio(obs)], dim=-1)
        if not torch.isfinite(feat).all():
            raise FloatingPointError("safety-critic features are not finite")
        return feat


def batch_one(obs: Mapping[str, Any]) -> dict[str, Any]:
    """One unbatched twin observation -> a batch of one (arrays get a leading 1)."""
    out: dict[str, Any] = {k: np.asarray(v)[None] for k, v in obs.items() if k != "instruction"}
    out["instruction"] = [str(obs.get("instruction", ""))]
    return out
