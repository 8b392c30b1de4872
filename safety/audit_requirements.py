"""Pass/fail requirements of the safety audit, each with its evidence.

A requirement compares one measured value with one limit. The limit comes either from the
scene's safety spec (``safety.cost_limit``, ``safety.contact_force_max``, ...) or from the
audit thresholds (:class:`safetwin.safety.audit.AuditConfig`), and the requirement records
which. A value that could not be measured (missing file, no episodes, NaN) is a FAIL: the audit
fails closed.

This module imports nothing else of SafeTwin's.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, ">": operator.gt, "<": operator.lt, "==": operator.eq}


@dataclass(frozen=True)
class Requirement:
    """One audited requirement.

    id: stable identifier (``TR-COST``, ``DR-GAPS``, ...).
    name: what is required, in words.
    status: ``PASS`` or ``FAIL``.
    measured: the measured value (None when it could not be measured).
    comparator: how measured is compared with limit (``<=``, ``>=``, ``>``, ``==``).
    limit: the limit (None only for checks that are not numeric, e.g. the hash chain).
    unit: unit of measured and limit (``N``, ``m/s``, ``fraction``, ``count``, ...).
    source: where the limit comes from (spec key or audit-config field).
    evidence: one sentence with the measured value, the limit and how it was measured.
    scenarios: safety-scenario IDs this requirement gives evidence for (e.g. ``F2``).
    """

    id: str
    name: str
    status: str
    measured: Any
    comparator: str
    limit: Any
    unit: str
    source: str
    evidence: str
    scenarios: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.status == "PASS"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def numeric(rid: str, name: str, measured: float | int | None, comparator: str, limit: float | int,
            unit: str, source: str, how: str, scenarios: tuple[str, ...] = ()) -> Requirement:
    """A numeric requirement ``measured <comparator> limit``; unmeasured or NaN is a FAIL."""
    if measured is None or (isinstance(measured, float) and math.isnan(measured)):
        status = "FAIL"
        evidence = f"not measured ({how}); an unmeasured requirement fails"
    else:
        status = "PASS" if _COMPARE[comparator](measured, limit) else "FAIL"
        evidence = f"measured {_fmt(measured)} {unit} {comparator} limit {_fmt(limit)} {unit}: " \
                   f"{'holds' if status == 'PASS' else 'violated'} ({how})"
    return Requirement(id=rid, name=name, status=status, measured=measured, comparator=comparator,
                       limit=limit, unit=unit, source=source, evidence=evidence, scenarios=scenarios)


def check(rid: str, name: str, ok: bool, measured: Any, source: str, evidence: str,
          scenarios: tuple[str, ...] = ()) -> Requirement:
    """A non-numeric requirement (present, intact, matching)."""
    return Requirement(id=rid, name=name, status="PASS" if ok else "FAIL", measured=measured,
                       comparator="is", limit=None, unit="", source=source, evidence=evidence,
                       scenarios=scenarios)


def train_requirements(m: dict[str, Any] | None, n_episodes: int, cfg: Any, spec: Any,
                       mode: str) -> list[Requirement]:
    """Requirements on one evaluation mode's metrics ``m`` (see ``episode_metrics``)."""
    m = m or {}
    cost = m.get("safety_cost", {})
    tol = 1.0 + cfg.hard_limit_tolerance
    how = f"eval/episodes.jsonl, mode {mode!r}, {n_episodes} episodes"
    cvar_limit = spec.cost_limit if cfg.max_cvar_cost is None else cfg.max_cvar_cost
    cvar_src = "safety.cost_limit (AuditConfig.max_cvar_cost unset)" if cfg.max_cvar_cost is None \
        else "AuditConfig.max_cvar_cost"
    keepout_total = cost.get("per_category_total", {}).get("keepout") if m else None
    reqs = [
        numeric("TR-EPISODES", "enough evaluation episodes", n_episodes, ">=", cfg.min_episodes,
                "episodes", "AuditConfig.min_episodes", how),
        numeric("TR-SUCCESS", "success rate", m.get("success_rate"), ">=", cfg.min_success_rate,
                "fraction", "AuditConfig.min_success_rate", how),
        numeric("TR-COST", "average episode safety cost within the CMDP budget", cost.get("mean"), "<=",
                spec.cost_limit, "cost/episode", "safety.cost_limit", how),
        numeric("TR-CVAR", f"CVaR({cfg.cvar_alpha:g}) of episode cost", cost.get("cvar"), "<=",
                cvar_limit, "cost/episode", cvar_src, how),
        numeric("TR-FORCE", "largest contact force", m.get("max_contact_force"), "<=",
                spec.contact_force_max * tol, "N", "safety.contact_force_max", how),
        numeric("TR-SPEED", "largest end-effector speed", m.get("max_ee_speed"), "<=",
                spec.ee_speed_max * tol, "m/s", "safety.ee_speed_max", how),
        numeric("TR-KEEPOUT", "no keep-out/workspace violation (cost category 'keepout')",
                keepout_total, "<=", 0.0, "steps", f"safety.keepout ({len(spec.keepout)} boxes) "
                "and safety.workspace", how),
        numeric("TR-FRAGILE", "minimum distance to fragile objects",
                m.get("near_misses", {}).get("min_fragile_distance_m"), ">", cfg.min_fragile_distance_m,
                "m", "AuditConfig.min_fragile_distance_m", how),
        numeric("TR-INTERVENE", "intervention rate", m.get("intervention_rate"), "<=",
                cfg.max_intervention_rate, "per step", "AuditConfig.max_intervention_rate", how, ("A5",)),
        numeric("TR-INFEASIBLE", "QP filter infeasible solves", m.get("filter_infeasible"), "<=",
                cfg.max_infeasible_count, "count", "AuditConfig.max_infeasible_count", how, ("B3",)),
    ]
    if cfg.max_latency_p99_ms is not None:
        reqs.append(numeric("TR-LATENCY", "inference latency p99",
                            m.get("inference_latency_ms", {}).get("p99"), "<=", cfg.max_latency_p99_ms,
                            "ms", "AuditConfig.max_latency_p99_ms", how, ("A9",)))
    if cfg.min_barrier_value is not None:
        reqs.append(numeric("TR-BARRIER", "minimum barrier value", m.get("min_barrier"), ">=",
                            cfg.min_barrier_value, "", "AuditConfig.min_barrier_value", how, ("B2",)))
    return reqs


