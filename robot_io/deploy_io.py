"""Glue between the serial driver and the supervisor: the stop actuator and the state read.

:class:`ArmStopActuator` lets the supervisor's stop stages drive a ``DynamixelArm`` (or any
object with ``joint_names``, ``send_action(mapping)`` and ``disable_torque()``).
:class:`TelemetryWriter` writes the runner's telemetry off the control thread.
:func:`read_state` performs one Sync Read and turns every driver fault into the matching
supervisor input (C1-C8, C12, C13), so the runner and the tests share one mapping.

Units: rad, rad/s; joint order is the driver's ``joint_names``.
"""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path
from typing import Any

import numpy as np

from safetwin.safety.runio import JsonlWriter

from .serial_bus import (
    CommError,
    DisconnectedError,
    HardwareAlertError,
    NotArmedError,
    ServoRebootedError,
    ServoStatusError,
    WatchdogTrippedError,
)
from .supervisor import Cause, Supervisor

logger = logging.getLogger(__name__)


class ArmStopActuator:
    """The supervisor's :class:`~supervisor.StopActuator` on top of a driver.

    ``write_goal`` goes straight to ``send_action`` (bypassing the runner's gate: only the
    supervisor's stop stages call it); ``torque_off`` tries every motor and re-raises the first
    failure (C14).
    """

    def __init__(self, arm: Any) -> None:
        self.arm = arm
        self.goals_written = 0
        self.torque_offs = 0

    @property
    def commands(self) -> int:
        """Stop commands issued so far (braking/hold goals and torque-off attempts)."""
        return self.goals_written + self.torque_offs

    def write_goal(self, q_goal: np.ndarray) -> None:
        q_goal = np.asarray(q_goal, dtype=float)
        names = tuple(self.arm.joint_names)
        if q_goal.shape != (len(names),) or not np.all(np.isfinite(q_goal)):
            raise ValueError(f"stop goal {q_goal!r} is not {len(names)} finite joint angles")
        self.arm.send_action(dict(zip(names, q_goal.tolist(), strict=True)))
        self.goals_written += 1

    def torque_off(self) -> None:
        self.torque_offs += 1
        self.arm.disable_torque()


def _fault_kind(exc: BaseException) -> str:
    return type(exc).__name__


def read_state(arm: Any, sup: Supervisor) -> dict[str, Any] | None:
    """One state read; returns the observation, or None after reporting the fault to ``sup``.

    Mapping: DisconnectedError -> bus lost (Stop 0, C8); HardwareAlertError -> servo alarm (C6);
    WatchdogTrippedError (C13) and ServoRebootedError (C12) -> servo alarm; other CommError ->
    one failed bus cycle (C1-C5, K in a row stop); other ServoStatusError -> failed cycle (C7).
    """
    try:
        obs = arm.get_observation()
    except DisconnectedError as exc:
        sup.report_bus(False, f"{_fault_kind(exc)}: {exc}", lost=True)
        return None
    except HardwareAlertError as exc:
        sup.trip(Cause.SERVO_ALARM, f"hardware alert {exc.hardware_errors}")
        return None
    except (WatchdogTrippedError, ServoRebootedError) as exc:
        sup.trip(Cause.SERVO_ALARM, str(exc))
        return None
    except (CommError, ServoStatusError) as exc:
        sup.report_bus(False, f"{_fault_kind(exc)}: {exc}")
        return None
    if not np.all(np.isfinite(obs["position"])):
        sup.report_bus(False, "incomplete sync read (missing joint)")
        return None
    sup.report_bus(True)
    errors = np.asarray(obs.get("hardware_error", np.zeros(len(obs["position"]))), dtype=int)
    sup.report_servo_errors({name: int(e) for name, e in zip(obs["joint_names"], errors, strict=True)})
    return obs


def report_write_error(exc: BaseException, sup: Supervisor) -> None:
    """Turn a failed goal write into a supervisor input (C8, C12, C1, A2)."""
    if isinstance(exc, DisconnectedError):
        sup.report_bus(False, f"{_fault_kind(exc)}: {exc}", lost=True)
    elif isinstance(exc, NotArmedError):
        sup.trip(Cause.SERVO_ALARM, f"goal refused, torque found off: {exc}")
    elif isinstance(exc, (CommError, ServoStatusError)):
        sup.report_bus(False, f"write {_fault_kind(exc)}: {exc}")
    else:
        sup.report_action(False, f"goal write rejected: {_fault_kind(exc)}: {exc}")


class TelemetryWriter(threading.Thread):
    """Drains telemetry records into ``telemetry.jsonl`` off the control thread; a write
    failure is remembered and turned into a LOG_FAILURE stop by the loop (D7)."""

    def __init__(self, path: Path) -> None:
        super().__init__(name="telemetry", daemon=True)
        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.writer = JsonlWriter(path)
        self.records = 0
        self.error: str | None = None

    def run(self) -> None:
        while (rec := self.queue.get()) is not None:
            try:
                self.writer.write(rec)
                self.records += 1
            except (OSError, TypeError, ValueError) as exc:
                self.error = self.error or f"{type(exc).__name__}: {exc}"
        try:
            self.writer.close()
        except OSError as exc:
            self.error = self.error or f"{type(exc).__name__}: {exc}"

    def finish(self) -> None:
        self.queue.put(None)
        self.join(timeout=10.0)
