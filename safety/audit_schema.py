"""The JSON schema of ``audit/report.json`` (``schema_version`` 1.0) and its validator.

Top-level fields:

- ``schema_version`` (str): "1.0". A reader refuses other major versions.
- ``kind`` (str): "train" (a checkpoint's audit) or "deploy" (a deploy run's audit).
- ``run_dir`` (str): the audited run directory.
- ``verdict`` (str): "PASS" when every requirement passes, else "FAIL".
- ``requirements`` (list): one object per requirement: ``id``, ``name``, ``status``
  (PASS/FAIL), ``measured``, ``comparator``, ``limit``, ``unit``, ``source`` (spec key or
  AuditConfig field), ``evidence`` (sentence), ``scenarios`` (IDs such as "F2").
- ``metrics`` (object): train: ``raw``/``filtered`` eval metrics (success_rate, average_return,
  safety_cost {mean,total,max,cvar,per_category_total,per_category_mean}, episode_length,
  cycle_time, interventions, intervention_rate, filter_infeasible, min_barrier, near_misses,
  max_ee_speed, max_contact_force, inference_latency_ms {p50,p99,max,mean,n}) and ``training``;
  deploy: ``telemetry`` (periods, duration_s, sequence {gaps,...}, loop_period_ms, interventions,
  intervention_rate, filter_infeasible, min_barrier, faults_by_type, max_ee_speed,
  non_finite_records), ``joints``, ``comm_faults`` (bus faults by type, from summary.json),
  ``loop`` (the runner's loop stats), ``stops`` (count).
- ``provenance`` (object, F1): config_sha256, code_commit, seed, eval_seeds, packages, servos,
  latency_settings, run_status.
- ``integrity`` (object): ``event_chain`` {status, detail} (deploy) and ``telemetry_gaps``.
- ``stops`` (list): every stop with ``event``, ``seq`` (event-log seq), ``t_mono`` (s, monotonic),
  ``cause``, ``category``, ``t_stop_s`` (s), ``detail``, ``stop_distance_rad``, ``source`` and
  ``in_event_log`` (see audit_stops).
- ``scenarios`` (list): one row per scenario A1..F3: ``id``, ``status`` (passed, failed,
  skipped, not covered, not run), ``tests`` [{test, outcome, message}].
- ``findings`` (list of str): plain statements, e.g. the F2 gap statement.
- ``checkpoint_sha256`` (str|null), ``safety_spec_sha256`` (str): hashes the deploy gate checks.
- ``spec_source`` (str), ``config`` (object: the AuditConfig), ``created_unix`` (float, s),
  ``claims`` (str): the no-PL/SIL statement (F3).

Non-finite numbers are written as null (strict JSON).
"""

from __future__ import annotations

from typing import Any

import jsonschema

SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}

_REQUIREMENT = {
    "type": "object",
    "required": ["id", "name", "status", "measured", "comparator", "limit", "unit", "source",
                 "evidence", "scenarios"],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "string", "pattern": "^[A-Z]+-[A-Z0-9-]+$"},
        "name": {"type": "string", "minLength": 1},
        "status": {"enum": ["PASS", "FAIL"]},
        "measured": {"type": ["number", "string", "boolean", "null"]},
        "limit": {"type": ["number", "null"]},
        "comparator": {"enum": ["<=", ">=", ">", "<", "==", "is"]},
        "unit": {"type": "string"},
        "source": {"type": "string", "minLength": 1},
        "evidence": {"type": "string", "minLength": 1},
        "scenarios": {"type": "array", "items": {"type": "string", "pattern": "^[A-F][0-9]{1,2}$"}},
    },
}

_SCENARIO = {
    "type": "object",
    "required": ["id", "status", "tests"],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "string", "pattern": "^[A-F][0-9]{1,2}$"},
        "status": {"enum": ["passed", "failed", "skipped", "not covered", "not run"]},
        "tests": {"type": "array", "items": {
            "type": "object", "required": ["test", "outcome", "message"],
            "properties": {"outcome": {"enum": ["passed", "failed", "error", "skipped"]}}}},
    },
}

_STOP = {
    "type": "object",
    "required": ["event", "seq", "t_mono", "cause", "category", "t_stop_s", "detail", "stop_distance_rad",
                 "source", "in_event_log"],
    "properties": {"event": {"type": "string"}, "cause": {"type": "string"},
                   "seq": {"type": ["integer", "null"]}, "t_mono": {"type": ["number", "null"]},
                   "t_stop_s": {"type": ["number", "null"]}, "in_event_log": {"type": "boolean"},
                   "source": {"enum": ["events.jsonl", "summary.json", "events.jsonl + summary.json"]}},
}

REPORT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "SafeTwin audit report",
    "type": "object",
    "required": ["schema_version", "kind", "run_dir", "verdict", "requirements", "metrics",
                 "provenance", "integrity", "stops", "scenarios", "findings", "checkpoint_sha256",
                 "safety_spec_sha256", "spec_source", "config", "created_unix", "claims"],
    "additionalProperties": False,
    "properties": {
        "schema_version": {"const": "1.0"},
        "kind": {"enum": ["train", "deploy"]},
        "run_dir": {"type": "string", "minLength": 1},
        "verdict": {"enum": ["PASS", "FAIL"]},
        "requirements": {"type": "array", "minItems": 1, "items": _REQUIREMENT},
        "metrics": {"type": "object"},
        "provenance": {"type": "object", "required": ["config_sha256", "code_commit", "seed", "servos",
                                                      "latency_settings", "run_status"]},
        "integrity": {"type": "object", "required": ["event_chain", "telemetry_gaps"]},
        "stops": {"type": "array", "items": _STOP},
        "scenarios": {"type": "array", "minItems": 52, "maxItems": 52, "items": _SCENARIO},
        "findings": {"type": "array", "items": {"type": "string"}},
        "checkpoint_sha256": {"anyOf": [SHA256, {"type": "null"}]},
        "safety_spec_sha256": SHA256,
        "spec_source": {"type": "string"},
        "config": {"type": "object"},
        "created_unix": {"type": "number"},
        "claims": {"type": "string", "pattern": "no performance level"},
    },
    "allOf": [
        # the verdict is consistent with the requirements
        {"if": {"properties": {"verdict": {"const": "PASS"}}},
         "then": {"properties": {"requirements": {"items": {"properties": {"status": {"const": "PASS"}}}}}}},
        {"if": {"properties": {"verdict": {"const": "FAIL"}}},
         "then": {"properties": {"requirements": {"contains": {
             "properties": {"status": {"const": "FAIL"}}}}}}},
    ],
}


class ReportSchemaError(ValueError):
    """report.json does not match REPORT_SCHEMA; the message names the JSON path."""


def validate_report(data: Any, where: str = "report.json") -> None:
    """Raise :class:`ReportSchemaError` naming ``where`` and the offending JSON path."""
    validator = jsonschema.Draft202012Validator(REPORT_SCHEMA)
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        path = "/".join(str(p) for p in err.absolute_path) or "<top>"
        raise ReportSchemaError(f"{where}: {path}: {err.message}"
                                + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))
