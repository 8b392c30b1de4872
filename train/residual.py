"""Residual RL on top of a frozen base policy.

``chunk = base(obs) + scale * tanh(u)``, ``u ~ N(mean(obs, base(obs)), std)``: the base policy
(any callable ``obs_batch -> (B, k, 7)`` chunk, e.g. a served OpenVLA / SmolVLA / pi0 client
or a behaviour-cloned :class:`CompactVLA`) is frozen, and RL fine-tunes only a bounded Gaussian
residual (each component within ``+-residual_scale``) and the critics. The residual mean head is
initialised near zero, so the untrained residual policy reproduces the base policy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from .language import LanguageEncoder
from .networks import mlp
from .policy import LOG_STD_RANGE, ObsBatch, PolicyConfig, VisionLanguageTrunk, VLAPolicy, bounded_mean

BaseFn = Callable[[ObsBatch], "np.ndarray | torch.Tensor"]


def base_from_policy(policy: VLAPolicy) -> BaseFn:
    """Frozen deterministic base from a VLAPolicy (its parameters stop receiving gradients)."""
    for p in policy.parameters():
        p.requires_grad_(False)
    policy.eval()

    def base(obs: ObsBatch) -> torch.Tensor:
        with torch.no_grad():
            return policy.act(obs, deterministic=True)[0]

    return base


class ResidualPolicy(VLAPolicy):
    """Frozen base policy + learned bounded Gaussian residual (see the module docstring).

    Args:
        cfg: hyper-parameters (``residual_scale`` bounds the residual; ``chunk_len`` must match
            the base policy's chunk length).
        base: frozen callable ``obs_batch -> chunk (B, k, 7)``; if it is a VLAPolicy it is
            stored as a submodule (``base_policy``) so it is saved in the checkpoint.
    """

    def __init__(self, cfg: PolicyConfig, base: BaseFn | VLAPolicy,
                 language: LanguageEncoder | None = None) -> None:
        super().__init__(cfg, language)
        n = cfg.chunk_len * cfg.action_dim
        if isinstance(base, VLAPolicy):
            if base.cfg.chunk_len != cfg.chunk_len or base.cfg.action_dim != cfg.action_dim:
                raise ValueError("ResidualPolicy: base chunk shape differs from the residual's")
            self.base_policy: VLAPolicy | None = base
            self._base_fn = base_from_policy(base)
        else:
            self.base_policy = None
            self._base_fn = base
        self.trunk = VisionLanguageTrunk(cfg, extra_dim=n)
        self.mean_head = mlp([cfg.hidden, n], out_gain=0.01)
        self.log_std = nn.Parameter(torch.full((n,), float(cfg.init_log_std)))

    def train(self, mode: bool = True) -> ResidualPolicy:
        super().train(mode)
        if self.base_policy is not None:
            self.base_policy.eval()  # the base stays frozen
        return self

    def base_chunk(self, obs: ObsBatch) -> torch.Tensor:
        """The frozen base policy's chunk, flattened (B, k*7)."""
        n = self.cfg.chunk_len * self.cfg.action_dim
        chunk = torch.as_tensor(self._base_fn(obs), dtype=torch.float32, device=self._device())
        if chunk.ndim != 3 or chunk.shape[1:] != (self.cfg.chunk_len, self.cfg.action_dim):
            raise ValueError(f"base policy returned shape {tuple(chunk.shape)}, expected "
                             f"(B, {self.cfg.chunk_len}, {self.cfg.action_dim})")
        if not torch.isfinite(chunk).all():
            raise FloatingPointError("base policy returned a non-finite chunk")
        return chunk.reshape(-1, n).detach()

    def _dist_params(self, obs: ObsBatch) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        base = self.base_chunk(obs)
        mean = bounded_mean(self.mean_head(self.trunk(self, obs, extra=base)))
        return mean, self.log_std.clamp(*LOG_STD_RANGE), {"base": base}

    def _to_chunk(self, squashed: torch.Tensor, ctx: dict[str, Any]) -> torch.Tensor:
        return ctx["base"] + self.cfg.residual_scale * squashed

    def _from_chunk(self, chunk: torch.Tensor, ctx: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        squashed = (chunk - ctx["base"]) / self.cfg.residual_scale
        log_scale = chunk.shape[-1] * math.log(self.cfg.residual_scale)
        return squashed, torch.full((chunk.shape[0],), log_scale, device=chunk.device)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]
