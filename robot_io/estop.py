"""E-stop permissive device: line protocol, host-side monitor and a pseudo-terminal emulator.

The e-stop box (reference firmware in ``robot_io/firmware/estop_box/``) talks to the host over
its own serial line (USB CDC / UART, 115200 8N1). Device -> host only; ASCII lines terminated
by ``\\n`` (a ``\\r`` is an error), at most :data:`MAX_LINE` bytes, each of the form

    <payload>*<CK>\\n        CK = two upper-case hex digits: XOR of every payload byte

Payloads (protocol version 1):

    SAFETWIN-ESTOP 1         hello: at boot and again every 20 heartbeats
    HB <seq> <R|E>           heartbeat at 20 Hz; seq 0..65535 (wraps); level R = released
                             (button circuit closed), E = engaged (pressed or wire broken)
    ESTOP                    sent at once on the press edge (before the next heartbeat)
    RELEASE                  sent on the release edge

The heartbeat carries the button *level*, so a lost edge line cannot hide a press. The host
grants the permissive only when all of these hold (scenario E4; anything else means stop):
a hello with version 1 has been seen; the last valid heartbeat is younger than
``stale_after_s`` (monotonic clock); its sequence number advanced (a repeated number is a
frozen or replaying device and does not refresh the heartbeat); the level is R; no malformed
line arrived since the last ``recover_heartbeats`` valid heartbeats; the port is open.

This module imports nothing else of SafeTwin's; pyserial is imported lazily by the monitor.
"""

from __future__ import annotations

import enum
import logging
import os
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
HELLO_PREFIX = "SAFETWIN-ESTOP"
MAX_LINE = 40
"""Longest accepted line in bytes, newline excluded; a longer run of bytes is malformed."""
HEARTBEAT_HZ = 20.0
BAUDRATE = 115200
SEQ_MODULO = 65536


class EStopState(str, enum.Enum):
    """The permissive's state as seen by the host; only RELEASED permits motion."""

    RELEASED = "released"
    ENGAGED = "engaged"
    STALE = "stale"
    MALFORMED = "malformed"
    WRONG_VERSION = "wrong_version"
    NO_HELLO = "no_hello"
    DISCONNECTED = "disconnected"


def checksum(payload: bytes) -> int:
    """XOR of all bytes of ``payload`` (0..255)."""
    ck = 0
    for byte in payload:
        ck ^= byte
    return ck


def encode_line(payload: str) -> bytes:
    """Frame ``payload`` as ``<payload>*<CK>\\n`` (ASCII)."""
    raw = payload.encode("ascii")
    return raw + b"*%02X\n" % checksum(raw)


def decode_line(line: bytes) -> str:
    """Payload of one line (without the ``\\n``); raises ValueError with the reason when malformed."""
    if len(line) > MAX_LINE:
        raise ValueError(f"line longer than {MAX_LINE} bytes")
    if any(b < 0x20 or b > 0x7E for b in line):
        raise ValueError("non-printable byte in line")
    payload, star, ck = line.rpartition(b"*")
    if not star or len(ck) != 2 or ck.upper() != ck or any(c not in b"0123456789ABCDEF" for c in ck):
        raise ValueError("missing or malformed '*CK' checksum")
    if int(ck, 16) != checksum(payload):
        raise ValueError("checksum mismatch")
    return payload.decode("ascii")


@dataclass
class EStopStatus:
    """A snapshot of the permissive (times in s, monotonic clock)."""

    state: EStopState
    permits: bool
    reason: str
    heartbeat_age_s: float | None
    seq: int | None
    counters: dict[str, int] = field(default_factory=dict)