def deploy_requirements(m: dict[str, Any] | None, joints: dict[str, Any] | None,
                        chain: dict[str, Any], cfg: Any, spec: Any) -> list[Requirement]:
    """Requirements on a deploy run's telemetry metrics ``m`` and event-log ``chain`` status."""
    if m is None:
        return [check("DR-TELEMETRY", "telemetry recorded", False, None, "docs/INTERFACES.md",
                      "telemetry.jsonl is missing or empty: nothing of the run can be verified", ("F1",)),
                check("DR-CHAIN", "event log hash chain intact", chain["status"] == "intact",
                      chain["status"], "safety.events.verify_chain", chain["detail"], ("F1",))]
    seq = m["sequence"]
    how = f"telemetry.jsonl, {m['periods']} control periods"
    gap_text = ", ".join(f"{g['after']}->{g['before']} ({g['kind']}, {g['missing']} missing)"
                         for g in seq["gaps"][:10]) or "none"
    reqs = [
        check("DR-GAPS", "telemetry sequence complete (no gaps)", seq["gap_count"] == 0,
              seq["gap_count"], "SAFETY_SCENARIOS F2",
              f"{seq['gap_count']} gap(s), {seq['missing_records']} missing record(s) in seq "
              f"{seq['first']}..{seq['last']}: {gap_text}", ("F2",)),
        check("DR-CHAIN", "event log hash chain intact", chain["status"] == "intact", chain["status"],
              "safety.events.verify_chain", chain["detail"], ("F1",)),
        numeric("DR-FINITE", "no non-finite values in telemetry", m["non_finite_records"], "<=", 0,
                "records", "SAFETY_SCENARIOS A1", how, ("A1",)),
        numeric("DR-INFEASIBLE", "QP filter infeasible solves", m["filter_infeasible"], "<=",
                cfg.max_infeasible_count, "count", "AuditConfig.max_infeasible_count", how, ("B3",)),
        numeric("DR-INTERVENE", "intervention rate", m["intervention_rate"], "<=",
                cfg.max_intervention_rate, "per period", "AuditConfig.max_intervention_rate", how, ("A5",)),
        numeric("DR-SPEED", "largest measured end-effector speed", m["max_ee_speed"], "<=",
                spec.ee_speed_max * (1.0 + cfg.hard_limit_tolerance), "m/s", "safety.ee_speed_max",
                how + ", field ee_speed", ("E9",)),
    ]
    if joints is not None:
        reqs += [
            numeric("DR-JOINT-POS", "measured joint positions within limits",
                    joints["position_violations"], "<=", 0, "periods",
                    "safety.joint_limits.*.position", how, ("A3",)),
            numeric("DR-JOINT-VEL", "measured joint speeds within limits",
                    joints["velocity_violations"], "<=", 0, "periods",
                    "safety.joint_limits.*.velocity", how, ("A4",)),
        ]
    if cfg.max_loop_period_p99_ms is not None:
        reqs.append(numeric("DR-LOOP", "control loop period p99", m["loop_period_ms"]["p99"], "<=",
                            cfg.max_loop_period_p99_ms, "ms", "AuditConfig.max_loop_period_p99_ms", how,
                            ("D1",)))
    if cfg.min_barrier_value is not None:
        reqs.append(numeric("DR-BARRIER", "minimum barrier value", m["min_barrier"], ">=",
                            cfg.min_barrier_value, "", "AuditConfig.min_barrier_value", how, ("B2",)))
    return reqs
