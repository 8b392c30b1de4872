"""``DynamixelArm``: the serial-bus arm behind the twin's robot interface (connect,
disconnect, is_connected, get_observation, send_action), on Dynamixel Protocol 2.0.

Joint frame: ``q = sign * scale * servo_angle + offset_rad`` where ``servo_angle`` is 0 rad at
tick 2048 (``scale`` = 1 for revolute joints; m per servo rad for a gripper given in finger
metres). Units: rad, rad/s (m, m/s for a gripper), A, V, degC; time stamps from
``time.monotonic()`` (s). Observations and actions use the twin's keys (``"<joint>.pos"``,
``"<joint>.vel"``) as well as plain arrays, so the driver and ``TwinRobot`` are interchangeable.

Lifecycle (fail closed at every step)::

    arm = DynamixelArm(ArmConfig.from_dict({...}))
    arm.connect()        # ping + model check + limits + return delay 0 + bus watchdog; torque stays OFF
    arm.enable_torque()  # goal := present position, then torque on (the separate "arm" step)
    obs = arm.get_observation(); sent = arm.send_action({"waist": 0.1, ...})
    arm.disconnect()     # torque off on every motor (even if one fails), port closed

Faults are typed: CommError/DisconnectedError/PortBusyError (ConnectionError),
ServoStatusError/ServoAlertError (RuntimeError) from :mod:`serial_bus`, and here
HandshakeError (C11), LatencyTimerError (C10), HardwareAlertError (C6), WatchdogTrippedError
(C13, a servo-side stop), ServoRebootedError (C12, brown-out), NotArmedError.

The driver is split over: :mod:`driver_config` (ArmConfig, MotorConfig), :mod:`driver_health`
(register blocks and their decoding), :mod:`driver_chain` (register access, per-servo setup,
maintenance); this module holds the lifecycle and re-exports the public names.
Imports nothing else of SafeTwin's beyond the robot_io leaves (plain arrays in and out).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from .driver_chain import ServoChain
from .driver_config import ArmConfig, MotorConfig
from .driver_health import (
    HEALTH_BLOCK,
    LIMIT_BLOCK,
    POSITION_CONTROL_MODES,
    STATE_BLOCK,
    decode_health,
    decode_state,
)
from .serial_bus import (
    CommError,
    DisconnectedError,
    HandshakeError,
    HardwareAlertError,
    LatencyTimerError,
    NotArmedError,
    ServoAlertError,
    ServoRebootedError,
    ServoStatusError,
    WatchdogTrippedError,
    usb_latency_timer_ms,
)

logger = logging.getLogger(__name__)

__all__ = ["HEALTH_BLOCK", "LIMIT_BLOCK", "POSITION_CONTROL_MODES", "STATE_BLOCK",
           "ArmConfig", "DynamixelArm", "HandshakeError", "HardwareAlertError", "LatencyTimerError",
           "MotorConfig", "NotArmedError", "ServoRebootedError", "WatchdogTrippedError"]


class DynamixelArm(ServoChain):
    """A chain of X-series servos driven as one arm (see the module docstring).

    Args:
        config: the validated driver configuration.
        bus: an existing bus (tests, emulators); by default one on ``config.port``.
    """

    # ------------------------------------------------------------------ connect
    def connect(self) -> None:
        """Handshake with every configured servo; torque stays OFF (C10, C11).

        Raises:
            LatencyTimerError: USB latency timer above ``max_latency_timer_ms`` with policy ``refuse``.
            PortBusyError: another process holds the port (C9).
            HandshakeError: missing servo, wrong model, bus noise/duplicate IDs, unsupported
                operating mode. The port is closed and no torque is enabled on any motor (atomic
                connect with rollback). A servo alarm or a tripped watchdog does not fail the
                handshake (the operator must be able to reset it); :meth:`enable_torque` refuses.
        """
        if self.is_connected:
            return
        self.bus.close()  # drop a port left latched by an earlier disconnection (C8)
        self._connected = self._armed = False
        self._check_latency_timer()
        self.bus.open()
        try:
            self._handshake()
        except BaseException:
            self._rollback()
            raise
        self._connected = True
        logger.info("connected to %d joints on %s", len(self.motors), self.config.port)

    def _check_latency_timer(self) -> None:
        latency = usb_latency_timer_ms(self.config.port)
        self.latency_timer_ms = latency
        if latency is None or latency <= self.config.max_latency_timer_ms:
            return
        msg = (f"{self.config.port}: USB latency timer is {latency} ms (> {self.config.max_latency_timer_ms} ms);"
               f" set it with: echo 1 | sudo tee /sys/bus/usb-serial/devices/*/latency_timer")
        if self.config.latency_timer_policy == "refuse":
            raise LatencyTimerError(msg)
        if self.config.latency_timer_policy == "warn":
            logger.warning(msg)

    def _handshake(self) -> None:
        before = self.bus.fault_counts()
        problems = []
        for m in self.motors:
            for sid in m.ids:
                problems += self._check_model(m, sid)
        self.bus.drain(2 * self.config.timeout_s)
        after = self.bus.fault_counts()
        noisy = {k: after[k] - before[k] for k in ("duplicates", "late_bytes", "crc_errors", "wrong_id")
                 if after[k] > before[k]}
        if noisy:
            problems.append(f"unexpected replies during handshake {noisy} (duplicate IDs or bus noise)")
        if problems:
            raise HandshakeError("refusing to connect: " + "; ".join(problems))
        for i, m in enumerate(self.motors):
            for sid in m.ids:
                self._configure(m, sid)
            self._limits[i] = self._read_limits(m)

    def _rollback(self) -> None:
        for sid in self.all_ids():
            try:
                self._write_reg(sid, "torque_enable", 0)
            except (CommError, ServoStatusError) as exc:
                logger.warning("rollback: torque-off of id %d failed: %s", sid, exc)
        self.bus.close()
        self._connected = self._armed = False

    # ------------------------------------------------------------------ arm / disarm
    def enable_torque(self) -> None:
        """The "arm" step: refuse on any fault, hold the present pose, then torque on (A8).

        Raises:
            HardwareAlertError, WatchdogTrippedError: a servo is faulted (nothing is enabled).
            CommError, ServoStatusError: torque is switched back off on every motor first.
        """
        self._require_connected()
        obs = self.get_observation(health=True, expect_armed=False)
        try:
            self._write_goals(obs["position"])
            for sid in self.all_ids():
                self._write_reg(sid, "bus_watchdog", self.config.bus_watchdog_ms // 20, strict=True)
                self._write_reg(sid, "torque_enable", 1, strict=True)
        except BaseException:
            self.disable_torque(raise_errors=False)
            raise
        self._armed = True
        logger.info("torque enabled on %s", list(self.joint_names))

    def disable_torque(self, raise_errors: bool = True) -> None:
        """Torque off on EVERY motor even when some fail (C14); re-raises the first error.

        The joints whose torque-off failed are in :attr:`possibly_energised` and on the error.
        """
        self._armed = False
        first: BaseException | None = None
        failed = []
        for sid in self.all_ids():
            try:
                self._write_reg(sid, "torque_enable", 0)
            except (CommError, ServoStatusError) as exc:
                failed.append(self._name_of(sid))
                first = first or exc
        self.possibly_energised = tuple(failed)
        if first is not None:
            logger.error("torque-off failed; motors possibly still energised: %s", failed)
            first.possibly_energised = tuple(failed)  # type: ignore[attr-defined]
            if raise_errors:
                raise first

    def disconnect(self) -> None:
        """Torque off everywhere (best effort, C14), close the port; idempotent (D5).

        After an unplug (C8) no torque-off can be sent: every joint is listed in
        :attr:`possibly_energised` (the servos' bus watchdog stops them) and nothing is raised.

        Raises:
            The first torque-off error (with ``.possibly_energised``), after the port is closed.
        """
        if not self._connected and not self.bus.holds_port:
            return
        try:
            if self.bus.is_open:
                self.disable_torque()
            else:
                self.possibly_energised = self.joint_names
                logger.error("port lost before torque-off; possibly energised: %s", self.joint_names)
        finally:
            self.bus.close()
            self._connected = self._armed = False
            logger.info("disconnected from %s", self.config.port)

    def torque_off(self) -> None:
        """Supervisor hook (StopActuator): :meth:`disable_torque` with errors raised."""
        self.disable_torque(raise_errors=True)

    def write_goal(self, q_goal: np.ndarray) -> np.ndarray:
        """Supervisor hook (StopActuator): goal positions (n,) rad in joint order, clamped to the
        servo limits (no step clamp: a stop ramp is computed by the caller); returns what was sent.

        Raises:
            NotArmedError; ValueError on a wrong shape or a non-finite value (nothing is sent).
        """
        if not self.is_armed:
            raise NotArmedError("write_goal refused: arm is not armed")
        q = np.asarray(q_goal, dtype=float)
        if q.shape != (len(self.motors),) or not np.all(np.isfinite(q)):
            raise ValueError(f"write_goal needs {len(self.motors)} finite angles (rad), got {q_goal!r}")
        return self._write_goals(np.clip(q, self._limits[:, 0], self._limits[:, 1]))

    # ------------------------------------------------------------------ observation
    def get_observation(self, health: bool | None = None, expect_armed: bool | None = None) -> dict[str, Any]:
        """Read joint state with Sync Read (and, every ``health_every`` calls, the health block).

        Returns:
            ``{"t_mono": s, "joint_names": tuple, "position": (n,) rad, "velocity": (n,) rad/s,
            "current": (n,) A, "voltage": (n,) V, "temperature": (n,) degC,
            "hardware_error": (n,) int (OR over a joint's servos; from the last health read),
            "torque_enabled": (n,) bool}`` plus the twin's scalar keys ``"<joint>.pos"`` and
            ``"<joint>.vel"`` (floats, same values).

        Raises:
            HardwareAlertError: an alert bit on any reply (C6); carries ``observation`` and
                ``hardware_errors`` (joint -> fault names).
            WatchdogTrippedError: Bus Watchdog reads -1 (C13, the servos stopped themselves).
            ServoRebootedError: torque reads off while armed (C12, brown-out/reboot).
            CommError / DisconnectedError: no valid replies (C1, C8).
        """
        self._require_connected()
        self._n_obs += 1
        if health is None:
            health = self._n_obs % self.config.health_every == 0
        try:
            obs = self._read_state()
            if health:
                self._read_health(obs, self._armed if expect_armed is None else expect_armed)
        except ServoAlertError as exc:
            raise self._alert(exc) from exc
        except DisconnectedError:
            self._connected = self._armed = False
            raise
        for name, q, dq in zip(self.joint_names, obs["position"], obs["velocity"], strict=True):
            obs[f"{name}.pos"], obs[f"{name}.vel"] = float(q), float(dq)
        self.last_observation = obs
        return obs

    def _read_state(self) -> dict[str, Any]:
        data = self.bus.sync_read(self.all_ids(), *STATE_BLOCK)
        return decode_state(self.motors, self.tables, data, self.last_observation)

    def _read_health(self, obs: dict[str, Any], expect_armed: bool) -> None:
        data = self.bus.sync_read(self.all_ids(), *HEALTH_BLOCK)
        tripped, rebooted = decode_health(self.motors, self.tables, data, obs, expect_armed)
        if tripped:
            raise WatchdogTrippedError([self._name_of(sid) for sid in tripped], obs)
        if rebooted:
            self._armed = False
            raise ServoRebootedError([self._name_of(sid) for sid in rebooted], obs)

    def _alert(self, exc: ServoAlertError) -> HardwareAlertError:
        """Build the C6 fault: decode what was read and fetch Hardware Error Status of the alerting ids."""
        obs = None
        if exc.address == STATE_BLOCK[0]:
            replies = {i: d for i, d in exc.data.items() if len(d) == STATE_BLOCK[1]}
            obs = decode_state(self.motors, self.tables, replies, self.last_observation)
        errors: dict[str, list[str]] = {}
        for sid in exc.alert_ids:
            table = self._table(sid)
            value = self._hardware_error_of(sid)
            errors[self._name_of(sid)] = table.describe_hardware_error(value) if value >= 0 else ["unreadable"]
            index = next(i for i, m in enumerate(self.motors) if sid in (m.id, m.secondary_id))
            if obs is not None:
                obs["hardware_error"][index] |= max(value, 0)
        return HardwareAlertError(list(exc.alert_ids), errors, obs)

    def _hardware_error_of(self, sid: int) -> int:
        """Hardware Error Status of one servo (also from an alert reply), or -1 if unreadable."""
        reg = self._table(sid)["hardware_error_status"]
        try:
            return reg.decode(self.bus.read(sid, reg.address, reg.size))
        except ServoAlertError as inner:
            return reg.decode(inner.data.get(sid, b"\x00"))
        except (CommError, ServoStatusError):
            return -1

    # ------------------------------------------------------------------ action
    def send_action(self, action: Mapping[str, float]) -> dict[str, float]:
        """Sync Write goal positions (rad, joint frame) for ALL joints; returns what was sent.

        Keys are either the plain joint names or the twin's ``"<joint>.pos"`` (one style per
        call; the reply uses the same style). Every joint must be present exactly once (A2) and
        finite (A1): otherwise
        ValueError and nothing is sent. Goals are clamped to the servo limits read at connect
        and, if ``max_step_rad`` is set, to within that step of the last observed position (A3,
        A4); each clamp is logged with the original and clipped value.

        Raises:
            NotArmedError: torque was not enabled (no motion command leaves an unarmed driver).
        """
        if not self.is_armed:
            raise NotArmedError("send_action refused: arm is not armed (call enable_torque())")
        names, goal = self._parse_action(action)
        sent = self._write_goals(self._clamp(goal))
        return dict(zip(names, sent.tolist(), strict=True))

    def _parse_action(self, action: Mapping[str, float]) -> tuple[tuple[str, ...], np.ndarray]:
        """The key style used (joint names or ``"<joint>.pos"``) and the goal (n,) rad in joint
        order; ValueError on missing/extra keys, booleans, non-numbers or non-finite values."""
        names = self.joint_names
        if set(action) != set(names):
            names = tuple(f"{n}.pos" for n in self.joint_names)
        if set(action) != set(names) or len(action) != len(names):
            raise ValueError(f"action joints {sorted(action)} do not match {sorted(self.joint_names)} "
                             f"(or the '<joint>.pos' keys)")
        if any(isinstance(action[n], bool) for n in names):
            raise ValueError("action values must be numbers (rad), not booleans")
        try:
            goal = np.array([float(action[n]) for n in names])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"action values must be numbers (rad): {exc}") from exc
        if not np.all(np.isfinite(goal)):
            raise ValueError(f"non-finite action {dict(zip(names, goal.tolist(), strict=True))}; nothing sent")
        return names, goal

    def _clamp(self, goal: np.ndarray) -> np.ndarray:
        lo, hi = self._limits[:, 0].copy(), self._limits[:, 1].copy()
        step = self.config.max_step_rad
        if step is not None and self.last_observation is not None:
            here = self.last_observation["position"]
            lo, hi = np.maximum(lo, here - step), np.minimum(hi, here + step)
        out = np.clip(goal, lo, hi)
        for i in np.flatnonzero(out != goal):
            logger.warning("%s: goal %.4f rad clamped to %.4f rad", self.joint_names[i], goal[i], out[i])
        return out

    def __enter__(self) -> DynamixelArm:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()
