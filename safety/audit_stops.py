"""Stops of a deploy run for the audit (F1: every stop with cause and T_stop), cross-checked
between summary.json and the hash-chained event log (events.jsonl, safetwin.safety.events).

The event log is the record the chain protects: a stop is the ``transition`` record into the
``STOPPING`` state (``data.to``), with its cause; its T_stop (s) is the ``t_stop_s`` of the
next ``stop_stage`` record with the same cause. summary.json's ``stops`` list (the supervisor's
StopRecord.as_dict: ``cause, detail, category, t_mono, t_stop_s, stop_distance_rad``) adds the
stop distance; a summary stop with no matching log record is flagged (``in_event_log`` False).

This module imports nothing else of SafeTwin's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

STOPPING = "STOPPING"
MATCH_TOL_S = 1e-6
"""A summary stop matches a logged stop with the same cause within this time (s, monotonic)."""


def _data(rec: Mapping[str, Any]) -> Mapping[str, Any]:
    data = rec.get("data")
    return data if isinstance(data, Mapping) else {}


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def logged_stops(events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Stops found in the event log, in order, with T_stop from their ``stop_stage`` records."""
    stops: list[dict[str, Any]] = []
    for i, rec in enumerate(events):
        if rec.get("kind") != "transition" or str(_data(rec).get("to", "")).upper() != STOPPING:
            continue
        t_stop = None
        for later in events[i + 1:]:
            if later.get("kind") == "transition" and str(_data(later).get("to", "")).upper() == STOPPING:
                break
            if later.get("kind") == "stop_stage" and later.get("cause") == rec.get("cause") \
                    and _num(_data(later).get("t_stop_s")) is not None:
                t_stop = _num(_data(later)["t_stop_s"])
        stops.append({"event": "stop", "seq": rec.get("seq"), "t_mono": _num(rec.get("t_mono")),
                      "cause": str(rec.get("cause") or "not recorded"), "category": _data(rec).get("category"),
                      "t_stop_s": t_stop, "detail": str(_data(rec).get("detail", "")),
                      "stop_distance_rad": None, "source": "events.jsonl", "in_event_log": True})
    return stops


def merge_stops(events: Sequence[Mapping[str, Any]] | None,
                summary_stops: Sequence[Any] | None) -> list[dict[str, Any]]:
    """Every stop of the run: the logged stops, completed from summary.json, plus summary stops
    that the log lacks (``in_event_log`` False)."""
    stops = logged_stops(events or [])
    for rec in summary_stops or []:
        if not isinstance(rec, Mapping):
            continue
        t = _num(rec.get("t_mono", rec.get("t_trip")))
        match = next((s for s in stops if s["cause"] == str(rec.get("cause")) and t is not None
                      and s["t_mono"] is not None and abs(s["t_mono"] - t) <= MATCH_TOL_S), None)
        t_stop = _num(rec.get("t_stop_s", rec.get("T_stop_s")))
        if match is not None:
            match["source"] = "events.jsonl + summary.json"
            match["stop_distance_rad"] = rec.get("stop_distance_rad")
            match["t_stop_s"] = match["t_stop_s"] if match["t_stop_s"] is not None else t_stop
            match["category"] = match["category"] if match["category"] is not None else rec.get("category")
            continue
        stops.append({"event": "stop", "seq": None, "t_mono": t, "cause": str(rec.get("cause", "not recorded")),
                      "category": rec.get("category"), "t_stop_s": t_stop, "detail": str(rec.get("detail", "")),
                      "stop_distance_rad": rec.get("stop_distance_rad"), "source": "summary.json",
                      "in_event_log": False})
    return stops
