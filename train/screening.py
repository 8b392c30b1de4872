"""Screening of proposed action chunks with the safety critic, and the recovery fallback.

For each proposal ``a`` of the task policy: accept it when ``Q_C(s, a) <= epsilon``; otherwise
draw a new proposal, up to ``max_resamples`` times; when none passes, the recovery policy's
chunk is executed (Recovery RL). With ``hold_candidate``, a hold chunk (no end-effector motion,
the last proposal's gripper command) is scored next to the recovery policy's chunk and the one
with the lower Q_C runs: the hold is the safe prior of a position-controlled arm (the controller
then tracks the measured pose, so the arm stops and a pressing contact relaxes), and the
learned recovery must beat it in the critic's eyes to act.

Fail closed: a non-finite or failing critic score counts as a rejection; a failing proposer goes
straight to recovery; when the features or the recovery policy fail, a zero chunk (no
end-effector motion: hold) is returned with ``info.fault`` set.

Chunks are (k, 7) (or (B, k, 7)) EE deltas in the base frame, in [-1, 1].
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .recovery import RecoveryPolicy
from .safe_explore_features import Featurizer, batch_one
from .safety_critic import SafetyCritic

logger = logging.getLogger(__name__)

ProposeFn = Callable[[Mapping[str, Any]], np.ndarray]
"""One unbatched observation -> a proposed chunk (k, 7)."""
BatchProposeFn = Callable[[Mapping[str, Any]], tuple[np.ndarray, np.ndarray]]
"""An observation batch -> (chunks (B, k, 7), log-probabilities (B,))."""


@dataclass
class ScreenInfo:
    """What the screen did for one decision.

    accepted: a policy proposal passed (Q_C <= epsilon) and was executed.
    recovery: the recovery policy's chunk was executed (all proposals rejected).
    fault: empty, or why a hold (zero) chunk was returned (treat as a stop request).
    q_proposals: Q_C of each proposal in order (nan when it could not be scored).
    q_executed: Q_C of the executed chunk (nan on a fault).
    epsilon: the threshold in force.
    proposed: the last proposal (k, 7) (what the task policy learns from), None if none came.
    """

    accepted: bool
    recovery: bool
    fault: str
    q_proposals: tuple[float, ...]
    q_executed: float
    epsilon: float
    proposed: np.ndarray | None = field(default=None, repr=False)

    @property
    def rejections(self) -> int:
        return len(self.q_proposals) - (1 if self.accepted else 0)


@dataclass
class BatchScreen:
    """Screen results of a batch of B observations (training rollouts).

    executed, proposed: (B, k, 7) chunks; logp: (B,) log-probability of ``proposed``;
    feat: (B, F) critic features; accepted, recovered: (B,) bool; rejections: (B,) int;
    q_executed: (B,) Q_C of the executed chunk.
    """

    executed: np.ndarray
    proposed: np.ndarray
    logp: np.ndarray
    feat: torch.Tensor
    accepted: np.ndarray
    recovered: np.ndarray
    rejections: np.ndarray
    q_executed: np.ndarray


class SafeExploreScreen:
    """Critic + recovery + featurizer + threshold; see the module docstring.

    Args:
        critic: the conservative safety critic.
        recovery: the recovery policy (same feature and action sizes).
        featurize: observation batch -> features (B, F).
        epsilon: reject a chunk when Q_C > epsilon.
        max_resamples: N, extra proposals after the first rejected one.
        chunk_shape: (k, 7).
        hold_candidate: also score a hold chunk as a recovery candidate (see the module docstring).
    """

    def __init__(self, critic: SafetyCritic, recovery: RecoveryPolicy, featurize: Featurizer,
                 epsilon: float, max_resamples: int, chunk_shape: tuple[int, int],
                 hold_candidate: bool = False) -> None:
        if critic.feature_dim != recovery.feature_dim or critic.action_dim != recovery.action_dim:
            raise ValueError("SafeExploreScreen: critic and recovery policy sizes differ")
        if int(np.prod(chunk_shape)) != critic.action_dim:
            raise ValueError(f"SafeExploreScreen: chunk {chunk_shape} does not match critic actions {critic.action_dim}")
        if not (np.isfinite(epsilon) and 0.0 <= epsilon <= 1.0) or max_resamples < 0:
            raise ValueError(f"SafeExploreScreen: need epsilon in [0, 1] and max_resamples >= 0, "
                             f"got {epsilon}, {max_resamples}")
        self.critic, self.recovery, self.featurize = critic, recovery, featurize
        self.epsilon, self.max_resamples = float(epsilon), int(max_resamples)
        self.chunk_shape = (int(chunk_shape[0]), int(chunk_shape[1]))
        self.hold_candidate = bool(hold_candidate)
        self.meta: dict[str, Any] = {}

    @torch.no_grad()
    def q(self, feat: torch.Tensor, chunks: np.ndarray) -> np.ndarray:
        """Q_C (B,) of chunks (B, k, 7) at features (B, F); nan where the score is not finite."""
        a = torch.as_tensor(np.asarray(chunks, dtype=np.float32)).reshape(feat.shape[0], -1)
        out = self.critic(feat, a).cpu().numpy().astype(np.float64)
        return np.where(np.isfinite(out), out, np.nan)

    def recover(self, feat: torch.Tensor, proposed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Recovery chunks (B, k, 7) and their Q_C (B,) for features (B, F); ``proposed``
        (B, k, 7) or None gives the hold candidate its gripper command (none: 0). A recovery
        chunk whose Q_C is not finite is replaced by the hold. Raises when the recovery policy
        fails (the caller holds or stops)."""
        b = feat.shape[0]
        rec = self.recovery.act(feat).reshape(b, *self.chunk_shape)
        q_rec = self.q(feat, rec)
        if not self.hold_candidate and np.isfinite(q_rec).all():
            return rec, q_rec
        hold = np.zeros_like(rec)
        if proposed is not None:
            hold[..., 6:] = np.asarray(proposed, dtype=np.float32).reshape(b, *self.chunk_shape)[..., 6:]
        q_hold = self.q(feat, hold)
        # an unscored recovery chunk never runs (fail closed): the hold replaces it
        use_hold = ~(q_rec <= q_hold) if self.hold_candidate else ~np.isfinite(q_rec)
        return np.where(use_hold[:, None, None], hold, rec), np.where(use_hold, q_hold, q_rec)

    def _hold(self, reason: str, q_props: list[float], proposed: np.ndarray | None) -> tuple[np.ndarray, ScreenInfo]:
        logger.error("safe-explore screen: %s; holding (zero chunk)", reason)
        info = ScreenInfo(False, False, reason, tuple(q_props), float("nan"), self.epsilon, proposed)
        return np.zeros(self.chunk_shape, dtype=np.float32), info

    def screen(self, obs: Mapping[str, Any], propose_fn: ProposeFn) -> tuple[np.ndarray, ScreenInfo]:
        """Screen ONE unbatched observation; returns (executed chunk (k, 7), ScreenInfo)."""
        try:
            feat = self.featurize(batch_one(obs))
        except Exception as exc:  # noqa: BLE001 - any feature fault holds the robot (fail closed)
            return self._hold(f"critic features failed: {exc}", [], None)
        q_props: list[float] = []
        proposed: np.ndarray | None = None
        for _ in range(self.max_resamples + 1):
            try:
                chunk = np.asarray(propose_fn(obs), dtype=np.float32).reshape(self.chunk_shape)
            except Exception as exc:  # noqa: BLE001 - a failing proposer hands over to recovery
                logger.warning("safe-explore screen: proposal failed (%s); using recovery", exc)
                break
            if not np.isfinite(chunk).all():
                logger.warning("safe-explore screen: non-finite proposal; using recovery")
                break
            repeated = proposed is not None and np.array_equal(chunk, proposed)
            proposed = chunk
            q = float(self.q(feat, chunk[None])[0])
            q_props.append(q)
            if np.isfinite(q) and q <= self.epsilon:
                return chunk, ScreenInfo(True, False, "", tuple(q_props), q, self.epsilon, chunk)
            if repeated:  # a deterministic proposer: resampling cannot help
                break
        try:
            recs, q_recs = self.recover(feat, None if proposed is None else proposed[None])
        except Exception as exc:  # noqa: BLE001 - no usable recovery chunk: hold
            return self._hold(f"recovery policy failed: {exc}", q_props, proposed)
        rec, q_rec = recs[0], float(q_recs[0])
        logger.info("safe-explore screen: %d proposal(s) rejected (eps %.3f); recovery acts (Q_C %.3f)",
                    len(q_props), self.epsilon, q_rec)
        return rec, ScreenInfo(False, True, "", tuple(q_props), q_rec, self.epsilon, proposed)

    def screen_batch(self, obs: Mapping[str, Any], propose_fn: BatchProposeFn,
                     feat: torch.Tensor | None = None) -> BatchScreen:
        """Screen a batch (training rollouts); rejected rows are re-proposed on their own.

        Errors of the proposer, featurizer or recovery raise (training stops loudly); a
        non-finite Q_C counts as a rejection.
        """
        from .policy import obs_slice

        feat = self.featurize(obs) if feat is None else feat
        chunks, logp = propose_fn(obs)
        proposed, logp = np.array(chunks, dtype=np.float32), np.array(logp, dtype=np.float32)
        b = proposed.shape[0]
        q = self.q(feat, proposed)
        rejections = np.zeros(b, dtype=np.int64)
        for _ in range(self.max_resamples):
            bad = np.flatnonzero(~(q <= self.epsilon))
            if len(bad) == 0:
                break
            rejections[bad] += 1
            new, new_logp = propose_fn(obs_slice(obs, bad))
            proposed[bad], logp[bad] = np.asarray(new, dtype=np.float32), np.asarray(new_logp, dtype=np.float32)
            q[bad] = self.q(feat[bad], proposed[bad])
        accepted = q <= self.epsilon
        rejections[~accepted] += 1
        executed = proposed.copy()
        bad = np.flatnonzero(~accepted)
        if len(bad):
            executed[bad], q[bad] = self.recover(feat[bad], proposed[bad])
        return BatchScreen(executed, proposed, logp, feat, accepted, ~accepted, rejections, q)
