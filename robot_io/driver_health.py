"""Register blocks that :class:`~.driver.DynamixelArm` reads in one transfer, and their
decoding from servo units into the joint frame.

* :data:`STATE_BLOCK` (Present PWM .. Present Temperature): Sync Read on every observation.
* :data:`HEALTH_BLOCK` (Torque Enable .. Bus Watchdog): at connect and every ``health_every``
  observations (hardware alerts C6, tripped watchdog C13, torque lost by a reboot C12).
* :data:`LIMIT_BLOCK` (Max/Min Position Limit): read once at connect (A3).

Addresses come from the X-series layout that every supported model shares (datasheet tables in
``control_tables.yaml``); unit conversions use each joint's own table. Units of the decoded
observation: rad, rad/s (m, m/s for a gripper), A, V, degC; ``t_mono`` from
``time.monotonic()`` (s). Imports nothing else of SafeTwin's beyond the robot_io leaves.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import control_table as ct
from .driver_config import MotorConfig

__all__ = ["HEALTH_BLOCK", "LIMIT_BLOCK", "POSITION_CONTROL_MODES", "STATE_BLOCK", "X_SERIES",
           "decode_health", "decode_state", "field", "limits_from_block", "servo_health"]

X_SERIES = ct.table_for("XM430-W350")
"""The X-series register layout (shared by all supported models): block and Sync Write addresses."""
STATE_BLOCK = X_SERIES.span("present_pwm", "present_temperature")
"""(address, size) of the per-cycle state block."""
HEALTH_BLOCK = X_SERIES.span("torque_enable", "bus_watchdog")
"""(address, size) of the health block: torque, hardware error status, bus watchdog."""
LIMIT_BLOCK = X_SERIES.span("max_position_limit", "min_position_limit")
"""(address, size) of the position limits (EEPROM)."""
POSITION_CONTROL_MODES = (3, 4, 5)
"""Operating Mode values in which Goal Position drives the servo (position, extended, current-based)."""


def field(block: tuple[int, int], data: bytes, reg: ct.Register) -> int:
    """Decode register ``reg`` from ``data``, the bytes of ``block`` = (start address, size)."""
    offset = reg.address - block[0]
    return reg.decode(data[offset:offset + reg.size])


def servo_health(table: ct.ControlTable, raw: bytes) -> tuple[int, int, int]:
    """``(torque_enable, hardware_error_status, bus_watchdog)`` of one servo's HEALTH_BLOCK bytes."""
    return (field(HEALTH_BLOCK, raw, table["torque_enable"]),
            field(HEALTH_BLOCK, raw, table["hardware_error_status"]),
            field(HEALTH_BLOCK, raw, table["bus_watchdog"]))


def decode_state(motors: Sequence[MotorConfig], tables: Mapping[str, ct.ControlTable],
                 data: Mapping[int, bytes], previous: Mapping[str, Any] | None) -> dict[str, Any]:
    """Observation arrays from STATE_BLOCK replies keyed by bus ID (primary servos only).

    A joint without a reply stays NaN. ``hardware_error`` and ``torque_enabled`` are carried
    over from ``previous`` (the last observation; zeros/False if None) until a health read.
    """
    n = len(motors)
    obs: dict[str, Any] = {"t_mono": time.monotonic(), "joint_names": tuple(m.name for m in motors)}
    for key in ("position", "velocity", "current", "voltage", "temperature"):
        obs[key] = np.full(n, np.nan)
    obs["hardware_error"] = previous["hardware_error"].copy() if previous else np.zeros(n, dtype=np.int64)
    obs["torque_enabled"] = previous["torque_enabled"].copy() if previous else np.zeros(n, dtype=bool)
    for i, m in enumerate(motors):
        if m.id not in data:
            continue
        t, raw = tables[m.name], data[m.id]
        obs["position"][i] = m.to_joint(ct.ticks_to_rad(field(STATE_BLOCK, raw, t["present_position"])))
        obs["velocity"][i] = m.sign * m.scale * ct.velocity_to_rad_s(field(STATE_BLOCK, raw, t["present_velocity"]))
        obs["current"][i] = m.sign * ct.current_to_amp(field(STATE_BLOCK, raw, t["present_current"]), t)
        obs["voltage"][i] = field(STATE_BLOCK, raw, t["present_input_voltage"]) * ct.VOLTAGE_UNIT_V
        obs["temperature"][i] = field(STATE_BLOCK, raw, t["present_temperature"])
    return obs


def decode_health(motors: Sequence[MotorConfig], tables: Mapping[str, ct.ControlTable],
                  data: Mapping[int, bytes], obs: dict[str, Any],
                  expect_armed: bool) -> tuple[list[int], list[int]]:
    """Fill ``obs["hardware_error"]`` (OR over a joint's servos) and ``obs["torque_enabled"]``
    (AND) from HEALTH_BLOCK replies of every servo; returns ``(tripped, rebooted)`` bus IDs:
    a Bus Watchdog reading -1 (C13), and torque off although ``expect_armed`` (C12).

    Raises:
        KeyError: a servo of the arm is missing from ``data``.
    """
    tripped, rebooted = [], []
    for i, m in enumerate(motors):
        err, torque_all = 0, True
        for sid in m.ids:
            torque, hw_error, watchdog = servo_health(tables[m.name], data[sid])
            err |= hw_error
            torque_all &= bool(torque)
            if watchdog == ct.WATCHDOG_TRIPPED:
                tripped.append(sid)
            if expect_armed and not torque:
                rebooted.append(sid)
        obs["hardware_error"][i], obs["torque_enabled"][i] = err, torque_all
    return tripped, rebooted


def limits_from_block(motor: MotorConfig, table: ct.ControlTable, raw: bytes) -> np.ndarray:
    """[lower, upper] joint limits (rad, joint frame) from a servo's LIMIT_BLOCK bytes."""
    hi = field(LIMIT_BLOCK, raw, table["max_position_limit"])
    lo = field(LIMIT_BLOCK, raw, table["min_position_limit"])
    return np.array(sorted(float(motor.to_joint(ct.ticks_to_rad(t))) for t in (lo, hi)))