class EStopProtocol:
    """The host-side protocol state machine (no I/O); :class:`EStopMonitor` feeds it lines.

    Args:
        stale_after_s: a heartbeat older than this (s) means stop.
        recover_heartbeats: valid heartbeats needed after a malformed line before it clears.
        clock: monotonic clock (s).
    """

    def __init__(self, stale_after_s: float = 0.15, recover_heartbeats: int = 3,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not stale_after_s > 0 or recover_heartbeats < 1:
            raise ValueError("stale_after_s must be > 0 and recover_heartbeats >= 1")
        self.stale_after_s, self.recover_heartbeats, self.clock = stale_after_s, recover_heartbeats, clock
        self._lock = threading.Lock()
        self.version: int | None = None
        self.level = "E"
        self.seq: int | None = None
        self.t_heartbeat: float | None = None
        self.malformed_pending = 0
        self.disconnected: str | None = None
        self.counters = {"heartbeats": 0, "malformed": 0, "repeated_seq": 0, "seq_gaps": 0,
                         "hello": 0, "estop_edges": 0, "release_edges": 0}

    def feed_line(self, line: bytes, now: float | None = None) -> None:
        """Process one line (without its ``\\n``) received at ``now``."""
        now = self.clock() if now is None else now
        with self._lock:
            try:
                self._handle(decode_line(line), now)
            except ValueError as exc:
                self.counters["malformed"] += 1
                self.malformed_pending = self.recover_heartbeats
                logger.warning("e-stop: malformed line %r: %s", bytes(line[:MAX_LINE]), exc)

    def _handle(self, payload: str, now: float) -> None:
        parts = payload.split(" ")
        if parts[0] == HELLO_PREFIX and len(parts) == 2 and parts[1].isdigit():
            self.version, self.seq = int(parts[1]), None
            self.counters["hello"] += 1
        elif parts[0] == "HB" and len(parts) == 3 and parts[1].isdigit() and parts[2] in ("R", "E"):
            self._heartbeat(int(parts[1]), parts[2], now)
        elif payload == "ESTOP":
            self.level = "E"
            self.counters["estop_edges"] += 1
        elif payload == "RELEASE":
            self.counters["release_edges"] += 1
        else:
            raise ValueError(f"unknown message {payload!r}")

    def _heartbeat(self, seq: int, level: str, now: float) -> None:
        if seq >= SEQ_MODULO:
            raise ValueError(f"heartbeat seq {seq} out of range")
        if self.version != PROTOCOL_VERSION:
            self.level = "E"
            return
        if self.seq is not None and seq == self.seq:
            self.counters["repeated_seq"] += 1
            return
        if self.seq is not None and seq != (self.seq + 1) % SEQ_MODULO:
            self.counters["seq_gaps"] += 1
        self.seq, self.level, self.t_heartbeat = seq, level, now
        self.counters["heartbeats"] += 1
        self.malformed_pending = max(0, self.malformed_pending - 1)

    def mark_disconnected(self, why: str) -> None:
        with self._lock:
            self.disconnected = why

    def status(self, now: float | None = None) -> EStopStatus:
        """Evaluate the permissive at ``now`` (monotonic s)."""
        now = self.clock() if now is None else now
        with self._lock:
            age = None if self.t_heartbeat is None else now - self.t_heartbeat
            state, reason = self._evaluate(age)
            return EStopStatus(state, state is EStopState.RELEASED, reason, age, self.seq, dict(self.counters))

    def _evaluate(self, age: float | None) -> tuple[EStopState, str]:
        if self.disconnected is not None:
            return EStopState.DISCONNECTED, f"e-stop line lost: {self.disconnected}"
        if self.version is None:
            return EStopState.NO_HELLO, "no SAFETWIN-ESTOP hello received"
        if self.version != PROTOCOL_VERSION:
            return EStopState.WRONG_VERSION, f"device speaks version {self.version}, host {PROTOCOL_VERSION}"
        if self.malformed_pending:
            return EStopState.MALFORMED, "malformed line received"
        if age is None or age > self.stale_after_s:
            shown = "never" if age is None else f"{age * 1e3:.0f} ms ago"
            return EStopState.STALE, f"last valid heartbeat {shown} (limit {self.stale_after_s * 1e3:.0f} ms)"
        if self.level != "R":
            return EStopState.ENGAGED, "e-stop engaged"
        return EStopState.RELEASED, "released"


class EStopMonitor:
    """Reads the e-stop line in a daemon thread and exposes :meth:`status` / :meth:`permits_motion`.

    Args:
        port: serial device path (the emulator's ``.port`` in simulation).
        stale_after_s: heartbeat timeout (s), monotonic clock.
        baudrate: line speed (bit/s).
    """

    def __init__(self, port: str, *, stale_after_s: float = 0.15, baudrate: int = BAUDRATE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.port, self.baudrate = port, baudrate
        self.protocol = EStopProtocol(stale_after_s=stale_after_s, clock=clock)
        self._serial = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> EStopMonitor:
        """Open the port exclusively and start the reader thread; raises ConnectionError on failure."""
        import serial  # lazy: importing this module never needs pyserial

        try:
            self._serial = serial.Serial(self.port, self.baudrate, timeout=0.01, exclusive=True)
        except (serial.SerialException, OSError) as exc:
            raise ConnectionError(f"e-stop port {self.port}: cannot open: {exc}") from exc
        self._thread = threading.Thread(target=self._run, name="estop-monitor", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        import serial

        buf = bytearray()
        while not self._stop.is_set():
            try:
                # whatever is waiting, else block (<= timeout) for the first byte: no added latency
                chunk = self._serial.read(self._serial.in_waiting or 1)
            except (serial.SerialException, OSError, TypeError, AttributeError) as exc:
                if not self._stop.is_set():
                    self.protocol.mark_disconnected(str(exc) or type(exc).__name__)
                    logger.error("e-stop port %s lost: %s", self.port, exc)
                return
            if not chunk:
                continue
            now = self.protocol.clock()
            buf.extend(chunk)
            while (nl := buf.find(b"\n")) >= 0:
                self.protocol.feed_line(bytes(buf[:nl]), now)
                del buf[: nl + 1]
            if len(buf) > MAX_LINE:
                self.protocol.feed_line(bytes(buf), now)  # reported as malformed (too long)
                buf.clear()

    def status(self) -> EStopStatus:
        return self.protocol.status()

    def permits_motion(self) -> bool:
        return self.protocol.status().permits

    def close(self) -> None:
        """Stop the thread and close the port; idempotent. Afterwards the state is DISCONNECTED."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None
        if self._serial is not None:
            self._serial.close()
            self._serial = None
        self.protocol.mark_disconnected("monitor closed")

    def __enter__(self) -> EStopMonitor:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EStopEmulator:
    """The e-stop box on a pseudo-terminal (``os.openpty``), for tests and ``estop_port="sim"``.

    ``port`` is the slave device path to give :class:`EStopMonitor`. Fault injection:
    :meth:`press`, :meth:`release`, :meth:`stop_heartbeat`, :meth:`resume_heartbeat`,
    :meth:`inject` (raw bytes), :meth:`send_hello` (any version), :meth:`freeze_seq`,
    :meth:`hangup` (unplug).
    """

    def __init__(self, version: int = PROTOCOL_VERSION, rate_hz: float = HEARTBEAT_HZ) -> None:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.port = os.ttyname(self._slave)
        self.version, self.period = version, 1.0 / rate_hz
        self.engaged = False
        self.heartbeat_on = True
        self.frozen = False
        self._seq = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.lines_sent = 0
        self._thread = threading.Thread(target=self._run, name="estop-emulator", daemon=True)
        self.send_hello()
        self._thread.start()

    def _write(self, data: bytes) -> None:
        with self._lock:
            if self._master < 0:
                return
            try:
                os.write(self._master, data)
                self.lines_sent += 1
            except BlockingIOError:
                logger.debug("e-stop emulator: nobody reads the pty, line dropped")
            except OSError as exc:
                logger.debug("e-stop emulator: write failed: %s", exc)

    def _run(self) -> None:
        n = 0
        next_t = time.monotonic()
        while not self._stop.wait(max(0.0, next_t - time.monotonic())):
            next_t += self.period
            if not self.heartbeat_on:
                continue
            n += 1
            if n % 20 == 0:
                self.send_hello()
            self._write(encode_line(f"HB {self._seq} {'E' if self.engaged else 'R'}"))
            if not self.frozen:
                self._seq = (self._seq + 1) % SEQ_MODULO

    def send_hello(self, version: int | None = None) -> None:
        self._write(encode_line(f"{HELLO_PREFIX} {self.version if version is None else version}"))

    def press(self) -> None:
        self.engaged = True
        self._write(encode_line("ESTOP"))

    def release(self) -> None:
        self.engaged = False
        self._write(encode_line("RELEASE"))

    def stop_heartbeat(self) -> None:
        self.heartbeat_on = False

    def resume_heartbeat(self) -> None:
        self.heartbeat_on = True

    def freeze_seq(self, frozen: bool = True) -> None:
        """Keep sending the same heartbeat number (a hung device replaying its last line)."""
        self.frozen = frozen

    def inject(self, data: bytes) -> None:
        """Write raw bytes (garbage, bad checksums, partial lines) onto the line."""
        self._write(data)

    def hangup(self) -> None:
        """Close the device side, as when the USB cable is pulled."""
        self._stop.set()
        with self._lock:
            for fd in (self._master, self._slave):
                if fd >= 0:
                    os.close(fd)
            self._master = self._slave = -1

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)
        self.hangup()

    def __enter__(self) -> EStopEmulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
