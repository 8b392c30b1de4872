"""Append-only, hash-chained event log (JSON lines) for the supervisor and the deploy runner.

Every record is one line of canonical JSON with the fields

    seq          int, 0, 1, 2, ... in file order
    t_mono       float s, ``time.monotonic()`` of the writer (for intervals; not comparable across boots)
    t_wall       float s, ``time.time()`` (UNIX epoch, for humans; may jump under NTP)
    kind         str, e.g. ``"transition"``, ``"fault"``, ``"stop_stage"``, ``"log_open"``
    state        str, the writer's state when the record was made (e.g. ``"ARMED"``)
    cause        str or null, the cause of a stop or fault (e.g. ``"estop"``)
    data         object, free-form details (non-finite floats are stored as strings)
    prev_sha256  hex str, ``sha256`` of the previous record (64 zeros for the first)
    sha256       hex str, SHA-256 of the canonical JSON of the record *without* ``sha256``

Canonical JSON: keys sorted, separators ``","`` and ``":"``, ASCII only, no NaN/Infinity.

:meth:`EventLog.append` writes the line, flushes and ``fsync``\\ s it before returning, so a
caller that logs before acting (the supervisor) never acts on an unlogged decision. Any write
failure raises :class:`EventLogError` and poisons the log (every later append raises too): the
supervisor treats that as a stop cause (scenario D7, no un-audited operation).

:func:`verify_chain` detects edited, deleted, inserted, reordered and truncated records. Dropping
whole records from the *end* of a file is only detectable against an anchor kept elsewhere: pass
``expected_head`` (the last ``sha256`` reported in ``summary.json``) or ``require_closed`` (the
log ends with a ``log_close`` record written by :meth:`EventLog.close`).

This module imports nothing else of SafeTwin's.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GENESIS_SHA256 = "0" * 64
"""``prev_sha256`` of the first record."""
RECORD_FIELDS = ("seq", "t_mono", "t_wall", "kind", "state", "cause", "data", "prev_sha256", "sha256")
CLOSE_KIND = "log_close"
OPEN_KIND = "log_open"


class EventLogError(OSError):
    """The event log cannot be written (disk full, I/O error, closed) or cannot be resumed."""


def _finite(obj: Any) -> Any:
    """Copy of ``obj`` made JSON-safe: non-finite floats -> strings, arrays -> lists, tuples -> lists."""
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        obj = obj.tolist()
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, Mapping):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def canonical_json(obj: Any) -> bytes:
    """The canonical byte form hashed by the chain (sorted keys, compact, ASCII, finite)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def record_sha256(record: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of ``record`` without its ``sha256`` field."""
    body = {k: v for k, v in record.items() if k != "sha256"}
    return hashlib.sha256(canonical_json(body)).hexdigest()


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify_chain`.

    Attributes:
        ok: the whole file is an intact chain (and meets the optional anchors).
        records: number of records that verified before the first problem.
        first_bad_seq: the ``seq`` (or expected seq) where the chain first breaks; None when ok.
        reason: what is wrong, naming the file and line; ``""`` when ok.
        head_sha256: ``sha256`` of the last good record (``GENESIS_SHA256`` for an empty log).
        closed: the last record is a ``log_close`` record.
    """

    ok: bool
    records: int
    first_bad_seq: int | None
    reason: str
    head_sha256: str
    closed: bool


def _bad(path: Path, lineno: int, seq: int, n: int, head: str, why: str) -> VerifyResult:
    return VerifyResult(False, n, seq, f"{path}:{lineno}: {why}", head, False)


def _check_record(rec: Any, expect_seq: int, prev: str) -> str | None:
    """Why ``rec`` does not continue the chain (None when it does)."""
    if not isinstance(rec, dict) or tuple(sorted(rec)) != tuple(sorted(RECORD_FIELDS)):
        return f"record fields are not exactly {list(RECORD_FIELDS)}"
    if rec["seq"] != expect_seq:
        return f"seq {rec['seq']!r} where {expect_seq} was expected (deleted, inserted or reordered record)"
    if rec["prev_sha256"] != prev:
        return "prev_sha256 does not match the previous record (deleted or reordered record)"
    if rec["sha256"] != record_sha256(rec):
        return "sha256 does not match the record's content (edited record)"
    return None


def verify_chain(path: str | os.PathLike[str], *, expected_head: str | None = None,
                 require_closed: bool = False) -> VerifyResult:
    """Check every record of the event log at ``path``.

    Args:
        path: the JSONL event log.
        expected_head: if given, the ``sha256`` the last record must have (detects records
            dropped from the end).
        require_closed: the last record must be a ``log_close`` record.

    Returns:
        A :class:`VerifyResult`; never raises for a damaged file (a missing file raises
        FileNotFoundError).
    """
    path = Path(path)
    raw = path.read_bytes()
    prev, n, closed = GENESIS_SHA256, 0, False
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:
        return _bad(path, len(lines), n, n, prev, "last line has no newline (truncated record)")
    for lineno, line in enumerate(lines, 1):
        try:
            rec = json.loads(line.decode("ascii"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return _bad(path, lineno, n, n, prev, "not a JSON record (truncated or corrupted line)")
        why = _check_record(rec, n, prev)
        if why is not None:
            return _bad(path, lineno, n, n, prev, why)
        prev, n, closed = rec["sha256"], n + 1, rec["kind"] == CLOSE_KIND
    if expected_head is not None and prev != expected_head:
        return VerifyResult(False, n, n, f"{path}: last record's sha256 {prev[:12]}... is not the "
                            f"expected head {expected_head[:12]}... (records missing at the end)", prev, closed)
    if require_closed and not closed:
        return VerifyResult(False, n, n, f"{path}: no {CLOSE_KIND} record at the end (log truncated "
                            "or writer crashed)", prev, closed)
    return VerifyResult(True, n, None, "", prev, closed)


class EventLog:
    """Append-only hash-chained JSONL log; thread-safe; every append is fsynced before it returns.

    Opening an existing file verifies it and continues its chain; a damaged file is refused
    (:class:`EventLogError`) rather than extended.

    Args:
        path: the log file (parents are created).
        clock: monotonic clock for ``t_mono`` (s).
        wall_clock: wall clock for ``t_wall`` (s since the epoch).
    """

    def __init__(self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock, self._wall = clock, wall_clock
        self._lock = threading.Lock()
        self._failed: str | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._seq, self._head = 0, GENESIS_SHA256
        if self.path.is_file() and self.path.stat().st_size > 0:
            result = verify_chain(self.path)
            if not result.ok:
                raise EventLogError(f"refusing to extend a damaged event log: {result.reason}")
            self._seq, self._head = result.records, result.head_sha256
        try:
            self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise EventLogError(f"{self.path}: cannot open event log: {exc}") from exc
        self.append(OPEN_KIND, state="", data={"pid": os.getpid()})

    @property
    def head_sha256(self) -> str:
        """``sha256`` of the last record written (the anchor for :func:`verify_chain`)."""
        return self._head

    @property
    def count(self) -> int:
        """Number of records in the file."""
        return self._seq

    @property
    def failed(self) -> str | None:
        """Why the log stopped accepting records (None while healthy)."""
        return self._failed

    def append(self, kind: str, *, state: str, cause: str | None = None,
               data: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Write one record and fsync it; returns the record as written.

        Raises:
            EventLogError: the record could not be written durably (the log is then poisoned).
        """
        with self._lock:
            if self._failed is not None:
                raise EventLogError(f"{self.path}: event log unusable: {self._failed}")
            if self._fd is None:
                raise EventLogError(f"{self.path}: event log is closed")
            rec: dict[str, Any] = {"seq": self._seq, "t_mono": self._clock(), "t_wall": self._wall(),
                                   "kind": str(kind), "state": str(state),
                                   "cause": None if cause is None else str(cause),
                                   "data": _finite(dict(data or {})), "prev_sha256": self._head}
            rec["sha256"] = record_sha256(rec)
            line = canonical_json(rec) + b"\n"
            try:
                written = os.write(self._fd, line)
                if written != len(line):
                    raise OSError(f"short write ({written} of {len(line)} bytes)")
                os.fsync(self._fd)
            except OSError as exc:
                self._failed = f"write failed at seq {self._seq}: {exc}"
                raise EventLogError(f"{self.path}: {self._failed}") from exc
            self._seq += 1
            self._head = rec["sha256"]
            return rec

    def close(self, state: str = "") -> None:
        """Write the ``log_close`` record (if the log is healthy) and close the file; idempotent."""
        if self._fd is None:
            return
        try:
            if self._failed is None:
                self.append(CLOSE_KIND, state=state, data={"records": self._seq + 1})
        finally:
            with self._lock:
                fd, self._fd = self._fd, None
            if fd is not None:
                os.close(fd)

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
