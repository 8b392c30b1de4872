"""Dynamixel X-series control tables (data in ``control_tables.yaml``) and unit conversions.

The register addresses, sizes, access rights and initial values come from the ROBOTIS
e-manual pages referenced in ``control_tables.yaml``; nothing here hard-codes an address.

Units: joint angles in rad, joint speeds in rad/s, currents in A, voltages in V,
temperatures in degC. Raw position ticks: 4096 per revolution, tick 2048 = 0 rad (the
servo's centre). Raw velocity: 0.229 rev/min per unit. Raw current: ``current_unit_ma`` mA.

This module imports nothing else of SafeTwin's.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

TABLES_PATH = Path(__file__).with_name("control_tables.yaml")
TICKS_PER_REV = 4096
CENTER_TICK = 2048
RAD_PER_TICK = 2.0 * math.pi / TICKS_PER_REV
VELOCITY_UNIT_RPM = 0.229
"""rev/min per raw velocity unit (Present/Goal Velocity, Velocity Limit, Profile Velocity)."""
RAD_S_PER_VELOCITY_UNIT = VELOCITY_UNIT_RPM * 2.0 * math.pi / 60.0
WATCHDOG_UNIT_S = 0.020
"""Bus Watchdog(98) unit: 20 ms."""
WATCHDOG_TRIPPED = -1
"""Bus Watchdog(98) reads -1 (0xFF) after it fired (a servo-side stop)."""
RETURN_DELAY_UNIT_S = 2e-6
VOLTAGE_UNIT_V = 0.1


class ControlTableError(KeyError):
    """Unknown model, register name or malformed table file."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Register:
    """One control-table entry.

    Attributes:
        name: snake_case register name (e.g. ``goal_position``).
        address: byte address in the control table.
        size: width in bytes (1, 2 or 4), little-endian on the wire.
        writable: False for read-only registers.
        signed: two's-complement value when True.
        initial: the factory/reboot value (raw units).
        eeprom: True for the EEPROM area (writes refused while torque is on).
    """

    name: str
    address: int
    size: int
    writable: bool
    signed: bool
    initial: int
    eeprom: bool

    def encode(self, value: int) -> bytes:
        """Raw integer -> little-endian bytes, range-checked (ValueError names the register)."""
        lo, hi = self.value_range
        if not isinstance(value, (int,)) or isinstance(value, bool) or not lo <= value <= hi:
            raise ValueError(f"register {self.name}: value {value!r} outside [{lo}, {hi}]")
        return int(value).to_bytes(self.size, "little", signed=self.signed)

    def decode(self, data: bytes) -> int:
        """Little-endian bytes -> raw integer (ValueError on a wrong length)."""
        if len(data) != self.size:
            raise ValueError(f"register {self.name}: {len(data)} bytes, expected {self.size}")
        return int.from_bytes(data, "little", signed=self.signed)

    @property
    def value_range(self) -> tuple[int, int]:
        bits = 8 * self.size
        if self.signed:
            return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        return 0, (1 << bits) - 1


@dataclass(frozen=True)
class ControlTable:
    """The control table of one servo model.

    Attributes:
        model: model name, e.g. ``XM430-W350``.
        model_number: value of Model Number(0), e.g. 1020.
        current_unit_a: A per raw Present/Goal Current unit.
        reference: e-manual URL of the table.
        stall_torque_nm: stall torque at 12 V, N*m (datasheet).
        stall_current_a: stall current at 12 V, A (datasheet); torque/current = the motor's N*m/A.
        registers: name -> :class:`Register`.
        hardware_error_bits: fault name -> bit index of Hardware Error Status(70).
    """

    model: str
    model_number: int
    current_unit_a: float
    reference: str
    stall_torque_nm: float
    stall_current_a: float
    registers: Mapping[str, Register]
    hardware_error_bits: Mapping[str, int]

    def __getitem__(self, name: str) -> Register:
        try:
            return self.registers[name]
        except KeyError:
            raise ControlTableError(f"{self.model}: no register {name!r}") from None

    def span(self, first: str, last: str) -> tuple[int, int]:
        """``(address, size)`` of the contiguous block from register ``first`` to ``last``."""
        a, b = self[first], self[last]
        return a.address, b.address + b.size - a.address

    def size_of_memory(self) -> int:
        return max(r.address + r.size for r in self.registers.values())

    def describe_hardware_error(self, value: int) -> list[str]:
        """Names of the set bits of a Hardware Error Status value."""
        return [n for n, bit in self.hardware_error_bits.items() if value & (1 << bit)]


