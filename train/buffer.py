"""Rollout buffer for action-chunk transitions (time-major, ``T`` decisions x ``N`` envs).

One transition = one decision: the observation it was taken on, the chunk (k, 7), its
log-probability, the discounted reward and cost summed over the executed steps, the discount
of the next value (``gamma ** n_executed``), terminated/truncated flags, and the critic's
values of this and of the next observation (for truncation bootstrapping).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from .gae import compute_gae


class RolloutBuffer:
    """Fixed-size storage for one PPO iteration.

    Args:
        n_steps: T, decisions per env per iteration.
        n_envs: N.
        obs_space: shapes/dtypes of the array observations, e.g. ``{"image": ((64, 64, 3), uint8)}``;
            ``instruction`` (strings) is stored separately.
        chunk_shape: (k, A).
    """

    def __init__(self, n_steps: int, n_envs: int, obs_space: Mapping[str, tuple[tuple[int, ...], Any]],
                 chunk_shape: tuple[int, int]) -> None:
        if n_steps < 1 or n_envs < 1:
            raise ValueError(f"RolloutBuffer: need n_steps, n_envs >= 1, got {n_steps}, {n_envs}")
        self.T, self.N = n_steps, n_envs
        self.obs = {k: np.zeros((n_steps, n_envs, *shape), dtype=dt) for k, (shape, dt) in obs_space.items()}
        self.instruction = np.empty((n_steps, n_envs), dtype=object)
        self.chunks = np.zeros((n_steps, n_envs, *chunk_shape), dtype=np.float32)
        fields = ("logp", "rewards", "costs", "discount", "v_r", "v_c", "next_v_r", "next_v_c")
        for name in fields:
            setattr(self, name, np.zeros((n_steps, n_envs), dtype=np.float32))
        self.terminated = np.zeros((n_steps, n_envs), dtype=bool)
        self.truncated = np.zeros((n_steps, n_envs), dtype=bool)
        self.pos = 0

    @property
    def full(self) -> bool:
        return self.pos == self.T

    def reset(self) -> None:
        self.pos = 0

    def add(self, obs: Mapping[str, Any], chunk: np.ndarray, logp: np.ndarray, reward: np.ndarray,
            cost: np.ndarray, discount: np.ndarray, terminated: np.ndarray, truncated: np.ndarray,
            v_r: np.ndarray, v_c: np.ndarray) -> None:
        """Store one vector step (arrays with leading dim N)."""
        if self.full:
            raise IndexError("RolloutBuffer is full; call reset() after the update")
        t = self.pos
        for key, store in self.obs.items():
            store[t] = obs[key]
        self.instruction[t] = list(obs["instruction"])
        self.chunks[t], self.logp[t] = chunk, logp
        self.rewards[t], self.costs[t], self.discount[t] = reward, cost, discount
        self.terminated[t], self.truncated[t] = terminated, truncated
        self.v_r[t], self.v_c[t] = v_r, v_c
        self.pos += 1

    def set_next_values(self, t: int, next_v_r: np.ndarray, next_v_c: np.ndarray) -> None:
        self.next_v_r[t], self.next_v_c[t] = next_v_r, next_v_c

    def compute_advantages(self, gae_lambda: float) -> dict[str, np.ndarray]:
        """GAE for reward and cost: ``adv_r, ret_r, adv_c, ret_c`` each (T, N)."""
        if not self.full:
            raise RuntimeError(f"RolloutBuffer: only {self.pos}/{self.T} steps collected")
        adv_r, ret_r = compute_gae(self.rewards, self.v_r, self.next_v_r, self.terminated,
                                   self.truncated, self.discount, gae_lambda)
        adv_c, ret_c = compute_gae(self.costs, self.v_c, self.next_v_c, self.terminated,
                                   self.truncated, self.discount, gae_lambda)
        return {"adv_r": adv_r, "ret_r": ret_r, "adv_c": adv_c, "ret_c": ret_c}

    def flat(self, extra: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
        """All transitions flattened to (T*N, ...), plus ``extra`` (T, N) arrays."""
        n = self.T * self.N
        out: dict[str, Any] = {f"obs/{k}": v.reshape(n, *v.shape[2:]) for k, v in self.obs.items()}
        out["obs/instruction"] = self.instruction.reshape(n)
        out["chunks"] = self.chunks.reshape(n, *self.chunks.shape[2:])
        for name in ("logp", "v_r", "v_c"):
            out[name] = getattr(self, name).reshape(n)
        for name, value in (extra or {}).items():
            out[name] = value.reshape(n, *value.shape[2:])
        return out

    @staticmethod
    def minibatches(batch: Mapping[str, Any], n_minibatches: int,
                    rng: np.random.Generator) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """Shuffled minibatches ``(obs_dict, fields)`` of a :meth:`flat` batch."""
        n = len(batch["logp"])
        perm = rng.permutation(n)
        for idx in np.array_split(perm, n_minibatches):
            obs = {k[4:]: v[idx] for k, v in batch.items() if k.startswith("obs/")}
            obs["instruction"] = [str(s) for s in obs["instruction"]]
            fields = {k: v[idx] for k, v in batch.items() if not k.startswith("obs/")}
            yield obs, fields
