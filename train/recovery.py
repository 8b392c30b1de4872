"""Recovery policy (after Thananjeyan et al., "Recovery RL", RA-L 2021, model-free variant).

A deterministic policy ``pi_rec(s) -> chunk`` (flattened (k*7,), EE deltas in the base frame,
in [-1, 1]) trained through the safety critic to reduce the violation probability:
``loss = Q_C(s, pi_rec(s)) + reg * mean(d(s)^2)``. The critic is conservative, so the minimiser
stays near actions the data supports. Pre-trained offline on the replay states and updated
online with the critic; it acts when no policy proposal passes the screen.

Two forms:

* from scratch (``residual_scale`` 0): ``pi_rec(s) = tanh(net(s))``, ``d = pi_rec(s)`` (the
  regulariser prefers small moves);
* residual (``residual_scale`` r > 0): ``pi_rec(s) = clip(a_0(s) + r * tanh(net(s)), -1, 1)``
  and ``d = pi_rec(s) - a_0(s)``, around one of two base chunks ``a_0(s)``:

  - ``"retreat"`` (the default): lift the end effector by ``lift`` (normalised z action, base
    frame, up) in the chunk's first step, then hold (no motion) for the rest; the gripper
    command is the frozen pre-trained policy's (read from the last A feature columns,
    :class:`~safetwin.train.safe_explore_features.PolicyFeaturizer` with ``mode_chunk``). On
    tabletop_push most training violations are fingertips pressed on the table (force above the
    spec's limit), in states where the pre-trained policy itself keeps pressing: with the
    policy's chunk as the base and a residual of 0.02, one 20k-step seed had 1450 training
    violations, against 714 for PPO-Lagrangian alone (``safetwin train --pretrained <bc>
    --total-steps 20000 --safe-explore.enabled true --safe-explore.recovery-base policy
    --safe-explore.recovery-residual 0.02 --safe-explore.recovery-action-reg 1
    --safe-explore.target-fnr 0.1``); with the retreat, 403 (residual 0.1, same regulariser).
    A lift in every step of the chunk instead (a scratch check) drove the arm into its joint
    limits. With ``height_column`` (the features' lowest point of the arm, see
    :class:`~safetwin.train.safe_explore_features.EEFeatures`) the retreat lifts only while that
    point is below ``clearance`` (m above the base plane) and holds above it, so repeated
    retreats cannot lift the arm without bound. The residual on a retreat acts on translation
    and gripper only: the recovery acts in long stretches (43-50 % of the steps per seed on
    bench-safe-explore, BC seed 0), and a rotation residual repeated over them drifted the
    wrist into its joint limits (one BC-seed-3 seed of
    bench-safe-explore: 811 training violations, 3-8 joint-limit costs per episode; 330 without
    the rotation residual, against 571 for PPO-Lagrangian alone);
  - ``"policy"``: the frozen pre-trained policy's noise-free chunk (the same feature columns).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .networks import mlp
from .safe_explore_config import RECOVERY_BASES as BASES
from .safe_explore_features import EE_POS_SCALE
from .safety_critic import SafetyCritic

STEP_DIM, Z_INDEX, GRIPPER_INDEX = 7, 2, 6
ROTATION = slice(3, 6)
"""The twin's action layout per step: (dx, dy, dz, droll, dpitch, dyaw, gripper), EE deltas in
the robot base frame, normalised to [-1, 1] (z is up); ``ROTATION`` indexes the three rotations."""


class RecoveryPolicy(nn.Module):
    """Features (B, F) -> recovery chunk (B, A) in [-1, 1].

    Args:
        feature_dim: F, size of the state feature vector (the critic's).
        action_dim: A, flattened chunk size (k * 7 for the twin).
        hidden: width of the two hidden layers.
        residual_scale: r, bound of the residual on the base chunk (0: recovery from scratch).
        base: the residual's base chunk, ``"retreat"`` or ``"policy"`` (ignored when r is 0).
        lift: the retreat's first-step z action (normalised, up), in [0, 1].
        clearance: m; the retreat lifts only while the arm's lowest point is below it.
        height_column: the feature column holding that point (m x ``EE_POS_SCALE``); -1: none,
            the retreat always lifts.
    """

    def __init__(self, feature_dim: int, action_dim: int, hidden: int = 256, residual_scale: float = 0.0,
                 base: str = "policy", lift: float = 0.25, clearance: float = 0.0,
                 height_column: int = -1) -> None:
        super().__init__()
        if base not in BASES or not 0.0 <= lift <= 1.0:
            raise ValueError(f"RecoveryPolicy: base must be one of {BASES} (got {base!r}) and lift in [0, 1] "
                             f"(got {lift})")
        if not (clearance >= 0.0 and -1 <= height_column < feature_dim):
            raise ValueError(f"RecoveryPolicy: need clearance >= 0 and height_column in [-1, {feature_dim}), "
                             f"got {clearance}, {height_column}")
        if base == "retreat" and action_dim % STEP_DIM:
            raise ValueError(f"RecoveryPolicy: a retreat base needs chunks of {STEP_DIM}-D steps, got A={action_dim}")
        if feature_dim < 1 or action_dim < 1 or hidden < 1:
            raise ValueError(f"RecoveryPolicy: dims must be >= 1, got {feature_dim}, {action_dim}, {hidden}")
        if not 0.0 <= residual_scale <= 2.0 or (residual_scale > 0 and feature_dim <= action_dim):
            raise ValueError(f"RecoveryPolicy: residual_scale must be in [0, 2] (got {residual_scale}) and a "
                             f"residual needs the base chunk in the features (F {feature_dim} > A {action_dim})")
        self.feature_dim, self.action_dim, self.hidden = int(feature_dim), int(action_dim), int(hidden)
        self.residual_scale, self.base_kind, self.lift = float(residual_scale), base, float(lift)
        self.clearance, self.height_column = float(clearance), int(height_column)
        self.net = mlp([self.feature_dim, hidden, hidden, self.action_dim], out_gain=0.01)
        mask = torch.ones(self.action_dim)  # where the residual acts
        if base == "retreat":  # a retreat moves and grips, it does not rotate
            mask.view(-1, STEP_DIM)[:, ROTATION] = 0.0
        self.register_buffer("residual_mask", mask, persistent=False)

    def base(self, feat: torch.Tensor) -> torch.Tensor:
        """The chunk the recovery deviates from (B, A): for a residual recovery the policy's
        chunk (the features' last A columns) or the retreat built from its gripper command;
        zeros (hold) for one from scratch."""
        zeros = torch.zeros(feat.shape[0], self.action_dim, dtype=torch.float32, device=feat.device)
        if self.residual_scale <= 0:
            return zeros
        policy_chunk = feat[:, -self.action_dim:].float()
        if self.base_kind == "policy":
            return policy_chunk
        steps = zeros.reshape(feat.shape[0], -1, STEP_DIM).clone()
        steps[:, 0, Z_INDEX] = self.lift
        if self.height_column >= 0:  # hold, without lifting, once the arm is clear
            low = feat[:, self.height_column].float() / EE_POS_SCALE
            steps[:, 0, Z_INDEX] = torch.where(low < self.clearance, steps[:, 0, Z_INDEX], 0.0)
        steps[:, :, GRIPPER_INDEX] = policy_chunk.reshape(feat.shape[0], -1, STEP_DIM)[:, :, GRIPPER_INDEX]
        return steps.reshape(feat.shape[0], self.action_dim)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        if feat.ndim != 2 or feat.shape[1] != self.feature_dim:
            raise ValueError(f"RecoveryPolicy: features must be (B, {self.feature_dim}), got {tuple(feat.shape)}")
        out = torch.tanh(self.net(feat.float()))
        if self.residual_scale > 0:
            out = (self.base(feat) + self.residual_scale * self.residual_mask * out).clamp(-1.0, 1.0)
        return out

    @torch.no_grad()
    def act(self, feat: torch.Tensor) -> np.ndarray:
        """Recovery chunks (B, A) float32; raises on a non-finite output (the caller brakes)."""
        out = self(feat).cpu().numpy().astype(np.float32)
        if not np.isfinite(out).all():
            raise FloatingPointError("recovery policy produced a non-finite chunk")
        return out


def recovery_update(recovery: RecoveryPolicy, optim: torch.optim.Optimizer, critic: SafetyCritic,
                    feat: torch.Tensor, action_reg: float) -> dict[str, float]:
    """One gradient step of ``Q_C(s, pi_rec(s)) + action_reg * |pi_rec(s) - base(s)|^2`` (critic frozen)."""
    for p in critic.online_parameters():
        p.requires_grad_(False)
    try:
        act = recovery(feat)
        q = critic(feat, act)
        loss = q.mean() + action_reg * (act - recovery.base(feat)).pow(2).mean()
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