def _parse_table(model: str, entry: Mapping[str, Any], eeprom_end: int,
                 error_bits: Mapping[str, int]) -> ControlTable:
    where = f"{TABLES_PATH.name}: models.{model}"
    try:
        initial = dict(entry.get("initial", {}))
        regs = {}
        for name, (address, size, access, signed, init) in entry["registers"].items():
            if access not in ("R", "RW") or size not in (1, 2, 4):
                raise ControlTableError(f"{where}.registers.{name}: bad access {access!r} or size {size!r}")
            regs[name] = Register(name, int(address), int(size), access == "RW", bool(signed),
                                  int(initial.pop(name, init)), int(address) < eeprom_end)
        if initial:
            raise ControlTableError(f"{where}.initial: unknown registers {sorted(initial)}")
        return ControlTable(model, int(entry["model_number"]), float(entry["current_unit_ma"]) * 1e-3,
                            str(entry["reference"]), float(entry["stall_torque_nm"]),
                            float(entry["stall_current_a"]), regs, dict(error_bits))
    except (KeyError, TypeError, ValueError) as exc:
        raise ControlTableError(f"{where}: malformed entry ({exc})") from exc


@functools.lru_cache(maxsize=4)
def load_control_tables(path: str | None = None) -> dict[str, ControlTable]:
    """All models in the tables file, keyed by model name (cached)."""
    source = Path(path) if path else TABLES_PATH
    with open(source, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    bits = data["hardware_error_bits"]
    return {model: _parse_table(model, entry, int(data["eeprom_end"]), bits)
            for model, entry in data["models"].items()}


def table_for(model: str | int) -> ControlTable:
    """The control table of a model, by name (``'XM430-W350'``) or model number (1020)."""
    tables = load_control_tables()
    if isinstance(model, str) and model in tables:
        return tables[model]
    for table in tables.values():
        if table.model_number == model:
            return table
    raise ControlTableError(f"unknown Dynamixel model {model!r}; known: "
                            f"{[(t.model, t.model_number) for t in tables.values()]}")


def ticks_to_rad(ticks: Any) -> Any:
    """Present/Goal Position ticks -> rad (2048 = 0 rad); works on ints and numpy arrays."""
    return (ticks - CENTER_TICK) * RAD_PER_TICK


def rad_to_ticks(rad: float) -> int:
    """rad -> nearest Goal Position tick (0 rad = 2048). ValueError on a non-finite angle."""
    if not math.isfinite(rad):
        raise ValueError(f"non-finite joint angle {rad!r} rad")
    return int(round(rad / RAD_PER_TICK)) + CENTER_TICK


def velocity_to_rad_s(units: Any) -> Any:
    """Raw velocity (0.229 rev/min units) -> rad/s."""
    return units * RAD_S_PER_VELOCITY_UNIT


def rad_s_to_velocity(rad_s: float) -> int:
    """rad/s -> nearest raw velocity unit (0.229 rev/min)."""
    if not math.isfinite(rad_s):
        raise ValueError(f"non-finite joint speed {rad_s!r} rad/s")
    return int(round(rad_s / RAD_S_PER_VELOCITY_UNIT))


def current_to_amp(units: Any, table: ControlTable) -> Any:
    """Raw current (model-specific unit) -> A."""
    return units * table.current_unit_a


def amp_to_current(amp: float, table: ControlTable) -> int:
    """A -> nearest raw current unit of ``table``'s model."""
    if not math.isfinite(amp):
        raise ValueError(f"non-finite current {amp!r} A")
    return int(round(amp / table.current_unit_a))
