"""Supervisor vocabulary: states, stop causes, thresholds and stop records.

Split from :mod:`safetwin.robot_io.supervisor` to keep files small; import from either.
Units: rad, rad/s, rad/s^2, s (monotonic clock).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from safetwin.safety.runio import ConfigError


class SupervisorState(str, enum.Enum):
    DISARMED = "DISARMED"
    ARMED = "ARMED"
    STOPPING = "STOPPING"
    LATCHED = "LATCHED"


class Cause(str, enum.Enum):
    """Stop causes (scenario IDs in brackets)."""

    ESTOP = "estop"                          # E1: button engaged
    ESTOP_PERMISSIVE = "estop_permissive"    # E4: stale, malformed, wrong version, unplugged
    BUS_LOST = "bus_lost"                    # C8: port gone -> Stop 0
    BUS_FAULT = "bus_fault"                  # C1-C5: K consecutive failed bus cycles
    SERVO_ALARM = "servo_alarm"              # C6, C12, C13: hardware error / watchdog / reboot
    FILTER_INFEASIBLE = "filter_infeasible"  # B3-B5: K consecutive infeasible solves
    POLICY_DEADLINE = "policy_deadline"      # A9: sustained policy overrun
    NONFINITE_ACTION = "nonfinite_action"    # A1: K consecutive rejected actions
    STALE_ACTION = "stale_action"            # A6: no fresh action within the staleness timeout
    TRACKING_ERROR = "tracking_error"        # C15: commanded vs present beyond bound, N cycles
    LOOP_OVERRUN = "loop_overrun"            # D1: sustained control-loop deadline misses
    EE_OVERSPEED = "ee_overspeed"            # E9: measured TCP speed above the monitored limit
    HEARTBEAT_LOSS = "heartbeat_loss"        # D3: a watched thread stopped beating
    SELF_CHECK = "self_check"                # A7: the startup probe failed or could not run
    LOG_FAILURE = "log_failure"              # D7: the event log cannot be written
    OPERATOR = "operator"                    # D4: Ctrl-C, SIGTERM, end of run
    EXCEPTION = "exception"                  # D4: unhandled exception in the runner


PERSISTENT = {Cause.ESTOP, Cause.ESTOP_PERMISSIVE, Cause.BUS_LOST, Cause.SERVO_ALARM,
              Cause.HEARTBEAT_LOSS, Cause.LOG_FAILURE, Cause.SELF_CHECK}
"""Causes that block :meth:`Supervisor.reset` until their condition has cleared."""


class StopActuator(Protocol):
    """What the supervisor drives during a stop (the driver, through the runner)."""

    def write_goal(self, q_goal: np.ndarray) -> None:
        """Write joint goal positions (n,) rad; raises on any bus failure."""
        ...

    def torque_off(self) -> None:
        """Disable torque on every joint (attempting all even if one fails); raises on failure."""
        ...


@dataclass
class SupervisorConfig:
    """Supervisor thresholds.

    Attributes:
        dt: control period (s).
        nonfinite_limit: consecutive rejected (non-finite/malformed) actions before a stop (A1).
        infeasible_limit: consecutive infeasible filter solves before a stop (B3).
        deadline_miss_limit: consecutive control periods without a fresh chunk inside the policy
            deadline before a stop (A9).
        bus_fault_limit: consecutive failed bus cycles before a stop (C1).
        overrun_limit: consecutive control-loop deadline misses before a stop (D1).
        tracking_error_rad: bound on |commanded - present| per joint (rad) (C15).
        tracking_cycles: consecutive cycles beyond the bound before a stop (C15).
        overspeed_cycles: consecutive cycles of measured TCP speed above the limit before a stop (E9).
        heartbeat_timeout_s: a watched heartbeat older than this is lost (D3).
        brake_decel_rad_s2: Stop 1 deceleration per joint (rad/s^2), within the accel limits.
        hold_s: hold time at zero velocity before torque off (s).
    """

    dt: float = 0.01
    nonfinite_limit: int = 3
    infeasible_limit: int = 3
    deadline_miss_limit: int = 10
    bus_fault_limit: int = 3
    overrun_limit: int = 10
    tracking_error_rad: float = 0.3
    tracking_cycles: int = 10
    overspeed_cycles: int = 3
    heartbeat_timeout_s: float = 1.0
    brake_decel_rad_s2: float = 8.0
    hold_s: float = 0.2

    def __post_init__(self) -> None:
        for name in ("dt", "tracking_error_rad", "heartbeat_timeout_s", "brake_decel_rad_s2"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"supervisor.{name}: must be a finite number > 0, got {value!r}")
        if not isinstance(self.hold_s, (int, float)) or not 0 <= self.hold_s < 10:
            raise ConfigError(f"supervisor.hold_s: must be in [0, 10) s, got {self.hold_s!r}")
        for name in ("nonfinite_limit", "infeasible_limit", "deadline_miss_limit", "bus_fault_limit",
                     "overrun_limit", "tracking_cycles", "overspeed_cycles"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"supervisor.{name}: must be an integer >= 1, got {value!r}")


@dataclass
class StopRecord:
    """One stop, for summary.json (E1): cause, category, T_stop (s) and per-joint distance (rad)."""

    cause: str
    detail: str
    category: int
    t_trip: float
    state_before: str
    t_zero_velocity: float | None = None
    t_torque_off: float | None = None
    stage_failures: list[str] = field(default_factory=list)
    q_trip: list[float] | None = None
    q_end: list[float] | None = None

    def as_dict(self) -> dict[str, Any]:
        end = self.t_torque_off if self.t_torque_off is not None else self.t_zero_velocity
        dist = None
        if self.q_trip is not None and self.q_end is not None:
            dist = [abs(a - b) for a, b in zip(self.q_end, self.q_trip, strict=True)]
        t_stop = None if end is None else end - self.t_trip
        return {"cause": self.cause, "detail": self.detail, "category": self.category,
                "state_before": self.state_before, "t_trip": self.t_trip, "t_mono": self.t_trip,
                "T_stop_s": t_stop, "t_stop_s": t_stop,
                "T_zero_velocity_s": None if self.t_zero_velocity is None else self.t_zero_velocity - self.t_trip,
                "stop_distance_rad": dist, "stage_failures": list(self.stage_failures)}
