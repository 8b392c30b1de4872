"""The virtual servo bus on a pseudo-terminal, with fault injection.

:class:`BusEmulator` opens a pty pair (``os.openpty``); the driver opens the slave path
(:attr:`BusEmulator.port`) with pyserial while a thread here reads the master fd, decodes
instruction packets, lets a :class:`~emulator.ServoChain` answer and steps the plant in real
time. Faults are applied to the outgoing status packets in order (one fault per reply):

* ``drop``: the reply is never sent (C1);
* ``delay``: sent ``delay_s`` later (a late reply, C5);
* ``truncate``: only ``keep`` bytes now, the rest ``rest_after_s`` later or never (C2);
* ``corrupt``: one bit flipped (C3); ``garbage``: noise bytes before the reply (C4);
* ``wrong_id``: the reply re-framed with another ID (C5); ``duplicate``: sent twice (C5).

Plus :meth:`BusEmulator.disconnect` (close the master fd: an unplug, C8) and, on the chain,
hardware-error alarms (C6) and brown-outs (C12).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import select
import threading
import time
import tty
from collections import deque
from dataclasses import dataclass

from . import protocol as proto
from .emulator import ServoChain
from .protocol import PacketParser

logger = logging.getLogger(__name__)

FAULT_KINDS = ("drop", "delay", "truncate", "corrupt", "garbage", "wrong_id", "duplicate")


@dataclass(frozen=True)
class ReplyFault:
    """One fault applied to one outgoing status packet (see the module docstring).

    Attributes:
        kind: one of :data:`FAULT_KINDS`.
        delay_s: ``delay``: extra latency, s.
        keep: ``truncate``: bytes sent at once.
        rest_after_s: ``truncate``: the remaining bytes follow after this many s (None = never).
        bit: ``corrupt``: index of the bit to flip (counted over the whole frame).
        data: ``garbage``: bytes sent before the reply.
        servo_id: ``wrong_id``: the ID to put in the reply.
    """

    kind: str
    delay_s: float = 0.0
    keep: int = 5
    rest_after_s: float | None = None
    bit: int = 60
    data: bytes = b"\x00\xff\x13\xff\xff\x00"
    servo_id: int = 200

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown reply fault {self.kind!r}; known: {FAULT_KINDS}")


class BusEmulator:
    """Serve a :class:`ServoChain` on a pseudo-terminal from a background thread.

    Args:
        chain: the servos and their plant.
        period_s: longest sleep between plant steps, s.
    """

    def __init__(self, chain: ServoChain, period_s: float = 0.002) -> None:
        self.chain, self.period_s = chain, period_s
        self.lock = threading.RLock()
        self._faults: deque[ReplyFault] = deque()
        self._outbox: list[tuple[float, int, bytes]] = []
        self._seq = itertools.count()
        self._master = self._slave = -1
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.port = ""
        self.instructions_seen = 0
        self.error: BaseException | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> BusEmulator:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="dxl-emulator", daemon=True)
        self._thread.start()
        logger.info("virtual Dynamixel bus on %s (%d servos)", self.port, len(self.chain.servos))
        return self

    def stop(self) -> None:
        """Stop the thread and close both pty ends (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        for fd in (self._master, self._slave):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._master = self._slave = -1

    def __enter__(self) -> BusEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ faults
    def inject(self, kind: str, count: int = 1, **options: object) -> None:
        """Queue ``count`` faults of ``kind`` for the next outgoing replies (see :class:`ReplyFault`)."""
        fault = ReplyFault(kind, **options)  # type: ignore[arg-type]
        with self.lock:
            self._faults.extend([fault] * count)

    def clear_faults(self) -> None:
        with self.lock:
            self._faults.clear()

    @property
    def pending_faults(self) -> int:
        return len(self._faults)

    def send_raw(self, data: bytes, after_s: float = 0.0) -> None:
        """Put arbitrary bytes on the line (noise, an unsolicited packet), ``after_s`` from now."""
        with self.lock:
            self._schedule(time.monotonic() + after_s, data)

    def disconnect(self) -> None:
        """Unplug: close the master and slave fds; the host side now gets EIO / no data (C8)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        for fd in (self._master, self._slave):
            if fd >= 0:
                os.close(fd)
        self._master = self._slave = -1

    # ------------------------------------------------------------------ thread
    def _schedule(self, when: float, data: bytes) -> None:
        heapq.heappush(self._outbox, (when, next(self._seq), data))

    def _run(self) -> None:
        parser = PacketParser()
        try:
            while not self._stop.is_set():
                timeout = self.period_s
                if self._outbox:
                    timeout = max(0.0, min(timeout, self._outbox[0][0] - time.monotonic()))
                ready, _, _ = select.select([self._master], [], [], timeout)
                with self.lock:
                    if ready:
                        data = os.read(self._master, 4096)
                        for packet in parser.feed(data):
                            self.instructions_seen += 1
                            self._reply(self.chain.handle(packet))
                    self.chain.tick()
                    self._flush_outbox()
        except OSError as exc:
            if not self._stop.is_set():
                logger.error("virtual bus thread stopped: %s", exc)
                self.error = exc
        except Exception as exc:  # surfaced to tests through .error, never swallowed silently
            logger.exception("virtual bus thread crashed")
            self.error = exc

    def _flush_outbox(self) -> None:
        """Write every reply that is due, in one write: bytes due together reach the port
        together, as on a real bus (separate writes let the reader wake between a reply and
        its injected duplicate, which made C5 timing-dependent under CPU load)."""
        now = time.monotonic()
        due = []
        while self._outbox and self._outbox[0][0] <= now:
            due.append(heapq.heappop(self._outbox)[2])
        pending = memoryview(b"".join(due))
        while pending:  # a pty may take fewer bytes than offered
            pending = pending[os.write(self._master, pending):]

    def _reply(self, replies: list[bytes]) -> None:
        now = time.monotonic()
        for frame in replies:
            fault = self._faults.popleft() if self._faults else None
            for when, data in _apply(fault, frame, now):
                self._schedule(when, data)


def _apply(fault: ReplyFault | None, frame: bytes, now: float) -> list[tuple[float, bytes]]:
    """The (time, bytes) writes that deliver ``frame`` under ``fault``."""
    if fault is None:
        return [(now, frame)]
    kind = fault.kind
    if kind == "drop":
        return []
    if kind == "delay":
        return [(now + fault.delay_s, frame)]
    if kind == "truncate":
        out = [(now, frame[:fault.keep])]
        if fault.rest_after_s is not None:
            out.append((now + fault.rest_after_s, frame[fault.keep:]))
        return out
    if kind == "corrupt":
        flipped = bytearray(frame)
        bit = fault.bit % (8 * len(frame))
        flipped[bit // 8] ^= 1 << (bit % 8)
        return [(now, bytes(flipped))]
    if kind == "garbage":
        return [(now, fault.data + frame)]
    if kind == "wrong_id":
        packet = proto.parse_all(frame)[0]
        return [(now, proto.encode_status(fault.servo_id, packet.error, packet.params))]
    return [(now, frame), (now, frame)]  # duplicate
