"""Device-side emulation of a chain of Dynamixel X-series servos (Protocol 2.0).

:class:`ServoChain` answers decoded instruction packets exactly as a bus of servos would,
with the control-table semantics the driver relies on:

* EEPROM area (addresses < 64) writable only while Torque Enable is 0 (else Access Error);
  read-only registers refuse writes (Access Error); Goal Position outside the position limits
  is refused (Data Limit Error).
* Hardware Error Status(70) and the alert bit (bit 7) on every status packet while it is set;
  an error whose bit is in Shutdown(63) switches torque off.
* Bus Watchdog(98): with torque on, no instruction for ``value * 20 ms`` stops the servo
  (it holds its present position), the register reads -1 and Goal writes are refused with a
  Data Range Error until 0 is written to the register.
* Reboot (and an injected brown-out): torque off, RAM back to initial values.
* Status Return Level(68): 0 = reply to ping only, 1 = ping and reads, 2 = everything.
* Present position/velocity/current/voltage/temperature come from a :class:`Plant`.

The plant is a small interface so the servo logic is testable without the twin;
:class:`KinematicPlant` is a rate-limited first-order model. The pybullet plant lives in
``virtual_robot.py``. Servo angles here are in the servo frame: rad, 0 at tick 2048.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from . import control_table as ct
from . import protocol as proto
from .protocol import ErrorCode, Instruction, Packet

logger = logging.getLogger(__name__)


class Plant(Protocol):
    """The physics behind the servos (servo frame, rad / rad/s / A)."""

    def set_goal(self, servo_id: int, goal_rad: float | None, max_speed_rad_s: float) -> None:
        """Position goal of a servo; ``None`` = torque off (the joint is not driven)."""

    def step(self, dt: float) -> None:
        """Advance the physics by ``dt`` seconds."""

    def state(self, servo_id: int) -> tuple[float, float, float]:
        """``(position rad, velocity rad/s, current A)`` seen by a servo."""


class KinematicPlant:
    """Rate-limited first-order joints: position approaches the goal at <= max speed.

    Args:
        initial: servo id -> initial position (rad, servo frame).
        time_constant_s: first-order time constant of the position loop.
        amp_per_rad: current drawn per rad of tracking error (a crude load model), A/rad.
        couple: servo id -> id of the servo it is mechanically tied to (dual-servo joints).
    """

    def __init__(self, initial: Mapping[int, float], time_constant_s: float = 0.05,
                 amp_per_rad: float = 2.0, couple: Mapping[int, int] | None = None) -> None:
        self.couple = dict(couple or {})
        self.pos = {i: float(q) for i, q in initial.items() if i not in self.couple}
        self.vel = dict.fromkeys(self.pos, 0.0)
        self.goal: dict[int, float | None] = dict.fromkeys(self.pos)
        self.speed = dict.fromkeys(self.pos, 1.0)
        self.tau, self.amp_per_rad = time_constant_s, amp_per_rad

    def _key(self, servo_id: int) -> int:
        return self.couple.get(servo_id, servo_id)

    def set_goal(self, servo_id: int, goal_rad: float | None, max_speed_rad_s: float) -> None:
        if servo_id in self.couple:  # the secondary follows its primary mechanically
            return
        self.goal[servo_id], self.speed[servo_id] = goal_rad, max_speed_rad_s

    def step(self, dt: float) -> None:
        for i, goal in self.goal.items():
            if goal is None or dt <= 0:
                self.vel[i] = 0.0
                continue
            v = (goal - self.pos[i]) / max(self.tau, dt)
            v = max(-self.speed[i], min(self.speed[i], v))
            self.pos[i] += v * dt
            self.vel[i] = v

    def state(self, servo_id: int) -> tuple[float, float, float]:
        i = self._key(servo_id)
        goal = self.goal[i]
        current = 0.0 if goal is None else self.amp_per_rad * (goal - self.pos[i])
        return self.pos[i], self.vel[i], current


@dataclass
class VirtualServo:
    """Control-table memory and firmware behaviour of one servo."""

    servo_id: int
    table: ct.ControlTable
    firmware: int = 45
    voltage_v: float = 12.0
    temperature_c: float = 30.0

    def __post_init__(self) -> None:
        self.memory = bytearray(self.table.size_of_memory())
        self.last_rx = time.monotonic()
        self.reset(eeprom=True)

    # ------------------------------------------------------------------ memory
    def reset(self, eeprom: bool = False) -> None:
        """Power-on/reboot: RAM to initial values (EEPROM too when ``eeprom``)."""
        for reg in self.table.registers.values():
            if eeprom or not reg.eeprom:
                self.set(reg.name, reg.initial)
        if eeprom:
            self.set("id", self.servo_id)
            self.set("firmware_version", self.firmware)

    def get(self, name: str) -> int:
        reg = self.table[name]
        return reg.decode(bytes(self.memory[reg.address:reg.address + reg.size]))

    def set(self, name: str, value: int) -> None:
        reg = self.table[name]
        lo, hi = reg.value_range
        value = max(lo, min(hi, int(value)))
        self.memory[reg.address:reg.address + reg.size] = reg.encode(value)

    @property
    def status_error(self) -> int:
        """Alert bit while Hardware Error Status is non-zero."""
        return proto.ALERT_BIT if self.get("hardware_error_status") else 0

    # ------------------------------------------------------------------ instructions
    def read(self, address: int, size: int) -> tuple[int, bytes]:
        if size == 0 or address + size > len(self.memory):
            return ErrorCode.ACCESS_ERROR, b""
        return ErrorCode.NONE, bytes(self.memory[address:address + size])

    def write(self, address: int, data: bytes) -> int:
        """Apply a write; returns an ErrorCode (nothing is written on error)."""
        touched = [r for r in self.table.registers.values()
                   if r.address < address + len(data) and address < r.address + r.size]
        if not data or address + len(data) > len(self.memory) or not touched:
            return ErrorCode.ACCESS_ERROR
        if any(not r.writable for r in touched):
            return ErrorCode.ACCESS_ERROR
        if any(r.eeprom for r in touched) and self.get("torque_enable"):
            return ErrorCode.ACCESS_ERROR
        image = bytearray(self.memory)
        image[address:address + len(data)] = data
        values = {r.name: r.decode(bytes(image[r.address:r.address + r.size])) for r in touched}
        error = self._check(values)
        if error:
            return error
        self.memory[:] = image
        return ErrorCode.NONE

    def _check(self, values: Mapping[str, int]) -> int:
        if self.get("bus_watchdog") == ct.WATCHDOG_TRIPPED and any(n.startswith("goal_") for n in values):
            return ErrorCode.DATA_RANGE_ERROR
        if "bus_watchdog" in values and not -1 <= values["bus_watchdog"] <= 127:
            return ErrorCode.DATA_RANGE_ERROR
        if "torque_enable" in values and values["torque_enable"] not in (0, 1):
            return ErrorCode.DATA_RANGE_ERROR
        if values.get("torque_enable") == 1 and self.get("hardware_error_status") & self.get("shutdown"):
            return ErrorCode.RESULT_FAIL
        if "goal_position" in values and self.get("operating_mode") == 3:
            if not self.get("min_position_limit") <= values["goal_position"] <= self.get("max_position_limit"):
                return ErrorCode.DATA_LIMIT_ERROR
        return ErrorCode.NONE


class ServoChain:
    """A bus of :class:`VirtualServo` backed by a :class:`Plant`.

    Args:
        servos: id -> model name (``control_tables.yaml``).
        plant: the physics.
        initial_positions: id -> initial servo angle, rad (sets Goal Position at power-on).
        clock: monotonic time source, s.
    """

    def __init__(self, servos: Mapping[int, str], plant: Plant,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.servos = {i: VirtualServo(i, ct.table_for(model)) for i, model in servos.items()}
        self.plant, self.clock = plant, clock
        self._last_tick = clock()
        self.watchdog_trips = 0
        for i in self.servos:
            self._refresh(i)
            self.servos[i].set("goal_position", self.servos[i].get("present_position"))

    # ------------------------------------------------------------------ time
    def tick(self, now: float | None = None) -> None:
        """Watchdogs, plant step and present-value update (call every few ms)."""
        now = self.clock() if now is None else now
        dt, self._last_tick = now - self._last_tick, now
        for i, s in self.servos.items():
            wd = s.get("bus_watchdog")
            if s.get("torque_enable") and wd > 0 and now - s.last_rx > wd * ct.WATCHDOG_UNIT_S:
                s.set("bus_watchdog", ct.WATCHDOG_TRIPPED)
                s.set("goal_position", s.get("present_position"))
                self.watchdog_trips += 1
                logger.info("virtual servo %d: bus watchdog tripped", i)
            self._command(i)
        self.plant.step(max(0.0, min(dt, 0.1)))
        for i in self.servos:
            self._refresh(i)

    def _command(self, i: int) -> None:
        s = self.servos[i]
        if not s.get("torque_enable"):
            self.plant.set_goal(i, None, 0.0)
            return
        profile = s.get("profile_velocity") or s.get("velocity_limit")
        self.plant.set_goal(i, float(ct.ticks_to_rad(s.get("goal_position"))),
                            ct.velocity_to_rad_s(profile))

    def _refresh(self, i: int) -> None:
        s = self.servos[i]
        pos, vel, amp = self.plant.state(i)
        s.set("present_position", ct.rad_to_ticks(pos))
        s.set("present_velocity", ct.rad_s_to_velocity(vel))
        s.set("present_current", ct.amp_to_current(amp, s.table))
        s.set("moving", int(abs(vel) > 1e-3))
        s.set("present_input_voltage", round(s.voltage_v / ct.VOLTAGE_UNIT_V))
        s.set("present_temperature", round(s.temperature_c))
        s.set("realtime_tick", int(self.clock() * 1000) % 32768)

    # ------------------------------------------------------------------ faults
    def set_hardware_error(self, servo_id: int, *names: str) -> None:
        """Raise hardware-error bits by name (``overload``, ``overheating``, ...); shutdown bits cut torque."""
        s = self.servos[servo_id]
        bits = 0
        for name in names:
            bits |= 1 << s.table.hardware_error_bits[name]
        s.set("hardware_error_status", s.get("hardware_error_status") | bits)
        if bits & s.get("shutdown"):
            s.set("torque_enable", 0)

    def brownout(self, *servo_ids: int) -> None:
        """Servo power dropped and returned: the same as a reboot, without any packet (C12)."""
        for i in servo_ids or tuple(self.servos):
            self.servos[i].reset()

    # ------------------------------------------------------------------ packets
    def handle(self, packet: Packet) -> list[bytes]:
        """Status packets (encoded) that the bus answers to one instruction packet, in order."""
        now = self.clock()
        targets = self.servos if packet.servo_id == proto.BROADCAST_ID else (
            {packet.servo_id: self.servos[packet.servo_id]} if packet.servo_id in self.servos else {})
        for s in targets.values():
            s.last_rx = now
        handler = {Instruction.PING: self._ping, Instruction.READ: self._read,
                   Instruction.WRITE: self._write, Instruction.REBOOT: self._reboot,
                   Instruction.SYNC_READ: self._sync_read, Instruction.SYNC_WRITE: self._sync_write}
        replies: list[bytes] = []
        for sid, s in targets.items():
            fn = handler.get(packet.instruction)
            if fn is None:
                if packet.servo_id != proto.BROADCAST_ID:
                    replies.append(proto.encode_status(sid, ErrorCode.INSTRUCTION_ERROR | s.status_error))
                continue
            if packet.instruction in (Instruction.SYNC_READ, Instruction.SYNC_WRITE):
                return fn(packet)
            replies += fn(s, packet)
        if packet.servo_id == proto.BROADCAST_ID and packet.instruction != Instruction.PING:
            return []  # a broadcast write/reboot is applied by every servo, answered by none
        return replies

    def _status(self, s: VirtualServo, error: int, params: bytes = b"", level: int = 2) -> list[bytes]:
        if s.get("status_return_level") < level and not error:
            return []
        return [proto.encode_status(s.servo_id, error | s.status_error, params)]

    def _ping(self, s: VirtualServo, packet: Packet) -> list[bytes]:
        params = proto.u16(s.table.model_number) + bytes([s.get("firmware_version")])
        return [proto.encode_status(s.servo_id, s.status_error, params)]

    def _read(self, s: VirtualServo, packet: Packet) -> list[bytes]:
        if len(packet.params) != 4:
            return self._status(s, ErrorCode.DATA_LENGTH_ERROR)
        address, size = int.from_bytes(packet.params[:2], "little"), int.from_bytes(packet.params[2:], "little")
        error, data = s.read(address, size)
        return self._status(s, error, data, level=1)

    def _write(self, s: VirtualServo, packet: Packet) -> list[bytes]:
        if len(packet.params) < 3:
            return self._status(s, ErrorCode.DATA_LENGTH_ERROR)
        address = int.from_bytes(packet.params[:2], "little")
        error = s.write(address, packet.params[2:])
        if not error:
            self._command(s.servo_id)
        return self._status(s, error)

    def _reboot(self, s: VirtualServo, packet: Packet) -> list[bytes]:
        reply = self._status(s, ErrorCode.NONE)
        s.reset()
        self._command(s.servo_id)
        return reply

    def _sync_read(self, packet: Packet) -> list[bytes]:
        if len(packet.params) < 5:
            return []
        address, size = int.from_bytes(packet.params[:2], "little"), int.from_bytes(packet.params[2:4], "little")
        replies = []
        for sid in packet.params[4:]:
            s = self.servos.get(sid)
            if s is None:
                continue
            s.last_rx = self.clock()
            error, data = s.read(address, size)
            replies += self._status(s, error, data, level=1)
        return replies

    def _sync_write(self, packet: Packet) -> list[bytes]:
        try:
            address, _, records = proto.split_sync_write(packet.params)
        except proto.ProtocolError as exc:
            logger.debug("virtual bus: malformed sync write ignored: %s", exc)
            return []
        for sid, data in records.items():
            s = self.servos.get(sid)
            if s is not None:
                s.last_rx = self.clock()
                if not s.write(address, data):
                    self._command(sid)
        return []
