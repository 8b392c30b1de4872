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

Imports nothing else of SafeTwin's beyond the robot_io leaves (plain arrays in and out).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from . import control_table as ct
from .serial_bus import (
    CommError,
    DisconnectedError,
    DynamixelBus,
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

__all__ = ["ArmConfig", "DynamixelArm", "HandshakeError", "HardwareAlertError", "LatencyTimerError",
           "MotorConfig", "NotArmedError", "ServoRebootedError", "WatchdogTrippedError"]

_XM = ct.table_for("XM430-W350")  # X-series share one layout; per-model facts come from the table
STATE_BLOCK = _XM.span("present_pwm", "present_temperature")
HEALTH_BLOCK = _XM.span("torque_enable", "bus_watchdog")
LIMIT_BLOCK = _XM.span("max_position_limit", "min_position_limit")
POSITION_CONTROL_MODES = (3, 4, 5)
"""Operating Mode values in which Goal Position drives the servo (position, extended, current-based)."""


@dataclass
class MotorConfig:
    """One joint of the arm.

    Attributes:
        name: joint name (matches the twin's joint names).
        id: bus ID of the (primary) servo, 0..252.
        model: servo model name in ``control_tables.yaml`` (e.g. ``XM540-W270``).
        secondary_id: bus ID of the second servo of a dual-servo joint (mirrored mechanically,
            Drive Mode reverse); it receives the same goal ticks and is health-checked, or None.
        sign: +1 or -1, joint direction relative to the servo.
        offset_rad: joint value (rad, or m for a gripper) at servo tick 2048.
        scale: joint units per servo rad (> 0): 1 for a revolute joint, m/rad for a gripper.
    """

    name: str
    id: int
    model: str
    secondary_id: int | None = None
    sign: int = 1
    offset_rad: float = 0.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"motor name must be a non-empty string, got {self.name!r}")
        for key in ("id", "secondary_id"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or not 0 <= value <= 252):
                raise ValueError(f"motor {self.name}: {key} {value!r} not in 0..252")
        if self.sign not in (1, -1):
            raise ValueError(f"motor {self.name}: sign must be +1 or -1, got {self.sign!r}")
        if not math.isfinite(self.offset_rad) or not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"motor {self.name}: offset_rad must be finite and scale finite > 0")
        try:
            ct.table_for(self.model)
        except ct.ControlTableError as exc:
            raise ValueError(f"motor {self.name}: {exc}") from exc

    def to_joint(self, servo_rad: Any) -> Any:
        """Servo angle (rad, 0 at tick 2048) -> joint value."""
        return self.sign * self.scale * servo_rad + self.offset_rad

    def to_servo(self, q: float) -> float:
        """Joint value -> servo angle (rad)."""
        return (q - self.offset_rad) * self.sign / self.scale

    @property
    def ids(self) -> list[int]:
        """Bus IDs of this joint: the primary, then the secondary if any."""
        return [self.id] + ([self.secondary_id] if self.secondary_id is not None else [])


