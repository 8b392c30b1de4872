"""Configuration of :class:`~.driver.DynamixelArm`: the joints (:class:`MotorConfig`) and the
bus/driver options (:class:`ArmConfig`), validated when built.

Joint frame: ``q = sign * scale * servo_angle + offset_rad`` where ``servo_angle`` is 0 rad at
tick 2048 (``scale`` = 1 for revolute joints; m per servo rad for a gripper given in finger
metres). Servo models are names in ``control_tables.yaml`` (the datasheet-referenced register
tables of :mod:`control_table`).

Imports nothing else of SafeTwin's beyond the robot_io leaves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from . import control_table as ct

__all__ = ["ArmConfig", "MotorConfig", "strict_build"]


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
        self.motors = [m if isinstance(m, MotorConfig) else strict_build(MotorConfig, m, "motors[]")
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
        data["motors"] = [strict_build(MotorConfig, m, f"{where}.motors[{i}]")
                          for i, m in enumerate(data.get("motors", []))]
        return strict_build(cls, data, where)


def strict_build(cls: Any, data: Mapping[str, Any], where: str) -> Any:
    """``cls(**data)`` for a dataclass, rejecting unknown keys; every error is a ValueError
    prefixed with ``where`` (the config path, e.g. ``robot.motors[2]``)."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {unknown}; valid: {sorted(names)}")
    try:
        return cls(**data)
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"{where}: {exc}") from exc
