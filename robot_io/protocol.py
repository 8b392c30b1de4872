"""Dynamixel Protocol 2.0 packets: framing, CRC-16, byte stuffing and an incremental parser.

Reference: ROBOTIS e-manual, "DYNAMIXEL Protocol 2.0"
(https://emanual.robotis.com/docs/en/dxl/protocol2/).

Packet layout (both directions)::

    FF FF FD 00 | ID | LEN_L LEN_H | INST | PARAM... | CRC_L CRC_H

``LEN`` counts INST + the (stuffed) parameters + the two CRC bytes. The CRC-16 (polynomial
0x8005, initial value 0, no reflection) covers every byte from the header up to the last
parameter, *after* stuffing. Byte stuffing: wherever ``FF FF FD`` occurs inside the
instruction + parameter field, an extra ``FD`` is inserted after it, so the header pattern
never appears inside a packet. A status packet has INST = 0x55 and its first parameter is the
error byte (bit 7: hardware alert; bits 0-6: an error number, see :class:`ErrorCode`).

Follows the e-manual, not dynamixel-sdk 4.1.0, whose Python ``addStuffing`` drops the stuffing
whenever it would lengthen the packet.

This module imports nothing else of SafeTwin's; bytes in, bytes out.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

HEADER = b"\xff\xff\xfd\x00"
STUFF_PATTERN = b"\xff\xff\xfd"
BROADCAST_ID = 0xFE
MAX_ID = 0xFC
"""Highest unicast ID (252)."""
MAX_LENGTH = 1024
"""Largest LEN field the parser accepts; anything longer is treated as line noise."""
ALERT_BIT = 0x80
"""Bit 7 of a status packet's error byte: the servo has a hardware error (see register 70)."""


class Instruction(enum.IntEnum):
    """Instruction codes (e-manual, Protocol 2.0, "Instruction")."""

    PING = 0x01
    READ = 0x02
    WRITE = 0x03
    REG_WRITE = 0x04
    ACTION = 0x05
    FACTORY_RESET = 0x06
    REBOOT = 0x08
    CLEAR = 0x10
    STATUS = 0x55
    SYNC_READ = 0x82
    SYNC_WRITE = 0x83
    BULK_READ = 0x92
    BULK_WRITE = 0x93


class ErrorCode(enum.IntEnum):
    """Error numbers in bits 0-6 of a status packet's error byte (e-manual, "Status Packet")."""

    NONE = 0x00
    RESULT_FAIL = 0x01
    INSTRUCTION_ERROR = 0x02
    CRC_ERROR = 0x03
    DATA_RANGE_ERROR = 0x04
    DATA_LENGTH_ERROR = 0x05
    DATA_LIMIT_ERROR = 0x06
    ACCESS_ERROR = 0x07


class ProtocolError(ValueError):
    """A packet cannot be built or decoded (bad ID, bad field, refused instruction)."""


def _make_crc_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return tuple(table)


CRC_TABLE = _make_crc_table()
"""The e-manual's 256-entry table for CRC-16 polynomial 0x8005 (MSB first), generated."""