@dataclass
class ArmConfig:
    """Driver configuration (plain data; build it with :meth:`from_dict` for strict keys).

    Attributes:
        port: serial device path (or a pty slave path for the virtual robot).
        motors: the joints, in the arm's joint order.
        baudrate: bits per second.
        timeout_s: reply wait per attempt, s (C1).
        retries: extra attempts after a timeout (<= 2 keeps a 100 Hz cycle bounded).
        bus_watchdog_ms: servo-side communication watchdog, ms, multiple of 20 in 20..2540 (C8/C13).
        return_delay_us: Return Delay Time written at connect, us (even, 0..508) (C10).
        max_latency_timer_ms: highest acceptable USB latency timer, ms (C10).
        latency_timer_policy: ``refuse`` | ``warn`` | ``ignore`` when the timer is above that.
        health_every: read torque/hardware-error/watchdog every N observations (1 = each).
        max_step_rad: last-resort per-command step clamp around the last observed position (A4), or None.
        reboot_wait_s: time to let servos restart after a Reboot instruction, s.
    """

    port: str
    motors: list[MotorConfig]
    baudrate: int = 1_000_000
    timeout_s: float = 0.02
    retries: int = 2
    bus_watchdog_ms: int = 100
    return_delay_us: int = 0
    max_latency_timer_ms: int = 2
    latency_timer_policy: str = "refuse"
    health_every: int = 1
    max_step_rad: float | None = None
    reboot_wait_s: float = 0.1

    def __post_init__(self) -> None:
        self.motors = [m if isinstance(m, MotorConfig) else _strict(MotorConfig, m, "motors[]")
                       for m in self.motors]
        if not self.motors:
            raise ValueError("ArmConfig.motors: at least one motor is required")
        ids = [i for m in self.motors for i in (m.id, m.secondary_id) if i is not None]
        names = [m.name for m in self.motors]
        if len(set(ids)) != len(ids) or len(set(names)) != len(names):
            raise ValueError(f"ArmConfig.motors: duplicate ids {ids} or names {names}")
        if not 20 <= self.bus_watchdog_ms <= 2540 or self.bus_watchdog_ms % 20:
            raise ValueError(f"ArmConfig.bus_watchdog_ms: {self.bus_watchdog_ms} not a multiple of 20 in 20..2540")
        if not 0 <= self.return_delay_us <= 508 or self.return_delay_us % 2:
            raise ValueError(f"ArmConfig.return_delay_us: {self.return_delay_us} not even in 0..508")
        if self.latency_timer_policy not in ("refuse", "warn", "ignore"):
            raise ValueError(f"ArmConfig.latency_timer_policy: {self.latency_timer_policy!r} not refuse|warn|ignore")
        if not (0 < self.timeout_s <= 1 and 0 <= self.retries <= 5 and self.health_every >= 1):
            raise ValueError("ArmConfig: need 0 < timeout_s <= 1, 0 <= retries <= 5, health_every >= 1")
        if self.max_step_rad is not None and not self.max_step_rad > 0:
            raise ValueError(f"ArmConfig.max_step_rad: {self.max_step_rad!r} must be > 0 or None")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "robot") -> ArmConfig:
        """Strict build: unknown keys (here or in a motor) raise ValueError naming ``where``."""
        data = dict(data)
        data["motors"] = [_strict(MotorConfig, m, f"{where}.motors[{i}]")
                          for i, m in enumerate(data.get("motors", []))]
        return _strict(cls, data, where)


def _strict(cls: Any, data: Mapping[str, Any], where: str) -> Any:
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {unknown}; valid: {sorted(names)}")
    try:
        return cls(**data)
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"{where}: {exc}") from exc


def _field(block: tuple[int, int], data: bytes, reg: ct.Register) -> int:
    offset = reg.address - block[0]
    return reg.decode(data[offset:offset + reg.size])


