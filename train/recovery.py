"""Recovery policy (after Thananjeyan et al., "Recovery RL", RA-L 2021, model-free variant).

A deterministic policy ``pi_rec(s) -> chunk`` (flattened (k*7,), EE deltas in the base frame,
[-1, 1] by tanh) trained through the safety critic to reduce the violation probability:
``loss = Q_C(s, pi_rec(s)) + reg * mean(pi_rec(s)^2)``. The critic is conservative, so the
minimiser stays near actions the data supports. Pre-trained offline on the replay states and
updated online with the critic; it acts when no policy proposal passes the screen.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .networks import mlp
from .safety_critic import SafetyCritic


class RecoveryPolicy(nn.Module):
    """Features (B, F) -> recovery chunk (B, A) in [-1, 1].

    Args:
        feature_dim: F, size of the state feature vector (the critic's).
        action_dim: A, flattened chunk size (k * 7 for the twin).
        hidden: width of the two hidden layers.
    """

    def __init__(self, feature_dim: int, action_dim: int, hidden: int = 256) -> None:
        super().__init__()
        if feature_dim < 1 or action_dim < 1 or hidden < 1:
            raise ValueError(f"RecoveryPolicy: dims must be >= 1, got {feature_dim}, {action_dim}, {hidden}")
        self.feature_dim, self.action_dim, self.hidden = int(feature_dim), int(action_dim), int(hidden)
        self.net = mlp([self.feature_dim, hidden, hidden, self.action_dim], out_gain=0.01)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        if feat.ndim != 2 or feat.shape[1] != self.feature_dim:
            raise ValueError(f"RecoveryPolicy: features must be (B, {self.feature_dim}), got {tuple(feat.shape)}")
        return torch.tanh(self.net(feat.float()))

    @torch.no_grad()
    def act(self, feat: torch.Tensor) -> np.ndarray:
        """Recovery chunks (B, A) float32; raises on a non-finite output (the caller brakes)."""
        out = self(feat).cpu().numpy().astype(np.float32)
        if not np.isfinite(out).all():
            raise FloatingPointError("recovery policy produced a non-finite chunk")
        return out


def recovery_update(recovery: RecoveryPolicy, optim: torch.optim.Optimizer, critic: SafetyCritic,
                    feat: torch.Tensor, action_reg: float) -> dict[str, float]:
    """One gradient step of ``Q_C(s, pi_rec(s)) + action_reg * |pi_rec(s)|^2`` (critic frozen)."""
    for p in critic.online_parameters():
        p.requires_grad_(False)
    try:
        act = recovery(feat)
        q = critic(feat, act)
        loss = q.mean() + action_reg * act.pow(2).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError("recovery loss is not finite (refusing the update)")
        optim.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(list(recovery.parameters()), 10.0)
        optim.step()
    finally:
        for p in critic.online_parameters():
            p.requires_grad_(True)
    return {"recovery_q": float(q.mean().item()), "recovery_loss": float(loss.item())}
