"""The safety audit: a run directory in, ``audit/report.json`` + ``audit/report.html`` out.

``build_report(run_dir, cfg)`` reads a training run (checkpoint, sidecar, metrics.jsonl and the
evaluator's eval/episodes.jsonl) or a deploy run (telemetry.jsonl, the hash-chained
events.jsonl, summary.json), computes the metrics (audit_metrics), judges every requirement
from the scene's safety spec and :class:`AuditConfig` (audit_requirements), lists the safety
scenarios covered by the tests (audit_scenarios) and writes both report files atomically.
The verdict is PASS only when every requirement passes; ``report.exit_code`` is 0 or 1.

The report documents software risk-reduction measures; it makes no PL or SIL claim (F3).
This module imports nothing else of SafeTwin's outside the safety package.
"""

from __future__ import annotations

import importlib
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .audit_config import AuditConfig
from .audit_inputs import AuditError, RunFiles, read_run, resolve_spec
from .audit_metrics import episode_metrics, joint_violations, telemetry_metrics
from .audit_requirements import Requirement, check, deploy_requirements, numeric, train_requirements
from .audit_scenarios import parse_junit, scenario_table
from .audit_stops import merge_stops
from .runio import atomic_write_json, atomic_write_text
from .spec import SafetySpec

logger = logging.getLogger(__name__)

SCHEMA_VERSION = "1.0"
CLAIMS = ("This report documents software risk-reduction measures, verified by tests A1-F3 as "
          "listed below. It makes no performance level (PL, ISO 13849) or safety integrity level "
          "(SIL, IEC 61508/62061) claim. The last line of defence is below the PC software: servo "
          "bus watchdogs and a hardware e-stop that cuts servo power.")

__all__ = ["AuditConfig", "AuditError", "Report", "build_report", "verify_event_chain", "CLAIMS",
           "SCHEMA_VERSION"]


@dataclass
class Report:
    """The audit of one run; ``to_dict()`` is report.json (schema in audit_schema).

    ``series`` holds the plot data for the HTML and is not part of the JSON.
    """

    kind: str
    run_dir: str
    verdict: str
    requirements: list[Requirement]
    metrics: dict[str, Any]
    provenance: dict[str, Any]
    integrity: dict[str, Any]
    stops: list[dict[str, Any]]
    scenarios: list[dict[str, Any]]
    findings: list[str]
    checkpoint_sha256: str | None
    safety_spec_sha256: str
    spec_source: str
    config: dict[str, Any]
    created_unix: float = field(default_factory=time.time)
    schema_version: str = SCHEMA_VERSION
    claims: str = CLAIMS
    series: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def passed(self) -> bool:
        return self.verdict == "PASS"

    @property
    def exit_code(self) -> int:
        """0 when every requirement passes, 1 otherwise (the ``safetwin audit`` exit status)."""
        return 0 if self.passed else 1

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "series"}
        data["requirements"] = [r.to_dict() for r in self.requirements]
        return _strict_json(data)


