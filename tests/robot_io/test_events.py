"""Hash-chained event log: tamper detection and fail-closed writes (D7, F1)."""

from __future__ import annotations

import json
import os

import pytest

from safetwin.safety.events import (
    GENESIS_SHA256,
    EventLog,
    EventLogError,
    canonical_json,
    record_sha256,
    verify_chain,
)


def _make_log(path, n=5):
    with EventLog(path) as log:
        for i in range(n):
            log.append("fault", state="ARMED", cause=f"c{i}", data={"i": i, "q": [0.1, float("nan")]})
        head = log.head_sha256
    return head


def _lines(path):
    return path.read_bytes().splitlines(keepends=True)


def test_records_chain_and_verify(tmp_path):
    path = tmp_path / "events.jsonl"
    _make_log(path)
    recs = [json.loads(x) for x in _lines(path)]
    assert [r["seq"] for r in recs] == list(range(7))  # open + 5 + close
    assert recs[0]["prev_sha256"] == GENESIS_SHA256 and recs[0]["kind"] == "log_open"
    for a, b in zip(recs, recs[1:], strict=False):
        assert b["prev_sha256"] == a["sha256"]
        assert b["t_mono"] >= a["t_mono"]
    assert all(r["sha256"] == record_sha256(r) for r in recs)
    assert recs[1]["data"]["q"] == [0.1, "NaN"]  # non-finite stored as text, JSON stays strict
    res = verify_chain(path, require_closed=True, expected_head=recs[-1]["sha256"])
    assert res.ok and res.records == 7 and res.closed and res.first_bad_seq is None


def test_edited_record_detected(tmp_path):
    """F1: editing a record's content breaks its own hash."""
    path = tmp_path / "e.jsonl"
    _make_log(path)
    lines = _lines(path)
    rec = json.loads(lines[3])
    rec["cause"] = "nothing to see"
    lines[3] = canonical_json(rec) + b"\n"
    path.write_bytes(b"".join(lines))
    res = verify_chain(path)
    assert not res.ok and res.first_bad_seq == 3 and "edited" in res.reason and ":4:" in res.reason


def test_edited_record_with_recomputed_hash_detected(tmp_path):
    path = tmp_path / "e.jsonl"
    _make_log(path)
    lines = _lines(path)
    rec = json.loads(lines[2])
    rec["data"] = {}
    rec["sha256"] = record_sha256(rec)
    lines[2] = canonical_json(rec) + b"\n"
    path.write_bytes(b"".join(lines))
    res = verify_chain(path)
    assert not res.ok and res.first_bad_seq == 3


def test_deleted_record_detected(tmp_path):
    path = tmp_path / "e.jsonl"
    _make_log(path)
    lines = _lines(path)
    del lines[2]
    path.write_bytes(b"".join(lines))
    res = verify_chain(path)
    assert not res.ok and res.first_bad_seq == 2 and res.records == 2


def test_reordered_records_detected(tmp_path):
    path = tmp_path / "e.jsonl"
    _make_log(path)
    lines = _lines(path)
    lines[2], lines[3] = lines[3], lines[2]
    path.write_bytes(b"".join(lines))
    res = verify_chain(path)
    assert not res.ok and res.first_bad_seq == 2


def test_truncated_line_and_dropped_tail_detected(tmp_path):
    path = tmp_path / "e.jsonl"
    head = _make_log(path)
    full = path.read_bytes()
    path.write_bytes(full[:-10])
    res = verify_chain(path)
    assert not res.ok and "truncated" in res.reason
    lines = full.splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-2]))  # whole records dropped from the end
    assert verify_chain(path).ok  # chain alone cannot see it ...
    assert not verify_chain(path, require_closed=True).ok  # ... the close record can
    res = verify_chain(path, expected_head=head)
    assert not res.ok and "missing at the end" in res.reason


def test_reopen_continues_chain_and_refuses_damaged_log(tmp_path):
    path = tmp_path / "e.jsonl"
    _make_log(path, n=2)
    with EventLog(path) as log:
        log.append("x", state="S")
    res = verify_chain(path, require_closed=True)
    assert res.ok and res.records == 4 + 3
    path.write_bytes(path.read_bytes().replace(b'"x"', b'"y"'))
    with pytest.raises(EventLogError, match="damaged"):
        EventLog(path)


def test_write_failure_raises_and_poisons_log_d7(tmp_path):
    """D7: a log that cannot be written raises at once, and keeps raising."""
    path = tmp_path / "e.jsonl"
    log = EventLog(path)
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        os.dup2(full, log._fd)  # the log's descriptor now hits ENOSPC, as on a full disk
    finally:
        os.close(full)
    with pytest.raises(EventLogError, match="No space left"):
        log.append("fault", state="ARMED", cause="x")
    assert log.failed is not None
    with pytest.raises(EventLogError, match="unusable"):
        log.append("fault", state="ARMED")
    log.close()
    assert verify_chain(path).ok  # nothing half-written
    with pytest.raises(EventLogError, match="unusable"):
        log.append("x", state="")


def test_append_after_close_raises(tmp_path):
    log = EventLog(tmp_path / "e.jsonl")
    log.close()
    log.close()  # idempotent
    with pytest.raises(EventLogError, match="closed"):
        log.append("x", state="")


def test_unwritable_location_raises(tmp_path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(EventLogError, match="cannot open"):
        EventLog(tmp_path / "dir")
