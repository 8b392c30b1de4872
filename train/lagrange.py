"""Lagrange-multiplier rules for the constrained MDP (CMDP) objective.

The trainer maximises ``J_R - lambda * (J_C - cost_limit)`` over the policy and minimises it
over ``lambda >= 0``. ``J_C`` is the mean episode cost (sum of per-step cost indicators) of the
last rollout and ``cost_limit`` the scene's ``safety.cost_limit``. The multiplier is updated once
per iteration from that mean episode cost, *before* the policy update.

Two rules, selectable by name with :func:`make_lagrange`:

* ``"adam"`` (:class:`LagrangeAdam`): gradient ascent on lambda with Adam, as in OmniSafe's
  PPOLag (init 0.001, lr 0.035), projected onto ``lambda >= 0`` after each step.
* ``"pid"`` (:class:`PIDLagrange`): the PID controller of Stooke et al. 2020 (OmniSafe's
  CPPOPID; Kp 0.1, Ki 0.01, Kd 0.01) on the constraint violation.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import torch


def _check_cost(mean_episode_cost: float) -> float:
    value = float(mean_episode_cost)
    if not math.isfinite(value):
        raise ValueError(f"lagrange: mean episode cost must be finite, got {mean_episode_cost!r}")
    return value


class LagrangeAdam:
    """lambda <- max(0, lambda + Adam step on (J_C - cost_limit)).

    Args:
        cost_limit: CMDP budget (expected episode cost, sum of step costs).
        init: initial multiplier (>= 0).
        lr: Adam learning rate.
        lambda_max: optional upper clamp.
    """

    name = "adam"

    def __init__(self, cost_limit: float, init: float = 0.001, lr: float = 0.035,
                 lambda_max: float | None = None) -> None:
        if init < 0 or lr <= 0 or cost_limit < 0:
            raise ValueError(f"LagrangeAdam: need init >= 0, lr > 0, cost_limit >= 0; got "
                             f"init={init}, lr={lr}, cost_limit={cost_limit}")
        self.cost_limit = float(cost_limit)
        self.lambda_max = lambda_max
        self._param = torch.nn.Parameter(torch.tensor(float(init), dtype=torch.float64))
        self._optim = torch.optim.Adam([self._param], lr=lr)

    @property
    def value(self) -> float:
        return float(self._param.detach())

    def update(self, mean_episode_cost: float) -> float:
        """One ascent step from the mean episode cost; returns the new lambda (>= 0)."""
        violation = _check_cost(mean_episode_cost) - self.cost_limit
        self._optim.zero_grad()
        loss = -self._param * violation  # minimising this ascends lambda when violated
        loss.backward()
        self._optim.step()
        with torch.no_grad():
            self._param.clamp_(min=0.0, max=self.lambda_max)
        return self.value

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state (floats and ints); Adam moments are scalars here."""
        st = self._optim.state.get(self._param, {})
        return {"rule": self.name, "lambda": self.value, "cost_limit": self.cost_limit,
                "adam_step": float(st["step"]) if "step" in st else 0.0,
                "adam_exp_avg": float(st["exp_avg"]) if "exp_avg" in st else 0.0,
                "adam_exp_avg_sq": float(st["exp_avg_sq"]) if "exp_avg_sq" in st else 0.0}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self._param.fill_(float(state["lambda"]))
        if state.get("adam_step", 0.0) > 0:
            self._optim.state[self._param] = {
                "step": torch.tensor(float(state["adam_step"])),
                "exp_avg": torch.tensor(float(state["adam_exp_avg"]), dtype=torch.float64),
                "exp_avg_sq": torch.tensor(float(state["adam_exp_avg_sq"]), dtype=torch.float64)}


class PIDLagrange:
    """PID-controlled multiplier on the violation ``e = J_C - cost_limit``.

    ``lambda = max(0, Kp * EMA(e) + I + Kd * max(0, EMA(J_C) - EMA(J_C) d_delay updates ago))``
    with the integral ``I = max(0, I + Ki * e)`` (anti-windup at 0), clamped to ``lambda_max``.

    Args:
        cost_limit: CMDP budget (expected episode cost).
        kp, ki, kd: PID gains.
        d_delay: updates between the two cost EMAs compared by the derivative term.
        ema_alpha_p, ema_alpha_d: smoothing of the proportional error and of the cost.
        init: initial multiplier (also the initial integral).
        lambda_max: upper clamp of the multiplier.
    """

    name = "pid"

    def __init__(self, cost_limit: float, kp: float = 0.1, ki: float = 0.01, kd: float = 0.01,
                 d_delay: int = 10, ema_alpha_p: float = 0.95, ema_alpha_d: float = 0.95,
                 init: float = 0.001, lambda_max: float = 100.0) -> None:
        if min(kp, ki, kd, init, cost_limit) < 0 or d_delay < 1:
            raise ValueError("PIDLagrange: gains, init and cost_limit must be >= 0, d_delay >= 1")
        self.cost_limit = float(cost_limit)
        self.kp, self.ki, self.kd = kp, ki, kd
        self.alpha_p, self.alpha_d, self.lambda_max = ema_alpha_p, ema_alpha_d, lambda_max
        self.d_delay = d_delay
        self._integral = float(init)
        self._ema_error = 0.0
        self._ema_cost = 0.0
        self._history: deque[float] = deque([0.0], maxlen=d_delay)
        self._lambda = float(init)

    @property
    def value(self) -> float:
        return self._lambda

    def update(self, mean_episode_cost: float) -> float:
        """One PID step from the mean episode cost; returns the new lambda (>= 0)."""
        cost = _check_cost(mean_episode_cost)
        error = cost - self.cost_limit
        self._integral = max(0.0, self._integral + self.ki * error)
        self._ema_error = self.alpha_p * self._ema_error + (1 - self.alpha_p) * error
        self._ema_cost = self.alpha_d * self._ema_cost + (1 - self.alpha_d) * cost
        derivative = max(0.0, self._ema_cost - self._history[0])
        out = self.kp * self._ema_error + self._integral + self.kd * derivative
        self._lambda = min(max(0.0, out), self.lambda_max)
        self._history.append(self._ema_cost)
        return self._lambda

    def state_dict(self) -> dict[str, Any]:
        return {"rule": self.name, "lambda": self._lambda, "cost_limit": self.cost_limit,
                "integral": self._integral, "ema_error": self._ema_error,
                "ema_cost": self._ema_cost, "history": list(self._history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._lambda = float(state["lambda"])
        self._integral = float(state["integral"])
        self._ema_error = float(state["ema_error"])
        self._ema_cost = float(state["ema_cost"])
        self._history = deque((float(x) for x in state["history"]), maxlen=self.d_delay)


LAGRANGE_RULES = {"adam": LagrangeAdam, "pid": PIDLagrange}


def make_lagrange(rule: str, cost_limit: float, **kwargs: Any) -> LagrangeAdam | PIDLagrange:
    """Build the multiplier rule ``"adam"`` or ``"pid"`` for ``cost_limit``."""
    if rule not in LAGRANGE_RULES:
        raise ValueError(f"unknown lagrange rule {rule!r}; choose from {sorted(LAGRANGE_RULES)}")
    return LAGRANGE_RULES[rule](cost_limit, **kwargs)