class DynamixelArm:
    """A chain of X-series servos driven as one arm (see the module docstring)."""

    def __init__(self, config: ArmConfig, bus: DynamixelBus | None = None) -> None:
        self.config = config
        self.motors: tuple[MotorConfig, ...] = tuple(config.motors)
        self.tables = {m.name: ct.table_for(m.model) for m in self.motors}
        self.bus = bus or DynamixelBus(config.port, config.baudrate, timeout_s=config.timeout_s,
                                       retries=config.retries)
        self._connected = False
        self._armed = False
        self._limits = np.zeros((len(self.motors), 2))
        self._firmware: dict[int, int] = {}
        self._n_obs = 0
        self.servo_faults: dict[str, list[str]] = {}
        """Servo faults seen at connect (joint -> fault names); informative, arming re-checks."""
        self.last_observation: dict[str, Any] | None = None
        self.possibly_energised: tuple[str, ...] = ()
        """Joints whose torque-off failed at the last disconnect/disable (C14)."""

    # ------------------------------------------------------------------ properties
    @property
    def joint_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.motors)

    @property
    def is_connected(self) -> bool:
        return self._connected and self.bus.is_open

    @property
    def is_armed(self) -> bool:
        """True after :meth:`enable_torque` until torque is disabled or a fault disconnects."""
        return self._armed and self.is_connected

    @property
    def joint_limits(self) -> np.ndarray:
        """(n, 2) [lower, upper] joint limits in rad (joint frame), read from the servos at connect."""
        return self._limits.copy()

    @property
    def action_features(self) -> dict[str, type]:
        """Action keys (the twin's ``Robot`` layout), usable while disconnected."""
        return {f"{n}.pos": float for n in self.joint_names}

    @property
    def observation_features(self) -> dict[str, type]:
        """Scalar observation keys (the twin's layout); arrays are returned alongside."""
        return {f"{n}.{kind}": float for n in self.joint_names for kind in ("pos", "vel")}

    @property
    def comm_faults(self) -> dict[str, int]:
        """Comm-fault counters by type (timeouts, retries, crc_errors, wrong_id, alerts, ...)."""
        return self.bus.fault_counts()

    def all_ids(self) -> list[int]:
        """Every bus ID of the arm, primaries then secondaries (dual-servo joints)."""
        return [m.id for m in self.motors] + [m.ids[1] for m in self.motors if len(m.ids) > 1]

    def _name_of(self, servo_id: int) -> str:
        for m in self.motors:
            if servo_id in (m.id, m.secondary_id):
                return m.name if servo_id == m.id else f"{m.name}(secondary)"
        return f"id {servo_id}"

    def _table(self, servo_id: int) -> ct.ControlTable:
        for m in self.motors:
            if servo_id in (m.id, m.secondary_id):
                return self.tables[m.name]
        raise KeyError(f"id {servo_id} is not part of this arm")

    def _write_reg(self, servo_id: int, name: str, value: int, strict: bool = False) -> None:
        """Write one register; unless ``strict``, an alert bit alone (the write was executed) is
        only logged."""
        reg = self._table(servo_id)[name]
        try:
            self.bus.write(servo_id, reg.address, reg.encode(value))
        except ServoAlertError as exc:
            if exc.error_code or strict:
                raise
            logger.warning("%s := %d on %s done; the servo reports a hardware alert", name, value,
                           self._name_of(servo_id))
        except ServoStatusError as exc:  # C7: name the register, not only its address
            exc.register = name  # type: ignore[attr-defined]
            exc.args = (f"{exc} [{self._name_of(servo_id)}: register {name} := {value}]",)
            raise

    def _read_block(self, servo_id: int, address: int, size: int) -> bytes:
        """Read bytes, also from a servo whose status carries the alert bit (the data is valid)."""
        try:
            return self.bus.read(servo_id, address, size)
        except ServoAlertError as exc:
            if exc.error_code or servo_id not in exc.data:
                raise
            return exc.data[servo_id]

    def _read_reg(self, servo_id: int, name: str) -> int:
        reg = self._table(servo_id)[name]
        return reg.decode(self._read_block(servo_id, reg.address, reg.size))

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

    def _check_model(self, m: MotorConfig, sid: int) -> list[str]:
        try:
            model, firmware = self.bus.ping(sid)
        except ServoAlertError as exc:  # answered, with an alarm: the arming step refuses later
            data = exc.data.get(sid, b"\x00\x00\x00")
            model, firmware = int.from_bytes(data[:2], "little"), data[2]
        except CommError:
            return [f"{m.name}: id {sid} does not answer"]
        self._firmware[sid] = firmware
        expected = self.tables[m.name].model_number
        if model != expected:
            return [f"{m.name}: id {sid} is model {model}, expected {expected} ({m.model})"]
        return []

    def _configure(self, m: MotorConfig, sid: int) -> None:
        """Return delay and bus watchdog. Servo faults found here are kept in :attr:`servo_faults`
        (the arming step refuses until the operator's reset clears them), not a handshake failure."""
        table = self.tables[m.name]
        health = self._read_block(sid, *HEALTH_BLOCK)
        watchdog = _field(HEALTH_BLOCK, health, table["bus_watchdog"])
        hw_error = _field(HEALTH_BLOCK, health, table["hardware_error_status"])
        torque = _field(HEALTH_BLOCK, health, table["torque_enable"])
        if hw_error:
            self.servo_faults[self._name_of(sid)] = table.describe_hardware_error(hw_error)
        mode = self._read_reg(sid, "operating_mode")
        if mode not in POSITION_CONTROL_MODES:
            raise HandshakeError(f"{m.name}: id {sid} operating mode {mode} is not a position mode")
        delay = self.config.return_delay_us // 2
        if self._read_reg(sid, "return_delay_time") != delay:
            if torque:
                raise HandshakeError(f"{m.name}: id {sid} torque is on; cannot set Return Delay (EEPROM)")
            self._write_reg(sid, "return_delay_time", delay)
        if watchdog == ct.WATCHDOG_TRIPPED:  # cleared only by the reset procedure (C13)
            self.servo_faults[self._name_of(sid)] = ["bus_watchdog_tripped"]
        else:
            self._write_reg(sid, "bus_watchdog", self.config.bus_watchdog_ms // 20)
        for name, want in (("return_delay_time", delay), ("bus_watchdog", self.config.bus_watchdog_ms // 20)):
            got = self._read_reg(sid, name)
            if got != want and not (name == "bus_watchdog" and got == ct.WATCHDOG_TRIPPED):
                raise HandshakeError(f"{m.name}: id {sid} {name} reads {got} after writing {want} (C8/C10)")
        if self.servo_faults.get(self._name_of(sid)):
            logger.warning("%s: servo fault at connect %s; arming will be refused until reset",
                           self._name_of(sid), self.servo_faults[self._name_of(sid)])

    def _read_limits(self, m: MotorConfig) -> np.ndarray:
        table = self.tables[m.name]
        data = self._read_block(m.id, *LIMIT_BLOCK)
        hi = _field(LIMIT_BLOCK, data, table["max_position_limit"])
        lo = _field(LIMIT_BLOCK, data, table["min_position_limit"])
        ends = sorted(float(m.to_joint(ct.ticks_to_rad(t))) for t in (lo, hi))
        return np.array(ends)

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

    def _require_connected(self) -> None:
        if not self.is_connected:
            raise CommError(f"{self.config.port}: arm is not connected")

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
        return self._decode_state(data)

    def _decode_state(self, data: Mapping[int, bytes]) -> dict[str, Any]:
        n = len(self.motors)
        obs: dict[str, Any] = {"t_mono": time.monotonic(), "joint_names": self.joint_names}
        for key in ("position", "velocity", "current", "voltage", "temperature"):
            obs[key] = np.full(n, np.nan)
        prev = self.last_observation
        obs["hardware_error"] = prev["hardware_error"].copy() if prev else np.zeros(n, dtype=np.int64)
        obs["torque_enabled"] = prev["torque_enabled"].copy() if prev else np.zeros(n, dtype=bool)
        for i, m in enumerate(self.motors):
            if m.id not in data:
                continue
            t, raw = self.tables[m.name], data[m.id]
            obs["position"][i] = m.to_joint(ct.ticks_to_rad(_field(STATE_BLOCK, raw, t["present_position"])))
            obs["velocity"][i] = m.sign * m.scale * ct.velocity_to_rad_s(_field(STATE_BLOCK, raw, t["present_velocity"]))
            obs["current"][i] = m.sign * ct.current_to_amp(_field(STATE_BLOCK, raw, t["present_current"]), t)
            obs["voltage"][i] = _field(STATE_BLOCK, raw, t["present_input_voltage"]) * ct.VOLTAGE_UNIT_V
            obs["temperature"][i] = _field(STATE_BLOCK, raw, t["present_temperature"])
        return obs

    def _read_health(self, obs: dict[str, Any], expect_armed: bool) -> None:
        data = self.bus.sync_read(self.all_ids(), *HEALTH_BLOCK)
        tripped, rebooted = [], []
        for i, m in enumerate(self.motors):
            t = self.tables[m.name]
            err, torque = 0, True
            for sid in m.ids:
                err |= _field(HEALTH_BLOCK, data[sid], t["hardware_error_status"])
                torque &= bool(_field(HEALTH_BLOCK, data[sid], t["torque_enable"]))
                if _field(HEALTH_BLOCK, data[sid], t["bus_watchdog"]) == ct.WATCHDOG_TRIPPED:
                    tripped.append(self._name_of(sid))
                if expect_armed and not _field(HEALTH_BLOCK, data[sid], t["torque_enable"]):
                    rebooted.append(self._name_of(sid))
            obs["hardware_error"][i], obs["torque_enabled"][i] = err, torque
        if tripped:
            raise WatchdogTrippedError(tripped, obs)
        if rebooted:
            self._armed = False
            raise ServoRebootedError(rebooted, obs)

    def _alert(self, exc: ServoAlertError) -> HardwareAlertError:
        """Build the C6 fault: decode what was read and fetch Hardware Error Status of the alerting ids."""
        obs = self._decode_state({i: d for i, d in exc.data.items()
                                  if len(d) == STATE_BLOCK[1]}) if exc.address == STATE_BLOCK[0] else None
        errors: dict[str, list[str]] = {}
        for sid in exc.alert_ids:
            table = self._table(sid)
            reg = table["hardware_error_status"]
            try:
                value = reg.decode(self.bus.read(sid, reg.address, reg.size))
            except ServoAlertError as inner:
                value = reg.decode(inner.data.get(sid, b"\x00"))
            except (CommError, ServoStatusError):
                value = -1
            errors[self._name_of(sid)] = table.describe_hardware_error(value) if value >= 0 else ["unreadable"]
            index = next(i for i, m in enumerate(self.motors) if sid in (m.id, m.secondary_id))
            if obs is not None:
                obs["hardware_error"][index] |= max(value, 0)
        return HardwareAlertError(list(exc.alert_ids), errors, obs)

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
        clamped = self._clamp(goal)
        sent = self._write_goals(clamped)
        return dict(zip(names, sent.tolist(), strict=True))

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

    def _write_goals(self, q: Sequence[float]) -> np.ndarray:
        """Sync Write joint-frame goals (rad); returns the rad values of the ticks sent."""
        data, sent = {}, []
        for m, value in zip(self.motors, q, strict=True):
            reg = self.tables[m.name]["goal_position"]
            ticks = ct.rad_to_ticks(m.to_servo(float(value)))
            sent.append(float(m.to_joint(ct.ticks_to_rad(ticks))))
            data[m.id] = reg.encode(ticks)
            if m.secondary_id is not None:
                data[m.secondary_id] = reg.encode(ticks)
        reg = _XM["goal_position"]
        self.bus.sync_write(reg.address, reg.size, data)
        return np.array(sent)

    # ------------------------------------------------------------------ maintenance
    def _motor(self, joint: str) -> MotorConfig:
        for m in self.motors:
            if m.name == joint:
                return m
        raise KeyError(f"no joint {joint!r}; joints: {list(self.joint_names)}")

    def read_register(self, joint: str, register: str) -> int:
        """Raw value of a control-table register of the joint's (primary) servo."""
        self._require_connected()
        return self._read_reg(self._motor(joint).id, register)

    def write_register(self, joint: str, register: str, value: int) -> None:
        """Maintenance write of a raw register value to every servo of a joint (typed C7 errors)."""
        self._require_connected()
        for sid in self._motor(joint).ids:
            self._write_reg(sid, register, value)

    def clear_watchdog(self) -> None:
        """Reset-procedure step (C13): write 0 to Bus Watchdog on every servo (torque stays as is)."""
        for sid in self.all_ids():
            self._write_reg(sid, "bus_watchdog", 0)

    def reboot(self, names: Sequence[str] | None = None) -> None:
        """Operator reset for hardware alerts: reboot the named joints' servos (torque goes off)."""
        self._armed = False
        for m in self.motors:
            if names is None or m.name in names:
                for sid in m.ids:
                    self.bus.reboot(sid)
        time.sleep(self.config.reboot_wait_s)

    def describe(self) -> dict[str, Any]:
        """Static facts for the audit report (F1): port, baud, latency timer, ids, models, firmware, limits."""
        return {"port": self.config.port, "baudrate": self.config.baudrate,
                "latency_timer_ms": getattr(self, "latency_timer_ms", None),
                "return_delay_us": self.config.return_delay_us,
                "bus_watchdog_ms": self.config.bus_watchdog_ms,
                "motors": [{"name": m.name, "id": m.id, "secondary_id": m.secondary_id, "model": m.model,
                            "firmware": self._firmware.get(m.id),
                            "limits_rad": self._limits[i].tolist()} for i, m in enumerate(self.motors)],
                "comm_faults": self.bus.fault_counts()}

    def __enter__(self) -> DynamixelArm:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

