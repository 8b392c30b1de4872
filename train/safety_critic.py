"""Conservative safety critic Q_C(s, a) (after Bharadhwaj et al., "Conservative Safety Critics
for Exploration", ICLR 2021), with threshold calibration and ROC AUC.

Q_C(s, a) in [0, 1] is the discounted probability of a constraint violation ahead when the
action chunk ``a`` (flattened (k*7,), EE deltas in the base frame, [-1, 1]) is executed in state
``s`` and the executed (screened) policy acts afterwards. ``s`` is a feature vector built only
from what exists on the robot (proprioception and the policy's image/language features, see
:mod:`safetwin.train.safe_explore_data`), so the same critic runs at deployment.

Training (off-policy, from a replay buffer of all rollouts):

* target ``y = c + (1 - c) * gamma * (1 - terminated) * max(Q'_1, Q'_2)(s', a')``, where ``c``
  is 1 when the chunk violated a constraint (cost > 0), ``Q'_i`` are two Polyak-averaged target
  networks (the maximum is the pessimistic choice for a cost) and ``a'`` the next executed
  chunk stored in the buffer;
* loss: binary cross-entropy of both heads to ``y`` plus the conservative term
  ``alpha * (E_{a~D}[Q_C(s, a)] - E_{a~mu}[Q_C(s, a)])`` (``mu``: uniform chunks and the
  recovery policy's chunks): minimising it lowers Q_C on the actions in the data and raises it
  on actions the data does not support, so unfamiliar actions look risky.

The screen uses the pessimistic ``max(Q_1, Q_2)`` of the online heads.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .networks import mlp


class SafetyCritic(nn.Module):
    """Two Q_C heads and their target copies over (features (B, F), chunk (B, A)).

    Args:
        feature_dim: F, size of the state feature vector.
        action_dim: A, size of the flattened action chunk (k * 7 for the twin).
        hidden: width of the two hidden layers of each head.
    """

    def __init__(self, feature_dim: int, action_dim: int, hidden: int = 256) -> None:
        super().__init__()
        if feature_dim < 1 or action_dim < 1 or hidden < 1:
            raise ValueError(f"SafetyCritic: dims must be >= 1, got {feature_dim}, {action_dim}, {hidden}")
        self.feature_dim, self.action_dim, self.hidden = int(feature_dim), int(action_dim), int(hidden)
        sizes = [self.feature_dim + self.action_dim, hidden, hidden, 1]
        self.q1, self.q2 = mlp(sizes, out_gain=0.1), mlp(sizes, out_gain=0.1)
        for head in (self.q1, self.q2):  # start at a small violation probability, not 0.5
            nn.init.constant_(head[-1].bias, -3.0)
        self.t1, self.t2 = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        for p in (*self.t1.parameters(), *self.t2.parameters()):
            p.requires_grad_(False)

    def _check(self, feat: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        if feat.ndim != 2 or feat.shape[1] != self.feature_dim:
            raise ValueError(f"SafetyCritic: features must be (B, {self.feature_dim}), got {tuple(feat.shape)}")
        act = act.reshape(act.shape[0], -1)
        if act.shape != (feat.shape[0], self.action_dim):
            raise ValueError(f"SafetyCritic: actions must be (B, {self.action_dim}), got {tuple(act.shape)}")
        return torch.cat([feat.float(), act.float()], dim=-1)

    def logits(self, feat: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-sigmoid outputs of the two online heads, each (B,)."""
        x = self._check(feat, act)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)

    def forward(self, feat: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Pessimistic Q_C (B,) in [0, 1]: the larger of the two heads' probabilities."""
        l1, l2 = self.logits(feat, act)
        return torch.maximum(torch.sigmoid(l1), torch.sigmoid(l2))

    @torch.no_grad()
    def target(self, feat: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Pessimistic target Q_C (B,): max over the two target networks."""
        x = self._check(feat, act)
        return torch.maximum(torch.sigmoid(self.t1(x)), torch.sigmoid(self.t2(x))).squeeze(-1)

    @torch.no_grad()
    def polyak(self, tau: float) -> None:
        for online, tgt in ((self.q1, self.t1), (self.q2, self.t2)):
            for p, tp in zip(online.parameters(), tgt.parameters(), strict=True):
                tp.mul_(1.0 - tau).add_(p, alpha=tau)

    def online_parameters(self) -> list[nn.Parameter]:
        return [*self.q1.parameters(), *self.q2.parameters()]


@dataclass
class CriticBatch:
    """A replay minibatch (tensors, leading dim B).

    feat, next_feat: (B, F) state features; act, next_act: (B, A) executed chunks;
    violation: (B,) 1.0 when the chunk incurred any cost; terminated: (B,) 1.0 when the episode
    ended by termination (no bootstrap).
    """

    feat: torch.Tensor
    act: torch.Tensor
    violation: torch.Tensor
    next_feat: torch.Tensor
    next_act: torch.Tensor
    terminated: torch.Tensor


def td_target(critic: SafetyCritic, batch: CriticBatch, gamma: float) -> torch.Tensor:
    """``y = c + (1 - c) gamma (1 - terminated) max(Q'_1, Q'_2)(s', a')`` in [0, 1]."""
    q_next = critic.target(batch.next_feat, batch.next_act)
    c = batch.violation.float()
    return (c + (1.0 - c) * gamma * (1.0 - batch.terminated.float()) * q_next).clamp(0.0, 1.0)


def conservative_term(critic: SafetyCritic, batch: CriticBatch, n_ood: int,
                      generator: torch.Generator | None = None,
                      policy_act: torch.Tensor | None = None) -> torch.Tensor:
    """``E_{a~D}[Q] - E_{a~mu}[Q]`` averaged over both heads (minimised: OOD goes up).

    ``mu``: uniform chunks in [-1, 1]; with ``policy_act`` (B, A) (the recovery policy's chunks,
    detached) half the weight goes to them, as CQL does for the policy optimised against the
    critic, so the recovery policy cannot exploit the critic's errors off the data.
    """
    b = batch.feat.shape[0]
    ood = torch.rand((b * n_ood, critic.action_dim), generator=generator) * 2.0 - 1.0
    feat_rep = batch.feat.repeat_interleave(n_ood, dim=0)
    d1, d2 = critic.logits(batch.feat, batch.act)
    o1, o2 = critic.logits(feat_rep, ood)
    data_q = 0.5 * (torch.sigmoid(d1) + torch.sigmoid(d2)).mean()
    ood_q = 0.5 * (torch.sigmoid(o1) + torch.sigmoid(o2)).mean()
    if policy_act is not None:
        p1, p2 = critic.logits(batch.feat, policy_act.detach())
        ood_q = 0.5 * ood_q + 0.25 * (torch.sigmoid(p1) + torch.sigmoid(p2)).mean()
    return data_q - ood_q


def critic_update(critic: SafetyCritic, optim: torch.optim.Optimizer, batch: CriticBatch, *,
                  gamma: float, cql_alpha: float, n_ood: int, tau: float,
                  generator: torch.Generator | None = None,
                  policy_act: torch.Tensor | None = None) -> dict[str, float]:
    """One gradient step (BCE to the TD target + alpha * conservative term), then Polyak.

    ``policy_act``: the recovery policy's chunks at ``batch.feat`` (see :func:`conservative_term`).
    """
    y = td_target(critic, batch, gamma)
    l1, l2 = critic.logits(batch.feat, batch.act)
    bce = nn.functional.binary_cross_entropy_with_logits
    td_loss = bce(l1, y) + bce(l2, y)
    cons = (conservative_term(critic, batch, n_ood, generator, policy_act) if cql_alpha > 0
            else torch.zeros(()))
    loss = td_loss + cql_alpha * cons
    if not torch.isfinite(loss):
        raise FloatingPointError("safety critic loss is not finite (refusing the update)")
    optim.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(critic.online_parameters(), 10.0)
    optim.step()
    critic.polyak(tau)
    return {"critic_td": float(td_loss.item()), "critic_conservative": float(cons.item()),
            "critic_target_mean": float(y.mean().item())}


# ---------------------------------------------------------------------- calibration
def violation_within(violation: np.ndarray, n_steps: np.ndarray, horizon_steps: int) -> np.ndarray:
    """Per-decision labels of one episode: 1 when a violation happens within ``horizon_steps``
    env steps from the start of the decision (its own chunk included).

    violation: (T,) per-decision violation indicator; n_steps: (T,) env steps each decision ran.
    """
    violation = np.asarray(violation, dtype=bool)
    start = np.concatenate([[0], np.cumsum(np.asarray(n_steps, dtype=np.int64))[:-1]])
    labels = np.zeros(len(violation), dtype=bool)
    for t in range(len(violation)):
        reach = start < start[t] + horizon_steps
        labels[t] = bool(violation[t:][reach[t:]].any())
    return labels


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC (probability a positive scores above a negative, ties count one half)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


@dataclass
class Calibration:
    """Threshold epsilon and its held-out statistics.

    epsilon: reject a chunk when Q_C > epsilon. fnr: share of positives with Q_C <= epsilon.
    fpr: share of negatives with Q_C > epsilon (safe chunks rejected). auc: ROC AUC.
    n_pos, n_neg: held-out positives / negatives. target_fnr, horizon_steps: what was asked.
    """

    epsilon: float
    fnr: float
    fpr: float
    auc: float
    n_pos: int
    n_neg: int
    target_fnr: float
    horizon_steps: int


def calibrate_epsilon(scores: np.ndarray, labels: np.ndarray, target_fnr: float,
                      horizon_steps: int) -> Calibration:
    """The largest epsilon whose false-negative rate on ``labels`` is at most ``target_fnr``."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    if not np.isfinite(scores).all():
        raise ValueError("calibrate_epsilon: non-finite critic scores")
    pos = np.sort(scores[labels])
    if len(pos) == 0:
        raise ValueError("calibrate_epsilon: the held-out rollouts contain no violation within "
                         f"{horizon_steps} steps; collect more (or riskier) offline episodes")
    allowed = int(math.floor(target_fnr * len(pos)))
    eps = float(np.nextafter(pos[allowed], -np.inf))
    neg = scores[~labels]
    return Calibration(epsilon=eps, fnr=float((pos <= eps).mean()),
                       fpr=float((neg > eps).mean()) if len(neg) else float("nan"),
                       auc=roc_auc(scores, labels), n_pos=int(len(pos)), n_neg=int(len(neg)),
                       target_fnr=float(target_fnr), horizon_steps=int(horizon_steps))
