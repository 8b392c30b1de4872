"""The e-stop supervisor: a latching stop state machine with a logged cause for every stop.

States::

    DISARMED --arm()--> ARMED --any cause--> STOPPING --stages done--> LATCHED --reset()--> DISARMED

* ``may_command()`` (the gate the runner checks before every goal write) is True only in ARMED.
* Any cause latches (scenario E2): releasing the e-stop restarts nothing. ``reset()`` is refused
  while a cause persists (E3: e-stop not permissive, bus lost, servo alarm, heartbeat missing,
  event log broken) and while a stop is running (E5: Stop 1 is not interruptible). ``arm()`` is a
  separate command, accepted only in DISARMED (E2).
* Stop 1 (default): starting from the last commanded goal and velocity, decelerate every joint
  at ``brake_decel_rad_s2`` to zero velocity (one goal per control period), hold for ``hold_s``,
  then torque off. Stop 0 (torque off at once) when the bus is gone (C8) or no pose is known.
  If a stage fails (a hold goal cannot be written), the next stage still runs (E6).
* A cause while DISARMED (torque already off) latches without sending any goal.
* Every transition and fault is written to the hash-chained event log *before* the state
  changes and motion continues. A log write failure is itself a stop cause (D7) and persists.

Units: joint positions rad, velocities rad/s, times s on the monotonic clock.

Imports: safety (the event log) only, as ARCHITECTURE.md allows.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from safetwin.safety.events import EventLog, EventLogError

from .supervisor_config import (
    PERSISTENT,
    Cause,
    StopActuator,
    StopRecord,
    SupervisorConfig,
    SupervisorState,
)

__all__ = ["PERSISTENT", "Cause", "StopActuator", "StopRecord", "Supervisor", "SupervisorConfig",
           "SupervisorState"]

logger = logging.getLogger(__name__)


class _Counter:
    """Consecutive-event counter that trips at ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit, self.n, self.total = limit, 0, 0

    def hit(self) -> bool:
        self.n += 1
        self.total += 1
        return self.n >= self.limit

    def clear(self) -> None:
        self.n = 0