def _strict_json(obj: Any) -> Any:
    """Plain JSON types; non-finite floats become None (strict JSON has no NaN/Infinity)."""
    if isinstance(obj, Mapping):
        return {str(k): _strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict_json(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ---------------------------------------------------------------- event-log chain
def verify_event_chain(path: Path | None, expected_head: str | None = None) -> dict[str, Any]:
    """Verify the hash chain of a deploy event log with ``safetwin.safety.events.verify_chain``.

    ``expected_head``: the last record's sha256 as recorded elsewhere (summary.json), which
    also detects records dropped from the end. Returns ``{"status": "intact"|"broken"|"missing"|
    "unverified", "detail": str, "records": int|None, "closed": bool|None}``. Anything but
    ``intact`` fails the DR-CHAIN requirement (fail closed).
    """
    out: dict[str, Any] = {"records": None, "closed": None}
    if path is None or not Path(path).is_file():
        return {**out, "status": "missing", "detail": "events.jsonl is missing: stops cannot be verified"}
    try:
        verify = importlib.import_module("safetwin.safety.events").verify_chain
    except (ImportError, AttributeError) as exc:
        return {**out, "status": "unverified", "detail": f"cannot verify the chain: {exc}"}
    try:
        result = verify(path, expected_head=expected_head)
    except Exception as exc:  # noqa: BLE001 - any failure of verification means "broken"
        return {**out, "status": "broken", "detail": f"{path}: {type(exc).__name__}: {exc}"}
    out.update(records=result.records, closed=result.closed)
    if result.ok:
        anchor = "against the head recorded in summary.json" if expected_head else "no external head anchor"
        return {**out, "status": "intact",
                "detail": f"{path}: {result.records} records, hash chain verified ({anchor}; "
                          f"{'closed' if result.closed else 'not closed: writer ended without log_close'})"}
    return {**out, "status": "broken", "detail": result.reason}


# ---------------------------------------------------------------- building the report
def _provenance(files: RunFiles, extra: dict[str, Any]) -> dict[str, Any]:
    """F1 fields: config hash, code commit, seeds, servo firmware/IDs, latency settings."""
    meta, summary = files.meta or {}, files.summary or {}
    nr = "not recorded"
    return {"config_sha256": files.config_sha256 or nr,
            "code_commit": meta.get("code_version") or summary.get("code_version") or nr,
            "seed": meta.get("seed", summary.get("seed")),
            "packages": meta.get("packages", {}),
            "servos": summary.get("servos", nr),
            "latency_settings": summary.get("latency_settings", nr),
            "run_status": summary.get("status", "completed" if files.kind == "train" else nr),
            **extra}


def _train_part(files: RunFiles, cfg: AuditConfig, spec: SafetySpec) -> tuple[dict, list, dict, list]:
    metrics: dict[str, Any] = {}
    dt = None
    if files.eval_summary:
        dt = files.eval_summary.get("step_period_s", files.eval_summary.get("dt"))
    episodes = files.episodes or []
    for mode in ("raw", "filtered"):
        eps = [e for e in episodes if e["mode"] == mode]
        if eps:
            metrics[mode] = episode_metrics(eps, cfg.near_miss_distance_m, cfg.cvar_alpha, dt)
    judged = [e for e in episodes if e["mode"] == cfg.judged_mode]
    reqs = train_requirements(metrics.get(cfg.judged_mode), len(judged), cfg, spec, cfg.judged_mode)
    reqs += _train_integrity(files, spec)
    findings = _train_findings(metrics, reqs, cfg.judged_mode, files.episodes is not None)
    training = _training_series(files.metrics or [])
    metrics["training"] = {"iterations": len(files.metrics or []),
                           "final": {k: v[-1] for k, v in training.items() if v and k != "step"}}
    series = {"training": training, "episodes": episodes}
    return metrics, reqs, series, findings


def _train_findings(metrics: dict[str, Any], reqs: list[Requirement], mode: str, has_eval: bool) -> list[str]:
    if not has_eval:
        return ["eval/episodes.jsonl is missing: run the evaluator (safetwin audit evaluates the "
                "checkpoint first); no requirement on the policy's behaviour can pass."]
    failing = [r.id for r in reqs if not r.passed]
    n = (metrics.get(mode) or {}).get("episodes", 0)
    out = [f"Requirements failing: {', '.join(failing)}." if failing else
           f"All {len(reqs)} requirements pass over {n} evaluation episodes in {mode!r} mode."]
    other = "raw" if mode == "filtered" else "filtered"
    if metrics.get(other):
        m = metrics[other]
        out.append(f"For comparison, {other!r} mode: success rate {m['success_rate']:.3g}, mean episode cost "
                   f"{m['safety_cost']['mean']:.3g}, keep-out cost {m['safety_cost']['per_category_total'].get('keepout', 0):.3g}, "
                   f"minimum fragile distance {m['near_misses']['min_fragile_distance_m']} m.")
    return out


def _train_integrity(files: RunFiles, spec: SafetySpec) -> list[Requirement]:
    side = files.sidecar or {}
    recorded = side.get("safety_spec_sha256")
    reqs = [check("TR-CHECKPOINT", "checkpoint file present", files.checkpoint_sha256 is not None,
                  files.checkpoint_sha256, "docs/INTERFACES.md",
                  "checkpoints/policy.safetensors " + ("hashed" if files.checkpoint_sha256 else "is missing")),
            check("TR-SPEC", "checkpoint trained under the audited safety spec", recorded == spec.sha256(),
                  recorded, "checkpoints/policy.json: safety_spec_sha256",
                  f"sidecar records {recorded or 'no spec hash'}; audited spec hashes to {spec.sha256()}")]
    eval_spec = (files.eval_summary or {}).get("safety_spec_sha256")
    if eval_spec is not None:
        reqs.append(check("TR-EVAL-SPEC", "evaluation ran under the audited safety spec", eval_spec == spec.sha256(),
                          eval_spec, "eval/summary.json: safety_spec_sha256",
                          f"evaluated under {eval_spec}; audited spec hashes to {spec.sha256()}"))
    evaluated = (files.eval_summary or {}).get("checkpoint_sha256")
    if evaluated is not None:
        reqs.append(check("TR-EVAL-CKPT", "evaluation ran on this checkpoint",
                          evaluated == files.checkpoint_sha256, evaluated, "eval/summary.json: checkpoint_sha256",
                          f"evaluated {evaluated}; checkpoint now {files.checkpoint_sha256}"))
    return reqs


def _training_series(records: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Training curves from metrics.jsonl; a key missing from a record is NaN (a gap in the plot)."""
    keys = ["step", "charts/episode_return", "charts/success_rate", "safety/episode_cost",
            "safety/cost_limit", "safety/lambda"]
    series: dict[str, list[float]] = {k: [] for k in keys}
    for i, rec in enumerate(records):
        for k in keys:
            value = rec.get(k, i if k == "step" else None)
            series[k].append(math.nan if value is None else float(value))
    return series


def _deploy_part(files: RunFiles, cfg: AuditConfig, spec: SafetySpec) -> tuple[dict, list, dict, list]:
    summary = files.summary or {}
    head = summary.get("events_head_sha256", summary.get("event_log_head"))
    chain = verify_event_chain(files.events_path, head if isinstance(head, str) else None)
    records = files.telemetry or []
    tm = telemetry_metrics(records, cfg.correction_tolerance) if records else None
    joints = None
    if tm is not None:
        _add_unwritten_gap(tm, summary)
        lower = np.array([j.lower for j in spec.joints])
        upper = np.array([j.upper for j in spec.joints])
        vmax = np.array([j.velocity for j in spec.joints])
        joints = joint_violations(records, lower, upper, vmax, cfg.hard_limit_tolerance)
    stops = merge_stops(files.events, summary.get("stops"))
    reqs = deploy_requirements(tm, joints, chain, cfg, spec)
    unlogged = [s for s in stops if not s["in_event_log"]]
    reqs.append(numeric("DR-STOPS-LOGGED", "every stop in summary.json is in the hash-chained event log",
                        len(unlogged), "<=", 0, "stops", "SAFETY_SCENARIOS F1",
                        f"{len(stops)} stop(s); not in events.jsonl: "
                        f"{[(s['cause'], s['t_mono']) for s in unlogged] or 'none'}", ("F1",)))
    reqs.append(_self_check_requirement(summary.get("startup_probe")))
    corrections = tm.pop("filter_corrections") if tm else []
    metrics = {"telemetry": tm, "joints": joints, "comm_faults": summary.get("comm_faults", "not recorded"),
               "loop": summary.get("loop", "not recorded"), "stops": len(stops), "event_chain": chain,
               "policy_latency_ms": (summary.get("policy") or {}).get("latency_ms", "not recorded"),
               "startup_probe": summary.get("startup_probe", "not recorded"),
               "safe_explore": (summary.get("policy") or {}).get("safe_explore") or "not used",
               "_stops": stops}
    findings = _deploy_findings(tm, reqs)
    series = {"corrections": corrections, "periods": [r.get("period_ms") for r in records],
              "t_mono": [r.get("t_mono") for r in records]}
    return metrics, reqs, series, findings


def _self_check_requirement(probe: Any) -> Requirement:
    """A7: the startup self-check ran and passed before the policy got control; a run without
    one (probe disabled, or a runner that predates it) fails, so a reviewer sees it was skipped."""
    if not isinstance(probe, Mapping):
        return check("DR-SELFCHECK", "startup self-check passed before motion", False, "not run",
                     "SAFETY_SCENARIOS A7", "summary.json has no startup_probe record (disabled or not run)",
                     ("A7",))
    unverified = probe.get("unverified") or []
    detail = "; ".join(probe.get("problems") or []) or (
        f"passed in {probe.get('duration_s', float('nan')):.2f} s; direction not confirmed by gravity "
        f"for {unverified or 'no joint'}")
    return check("DR-SELFCHECK", "startup self-check passed before motion", bool(probe.get("passed")),
                 "passed" if probe.get("passed") else "failed", "SAFETY_SCENARIOS A7", detail, ("A7",))


def _add_unwritten_gap(tm: dict[str, Any], summary: Mapping[str, Any]) -> None:
    """F2: periods the runner counted but the telemetry writer never wrote (summary.json's
    ``telemetry_missing``, e.g. lost at the end of an aborted run) are a gap too."""
    missing = summary.get("telemetry_missing")
    if isinstance(missing, int) and not isinstance(missing, bool) and missing > 0:
        seq = tm["sequence"]
        seq["gaps"].append({"after": seq["last"], "before": None, "missing": missing, "kind": "unwritten"})
        seq["gap_count"] += 1
        seq["missing_records"] += missing


def _deploy_findings(tm: dict[str, Any] | None, reqs: list[Requirement]) -> list[str]:
    """The plain-language statement about violations; never "no violations" over a gap (F2)."""
    if tm is None:
        return ["No telemetry: nothing about limit violations can be stated for this run."]
    seq = tm["sequence"]
    if seq["gap_count"]:
        return [f"Telemetry has {seq['gap_count']} gap(s) ({seq['missing_records']} missing record(s)); "
                "absence of violations cannot be claimed for the missing periods (F2)."]
    limit_ids = {"DR-FINITE", "DR-JOINT-POS", "DR-JOINT-VEL", "DR-SPEED", "DR-INFEASIBLE", "DR-CHAIN",
                 "DR-STOPS-LOGGED"}
    failing = [r.id for r in reqs if r.id in limit_ids and not r.passed]
    if failing:
        return [f"Violations or integrity failures recorded: {', '.join(failing)}."]
    return [f"No limit violations observed in {tm['periods']} contiguous control periods "
            f"(seq {seq['first']}..{seq['last']}), with an intact event-log chain."]


def build_report(run_dir: str | Path, cfg: AuditConfig | None = None, *,
                 spec: SafetySpec | Mapping[str, Any] | None = None,
                 junit_xml: str | Path | None = None, tests_root: str | Path | None = None,
                 write: bool = True) -> Report:
    """Audit ``run_dir`` and (when ``write``) write ``<run_dir>/audit/report.{json,html}``.

    ``spec``: the scene's safety spec (SafetySpec or dict); None: read from the run (sidecar,
    summary.json or config.yaml). ``junit_xml``: pytest JUnit results for the scenario table;
    ``tests_root``: the repository root, to read test docstrings for scenario IDs.
    Raises AuditError for malformed run files; an incomplete run yields a failing report.
    """
    cfg = cfg or AuditConfig()
    if write:  # a stale report must not outlive a failed re-audit (the gate reads report.json)
        (Path(run_dir) / "audit" / "report.json").unlink(missing_ok=True)
    files = read_run(run_dir)
    audited_spec, spec_source = resolve_spec(files, spec)
    part = _train_part if files.kind == "train" else _deploy_part
    metrics, reqs, series, findings = part(files, cfg, audited_spec)
    stops = metrics.pop("_stops", [])
    extra = {"eval_seeds": sorted({e.get("seed") for e in files.episodes or [] if e.get("seed") is not None})}
    results = parse_junit(junit_xml, tests_root) if junit_xml is not None else None
    integrity = {"event_chain": metrics.pop("event_chain", None),
                 "telemetry_gaps": (metrics.get("telemetry") or {}).get("sequence")}
    report = Report(
        kind=files.kind, run_dir=str(files.run_dir), verdict="PASS" if all(r.passed for r in reqs) else "FAIL",
        requirements=reqs, metrics=metrics, provenance=_provenance(files, extra), integrity=integrity,
        stops=stops, scenarios=scenario_table(results), findings=findings,
        checkpoint_sha256=files.checkpoint_sha256, safety_spec_sha256=audited_spec.sha256(),
        spec_source=spec_source, config=asdict(cfg), series=series)
    if write:
        write_report(report, Path(run_dir) / "audit")
    logger.info("audit of %s: %s (%d/%d requirements pass)", run_dir, report.verdict,
                sum(r.passed for r in reqs), len(reqs))
    return report


def write_report(report: Report, out_dir: Path) -> tuple[Path, Path]:
    """Validate and write report.json and report.html atomically; returns their paths."""
    from .audit_html import render_html
    from .audit_schema import validate_report

    data = report.to_dict()
    validate_report(data)
    html_path = atomic_write_text(out_dir / "report.html", render_html(report))
    json_path = atomic_write_json(out_dir / "report.json", data)
    return json_path, html_path
