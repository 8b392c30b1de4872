"""``ServoChain``: register-level access to the configured servos of one arm, the base of
:class:`~.driver.DynamixelArm` (which adds the connect/arm/observe/act lifecycle).

Here: the arm's state and read-only properties, ID/joint lookup, register reads and writes
with typed faults (an alert bit alone on a write that was executed is logged, C6; a status
error names the register, C7), the per-servo connect-time setup (model check, return delay,
bus watchdog, position limits; C8, C10, C11, C13), Sync Write of goal positions, and the
operator's maintenance operations (raw register access, watchdog clear, reboot, describe).

Units: rad (m for a gripper) in the joint frame of :class:`~.driver_config.MotorConfig`, us, ms, s.
Imports nothing else of SafeTwin's beyond the robot_io leaves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import control_table as ct
from .driver_config import ArmConfig, MotorConfig
from .driver_health import (
    HEALTH_BLOCK,
    LIMIT_BLOCK,
    POSITION_CONTROL_MODES,
    X_SERIES,
    limits_from_block,
    servo_health,
)
from .serial_bus import CommError, DynamixelBus, HandshakeError, ServoAlertError, ServoStatusError

logger = logging.getLogger(f"{__package__}.driver")  # one logger for the whole driver

__all__ = ["ServoChain"]


class ServoChain:
    """The servos of an arm on one bus, addressed by joint (see the module docstring).

    Args:
        config: the validated driver configuration.
        bus: an existing bus (tests, emulators); by default one on ``config.port``.
    """

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

    # ------------------------------------------------------------------ lookup
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

    def _motor(self, joint: str) -> MotorConfig:
        for m in self.motors:
            if m.name == joint:
                return m
        raise KeyError(f"no joint {joint!r}; joints: {list(self.joint_names)}")

    def _require_connected(self) -> None:
        if not self.is_connected:
            raise CommError(f"{self.config.port}: arm is not connected")

    # ------------------------------------------------------------------ register I/O
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
        reg = X_SERIES["goal_position"]
        self.bus.sync_write(reg.address, reg.size, data)
        return np.array(sent)

    # ------------------------------------------------------------------ connect-time setup
    def _check_model(self, m: MotorConfig, sid: int) -> list[str]:
        """Ping one servo (C11): the problems found (no answer, wrong model), [] if none."""
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
        torque, hw_error, watchdog = servo_health(table, self._read_block(sid, *HEALTH_BLOCK))
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
        self._verify_settings(m, sid, delay)
        if self.servo_faults.get(self._name_of(sid)):
            logger.warning("%s: servo fault at connect %s; arming will be refused until reset",
                           self._name_of(sid), self.servo_faults[self._name_of(sid)])

    def _verify_settings(self, m: MotorConfig, sid: int, delay: int) -> None:
        """Read back Return Delay Time and Bus Watchdog (a tripped watchdog is left for the reset)."""
        for name, want in (("return_delay_time", delay), ("bus_watchdog", self.config.bus_watchdog_ms // 20)):
            got = self._read_reg(sid, name)
            if got != want and not (name == "bus_watchdog" and got == ct.WATCHDOG_TRIPPED):
                raise HandshakeError(f"{m.name}: id {sid} {name} reads {got} after writing {want} (C8/C10)")

    def _read_limits(self, m: MotorConfig) -> np.ndarray:
        """[lower, upper] joint limits (rad, joint frame) of the joint's primary servo (A3)."""
        return limits_from_block(m, self.tables[m.name], self._read_block(m.id, *LIMIT_BLOCK))

    # ------------------------------------------------------------------ maintenance
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