class Supervisor:
    """Latching stop supervisor; drive it with :meth:`tick` once per control period.

    Args:
        cfg: thresholds.
        log: the hash-chained event log (every transition and fault goes there first).
        actuator: what the stop stages drive (see :class:`StopActuator`).
        estop: optional object with ``status()`` returning an ``EStopStatus``-like object
            (``permits``, ``state``, ``reason``); polled every :meth:`tick` and on reset/arm.
        clock: monotonic clock (s).
    """

    def __init__(self, cfg: SupervisorConfig, log: EventLog, actuator: StopActuator, *,
                 estop: Any = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg, self.log, self.actuator, self.estop, self.clock = cfg, log, actuator, estop, clock
        self._lock = threading.RLock()
        self.state = SupervisorState.DISARMED
        self.active: dict[Cause, str] = {}
        self.stops: list[StopRecord] = []
        self.faults: dict[str, int] = {}
        self.last_stop_t: float | None = None
        self.last_reset_t: float | None = None
        self._order = itertools.count()
        self.last_stop_index: int | None = None
        """Position of the last stop in the sequence of stops and resets (E8 invariant iii)."""
        self.last_reset_index: int | None = None
        self._counters = {c: _Counter(getattr(cfg, n)) for c, n in (
            (Cause.NONFINITE_ACTION, "nonfinite_limit"), (Cause.FILTER_INFEASIBLE, "infeasible_limit"),
            (Cause.POLICY_DEADLINE, "deadline_miss_limit"), (Cause.BUS_FAULT, "bus_fault_limit"),
            (Cause.LOOP_OVERRUN, "overrun_limit"), (Cause.EE_OVERSPEED, "overspeed_cycles"),
            (Cause.TRACKING_ERROR, "tracking_cycles"))}
        self._heartbeats: dict[str, float] = {}
        self._goal: np.ndarray | None = None
        self._goal_vel: np.ndarray | None = None
        self._q: np.ndarray | None = None
        self._stop: dict[str, Any] | None = None
        self._beginning = False

    # ------------------------------------------------------------------ logging
    def _log(self, kind: str, cause: str | None = None, **data: Any) -> dict[str, Any] | None:
        """Append to the event log and return the record; on failure latch LOG_FAILURE (D7), None."""
        try:
            return self.log.append(kind, state=self.state.value, cause=cause, data=data)
        except EventLogError as exc:
            logger.error("event log failed: %s", exc)
            if Cause.LOG_FAILURE not in self.active:
                self.active[Cause.LOG_FAILURE] = str(exc)
                self.faults[Cause.LOG_FAILURE.value] = self.faults.get(Cause.LOG_FAILURE.value, 0) + 1
                if not self._beginning and self.state in (SupervisorState.ARMED, SupervisorState.DISARMED):
                    self._begin_stop(Cause.LOG_FAILURE, str(exc), 1)
            return None

    def record(self, kind: str, **data: Any) -> bool:
        """Log an operator or runner event (e.g. an injected fault); False if the log failed (D7)."""
        with self._lock:
            return self._log(kind, None, **data) is not None

    def _set_state(self, new: SupervisorState, cause: str | None, **data: Any) -> dict[str, Any] | None:
        rec = self._log("transition", cause, to=new.value, **data)
        logger.info("supervisor %s -> %s (%s)", self.state.value, new.value, cause)
        self.state = new
        return rec

    # ------------------------------------------------------------------ gate and queries
    def may_command(self) -> bool:
        """True only while ARMED with a healthy log: the runner may write a goal this cycle."""
        with self._lock:
            return self.state is SupervisorState.ARMED and Cause.LOG_FAILURE not in self.active

    @property
    def stopping(self) -> bool:
        return self.state is SupervisorState.STOPPING

    # ------------------------------------------------------------------ inputs
    def trip(self, cause: Cause, detail: str = "", category: int = 1) -> None:
        """Stop now for ``cause`` (category 1 or 0); a no-op apart from logging when already stopped."""
        if category not in (0, 1):
            raise ValueError(f"stop category must be 0 or 1, got {category!r}")
        with self._lock:
            cause = Cause(cause)
            self.faults[cause.value] = self.faults.get(cause.value, 0) + 1
            if cause in PERSISTENT:
                repeat = cause in self.active
                self.active[cause] = detail
                if repeat and self.state in (SupervisorState.STOPPING, SupervisorState.LATCHED):
                    return  # the same persisting condition, already logged for this stop
            if self.state in (SupervisorState.ARMED, SupervisorState.DISARMED):
                self._begin_stop(cause, detail, category)
            else:
                self._log("fault", cause.value, detail=detail, category=category)
                if category == 0 and self.state is SupervisorState.STOPPING:
                    self._torque_off("escalated to stop 0: " + cause.value)

    def _count(self, cause: Cause, bad: bool, detail: str) -> None:
        counter = self._counters[cause]
        if not bad:
            counter.clear()
            return
        if counter.n == 0:  # the first of a run is logged; the trip below logs the rest
            self._log("fault", cause.value, detail=detail, limit=counter.limit)
        if counter.hit():
            n = counter.n
            counter.clear()
            self.trip(cause, f"{detail} ({n} consecutive)")

    def report_action(self, ok: bool, detail: str = "non-finite or malformed action") -> None:
        """A1/A2: one action rejected (``ok`` False) or accepted."""
        with self._lock:
            self._count(Cause.NONFINITE_ACTION, not ok, detail)

    def report_filter(self, feasible: bool, reason: str = "") -> None:
        """B3-B5: the safety filter's verdict for this cycle."""
        with self._lock:
            self._count(Cause.FILTER_INFEASIBLE, not feasible, f"filter infeasible: {reason}")

    def report_policy_deadline(self, missed: bool) -> None:
        """A9: whether the policy missed its deadline in this control period."""
        with self._lock:
            self._count(Cause.POLICY_DEADLINE, missed, "policy deadline missed")

    def report_loop_overrun(self, missed: bool) -> None:
        """D1: whether this control period overran its deadline."""
        with self._lock:
            self._count(Cause.LOOP_OVERRUN, missed, "control loop deadline missed")

    def report_ee_speed(self, speed_m_s: float, limit_m_s: float) -> None:
        """E9: measured TCP speed (m/s, base frame) against the monitored limit; non-finite counts as over."""
        with self._lock:
            self._count(Cause.EE_OVERSPEED, not speed_m_s <= limit_m_s,
                        f"TCP speed {speed_m_s:.3f} m/s > {limit_m_s:.3f} m/s")

    def report_stale_action(self, age_s: float) -> None:
        """A6: the newest action is ``age_s`` old and past the staleness timeout: stop."""
        self.trip(Cause.STALE_ACTION, f"newest action {age_s * 1e3:.0f} ms old")

    def report_bus(self, ok: bool, kind: str = "", lost: bool = False) -> None:
        """C1-C8: one bus cycle's outcome; ``lost`` (port gone) means Stop 0 at once."""
        with self._lock:
            if lost:
                self.trip(Cause.BUS_LOST, kind, category=0)
                return
            if ok:
                self.active.pop(Cause.BUS_LOST, None)
            self._count(Cause.BUS_FAULT, not ok, f"bus fault: {kind}")

    def report_servo_errors(self, hardware_errors: Mapping[int, int]) -> None:
        """C6/C12/C13: Hardware Error Status (register 70) per servo id or joint name; 0 = healthy."""
        with self._lock:
            bad = {sid: err for sid, err in hardware_errors.items() if err}
            if bad:
                self.trip(Cause.SERVO_ALARM, f"servo alarms {bad}")
            else:
                self.active.pop(Cause.SERVO_ALARM, None)

    def report_tracking(self, commanded: np.ndarray, present: np.ndarray) -> None:
        """C15: compare the last commanded goals (rad) with present positions (rad)."""
        err = float(np.max(np.abs(np.asarray(commanded) - np.asarray(present))))
        with self._lock:
            self._count(Cause.TRACKING_ERROR, not err <= self.cfg.tracking_error_rad,
                        f"tracking error {err:.3f} rad > {self.cfg.tracking_error_rad} rad")

    def watch_heartbeat(self, source: str) -> None:
        """Start supervising heartbeats from ``source`` (D3)."""
        with self._lock:
            self._heartbeats[source] = self.clock()

    def heartbeat(self, source: str) -> None:
        with self._lock:
            self._heartbeats[source] = self.clock()

    def note_command(self, q_goal: np.ndarray) -> None:
        """Record the goal (rad) the runner just wrote; the Stop-1 ramp starts from it."""
        q_goal = np.asarray(q_goal, dtype=float).copy()
        with self._lock:
            if self._goal is not None and self._goal.shape == q_goal.shape:
                self._goal_vel = (q_goal - self._goal) / self.cfg.dt
            self._goal = q_goal

    # ------------------------------------------------------------------ per-cycle
    def tick(self, q: np.ndarray | None = None) -> None:
        """Once per control period: poll the e-stop and heartbeats, advance a running stop.

        Args:
            q: measured joint positions (n,) rad, or None when this cycle's read failed.
        """
        with self._lock:
            if q is not None and np.all(np.isfinite(q)):
                self._q = np.asarray(q, dtype=float).copy()
            self._poll_estop()
            self._poll_heartbeats()
            if self.state is SupervisorState.STOPPING:
                self._advance_stop()

    def _poll_estop(self) -> None:
        if self.estop is None:
            return
        st = self.estop.status()
        if st.permits:
            self.active.pop(Cause.ESTOP, None)
            self.active.pop(Cause.ESTOP_PERMISSIVE, None)
            return
        cause = Cause.ESTOP if str(getattr(st.state, "value", st.state)) == "engaged" else Cause.ESTOP_PERMISSIVE
        if cause not in self.active:
            self.trip(cause, st.reason)

    def _poll_heartbeats(self) -> None:
        now = self.clock()
        stale = {s: now - t for s, t in self._heartbeats.items() if now - t > self.cfg.heartbeat_timeout_s}
        if not stale:
            self.active.pop(Cause.HEARTBEAT_LOSS, None)
        elif Cause.HEARTBEAT_LOSS not in self.active:
            self.trip(Cause.HEARTBEAT_LOSS, ", ".join(f"{s} silent {a * 1e3:.0f} ms" for s, a in stale.items()))

    # ------------------------------------------------------------------ stop sequence
    def _begin_stop(self, cause: Cause, detail: str, category: int) -> None:
        before = self.state
        rec = StopRecord(cause.value, detail, category, self.clock(), before.value,
                         q_trip=None if self._q is None else self._q.tolist())
        self.stops.append(rec)
        self.last_stop_t, self.last_stop_index = rec.t_trip, next(self._order)
        self._beginning = True
        try:  # a failing log write here must not start a second, nested stop
            logged = self._set_state(SupervisorState.STOPPING, cause.value, detail=detail, category=category,
                                     q=rec.q_trip)
            if logged is not None:
                rec.t_trip = logged["t_mono"]  # the stop's time is its logged transition's time
        finally:
            self._beginning = False
        start = self._goal if self._goal is not None else self._q
        if before is SupervisorState.DISARMED or category == 0 or start is None:
            self._stop = {"rec": rec, "stage": "torque_off"}
            self._torque_off("stop 0" if category == 0 else "no goal to hold")
            return
        vel = self._goal_vel if (self._goal_vel is not None and self._goal is not None) else np.zeros_like(start)
        self._stop = {"rec": rec, "stage": "decel", "q": start.copy(), "v": vel.copy(), "t_hold": None}
        # the first braking goal goes out in this cycle's tick() (the runner ticks every period)

    def _advance_stop(self) -> None:
        stop = self._stop
        if stop is None or stop["stage"] == "torque_off":
            return
        rec: StopRecord = stop["rec"]
        if stop["stage"] == "decel":
            dv = self.cfg.brake_decel_rad_s2 * self.cfg.dt
            v = stop["v"]
            stop["v"] = np.sign(v) * np.maximum(np.abs(v) - dv, 0.0)
            stop["q"] = stop["q"] + stop["v"] * self.cfg.dt
            if not np.any(stop["v"]):
                stop["stage"], stop["t_hold"] = "hold", self.clock()
                rec.t_zero_velocity = stop["t_hold"]
        if not self._write_stop_goal(stop["q"]):
            self._torque_off(f"stage {stop['stage']} failed")
            return
        if stop["stage"] == "hold" and self.clock() - stop["t_hold"] >= self.cfg.hold_s:
            self._torque_off("hold complete")

    def _write_stop_goal(self, q: np.ndarray) -> bool:
        try:
            self.actuator.write_goal(q)
            return True
        except Exception as exc:  # noqa: BLE001 - any failure moves on to the next stage (E6)
            rec: StopRecord = self._stop["rec"]
            rec.stage_failures.append(f"{self._stop['stage']}: {exc!r}")
            self._log("stop_stage", rec.cause, stage=self._stop["stage"], ok=False, error=repr(exc))
            return False

    def _torque_off(self, why: str) -> None:
        rec: StopRecord = self._stop["rec"]
        self._stop["stage"] = "torque_off"
        ok, err = True, ""
        try:
            self.actuator.torque_off()
        except Exception as exc:  # noqa: BLE001 - logged; the state still latches (E6, C14)
            ok, err = False, repr(exc)
            rec.stage_failures.append(f"torque_off: {exc!r}")
        rec.t_torque_off = self.clock()
        rec.q_end = None if self._q is None else self._q.tolist()
        self._log("stop_stage", rec.cause, stage="torque_off", ok=ok, error=err, why=why,
                  category=rec.category, t_stop_s=rec.t_torque_off - rec.t_trip)
        self._goal = self._goal_vel = None
        self._set_state(SupervisorState.LATCHED, rec.cause, stop=rec.as_dict())

    # ------------------------------------------------------------------ operator commands
    def _persisting(self) -> dict[str, str]:
        self._poll_estop()
        self._poll_heartbeats()
        return {c.value: d for c, d in self.active.items()}

    def reset(self, operator: str = "operator") -> bool:
        """Leave LATCHED for DISARMED; refused (False, logged) during a stop or while a cause persists (E3, E5)."""
        with self._lock:
            persisting = self._persisting() if self.state is SupervisorState.LATCHED else {}
            if self.state is not SupervisorState.LATCHED or persisting:
                why = f"state {self.state.value}" if self.state is not SupervisorState.LATCHED else "causes persist"
                self._log("reset_refused", None, operator=operator, why=why, persisting=persisting)
                return False
            for counter in self._counters.values():
                counter.clear()
            self._set_state(SupervisorState.DISARMED, None, operator=operator, command="reset")
            self.last_reset_t, self.last_reset_index = self.clock(), next(self._order)
            return True

    def arm(self, operator: str = "operator") -> bool:
        """DISARMED -> ARMED (E2: a separate command after reset); refused while any cause persists."""
        with self._lock:
            persisting = self._persisting() if self.state is SupervisorState.DISARMED else {}
            if self.state is not SupervisorState.DISARMED or persisting:
                self._log("arm_refused", None, operator=operator, state=self.state.value, persisting=persisting)
                return False
            if self._log("transition", None, to=SupervisorState.ARMED.value, operator=operator,
                         command="arm") is None:
                return False
            self.state = SupervisorState.ARMED
            self._goal = self._goal_vel = None
            return True

    def summary(self) -> dict[str, Any]:
        """Stops, fault counts and intervention totals for summary.json."""
        with self._lock:
            return {"state": self.state.value, "stops": [s.as_dict() for s in self.stops],
                    "faults": dict(self.faults),
                    "counters": {c.value: k.total for c, k in self._counters.items()},
                    "persisting": {c.value: d for c, d in self.active.items()},
                    "event_log_head_sha256": self.log.head_sha256}
