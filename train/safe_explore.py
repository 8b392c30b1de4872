"""Safe exploration during PPO-Lagrangian training: conservative safety critic + recovery.

:class:`SafeExplorer` ties the pieces together for the trainer:

1. :meth:`SafeExplorer.pretrain`: offline twin rollouts under domain randomization that contain
   unsafe transitions (the pre-trained policy with Gaussian-perturbed chunks, and uniformly
   random chunks), split by episode into training and held-out sets; the critic and the
   recovery policy are pre-trained on the first, epsilon is calibrated on the second for
   ``target_fnr`` on "violation within ``horizon_steps`` env steps", and the ROC AUC reported;
2. :meth:`SafeExplorer.act` during each rollout decision: the task policy's proposals are
   screened (resampled up to N times), the recovery policy acts when none passes; the task
   policy learns from what it proposed (Recovery RL), the safety replay records what ran;
3. :meth:`SafeExplorer.observe` after each vector step: per-env episode assembly into the replay;
4. :meth:`SafeExplorer.end_iteration` after the PPO update: a ``heldout_fraction`` share of the
   finished episodes is withheld from the critic for calibration (the newest
   ``calibration_window`` of them are kept), the rest go to the replay; online critic/recovery
   updates; re-calibration of epsilon on the held-out episodes (offline and online, never
   trained on), so the stated false-negative rate holds on the current policy's chunks; metrics.

Metrics: ``safety/critic_rejections`` and ``safety/recovery_steps`` (this iteration: rejected
proposals, env steps executed by the recovery policy), ``safety/critic_auc`` (held-out),
``safety/critic_auc_online`` (this iteration's finished episodes, scored before training on
them), ``safety/critic_epsilon``, ``safety/critic_fnr``, ``safety/critic_fpr``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

from .envs import info_field
from .policy import VLAPolicy
from .recovery import RecoveryPolicy
from .safe_explore_config import SafeExploreConfig
from .safe_explore_data import Episode, EpisodeTracker, SafeExploreLearner, episode_scores
from .safe_explore_features import PolicyFeaturizer, batch_one
from .safe_explore_io import save_safe_explore
from .safety_critic import Calibration, SafetyCritic, calibrate_epsilon, roc_auc
from .screening import BatchScreen, SafeExploreScreen

logger = logging.getLogger(__name__)


def _final_obs_batch(infos: dict[str, Any], idx: np.ndarray) -> dict[str, Any]:
    finals = [infos["final_obs"][i] for i in idx]
    batch = {k: np.stack([np.asarray(f[k]) for f in finals]) for k in finals[0] if k != "instruction"}
    batch["instruction"] = [str(f["instruction"]) for f in finals]
    return batch


class SafeExplorer:
    """Critic, recovery, screen and replay of one training run (see the module docstring).

    Args:
        cfg: the safe-explore options.
        policy: the pre-trained task policy (its frozen copy computes the critic's features).
        seed: seed of the offline rollouts, the replay sampling and the out-of-distribution actions.
        kinematics: the robot's kinematics (``Kinematics.for_scene``) for the critic's EE features
            when ``cfg.ee_features`` is on (None: no EE features).
    """

    def __init__(self, cfg: SafeExploreConfig, policy: VLAPolicy, seed: int, kinematics: Any = None) -> None:
        self.cfg, self.seed = cfg, int(seed)
        self.featurizer = PolicyFeaturizer(policy, kinematics=kinematics if cfg.ee_features else None,
                                           mode_chunk=cfg.recovery_residual > 0)
        k, a = policy.cfg.chunk_len, policy.cfg.action_dim
        f = self.featurizer.feature_dim
        critic = SafetyCritic(f, k * a, cfg.hidden)
        recovery = RecoveryPolicy(f, k * a, cfg.hidden, residual_scale=cfg.recovery_residual,
                                  base=cfg.recovery_base, lift=cfg.recovery_lift,
                                  clearance=cfg.recovery_clearance, height_column=self.featurizer.lowest_column)
        self.learner = SafeExploreLearner(critic, recovery, cfg, seed)
        self.screen = SafeExploreScreen(critic, recovery, self.featurizer, 0.0, cfg.max_resamples, (k, a),
                                        hold_candidate=cfg.recovery_hold)
        self.heldout: list[Episode] = []
        self.heldout_online: deque[Episode] = deque(maxlen=max(cfg.calibration_window, 1))
        self._holdout_rng = np.random.default_rng(self.seed + 29)
        self.calibration: Calibration | None = None
        self.tracker: EpisodeTracker | None = None
        self._last: BatchScreen | None = None
        self._new_episodes: list[Episode] = []
        self.counts = {"rejections": 0, "recovery_steps": 0, "recovery_decisions": 0, "decisions": 0}
        self.offline_stats: dict[str, float] = {}

    @classmethod
    def from_checkpoint(cls, cfg: SafeExploreConfig, path: Path, policy: VLAPolicy, seed: int,
                        kinematics: Any = None) -> SafeExplorer:
        """Resume: critic, recovery, featurizer and epsilon from a saved screen (``kinematics``:
        for EE features). The replay buffer and the held-out set restart empty (epsilon is kept
        until episodes arrive)."""
        from .safe_explore_io import load_safe_explore

        explorer = cls(cfg, policy, seed)
        screen = load_safe_explore(path, kinematics=kinematics)
        if screen.chunk_shape != explorer.screen.chunk_shape:
            raise ValueError(f"{path}: chunk shape {screen.chunk_shape} differs from the policy's")
        screen.max_resamples, screen.hold_candidate = cfg.max_resamples, cfg.recovery_hold
        explorer.screen, explorer.featurizer = screen, screen.featurize
        explorer.learner = SafeExploreLearner(screen.critic, screen.recovery, cfg, seed)
        explorer.offline_stats = dict(screen.meta.get("offline", {}))
        if "calibration" in screen.meta:
            explorer.calibration = Calibration(**screen.meta["calibration"])
        return explorer

    # ------------------------------------------------------------------ offline
    def pretrain(self, env_fn: Callable[[], gym.Env], policy: VLAPolicy, progress: bool = False) -> dict[str, float]:
        """Collect offline episodes, pre-train critic and recovery, calibrate epsilon."""
        episodes, violations = self.collect_offline(env_fn, policy, progress)
        held = self._heldout_split(episodes)
        self.heldout = [episodes[i] for i in held]
        for i in sorted(set(range(len(episodes))) - set(held)):
            self.learner.replay.add_episode(episodes[i])
        losses = self.learner.update(self.cfg.offline_updates, progress=progress, desc="safety critic (offline)")
        cal = self.recalibrate()
        if cal is None:
            raise RuntimeError("safe exploration: no held-out episodes to calibrate epsilon on")
        self.offline_stats = {"offline_episodes": float(len(episodes)), "offline_violations": float(violations),
                              "offline_decisions": float(sum(len(e) for e in episodes)),
                              "critic_auc": cal.auc if np.isfinite(cal.auc) else -1.0,
                              **{k.replace("losses/", "offline_"): v for k, v in losses.items()}}
        logger.info("safety critic pre-trained: AUC %.3f, epsilon %.4f (FNR %.3f, FPR %.3f, %d/%d held-out "
                    "positives/negatives)", cal.auc, cal.epsilon, cal.fnr, cal.fpr, cal.n_pos, cal.n_neg)
        return {**self.offline_stats, **self.calibration_metrics()}

    def _heldout_split(self, episodes: list[Episode]) -> list[int]:
        """Indices of the held-out episodes: ``heldout_fraction`` of the violating and of the
        violation-free episodes each (stratified, at least one of each non-empty group), so
        calibration and the ROC AUC see both classes whenever the data has them."""
        rng = np.random.default_rng(self.seed + 17)
        held: list[int] = []
        for group in (True, False):
            idx = [i for i, e in enumerate(episodes) if bool(np.any(e.violation)) is group]
            if not idx:
                continue
            n = int(round(self.cfg.heldout_fraction * len(idx)))
            n = max(n, 1)
            held += [idx[j] for j in rng.permutation(len(idx))[:n]]
        return held or [int(rng.integers(len(episodes)))]

    @torch.no_grad()
    def collect_offline(self, env_fn: Callable[[], gym.Env], policy: VLAPolicy,
                        progress: bool = False) -> tuple[list[Episode], float]:
        """Random-policy, perturbed-policy and clean-policy episodes (chunked env); (episodes,
        total cost). The clean share keeps safe windows in the data: on a hard task every window
        of a perturbed or random rollout violates, and a critic with no safe examples cannot rank."""
        rng = np.random.default_rng(self.seed + 101)
        env = env_fn()
        episodes, total_cost = [], 0.0
        shape = self.screen.chunk_shape
        try:
            for i in tqdm(range(self.cfg.offline_episodes), desc="safety critic data", disable=not progress):
                random_policy = rng.random() < self.cfg.random_fraction
                clean = not random_policy and rng.random() < self.cfg.clean_fraction
                obs, _ = env.reset(seed=self.seed + 500_000 + i)
                tracker, done = EpisodeTracker(1), False
                while not done:
                    batch = batch_one(obs)
                    feat = self.featurizer(batch)[0].numpy()
                    if random_policy:
                        chunk = rng.uniform(-1.0, 1.0, shape)
                    elif clean:  # the policy's own mean chunk: the safe side of the data
                        chunk = policy.mean_chunk(batch)[0].numpy()
                    else:
                        chunk = policy.act(batch)[0][0].numpy() + rng.normal(0.0, self.cfg.perturb_std, shape)
                    chunk = np.clip(chunk, -1.0, 1.0).astype(np.float32)
                    obs, _, term, trunc, info = env.step(chunk)
                    tracker.add(0, feat, chunk.reshape(-1), chunk.reshape(-1), float(info["cost_sum"] > 0),
                                int(info["n_steps"]), False)
                    done = bool(term or trunc)
                total_cost += float(info["episode"]["cost"])
                final = self.featurizer(batch_one(obs))[0].numpy()
                episodes.append(tracker.finish(0, final, bool(term)))
        finally:
            env.close()
        return episodes, total_cost

    def recalibrate(self) -> Calibration | None:
        """Epsilon for ``target_fnr`` on the held-out episodes (offline, and the newest online
        ones) with the current critic; kept as it is when there are none (after a resume)."""
        episodes = self.heldout + list(self.heldout_online)
        if not episodes:
            return self.calibration
        scores, labels = episode_scores(self.learner.critic, episodes, self.cfg.horizon_steps)
        if self.calibration is not None and not labels.any():  # resumed and no violation yet: keep it
            return self.calibration
        self.calibration = calibrate_epsilon(scores, labels, self.cfg.target_fnr, self.cfg.horizon_steps)
        self.screen.epsilon = self.calibration.epsilon
        self.screen.meta = {**self.screen.meta, "calibration": asdict(self.calibration), "config": asdict(self.cfg)}
        return self.calibration

    def calibration_metrics(self) -> dict[str, float]:
        c = self.calibration
        if c is None:
            return {}
        out = {"safety/critic_auc": c.auc, "safety/critic_epsilon": c.epsilon,
               "safety/critic_fnr": c.fnr, "safety/critic_fpr": c.fpr}
        return {k: v for k, v in out.items() if np.isfinite(v)}  # AUC/FPR need held-out negatives

    # ------------------------------------------------------------------ rollouts
    def act(self, policy: VLAPolicy, obs: dict[str, Any]) -> BatchScreen:
        """Screen the task policy's proposals for a batch of observations (one per env)."""
        def propose(o: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
            chunk, logp = policy.act(o)
            return chunk.numpy(), logp.numpy()

        with torch.no_grad():
            out = self.screen.screen_batch(obs, propose)
        n_rec = int(out.recovered.sum())
        self.counts["rejections"] += int(out.rejections.sum())
        self.counts["recovery_decisions"] += n_rec
        self.counts["decisions"] += len(out.recovered)
        self._last = out
        return out

    def extra_cost(self) -> np.ndarray:
        """Per-env cost added to the task policy's transition for a rejected proposal."""
        assert self._last is not None
        return self.cfg.rejection_cost * (self._last.rejections > 0).astype(np.float64)

    def observe(self, infos: dict[str, Any], terminated: np.ndarray, truncated: np.ndarray) -> None:
        """Record the last screened decision's outcome (call right after ``envs.step``)."""
        out = self._last
        if out is None:
            raise RuntimeError("SafeExplorer.observe: call act() first")
        n = len(out.executed)
        self.tracker = self.tracker or EpisodeTracker(n)
        cost = info_field(infos, "cost_sum", n)
        n_steps = info_field(infos, "n_steps", n).astype(np.int64)
        self.counts["recovery_steps"] += int(n_steps[out.recovered].sum())
        feat = out.feat.numpy()
        for i in range(n):
            self.tracker.add(i, feat[i], out.executed[i].reshape(-1), out.proposed[i].reshape(-1),
                             float(cost[i] > 0), int(n_steps[i]), bool(out.recovered[i]))
        done = np.flatnonzero(np.asarray(terminated) | np.asarray(truncated))
        if len(done):
            with torch.no_grad():
                final = self.featurizer(_final_obs_batch(infos, done)).numpy()
            for j, i in enumerate(done):
                self._new_episodes.append(self.tracker.finish(int(i), final[j], bool(terminated[i])))
        self._last = None

    def end_iteration(self) -> dict[str, float]:
        """Online updates on everything recorded so far; returns this iteration's metrics."""
        metrics: dict[str, float] = {"safety/critic_rejections": float(self.counts["rejections"]),
                                     "safety/recovery_steps": float(self.counts["recovery_steps"]),
                                     "safety/recovery_rate": self.counts["recovery_decisions"]
                                     / max(self.counts["decisions"], 1)}
        if self._new_episodes:
            scores, labels = episode_scores(self.learner.critic, self._new_episodes, self.cfg.horizon_steps)
            auc = roc_auc(scores, labels)
            if np.isfinite(auc):
                metrics["safety/critic_auc_online"] = auc
        for ep in self._new_episodes:
            if self.cfg.calibration_window > 0 and self._holdout_rng.random() < self.cfg.heldout_fraction:
                self.heldout_online.append(ep)
            else:
                self.learner.replay.add_episode(ep)
        self._new_episodes = []
        metrics["safety/critic_heldout_online"] = float(len(self.heldout_online))  # empty with window 0
        metrics.update(self.learner.update(self.cfg.online_updates))
        self.recalibrate()
        metrics.update(self.calibration_metrics())
        self.counts = dict.fromkeys(self.counts, 0)
        return metrics

    def save(self, path: Path, safety_spec_sha256: str, extra: dict[str, Any] | None = None) -> Path:
        """Write the screen (critic, recovery, featurizer, epsilon) as safetensors + sidecar."""
        return save_safe_explore(path, self.screen, safety_spec_sha256=safety_spec_sha256,
                                 extra={"offline": self.offline_stats, **(extra or {})})
