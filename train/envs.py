"""Environment plumbing for training: action-chunk execution and vector envs.

:class:`ChunkedEnv` turns one decision (a chunk (k, 7) of twin actions) into up to k env steps,
executed one after another until the chunk ends or the episode does. The transition's reward and
cost are the discounted sums ``sum_j gamma^j r_j`` over the executed steps, and
``info["discount"] = gamma ** n_executed`` is the discount of the next state's value (see
:mod:`safetwin.train.gae`). It also adds the twin's privileged state (``info["privileged"]``)
to the observation under ``"privileged"`` so the asymmetric critic can value final observations,
and reports whole-episode statistics in ``info["episode"]`` when an episode ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

logger = logging.getLogger(__name__)

COST_CATEGORIES = ("collision", "keepout", "ee_speed", "joint_limit", "force")


def _privileged(info: dict[str, Any], dim: int, where: str) -> np.ndarray:
    if "privileged" not in info:
        raise KeyError(f"{where}: env info has no 'privileged' state (needed by the asymmetric critic)")
    priv = np.asarray(info["privileged"], dtype=np.float32).reshape(-1)
    if dim >= 0 and priv.shape != (dim,):
        raise ValueError(f"{where}: info['privileged'] has shape {priv.shape}, expected ({dim},)")
    return priv


class ChunkedEnv(gym.Wrapper):
    """Executes action chunks (k, A) step by step; see the module docstring.

    Args:
        env: the twin env (observation Dict image/proprio/instruction, action Box(-1, 1, (A,))).
        chunk_len: k.
        gamma: discount used to sum rewards/costs within a chunk.
    """

    def __init__(self, env: gym.Env, chunk_len: int, gamma: float) -> None:
        super().__init__(env)
        self.chunk_len, self.gamma = int(chunk_len), float(gamma)
        act_dim = int(np.prod(env.action_space.shape))
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self.chunk_len, act_dim), np.float32)
        self._stats: dict[str, Any] = {}
        _, info = env.reset()  # probe once: the privileged state's size fixes the obs space
        self._priv_dim = _privileged(info, -1, "reset").shape[0]
        spaces = dict(env.observation_space.spaces)
        spaces["privileged"] = gym.spaces.Box(-np.inf, np.inf, (self._priv_dim,), np.float32)
        self.observation_space = gym.spaces.Dict(spaces)

    def reset(self, *, seed: int | None = None, options: dict | None = None):  # noqa: ANN201
        obs, info = self.env.reset(seed=seed, options=options)
        priv = _privileged(info, self._priv_dim, "reset")
        self._stats = {"return": 0.0, "cost": 0.0, "length": 0, "success": False,
                       "min_fragile_distance": float("inf"),
                       "costs": dict.fromkeys(COST_CATEGORIES, 0.0)}
        return {**obs, "privileged": priv}, info

    def step(self, chunk: np.ndarray):  # noqa: ANN201
        chunk = np.asarray(chunk, dtype=np.float32).reshape(self.chunk_len, -1)
        if not np.isfinite(chunk).all():
            raise FloatingPointError("ChunkedEnv: non-finite action chunk")
        reward = cost = 0.0
        discount = 1.0
        terminated = truncated = False
        obs, info, n = None, {}, 0
        for action in chunk:
            obs, r, terminated, truncated, info = self.env.step(action)
            reward += discount * float(r)
            cost += discount * float(info["cost"])
            discount *= self.gamma
            n += 1
            self._record(float(r), info)
            if terminated or truncated:
                break
        info = dict(info)
        info["discount"] = discount
        info["cost_sum"] = cost
        info["n_steps"] = n
        if terminated or truncated:
            info["episode"] = self._episode_summary()
        return {**obs, "privileged": _privileged(info, self._priv_dim, "step")}, reward, terminated, truncated, info

    def _record(self, reward: float, info: dict[str, Any]) -> None:
        s = self._stats
        s["return"] += reward
        s["cost"] += float(info["cost"])
        s["length"] += 1
        s["success"] = bool(info.get("is_success", False))
        for cat, value in info.get("costs", {}).items():
            s["costs"][cat] = s["costs"].get(cat, 0.0) + float(value)
        if "min_fragile_distance" in info:
            s["min_fragile_distance"] = min(s["min_fragile_distance"], float(info["min_fragile_distance"]))

    def _episode_summary(self) -> dict[str, Any]:
        s = self._stats
        out = {"return": s["return"], "cost": s["cost"], "length": float(s["length"]),
               "success": float(s["success"]), "min_fragile_distance": s["min_fragile_distance"]}
        out.update({f"cost_{cat}": float(v) for cat, v in s["costs"].items()})
        return out


def import_env_package(env_id: str) -> None:
    """Import the package that registers ``env_id`` (the twin registers ``safetwin/Twin-v0``)."""
    if env_id.startswith("safetwin/"):
        import safetwin.twin.registration  # noqa: F401


def make_env_fn(env_id: str, chunk_len: int, gamma: float, env_kwargs: dict[str, Any]) -> Callable[[], gym.Env]:
    def thunk() -> gym.Env:
        import_env_package(env_id)
        return ChunkedEnv(gym.make(env_id, **env_kwargs), chunk_len, gamma)

    return thunk


def make_vector_env(env_id: str, num_envs: int, chunk_len: int, gamma: float,
                    env_kwargs: dict[str, Any], asynchronous: bool = False) -> gym.vector.VectorEnv:
    """``num_envs`` chunked envs, autoreset in the same step (final obs in ``info["final_obs"]``)."""
    fns = [make_env_fn(env_id, chunk_len, gamma, env_kwargs) for _ in range(num_envs)]
    if asynchronous:
        return gym.vector.AsyncVectorEnv(fns, shared_memory=False, autoreset_mode=AutoresetMode.SAME_STEP)
    return gym.vector.SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)


def _final_episodes(infos: dict[str, Any]) -> tuple[dict[str, Any], np.ndarray] | None:
    """(the ``episode`` summaries, the (n,) bool mask of envs whose episode ended) of a vector
    step's ``final_info``; None when no episode ended."""
    final = infos.get("final_info")
    if not final or "episode" not in final:
        return None
    return final["episode"], np.asarray(final["_episode"], dtype=bool)


