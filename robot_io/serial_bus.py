"""A Dynamixel Protocol 2.0 bus over pyserial: transactions, retries and fault accounting.

Every read and write is bounded: each attempt waits at most ``timeout_s`` (monotonic clock)
and a transaction makes at most ``1 + retries`` attempts (C1). Replies are matched by ID,
instruction and length; anything else (wrong ID, echo, duplicate, a late reply from an
earlier request) is discarded and counted, never attributed to another servo (C5). Stale
bytes are drained before each request so a late tail cannot be glued to the next reply (C2).

Error classes:

* :class:`CommError` (a ``ConnectionError``): no valid reply, port busy, disconnected.
* :class:`ServoStatusError` (a ``RuntimeError``): the servo answered with its error field set
  (C7); :class:`ServoAlertError` when the hardware-alert bit 7 is set (C6), on every read path
  including Sync Read.

This module imports nothing else of SafeTwin's except the protocol (a robot_io leaf).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import serial

from . import protocol as proto
from .protocol import Instruction, Packet, PacketParser

logger = logging.getLogger(__name__)

COUNTER_KEYS = ("timeouts", "retries", "crc_errors", "garbage_bytes", "bad_stuffing", "bad_length",
                "wrong_id", "wrong_instruction", "duplicates", "late_bytes", "alerts",
                "status_errors", "disconnects", "port_busy")
"""Comm-fault counters kept by :class:`DynamixelBus` (all start at 0)."""


USB_SERIAL_SYSFS = "/sys/bus/usb-serial/devices"
"""Where Linux lists USB-serial adapters (each with a ``latency_timer`` file, ms)."""


class CommError(ConnectionError):
    """No usable reply: timeout after all retries, disconnection, or a port that cannot be used.

    Attributes:
        servo_ids: the servos the transaction addressed.
        attempts: how many times the request was sent.
    """

    def __init__(self, message: str, servo_ids: Sequence[int] = (), attempts: int = 0) -> None:
        super().__init__(message)
        self.servo_ids = tuple(servo_ids)
        self.attempts = attempts


class DisconnectedError(CommError):
    """The port went away (unplug, EIO, read-ready with no data) (C8). Latched until reopened."""


class PortBusyError(CommError):
    """Another process holds the port (exclusive open failed) (C9)."""


class ServoStatusError(RuntimeError):
    """A servo replied with its status error field set (C7).

    Attributes:
        servo_id: the replying servo.
        instruction: name of the instruction that failed (e.g. ``WRITE``).
        address: control-table address involved (None for ping/reboot).
        value: the raw bytes written, when the instruction was a write.
        error: the raw status error byte (bit 7 = alert, bits 0-6 = :class:`protocol.ErrorCode`).
    """

    def __init__(self, servo_id: int, instruction: str, error: int, address: int | None = None,
                 value: bytes | None = None, message: str = "") -> None:
        detail = message or (f"servo {servo_id}: {instruction} at address {address} "
                             f"(value {value.hex(' ') if value else '-'}) failed: "
                             f"{proto.describe_error(error)}")
        super().__init__(detail)
        self.servo_id, self.instruction, self.error = servo_id, instruction, error
        self.address, self.value = address, value

    @property
    def error_code(self) -> int:
        return self.error & 0x7F


class ServoAlertError(ServoStatusError):
    """One or more status packets had the hardware-alert bit set (C6).

    Attributes:
        alert_ids: every servo whose reply carried the alert bit.
        data: the payloads that *were* received (id -> bytes), so a caller can still hold the
            other joints; empty for ping/write.
    """

    def __init__(self, alert_ids: Sequence[int], instruction: str, address: int | None,
                 data: Mapping[int, bytes]) -> None:
        self.alert_ids = tuple(alert_ids)
        self.data = dict(data)
        super().__init__(self.alert_ids[0], instruction, proto.ALERT_BIT, address,
                         message=f"hardware alert (bit 7) from servo(s) {list(self.alert_ids)} "
                                 f"during {instruction}")


class HandshakeError(CommError):
    """Connect refused: missing servo, wrong model, duplicate IDs, faulted servo (C11)."""


class LatencyTimerError(CommError):
    """The USB-serial latency timer is too long for the control rate (C10)."""


class NotArmedError(RuntimeError):
    """A motion command was refused because torque has not been enabled (armed)."""


class _JointFault(ServoStatusError):
    """Base of the driver's named servo-side faults; ``joints`` names them, ``observation``
    holds the state read in the same cycle (None when nothing usable was read)."""

    kind = "servo fault"

    def __init__(self, joints: Sequence[str], observation: dict | None = None,
                 error: int = 0, detail: str = "") -> None:
        self.joints = tuple(joints)
        self.observation = observation
        ServoStatusError.__init__(self, -1, "SYNC_READ", error,
                                  message=f"{self.kind} on {list(self.joints)}{detail}")


class HardwareAlertError(_JointFault, ServoAlertError):
    """Alert bit set (C6); ``hardware_errors`` maps joint -> fault names of register 70."""

    kind = "hardware alert"

    def __init__(self, alert_ids: Sequence[int], hardware_errors: Mapping[str, list[str]],
                 observation: dict | None = None) -> None:
        self.alert_ids = tuple(alert_ids)
        self.data = {}
        self.hardware_errors = dict(hardware_errors)
        _JointFault.__init__(self, list(hardware_errors), observation, proto.ALERT_BIT,
                             f": {self.hardware_errors}")


class WatchdogTrippedError(_JointFault):
    """Bus Watchdog(98) reads -1: the servos stopped themselves (C13). Clear only in a reset."""

    kind = "bus watchdog tripped (servo-side stop)"


class ServoRebootedError(_JointFault):
    """Torque Enable reads 0 while armed: the servo rebooted or browned out (C12)."""

    kind = "servo rebooted / brown-out (torque found off)"


def usb_latency_timer_ms(port: str) -> int | None:
    """The FTDI/USB-serial latency timer of ``port`` in ms, or None when it has none (a pty).

    Reads ``/sys/bus/usb-serial/devices/<tty>/latency_timer`` after resolving symlinks such as
    ``/dev/serial/by-id/...`` (C10).
    """
    name = Path(os.path.realpath(port)).name
    path = Path(USB_SERIAL_SYSFS) / name / "latency_timer"
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


class DynamixelBus:
    """One serial port speaking Protocol 2.0.

    Args:
        port: device path (``/dev/ttyUSB0``, a pty slave path, ...).
        baudrate: bits per second.
        timeout_s: wait per attempt for a reply, s (monotonic).
        retries: extra attempts after a timeout (0..5); total wait <= (1 + retries) * timeout_s.
        write_timeout_s: bound on one write, s. Kept apart from ``timeout_s``: a thread paused by
            the scheduler right after a complete write must not look like an unplugged port.
    """

    def __init__(self, port: str, baudrate: int = 1_000_000, *, timeout_s: float = 0.02,
                 retries: int = 2, write_timeout_s: float = 0.25) -> None:
        if not 0.0 < timeout_s <= 5.0:
            raise ValueError(f"timeout_s must be in (0, 5] s, got {timeout_s!r}")
        if not 0 <= retries <= 5:
            raise ValueError(f"retries must be in 0..5, got {retries!r}")
        if not 0.0 < write_timeout_s <= 5.0:
            raise ValueError(f"write_timeout_s must be in (0, 5] s, got {write_timeout_s!r}")
        self.write_timeout_s = float(write_timeout_s)
        self.port, self.baudrate = port, baudrate
        self.timeout_s, self.retries = float(timeout_s), int(retries)
        self.counters: Counter[str] = Counter({k: 0 for k in COUNTER_KEYS})
        self._ser: serial.Serial | None = None
        self._parser = PacketParser()
        self._lock = threading.RLock()
        self._disconnected = False

    # ---------------------------------------------------------------- port lifecycle
    def open(self) -> None:
        """Open the port exclusively. Raises PortBusyError (C9) or CommError."""
        with self._lock:
            if self._ser is not None:
                return
            try:
                self._ser = serial.Serial(self.port, self.baudrate, timeout=self.timeout_s,
                                          write_timeout=self.write_timeout_s, exclusive=True)
            except serial.SerialException as exc:
                if "exclusive" in str(exc).lower() or "lock" in str(exc).lower():
                    self.counters["port_busy"] += 1
                    raise PortBusyError(f"{self.port}: port is held by another process ({exc})") from exc
                raise CommError(f"{self.port}: cannot open ({exc})") from exc
            self._disconnected = False
            self._parser = PacketParser()

    def close(self) -> None:
        """Close the port (idempotent, never raises)."""
        with self._lock:
            ser, self._ser = self._ser, None
            if ser is not None:
                try:
                    ser.close()
                except (OSError, serial.SerialException) as exc:
                    logger.warning("%s: error while closing: %s", self.port, exc)

    @property
    def is_open(self) -> bool:
        """True while the port is open and has not failed (see :attr:`holds_port`)."""
        return self._ser is not None and not self._disconnected

    @property
    def holds_port(self) -> bool:
        """True while a port object is held (also after a disconnection, until :meth:`close`)."""
        return self._ser is not None

    def __enter__(self) -> DynamixelBus:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fault_counts(self) -> dict[str, int]:
        """All comm-fault counters, parser rejections included."""
        counts = dict(self.counters)
        for key, value in self._parser.stats.as_dict().items():
            counts[key] += value
        return counts

    # ---------------------------------------------------------------- raw I/O
    def _port(self) -> serial.Serial:
        if self._disconnected:
            raise DisconnectedError(f"{self.port}: disconnected (latched; close and reopen)")
        if self._ser is None:
            raise CommError(f"{self.port}: port is not open")
        return self._ser

    def _io_failed(self, exc: Exception) -> DisconnectedError:
        self._disconnected = True
        self.counters["disconnects"] += 1
        logger.error("%s: serial I/O failed, treating as unplugged: %s", self.port, exc)
        return DisconnectedError(f"{self.port}: disconnected ({exc})")

    def _send(self, packet: bytes) -> None:
        ser = self._port()
        try:
            stale = ser.read(ser.in_waiting) if ser.in_waiting else b""
            if stale:
                self.counters["late_bytes"] += len(stale)
            self._parser.reset()
            ser.write(packet)
            ser.flush()
        except serial.SerialTimeoutException as exc:  # a stuck write: a comm fault, counted
            self.counters["timeouts"] += 1
            raise CommError(f"{self.port}: write timed out after {self.write_timeout_s} s") from exc
        except (OSError, serial.SerialException) as exc:
            raise self._io_failed(exc) from exc

    def _read_packets(self, deadline: float) -> list[Packet] | None:
        """Block until some bytes arrive or ``deadline``; None on timeout."""
        ser = self._port()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        try:
            ser.timeout = remaining
            data = ser.read(max(1, ser.in_waiting))
        except (OSError, serial.SerialException) as exc:
            raise self._io_failed(exc) from exc
        if not data:
            return None if time.monotonic() >= deadline - 1e-4 else []
        return self._parser.feed(data)

    # ---------------------------------------------------------------- transactions
    def _accept(self, packet: Packet, expected: set[int], seen: dict[int, Packet]) -> bool:
        if not packet.is_status:
            self.counters["wrong_instruction"] += 1
            return False
        if packet.servo_id not in expected:
            self.counters["wrong_id"] += 1
            return False
        if packet.servo_id in seen:
            self.counters["duplicates"] += 1
            return False
        return True

    def _transact(self, packet: bytes, ids: Sequence[int], nbytes: int, what: str,
                  address: int | None = None, value: bytes | None = None) -> dict[int, Packet]:
        """Send, collect one valid status per id (retrying for missing ones), check errors."""
        seen: dict[int, Packet] = {}
        attempts = 0
        with self._lock:
            while True:
                attempts += 1
                t0 = time.monotonic()
                self._send(packet)
                self._collect(set(ids) - set(seen), nbytes, seen, t0 + self.timeout_s)
                missing = [i for i in ids if i not in seen]
                logger.debug("%s %s: %.2f ms, missing %s", what, list(ids),
                             1e3 * (time.monotonic() - t0), missing)
                if not missing:
                    break
                self.counters["timeouts"] += 1
                if attempts > self.retries:
                    raise CommError(f"{self.port}: no valid reply to {what} from servo(s) {missing} "
                                    f"after {attempts} attempt(s)", missing, attempts)
                self.counters["retries"] += 1
                if what == "SYNC_READ":
                    packet = proto.sync_read(missing, address or 0, nbytes)
        self._check_status(seen, what, address, value)
        return seen

    def _collect(self, expected: set[int], nbytes: int | None, seen: dict[int, Packet],
                 deadline: float) -> None:
        while expected - set(seen):
            packets = self._read_packets(deadline)
            if packets is None:
                return
            for p in packets:
                if not self._accept(p, expected, seen):
                    continue
                if p.error_code == 0 and nbytes is not None and len(p.params) != nbytes:
                    self.counters["bad_length"] += 1
                    continue
                seen[p.servo_id] = p

    def _check_status(self, seen: Mapping[int, Packet], what: str, address: int | None,
                      value: bytes | None) -> None:
        alerts = [i for i, p in seen.items() if p.alert]
        failed = [p for p in seen.values() if p.error_code]
        self.counters["alerts"] += len(alerts)
        self.counters["status_errors"] += len(failed)
        if failed:
            p = failed[0]
            raise ServoStatusError(p.servo_id, what, p.error, address, value)
        if alerts:
            raise ServoAlertError(alerts, what, address,
                                  {i: p.params for i, p in seen.items()})

    # ---------------------------------------------------------------- public instructions
    def ping(self, servo_id: int) -> tuple[int, int]:
        """Ping one servo; returns ``(model_number, firmware_version)``. Alerts raise (C6)."""
        reply = self._transact(proto.ping(servo_id), [servo_id], 3, "PING")[servo_id]
        return int.from_bytes(reply.params[:2], "little"), reply.params[2]

    def read(self, servo_id: int, address: int, size: int) -> bytes:
        """Read ``size`` bytes at ``address``. Raises ServoStatusError/ServoAlertError/CommError."""
        reply = self._transact(proto.read(servo_id, address, size), [servo_id], size, "READ",
                               address)
        return reply[servo_id].params

    def write(self, servo_id: int, address: int, data: bytes) -> None:
        """Write bytes at ``address`` and wait for the status packet (errors raise, C7)."""
        self._transact(proto.write(servo_id, address, data), [servo_id], 0, "WRITE", address,
                       bytes(data))

    def sync_read(self, servo_ids: Sequence[int], address: int, size: int) -> dict[int, bytes]:
        """Sync Read the same block from several servos; id -> bytes.

        The alert bit of *every* reply is checked (C6): a ServoAlertError carries the data.
        """
        replies = self._transact(proto.sync_read(servo_ids, address, size), list(servo_ids), size,
                                 "SYNC_READ", address)
        return {i: replies[i].params for i in servo_ids}

    def sync_write(self, address: int, size: int, data: Mapping[int, bytes]) -> None:
        """Sync Write (broadcast; the servos send no status packet, so nothing is verified here)."""
        with self._lock:
            self._send(proto.sync_write(address, size, data))

    def reboot(self, servo_id: int) -> None:
        """Reboot one servo (torque off, RAM back to initial values); waits for its status."""
        try:
            self._transact(proto.reboot(servo_id), [servo_id], 0, "REBOOT")
        except ServoAlertError:
            pass  # the status is sent before rebooting, so it still carries the old alert

    def drain(self, settle_s: float) -> int:
        """Wait ``settle_s`` and discard whatever arrives (counted as late bytes); returns the count."""
        with self._lock:
            ser = self._port()
            got = 0
            deadline = time.monotonic() + settle_s
            try:
                while (remaining := deadline - time.monotonic()) > 0:
                    ser.timeout = remaining
                    got += len(ser.read(max(1, ser.in_waiting)))
            except (OSError, serial.SerialException) as exc:
                raise self._io_failed(exc) from exc
            self.counters["late_bytes"] += got
            self._parser.reset()
            return got

    def factory_reset(self, servo_id: int) -> None:
        """Refused (raises protocol.ProtocolError): SafeTwin never factory-resets a servo."""
        proto.factory_reset(servo_id)


__all__ = ["COUNTER_KEYS", "CommError", "DisconnectedError", "DynamixelBus", "HandshakeError",
           "HardwareAlertError", "Instruction", "LatencyTimerError", "NotArmedError", "PortBusyError",
           "ServoAlertError", "ServoRebootedError", "ServoStatusError", "WatchdogTrippedError",
           "usb_latency_timer_ms"]
