"""Wrappers around :class:`safetwin.twin.env.TwinEnv`.

:class:`SafetyGymWrapper` exposes the constrained-MDP interface of Safety-Gymnasium /
OmniSafe: ``step`` returns the 6-tuple ``(obs, reward, cost, terminated, truncated, info)``
where ``cost`` (float) is ``info["cost"]``, the sum of the step's binary cost indicators.
"""

from __future__ import annotations

import math
from typing import Any, SupportsFloat

import gymnasium as gym


class SafetyGymWrapper(gym.Wrapper):
    """Return the cost as its own element of ``step``'s result (Safety-Gymnasium convention).

    Works on any env whose ``info`` carries a finite ``"cost"``; a missing or non-finite cost
    is an error (a cost signal must never be silently read as zero).
    """

    def step(self, action: Any) -> tuple[Any, SupportsFloat, float, bool, bool, dict[str, Any]]:  # type: ignore[override]
        obs, reward, terminated, truncated, info = self.env.step(action)
        if "cost" not in info:
            raise KeyError(f"{self.env.spec.id if self.env.spec else type(self.env).__name__}: "
                           "info has no 'cost' key; SafetyGymWrapper needs a cost signal")
        cost = float(info["cost"])
        if not math.isfinite(cost):
            raise ValueError(f"info['cost'] is not finite: {cost}")
        return obs, reward, cost, terminated, truncated, info
