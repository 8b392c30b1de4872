"""Data of the safety critic: the replay buffer, episode assembly, and the learner.

Transitions are decisions (one action chunk each) stored as critic features, not images:
``feat`` (F,), the executed chunk ``act`` (A,) (what the robot did; recovery included), the
task policy's ``proposed`` chunk, ``violation`` (1.0 when any env step of the chunk had cost
> 0), ``n_steps`` (env steps the chunk ran), ``next_feat``, ``next_act`` (the next executed
chunk; at a truncated end the chunk itself is reused), ``terminated`` and ``recovered``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from .recovery import RecoveryPolicy, recovery_update
from .safe_explore_config import SafeExploreConfig
from .safety_critic import CriticBatch, SafetyCritic, critic_update, violation_within


@dataclass
class Episode:
    """One finished episode at the decision level (T decisions).

    feat (T, F), act (T, A) executed, proposed (T, A), violation (T,), n_steps (T,),
    recovered (T,) bool, final_feat (F,) features of the final observation, terminated: bool.
    """

    feat: np.ndarray
    act: np.ndarray
    proposed: np.ndarray
    violation: np.ndarray
    n_steps: np.ndarray
    recovered: np.ndarray
    final_feat: np.ndarray
    terminated: bool

    def __len__(self) -> int:
        return len(self.violation)

    def labels(self, horizon_steps: int) -> np.ndarray:
        """(T,) violation within ``horizon_steps`` env steps (calibration labels)."""
        return violation_within(self.violation, self.n_steps, horizon_steps)


class SafetyReplay:
    """Ring buffer of decision transitions (see the module docstring)."""

    def __init__(self, capacity: int, feature_dim: int, action_dim: int) -> None:
        if capacity < 1:
            raise ValueError(f"SafetyReplay: capacity must be >= 1, got {capacity}")
        self.capacity, self.size, self.pos = int(capacity), 0, 0
        f, a = int(feature_dim), int(action_dim)
        self.data = {"feat": np.zeros((capacity, f), np.float32), "act": np.zeros((capacity, a), np.float32),
                     "proposed": np.zeros((capacity, a), np.float32),
                     "next_feat": np.zeros((capacity, f), np.float32),
                     "next_act": np.zeros((capacity, a), np.float32),
                     "violation": np.zeros(capacity, np.float32), "terminated": np.zeros(capacity, np.float32),
                     "recovered": np.zeros(capacity, bool)}

    def __len__(self) -> int:
        return self.size

    def add_episode(self, ep: Episode) -> None:
        t = len(ep)
        if t == 0:
            return
        next_feat = np.concatenate([ep.feat[1:], ep.final_feat[None]])
        next_act = np.concatenate([ep.act[1:], ep.act[-1:]])
        term = np.zeros(t, np.float32)
        term[-1] = float(ep.terminated)
        rows = {"feat": ep.feat, "act": ep.act, "proposed": ep.proposed, "next_feat": next_feat,
                "next_act": next_act, "violation": ep.violation, "terminated": term, "recovered": ep.recovered}
        for i in range(t):
            for key, arr in rows.items():
                self.data[key][self.pos] = arr[i]
            self.pos = (self.pos + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator) -> CriticBatch:
        if self.size == 0:
            raise RuntimeError("SafetyReplay.sample: the buffer is empty")
        idx = rng.integers(0, self.size, size=batch_size)
        d = {k: torch.as_tensor(v[idx]) for k, v in self.data.items() if k not in ("proposed", "recovered")}
        return CriticBatch(feat=d["feat"], act=d["act"], violation=d["violation"], next_feat=d["next_feat"],
                           next_act=d["next_act"], terminated=d["terminated"])


@dataclass
class EpisodeTracker:
    """Assembles per-env decision streams of a vector env into finished :class:`Episode` s."""

    n_envs: int
    rows: list[list[tuple]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rows = [[] for _ in range(self.n_envs)]

    def add(self, i: int, feat: np.ndarray, act: np.ndarray, proposed: np.ndarray, violation: float,
            n_steps: int, recovered: bool) -> None:
        self.rows[i].append((feat, act, proposed, float(violation), int(n_steps), bool(recovered)))

    def finish(self, i: int, final_feat: np.ndarray, terminated: bool) -> Episode:
        rows, self.rows[i] = self.rows[i], []
        cols = list(zip(*rows, strict=True))
        return Episode(feat=np.stack(cols[0]).astype(np.float32), act=np.stack(cols[1]).astype(np.float32),
                       proposed=np.stack(cols[2]).astype(np.float32),
                       violation=np.asarray(cols[3], np.float32), n_steps=np.asarray(cols[4], np.int64),
                       recovered=np.asarray(cols[5], bool), final_feat=np.asarray(final_feat, np.float32),
                       terminated=bool(terminated))


class SafeExploreLearner:
    """Critic + recovery optimisation from a :class:`SafetyReplay` (offline and online).

    Args:
        critic, recovery: the networks (updated in place).
        cfg: the safe-explore options (learning rates, alpha, gamma, batch size, ...).
        seed: seed of the minibatch sampling and of the out-of-distribution actions.
    """

    def __init__(self, critic: SafetyCritic, recovery: RecoveryPolicy, cfg: SafeExploreConfig, seed: int) -> None:
        self.critic, self.recovery, self.cfg = critic, recovery, cfg
        self.replay = SafetyReplay(cfg.replay_capacity, critic.feature_dim, critic.action_dim)
        self.critic_optim = torch.optim.AdamW(critic.online_parameters(), lr=cfg.critic_lr,
                                              weight_decay=cfg.critic_weight_decay)
        self.recovery_optim = torch.optim.Adam(recovery.parameters(), lr=cfg.recovery_lr)
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator().manual_seed(int(seed))

    def update(self, n_updates: int, progress: bool = False, desc: str = "safety critic") -> dict[str, float]:
        """``n_updates`` critic steps, each followed by one recovery step; mean losses."""
        if len(self.replay) == 0 or n_updates == 0:
            return {}
        sums: dict[str, float] = {}
        self.critic.train()
        for _ in tqdm(range(n_updates), desc=desc, disable=not progress, dynamic_ncols=True):
            batch = self.replay.sample(self.cfg.batch_size, self.rng)
            with torch.no_grad():
                rec_act = self.recovery(batch.feat)
            stats = critic_update(self.critic, self.critic_optim, batch, gamma=self.cfg.gamma,
                                  cql_alpha=self.cfg.cql_alpha, n_ood=self.cfg.n_ood, tau=self.cfg.tau,
                                  generator=self.gen, policy_act=rec_act)
            stats.update(recovery_update(self.recovery, self.recovery_optim, self.critic, batch.feat,
                                         self.cfg.recovery_action_reg))
            for key, value in stats.items():
                sums[key] = sums.get(key, 0.0) + value
        self.critic.eval()
        return {f"losses/{k}": v / n_updates for k, v in sums.items()}


@torch.no_grad()
def episode_scores(critic: SafetyCritic, episodes: list[Episode], horizon_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(Q_C of each executed decision, violation-within-H label), concatenated over episodes."""
    if not episodes:
        return np.zeros(0), np.zeros(0, bool)
    feat = torch.as_tensor(np.concatenate([e.feat for e in episodes]))
    act = torch.as_tensor(np.concatenate([e.act for e in episodes]))
    scores = critic(feat, act).numpy().astype(np.float64)
    labels = np.concatenate([e.labels(horizon_steps) for e in episodes])
    return scores, labels