def crc16(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-16 of ``data`` as defined by Protocol 2.0 (poly 0x8005, init 0, not reflected)."""
    for byte in data:
        crc = ((crc << 8) ^ CRC_TABLE[((crc >> 8) ^ byte) & 0xFF]) & 0xFFFF
    return crc


def stuff(field_bytes: bytes) -> bytes:
    """Insert ``FD`` after every ``FF FF FD`` in an instruction + parameter field."""
    out = bytearray()
    for i, byte in enumerate(field_bytes):
        out.append(byte)
        if byte == 0xFD and i >= 2 and field_bytes[i - 2] == 0xFF and field_bytes[i - 1] == 0xFF:
            out.append(0xFD)
    return bytes(out)


def unstuff(field_bytes: bytes) -> bytes:
    """Remove the ``FD`` inserted after each ``FF FF FD`` (inverse of :func:`stuff`).

    Raises:
        ProtocolError: an ``FF FF FD`` is not followed by the stuffing ``FD``.
    """
    out = bytearray()
    i, n = 0, len(field_bytes)
    while i < n:
        byte = field_bytes[i]
        out.append(byte)
        i += 1
        if byte == 0xFD and len(out) >= 3 and out[-3] == 0xFF and out[-2] == 0xFF:
            if i >= n or field_bytes[i] != 0xFD:
                raise ProtocolError("FF FF FD inside a packet is not followed by the stuffing byte FD")
            i += 1
    return bytes(out)


def _check_id(servo_id: int, allow_broadcast: bool) -> None:
    limit = BROADCAST_ID if allow_broadcast else MAX_ID
    if not isinstance(servo_id, int) or not 0 <= servo_id <= limit or servo_id in (0xFD, 0xFF):
        raise ProtocolError(f"servo id {servo_id!r} out of range 0..{limit}")


def encode_packet(servo_id: int, instruction: int, params: bytes = b"") -> bytes:
    """Frame one packet (instruction or status): header, ID, LEN, INST, stuffed params, CRC."""
    _check_id(servo_id, allow_broadcast=True)
    body = stuff(bytes([instruction]) + bytes(params))
    length = len(body) + 2
    if length > MAX_LENGTH:
        raise ProtocolError(f"packet length {length} exceeds {MAX_LENGTH}")
    frame = HEADER + bytes([servo_id, length & 0xFF, length >> 8]) + body
    crc = crc16(frame)
    return frame + bytes([crc & 0xFF, crc >> 8])


def encode_status(servo_id: int, error: int, params: bytes = b"") -> bytes:
    """Frame a status packet (INST 0x55) with ``error`` as its first parameter."""
    if not 0 <= error <= 0xFF:
        raise ProtocolError(f"error byte {error!r} out of range")
    return encode_packet(servo_id, Instruction.STATUS, bytes([error]) + bytes(params))


def u16(value: int) -> bytes:
    return int(value).to_bytes(2, "little")


def ping(servo_id: int) -> bytes:
    """Ping instruction; the reply carries model number (2 B) and firmware version (1 B)."""
    return encode_packet(servo_id, Instruction.PING)


def read(servo_id: int, address: int, size: int) -> bytes:
    """Read ``size`` bytes from control-table ``address`` of one servo."""
    _check_id(servo_id, allow_broadcast=False)
    return encode_packet(servo_id, Instruction.READ, u16(address) + u16(size))


def write(servo_id: int, address: int, data: bytes) -> bytes:
    """Write ``data`` (little-endian register bytes) at ``address`` of one servo."""
    if not data:
        raise ProtocolError("write needs at least one data byte")
    return encode_packet(servo_id, Instruction.WRITE, u16(address) + bytes(data))


def sync_read(servo_ids: Sequence[int], address: int, size: int) -> bytes:
    """Sync Read: each listed servo replies in turn with ``size`` bytes from ``address``."""
    ids = list(servo_ids)
    if not ids or len(set(ids)) != len(ids):
        raise ProtocolError(f"sync read needs distinct servo ids, got {ids}")
    for sid in ids:
        _check_id(sid, allow_broadcast=False)
    return encode_packet(BROADCAST_ID, Instruction.SYNC_READ, u16(address) + u16(size) + bytes(ids))


def sync_write(address: int, size: int, data: Mapping[int, bytes]) -> bytes:
    """Sync Write ``size`` bytes at ``address`` to several servos; no status packet comes back."""
    if not data:
        raise ProtocolError("sync write needs at least one servo")
    params = bytearray(u16(address) + u16(size))
    for sid, value in data.items():
        _check_id(sid, allow_broadcast=False)
        if len(value) != size:
            raise ProtocolError(f"sync write to id {sid}: {len(value)} bytes, expected {size}")
        params += bytes([sid]) + bytes(value)
    return encode_packet(BROADCAST_ID, Instruction.SYNC_WRITE, bytes(params))


def reboot(servo_id: int) -> bytes:
    """Reboot instruction: the servo restarts (torque off, RAM reset to its initial values)."""
    return encode_packet(servo_id, Instruction.REBOOT)


def factory_reset(servo_id: int, mode: int = 0xFF) -> bytes:
    """Refused: a factory reset wipes IDs, limits and calibration on a live arm.

    Raises:
        ProtocolError: always; SafeTwin never sends Factory Reset.
    """
    raise ProtocolError(f"factory reset (id {servo_id}, mode {mode:#x}) is refused by SafeTwin")


@dataclass(frozen=True)
class Packet:
    """One decoded, de-stuffed packet.

    Attributes:
        servo_id: the ID field (0xFE = broadcast).
        instruction: the INST byte (0x55 for a status packet).
        params: the de-stuffed parameters; for a status packet *without* the error byte.
        error: the status error byte (0 for instruction packets).
    """

    servo_id: int
    instruction: int
    params: bytes
    error: int = 0

    @property
    def is_status(self) -> bool:
        return self.instruction == Instruction.STATUS

    @property
    def alert(self) -> bool:
        """Hardware alert bit (bit 7) of a status packet."""
        return bool(self.error & ALERT_BIT)

    @property
    def error_code(self) -> int:
        """The error number in bits 0-6 (an :class:`ErrorCode` value)."""
        return self.error & 0x7F


def describe_error(error: int) -> str:
    """Human-readable status error byte, e.g. ``'DATA_RANGE_ERROR+ALERT'``."""
    code = error & 0x7F
    try:
        name = ErrorCode(code).name
    except ValueError:
        name = f"UNKNOWN_ERROR_{code:#x}"
    return name + ("+ALERT" if error & ALERT_BIT else "")


@dataclass
class ParserStats:
    """Counts of what the parser threw away (all are comm faults)."""

    crc_errors: int = 0
    garbage_bytes: int = 0
    bad_stuffing: int = 0
    bad_length: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


@dataclass
class PacketParser:
    """Incremental decoder: feed bytes as they arrive, get whole packets out.

    Bytes before a header are discarded (counted as garbage). A frame with a bad CRC, bad
    stuffing or an impossible length is rejected and the search restarts one byte after its
    header, so a valid packet hidden inside line noise is still found. A partial frame stays
    buffered until the rest arrives (or :meth:`reset` drops it).
    """

    stats: ParserStats = field(default_factory=ParserStats)
    _buf: bytearray = field(default_factory=bytearray)

    def reset(self) -> None:
        """Drop any buffered partial frame (counted as garbage)."""
        self.stats.garbage_bytes += len(self._buf)
        self._buf.clear()

    @property
    def pending(self) -> int:
        """Number of buffered bytes that are not a complete packet yet."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Packet]:
        """Add received bytes; return every complete, valid packet now available, in order."""
        self._buf += data
        packets: list[Packet] = []
        while True:
            packet, progressed = self._next()
            if packet is not None:
                packets.append(packet)
            if not progressed:
                return packets

    def _drop(self, count: int) -> None:
        self.stats.garbage_bytes += count
        del self._buf[:count]

    def _next(self) -> tuple[Packet | None, bool]:
        start = self._buf.find(HEADER)
        if start < 0:
            keep = _partial_header_len(self._buf)
            if len(self._buf) > keep:
                self._drop(len(self._buf) - keep)
            return None, False
        if start:
            self._drop(start)
        if len(self._buf) < 7:
            return None, False
        length = self._buf[5] | (self._buf[6] << 8)
        if length < 3 or length > MAX_LENGTH:
            self.stats.bad_length += 1
            self._drop(1)
            return None, True
        total = 7 + length
        if len(self._buf) < total:
            return None, False
        frame = bytes(self._buf[:total])
        if crc16(frame[:-2]) != (frame[-2] | (frame[-1] << 8)):
            self.stats.crc_errors += 1
            self._drop(1)
            return None, True
        try:
            body = unstuff(frame[7:-2])
        except ProtocolError:
            self.stats.bad_stuffing += 1
            self._drop(1)
            return None, True
        if body[0] == Instruction.STATUS and len(body) < 2:  # a status needs its error byte
            self.stats.bad_length += 1
            self._drop(1)
            return None, True
        del self._buf[:total]
        return _packet_from_body(frame[4], body), True


def _partial_header_len(buf: bytearray) -> int:
    """Length of the longest suffix of ``buf`` that is a prefix of the header."""
    for n in (3, 2, 1):
        if len(buf) >= n and buf[-n:] == HEADER[:n]:
            return n
    return 0


def _packet_from_body(servo_id: int, body: bytes) -> Packet:
    instruction = body[0]
    if instruction == Instruction.STATUS:
        return Packet(servo_id, instruction, bytes(body[2:]), error=body[1])
    return Packet(servo_id, instruction, bytes(body[1:]))


def parse_all(data: bytes) -> list[Packet]:
    """Decode every valid packet in ``data`` (a convenience over :class:`PacketParser`)."""
    return PacketParser().feed(data)


def split_sync_write(params: bytes) -> tuple[int, int, dict[int, bytes]]:
    """Decode Sync Write parameters into ``(address, size, {id: data})``.

    Raises:
        ProtocolError: the parameter length is not a whole number of ``1 + size`` records.
    """
    if len(params) < 4:
        raise ProtocolError("sync write parameters shorter than 4 bytes")
    address = params[0] | (params[1] << 8)
    size = params[2] | (params[3] << 8)
    rest = params[4:]
    if size == 0 or len(rest) % (size + 1):
        raise ProtocolError(f"sync write: {len(rest)} data bytes is not a multiple of {size + 1}")
    records = {rest[i]: bytes(rest[i + 1:i + 1 + size]) for i in range(0, len(rest), size + 1)}
    return address, size, records


def ids_of(packets: Iterable[Packet]) -> list[int]:
    return [p.servo_id for p in packets]
