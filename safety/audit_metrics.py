"""Metrics of the safety audit, computed from run files (pure functions, numpy only).

Names follow the evaluation section of the RL-VLA survey: success rate, average episodic
return, safety cost (total and per category), cycle time, episode length, intervention rate
and inference latency (p50/p99), plus CVaR of episode cost, filter infeasibility, minimum
barrier value, near misses, bus faults by type and telemetry sequence gaps.

Units: costs are sums of per-step indicators (dimensionless), distances m, speeds m/s,
forces N, joint positions rad, joint velocities rad/s, latencies and periods ms, times s.

This module imports nothing else of SafeTwin's.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

INTERVENTION_KEYS = ("filter_interventions", "critic_rejections", "recovery_steps", "estops",
                     "human_interventions")
"""Per-episode intervention counters of eval/episodes.jsonl; only the first is required."""


def cvar(values: Sequence[float], alpha: float = 0.9) -> float:
    """Conditional value at risk: the mean of the worst ``1 - alpha`` fraction of ``values``.

    Upper tail (large cost is bad). Uses the Rockafellar-Uryasev form on the empirical
    distribution, so the tail weight is exact even when ``(1 - alpha) * n`` is not an integer:
    ``CVaR = VaR + E[(X - VaR)+] / (1 - alpha)`` with ``VaR`` the ``alpha``-quantile.
    """
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    x = np.sort(np.asarray(values, dtype=float))
    if x.size == 0:
        raise ValueError("cvar of an empty sample")
    if not np.all(np.isfinite(x)):
        return math.inf
    k = int(math.ceil(alpha * x.size)) - 1  # index of the empirical alpha-quantile
    var = x[max(k, 0)]
    return float(var + np.mean(np.maximum(x - var, 0.0)) / (1.0 - alpha))


def percentiles(values: Iterable[float], qs: Sequence[float] = (50.0, 99.0)) -> dict[str, float | None]:
    """``{"p50": ..., "p99": ..., "max": ..., "mean": ..., "n": ...}``; None entries when empty."""
    x = np.asarray(list(values), dtype=float)
    out: dict[str, float | None] = {f"p{q:g}": None for q in qs}
    out.update(max=None, mean=None, n=int(x.size))
    if x.size:
        for q in qs:
            out[f"p{q:g}"] = float(np.percentile(x, q))
        out["max"], out["mean"] = float(np.max(x)), float(np.mean(x))
    return out


def sequence_gaps(seqs: Sequence[int]) -> list[dict[str, int]]:
    """Gaps in a telemetry sequence (F2): each ``{"after": s, "before": t, "missing": t - s - 1}``.

    A repeated or decreasing number is also reported, as ``missing: 0`` with ``kind``
    ``"repeat"``/``"backwards"`` (a log that goes backwards cannot be trusted either).
    """
    gaps: list[dict[str, Any]] = []
    for prev, cur in zip(seqs, seqs[1:], strict=False):
        if cur == prev + 1:
            continue
        kind = "gap" if cur > prev + 1 else ("repeat" if cur == prev else "backwards")
        gaps.append({"after": int(prev), "before": int(cur), "missing": max(int(cur - prev - 1), 0),
                     "kind": kind})
    return gaps


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _num(record: Mapping[str, Any], key: str, default: float = 0.0) -> float:
    value = record.get(key, default)
    return float(default if value is None else value)


def episode_metrics(episodes: Sequence[Mapping[str, Any]], near_miss_m: float,
                    cvar_alpha: float, dt_s: float | None) -> dict[str, Any]:
    """Aggregate one evaluation mode's episodes (records of eval/episodes.jsonl).

    ``near_miss_m`` (m): an episode whose minimum distance to a fragile object is below this is a
    near miss. ``dt_s`` (s): policy step period, used to express cycle time in seconds.
    """
    n = len(episodes)
    returns = [_num(e, "return") for e in episodes]
    costs = [_num(e, "cost") for e in episodes]
    lengths = [_num(e, "length") for e in episodes]
    success = [bool(e["success"]) for e in episodes]
    steps = float(sum(lengths))
    categories: dict[str, float] = {}
    for e in episodes:
        for cat, value in (e.get("costs") or {}).items():
            categories[cat] = categories.get(cat, 0.0) + float(value)
    interventions = {k: int(sum(_num(e, k) for e in episodes)) for k in INTERVENTION_KEYS}
    logged = [k for k in INTERVENTION_KEYS if any(k in e for e in episodes)]
    latency = [float(v) for e in episodes for v in (e.get("inference_latency_ms") or [])]
    fragile = [_num(e, "min_fragile_distance", math.inf) for e in episodes]
    success_lengths = [ln for ln, s in zip(lengths, success, strict=True) if s]
    cycle_steps = _mean(success_lengths)
    return {
        "episodes": n,
        "success_rate": float(np.mean(success)) if n else None,
        "average_return": _mean(returns),
        "safety_cost": {"mean": _mean(costs), "total": float(sum(costs)),
                        "max": max(costs) if costs else None,
                        "cvar": cvar(costs, cvar_alpha) if costs else None, "cvar_alpha": cvar_alpha,
                        "per_category_total": categories,
                        "per_category_mean": {k: v / n for k, v in categories.items()} if n else {}},
        "episode_length": {"mean": _mean(lengths), "max": max(lengths) if lengths else None},
        "cycle_time": {"mean_steps": cycle_steps,
                       "mean_s": None if cycle_steps is None or dt_s is None else cycle_steps * dt_s,
                       "over": "successful episodes"},
        "interventions": {**interventions, "logged": logged,
                          "total": int(sum(interventions[k] for k in logged)), "steps": int(steps)},
        "intervention_rate": (sum(interventions[k] for k in logged) / steps) if steps else None,
        "filter_infeasible": int(sum(_num(e, "filter_infeasible") for e in episodes)),
        "min_barrier": min((_num(e, "min_barrier", math.inf) for e in episodes), default=None),
        "near_misses": {"min_fragile_distance_m": min(fragile) if fragile else None,
                        "threshold_m": near_miss_m,
                        "episodes_below_threshold": int(sum(d < near_miss_m for d in fragile))},
        "max_ee_speed": max((_num(e, "max_ee_speed") for e in episodes), default=None),
        "max_contact_force": max((_num(e, "max_contact_force") for e in episodes), default=None),
        "inference_latency_ms": percentiles(latency),
    }


def _fault_type(fault: Any) -> str:
    """The type of one telemetry fault entry: ``"filter:infeasible"`` -> ``"filter"``; a mapping's
    ``type``/``kind``/``code``."""
    if isinstance(fault, Mapping):
        return str(fault.get("type") or fault.get("kind") or fault.get("code") or "unknown")
    return str(fault).split(":", 1)[0]


def _finite(values: Any) -> bool:
    """True when ``values`` (None, a number or a flat list of numbers) holds only finite numbers;
    anything else (a string such as "NaN", a nested list, a bool) counts as non-finite."""
    if values is None:
        return True
    items = values if isinstance(values, list) else [values]
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in items)


def _stack(records: Sequence[Mapping[str, Any]], key: str, n: int) -> np.ndarray:
    """``(k, n)`` array of the finite length-``n`` vectors under ``key`` (other records skipped)."""
    rows = [r[key] for r in records if isinstance(r.get(key), list) and len(r[key]) == n and _finite(r[key])]
    return np.asarray(rows, dtype=float).reshape(len(rows), n)


def joint_violations(records: Sequence[Mapping[str, Any]], lower: np.ndarray, upper: np.ndarray,
                     vmax: np.ndarray, tolerance: float) -> dict[str, Any]:
    """Count telemetry periods whose measured q (rad) / dq (rad/s) leave the spec's limits.

    ``tolerance`` is a fraction of each limit's magnitude (speed) or of the range (position).
    Records whose q/dq are missing, of the wrong length or non-finite are not judged here
    (DR-FINITE fails on them).
    """
    q, dq = _stack(records, "q", lower.size), _stack(records, "dq", vmax.size)
    span = (upper - lower) * tolerance
    pos_excess = np.maximum(lower - span - q, q - upper - span).max(axis=1, initial=-np.inf)
    vel_excess = (np.abs(dq) - vmax * (1 + tolerance)).max(axis=1, initial=-np.inf)
    return {"position_violations": int(np.sum(pos_excess > 0)),
            "velocity_violations": int(np.sum(vel_excess > 0)),
            "worst_position_excess_rad": float(max(pos_excess.max(initial=0.0), 0.0)),
            "worst_velocity_excess_rad_s": float(max(vel_excess.max(initial=0.0), 0.0)),
            "judged_periods": int(min(len(q), len(dq)))}


def telemetry_metrics(records: Sequence[Mapping[str, Any]], correction_tol: float) -> dict[str, Any]:
    """Aggregate a deploy run's telemetry.jsonl (one record per control period).

    ``faults_by_type`` counts the per-period fault entries (``read_failed``, ``filter``, ...);
    ``max_ee_speed`` (m/s) is the largest measured TCP speed (``ee_speed``), None if never logged.

    A period counts as a filter intervention when the filter braked, was infeasible or its
    ``correction_norm`` (rad/s) exceeds ``correction_tol``.
    """
    seqs = [int(r["seq"]) for r in records]
    gaps = sequence_gaps(seqs)
    periods = [float(r["period_ms"]) for r in records if r.get("period_ms") is not None]
    faults: Counter[str] = Counter()
    corrections: list[float] = []
    interventions = infeasible = braked = non_finite = held = 0
    min_barrier, max_speed = math.inf, None
    for r in records:
        if isinstance(r.get("ee_speed"), (int, float)) and math.isfinite(r["ee_speed"]):
            max_speed = max(float(r["ee_speed"]), max_speed or 0.0)
        faults.update(_fault_type(f) for f in (r.get("faults") or []))
        filt = r.get("filter") or {}
        corr = float(filt.get("correction_norm") or 0.0)
        corrections.append(corr)
        feasible = bool(filt.get("feasible", True))
        infeasible += int(not feasible)
        braked += int(bool(filt.get("braked", False)))
        interventions += int((not feasible) or bool(filt.get("braked", False)) or corr > correction_tol)
        if filt.get("min_barrier") is not None:
            min_barrier = min(min_barrier, float(filt["min_barrier"]))
        held += int(r.get("sent") is None)
        non_finite += int(not all(_finite(r.get(k)) for k in ("q", "dq", "nominal", "filtered", "sent", "ee_speed")))
    t = [float(r["t_mono"]) for r in records if r.get("t_mono") is not None]
    n = len(records)
    return {
        "periods": n,
        "duration_s": (max(t) - min(t)) if len(t) > 1 else 0.0,
        "sequence": {"first": seqs[0] if seqs else None, "last": seqs[-1] if seqs else None,
                     "gaps": gaps, "gap_count": len(gaps),
                     "missing_records": int(sum(g["missing"] for g in gaps))},
        "loop_period_ms": percentiles(periods),
        "filter_corrections": corrections,
        "interventions": {"filter": interventions, "braked": braked, "held_periods": held},
        "intervention_rate": interventions / n if n else None,
        "filter_infeasible": infeasible,
        "min_barrier": None if math.isinf(min_barrier) else min_barrier,
        "faults_by_type": dict(sorted(faults.items())),
        "max_ee_speed": max_speed,
        "non_finite_records": non_finite,
    }