def done_episode_stats(infos: dict[str, Any]) -> list[dict[str, float]]:
    """Per-episode summaries of the envs whose episode ended in this vector step."""
    found = _final_episodes(infos)
    if found is None:
        return []
    ep, mask = found
    return [{key: float(ep[key][i]) for key in ep if not key.startswith("_")}
            for i in np.flatnonzero(mask)]


def done_episode_outcomes(infos: dict[str, Any], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per env of a vector step: (episode ended (n,) bool, its success (n,) bool, its cost (n,)
    float64); success and cost are False and 0 where no episode ended."""
    done, success, cost = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool), np.zeros(n, dtype=np.float64)
    found = _final_episodes(infos)
    if found is not None:
        ep, mask = found
        done[:] = mask
        success[done] = np.asarray(ep["success"], dtype=np.float64)[done] > 0.5
        cost[done] = np.asarray(ep["cost"], dtype=np.float64)[done]
    return done, success, cost


def info_field(infos: dict[str, Any], key: str, n: int) -> np.ndarray:
    """``infos[key]`` of a SAME_STEP vector step as (n,) float64; for envs that were reset in
    this step the value comes from ``final_info`` (the top level then holds the reset info)."""
    out = np.zeros(n, dtype=np.float64)
    if key in infos:
        mask = infos[f"_{key}"]
        out[mask] = np.asarray(infos[key], dtype=np.float64)[mask]
    final = infos.get("final_info")
    if final and key in final:
        mask = final[f"_{key}"]
        out[mask] = np.asarray(final[key], dtype=np.float64)[mask]
    return out
