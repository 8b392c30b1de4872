"""One control period of the deploy runner, in order:

read state (Sync Read) -> supervisor tick -> pick the row of the newest fresh chunk for *now*
(never replayed, A6) -> reject non-finite / wrong-shape rows before the filter (A1, A2) ->
nominal joint velocity (joint targets, interpolated) or EE twist (EE deltas) -> safety filter
``certify`` -> per-cycle step clamp and joint-limit clamp (A3, A4) -> Sync Write, only when the
supervisor's gate allows, starting from the measured pose after every (re)arm (A8).

When there is no usable action the loop holds: nothing is written and the servos keep their
last goal (hold-last-safe); the supervisor counts the misses (A9) and stops on stale input (A6).
Telemetry ``q``, ``dq``, ``sent`` hold the controlled joints in the safety spec's order; bus joints
outside the spec (the gripper) are held at their pose and reported in ``q_held``; ``temperature``
(degC) lists every bus joint's servo temperature (thermal state for soak runs, D6).
Units: rad, rad/s, m, s (monotonic clock).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from typing import Any

import numpy as np

from safetwin.safety.filter import FilterState, Nominal

from .deploy_config import DeployConfig
from .deploy_io import ArmStopActuator, read_state, report_write_error
from .deploy_policy import ActionChunk, ChunkMailbox, StateBoard
from .serial_bus import CommError, DisconnectedError
from .supervisor import Cause, Supervisor, SupervisorState

logger = logging.getLogger(__name__)


def _report_dict(report: Any) -> dict[str, Any]:
    return {"feasible": report.feasible, "reason": report.reason, "slack": report.slack,
            "correction_norm": report.correction_norm, "active": list(report.active),
            "min_barrier": report.min_barrier, "solve_time_s": report.solve_time_s, "braked": report.braked}


class ControlLoop:
    """State and logic of the fixed-rate control loop (the timing lives in ``deploy.py``)."""

    def __init__(self, cfg: DeployConfig, arm: Any, sup: Supervisor, safety_filter: Any, spec: Any,
                 mailbox: ChunkMailbox, board: StateBoard, actuator: ArmStopActuator,
                 robot_model: Any) -> None:
        self.cfg, self.arm, self.sup, self.filter = cfg, arm, sup, safety_filter
        self.model = robot_model
        self.speed_limit = cfg.ee_speed_monitor_m_s or 1.2 * spec.ee_speed_max
        self.mailbox, self.board, self.actuator = mailbox, board, actuator
        self.all_names = tuple(arm.joint_names)
        self.names = tuple(spec.joint_names)  # the controlled (filtered) joints
        self.ctrl = np.array([self.all_names.index(n) for n in self.names], dtype=int)
        self.extra = np.array([i for i, n in enumerate(self.all_names) if n not in self.names], dtype=int)
        self.n = len(self.names)
        self.extra_hold = np.zeros(len(self.extra))
        self.sent_all: np.ndarray | None = None
        self.lower = np.array([j.lower for j in spec.joints])
        self.upper = np.array([j.upper for j in spec.joints])
        self.q_goal: np.ndarray | None = None
        self.v_cmd = np.zeros(self.n)
        self.last_used: tuple[int, int] = (-1, -1)
        self.counts: Counter[str] = Counter()

    # ------------------------------------------------------------------ one period
    def step(self, now: float) -> dict[str, Any]:
        """Run one control period at monotonic time ``now``; returns the telemetry fields."""
        faults: list[str] = []
        stop_before = self.actuator.commands
        t_read = time.perf_counter()
        obs = read_state(self.arm, self.sup)
        self.bus_read_ms = (time.perf_counter() - t_read) * 1e3
        self.bus_write_ms: float | None = None
        q = dq = ee_speed = None
        if obs is None:
            faults.append("read_failed")
            if self.sent_all is not None:  # nothing is written this cycle: the servos hold the last goal
                self.v_cmd = np.zeros(self.n)
                self.sup.note_command(self.sent_all)
        else:
            q_all = np.asarray(obs["position"], dtype=float)
            dq_all = np.asarray(obs["velocity"], dtype=float)
            q, dq = q_all[self.ctrl], dq_all[self.ctrl]
            self.board.put(obs["t_mono"], q, dq)
            if self.sent_all is not None and self.sup.may_command():
                self.sup.report_tracking(self.sent_all, q_all)
            ee_speed = self._ee_speed(q, dq)
        self.sup.tick(None if q is None else q_all)
        rec: dict[str, Any] = {"nominal": None, "filtered": None, "sent": None, "filter": None}
        if self.sup.may_command() and q is not None:
            self._command(now, q, q_all, faults, rec)
            if self.sup.state is SupervisorState.STOPPING:
                self.sup.tick(q_all)  # a stop caused by this cycle's action sends its first brake goal now
        elif self.sup.state is not SupervisorState.ARMED:
            self.q_goal, self.sent_all, self.v_cmd = None, None, np.zeros(self.n)  # re-arm ramps from q
        for f in faults:
            self.counts[f.split(":")[0]] += 1
        held = None if q is None or not len(self.extra) else q_all[self.extra].tolist()
        temps = None if obs is None or "temperature" not in obs else np.asarray(obs["temperature"]).tolist()
        rec.update({"q": None if q is None else q.tolist(), "dq": None if dq is None else dq.tolist(),
                    "q_held": held, "temperature": temps,
                    "faults": faults, "state": self.sup.state.value,
                    "bus_read_ms": self.bus_read_ms, "bus_write_ms": self.bus_write_ms, "ee_speed": ee_speed,
                    "stop_cmd": self.actuator.commands > stop_before})
        return rec

    def _ee_speed(self, q: np.ndarray, dq: np.ndarray) -> float:
        """E9 speed observer: measured TCP speed |J_v(q) dq| (m/s, base frame), checked while ARMED."""
        try:
            speed = float(np.linalg.norm(np.asarray(self.model.ee_jacobian(q))[:3] @ dq))
        except Exception as exc:  # noqa: BLE001 - a failing model is an over-speed (fail closed)
            logger.error("speed observer: robot model failed: %s", exc)
            speed = math.inf
        if self.sup.may_command():
            self.sup.report_ee_speed(speed, self.speed_limit)
        return speed if math.isfinite(speed) else None

    # ------------------------------------------------------------------ commanding
    def _ensure_torque(self) -> bool:
        if getattr(self.arm, "is_armed", True):
            return True
        try:
            self.arm.enable_torque()  # holds the present pose, then torque on (the driver's arm step)
        except CommError as exc:  # no reply / unplugged: a bus fault (K in a row stop; unplug at once)
            self.sup.report_bus(False, f"enable_torque: {type(exc).__name__}: {exc}",
                                lost=isinstance(exc, DisconnectedError))
            return False
        except Exception as exc:  # noqa: BLE001 - a servo refusing torque (alarm, watchdog, ...) stops
            self.sup.trip(Cause.SERVO_ALARM, f"enable_torque failed: {type(exc).__name__}: {exc}")
            return False
        self.q_goal, self.sent_all, self.v_cmd = None, None, np.zeros(self.n)
        return True

    def _hold(self, faults: list[str], why: str) -> None:
        faults.append(why)
        self.v_cmd = np.zeros(self.n)
        if self.sent_all is not None:
            self.sup.note_command(self.sent_all)  # the servos keep the last goal: zero velocity

    def _command(self, now: float, q: np.ndarray, q_all: np.ndarray, faults: list[str],
                 rec: dict[str, Any]) -> None:
        """Controlled joints ``q`` (filter order); joints outside the spec (e.g. the gripper) are
        held where they were measured when the command stream (re)started."""
        if not self._ensure_torque():
            return
        if self.q_goal is None:
            self.extra_hold = q_all[self.extra]
        nominal = self._nominal(now, q, faults)
        if nominal is None:
            return
        q_ref = self.q_goal if self.q_goal is not None else q  # A8: ramp from the measured pose
        qd, report = self.filter.certify(FilterState(q=q_ref, dq=self.v_cmd), nominal)
        rec["nominal"], rec["filter"] = nominal.value.tolist(), _report_dict(report)
        rec["filtered"] = np.asarray(qd).tolist()
        self.sup.report_filter(report.feasible, report.reason)
        if not report.feasible:
            faults.append(f"filter:{report.reason}")
        if report.braked or report.correction_norm > 1e-6:
            self.counts["filter_interventions"] += 1
        goal = self._clamp(q_ref + np.asarray(qd, dtype=float) * self.cfg.dt, q_ref, q, faults)
        if not self.sup.may_command():  # the gate, checked right before the write
            return
        t_write = time.perf_counter()
        full = np.empty(len(self.all_names))
        full[self.ctrl], full[self.extra] = goal, self.extra_hold
        try:
            sent = self.arm.send_action(dict(zip(self.all_names, full.tolist(), strict=True)))
            self.bus_write_ms = (time.perf_counter() - t_write) * 1e3
        except Exception as exc:  # noqa: BLE001 - mapped to the matching stop cause
            faults.append(f"write_failed:{type(exc).__name__}")
            report_write_error(exc, self.sup)
            return
        self.sent_all = np.array([sent[name] for name in self.all_names])
        sent_q = self.sent_all[self.ctrl]
        self.sup.note_command(self.sent_all)
        self.v_cmd = (goal - q_ref) / self.cfg.dt  # before tick quantisation: the filter's own rate
        self.q_goal = sent_q
        rec["sent"] = sent_q.tolist()

    def _clamp(self, goal: np.ndarray, q_ref: np.ndarray, q: np.ndarray, faults: list[str]) -> np.ndarray:
        """A4: at most ``max_step_rad`` per cycle from the last goal and ``lag_cycles`` steps from
        the measured pose; A3: inside the spec's joint limits. Each clamp is counted."""
        step = self.cfg.max_step_rad
        out = q_ref + np.clip(goal - q_ref, -step, step)
        if np.any(np.abs(out - goal) > 1e-12):
            faults.append("clamp:step")
        lag = self.cfg.lag_cycles * step
        lagged = np.clip(out, q - lag, q + lag)
        if np.any(np.abs(lagged - out) > 1e-12):
            faults.append("clamp:lag")
        limited = np.clip(lagged, self.lower, self.upper)
        if np.any(np.abs(limited - lagged) > 1e-12):
            faults.append("clamp:limit")
            logger.warning("goal %s clamped to joint limits: %s", lagged.tolist(), limited.tolist())
        return limited

    # ------------------------------------------------------------------ the action
    def _row(self, now: float, faults: list[str]) -> tuple[np.ndarray, float] | None:
        """The current row of the newest chunk and the fraction into it, or None (hold/stop)."""
        chunk: ActionChunk | None = self.mailbox.latest()
        if chunk is None:
            self.sup.report_policy_deadline(True)
            self._hold(faults, "no_action")
            return None
        age = now - chunk.t_obs
        if not math.isfinite(age) or age > self.cfg.staleness_timeout_s:
            self.sup.report_stale_action(age)  # A6: stop, never replay
            self._hold(faults, "stale_action")
            return None
        index = int(max(age, 0.0) // self.cfg.chunk_dt)
        missed = age > self.cfg.policy_deadline_s
        self.sup.report_policy_deadline(missed)
        try:
            actions = np.asarray(chunk.actions, dtype=float)
        except (TypeError, ValueError):
            actions = None
        if missed or (actions is not None and actions.ndim == 2 and index >= actions.shape[0]):
            self._hold(faults, "deadline_miss" if missed else "chunk_exhausted")
            return None
        if (chunk.seq, index) < self.last_used:
            self._hold(faults, "old_row")  # never step back into a chunk row already passed
            return None
        self.last_used = (chunk.seq, index)
        width = self.n if self.cfg.space == "joint" else 7
        if actions is None or actions.ndim != 2 or actions.shape[1] != width:
            shape = None if actions is None else actions.shape
            self.sup.report_action(False, f"action chunk shape {shape}, expected (k, {width})")  # A2
            self._hold(faults, "action_rejected:shape")
            return None
        rows = actions[index:index + 2]
        if not np.all(np.isfinite(rows)):
            self.sup.report_action(False, "non-finite action")  # A1: nothing non-finite goes on
            self._hold(faults, "action_rejected:nonfinite")
            return None
        self.sup.report_action(True)
        frac = (age - index * self.cfg.chunk_dt) / self.cfg.chunk_dt
        target = rows[0] if len(rows) == 1 else rows[0] + min(max(frac, 0.0), 1.0) * (rows[1] - rows[0])
        return target, frac

    def _nominal(self, now: float, q: np.ndarray, faults: list[str]) -> Nominal | None:
        picked = self._row(now, faults)
        if picked is None:
            return None
        target, _ = picked
        if self.cfg.space == "joint":
            clipped = np.clip(target, self.lower, self.upper)
            if np.any(clipped != target):
                faults.append("clamp:target_limit")  # A3
            q_ref = self.q_goal if self.q_goal is not None else q
            return Nominal.joint((clipped - q_ref) / self.cfg.dt)
        row = np.clip(target, -1.0, 1.0)
        if np.any(row != target):
            faults.append("clamp:action_range")
        twist = np.concatenate([row[:3] * self.cfg.ee_scale_m, row[3:6] * self.cfg.ee_scale_rad])
        return Nominal.twist(twist / self.cfg.chunk_dt)
