"""Generalised advantage estimation (GAE), run once for the reward and once for the cost.

Arrays are time-major, shape ``(T, N)`` for ``T`` decisions of ``N`` parallel envs. One
decision may execute an action chunk of several env steps, so each transition carries its own
discount ``discount[t, i] = gamma ** n_executed`` (``gamma`` for single-step transitions).

End of an episode:

* ``terminated``: the MDP ended (goal, failure); the value after it is 0, no bootstrap.
* ``truncated``: the episode was cut (time limit, end of a rollout); the return is
  bootstrapped from ``next_values`` (the critic's value of the final observation).

In both cases the recursion does not run across the episode boundary.
"""

from __future__ import annotations

import numpy as np


def compute_gae(rewards: np.ndarray, values: np.ndarray, next_values: np.ndarray,
                terminated: np.ndarray, truncated: np.ndarray, discount: np.ndarray | float,
                gae_lambda: float) -> tuple[np.ndarray, np.ndarray]:
    """Advantages and lambda-returns for one signal (reward or cost).

    Args:
        rewards: (T, N) discounted sum of the signal over the executed steps of each transition.
        values: (T, N) V(s_t).
        next_values: (T, N) V(s_{t+1}) of the observation reached by the transition (for a
            truncated transition: the final observation before any reset).
        terminated: (T, N) bool, the transition ended the MDP.
        truncated: (T, N) bool, the transition ended the episode without ending the MDP.
        discount: (T, N) per-transition discount (gamma ** steps) or a scalar gamma.
        gae_lambda: GAE lambda in [0, 1].

    Returns:
        ``(advantages, returns)``, each (T, N) float32; ``returns = advantages + values``.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    next_values = np.asarray(next_values, dtype=np.float64)
    term = np.asarray(terminated, dtype=bool)
    end = term | np.asarray(truncated, dtype=bool)
    disc = np.broadcast_to(np.asarray(discount, dtype=np.float64), rewards.shape)
    shapes = {a.shape for a in (values, next_values, term, end)}
    if shapes != {rewards.shape}:
        raise ValueError(f"compute_gae: all arrays must have shape {rewards.shape}, got {shapes}")
    if not 0.0 <= gae_lambda <= 1.0:
        raise ValueError(f"compute_gae: gae_lambda must be in [0, 1], got {gae_lambda}")
    advantages = np.zeros_like(rewards)
    running = np.zeros(rewards.shape[1:], dtype=np.float64)
    for t in reversed(range(rewards.shape[0])):
        delta = rewards[t] + disc[t] * (~term[t]) * next_values[t] - values[t]
        running = delta + disc[t] * gae_lambda * (~end[t]) * running
        advantages[t] = running
    return advantages.astype(np.float32), (advantages + values).astype(np.float32)
