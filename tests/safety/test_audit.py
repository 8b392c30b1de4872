"""The audit report builder on hand-made run directories (tests/fixtures/audit).

Covers the report JSON schema, requirement verdicts and their evidence, fail-closed handling of
missing/malformed files, telemetry gaps (F2), the event-log hash chain and F1 fields, the no
PL/SIL statement (F3) and the scenario table from a JUnit XML file.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from safetwin.safety.audit import AuditConfig, AuditError, build_report
from safetwin.safety.audit_schema import ReportSchemaError, validate_report
from safetwin.safety.runio import ConfigError, config_from_dict, sha256_file
from safetwin.safety.spec import parse_safety

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "audit"
CFG = AuditConfig(min_episodes=10)


def copy_run(tmp_path: Path, name: str) -> Path:
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


def rewrite_jsonl(path: Path, edit) -> None:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    records = edit(records)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def failing(report) -> set[str]:
    return {r.id for r in report.requirements if not r.passed}


# ---------------------------------------------------------------- training-run audits
def test_passing_training_run_writes_schema_valid_json_and_html(tmp_path: Path) -> None:
    run = copy_run(tmp_path, "train_run")
    report = build_report(run, CFG)
    assert report.verdict == "PASS" and report.exit_code == 0, failing(report)
    data = json.loads((run / "audit" / "report.json").read_text())
    validate_report(data)
    assert data["checkpoint_sha256"] == sha256_file(run / "checkpoints" / "policy.safetensors")
    sidecar = json.loads((run / "checkpoints" / "policy.json").read_text())
    assert data["safety_spec_sha256"] == sidecar["safety_spec_sha256"]
    assert (run / "audit" / "report.html").stat().st_size > 10_000
    assert not [p for p in (run / "audit").iterdir() if p.suffix == ".tmp"]
    filtered = data["metrics"]["filtered"]
    assert filtered["success_rate"] == pytest.approx(0.9)
    assert set(filtered["safety_cost"]["per_category_total"]) == {"collision", "keepout", "ee_speed",
                                                                  "joint_limit", "force"}
    assert data["metrics"]["raw"]["safety_cost"]["per_category_total"]["keepout"] == 1.0
    assert data["provenance"]["code_commit"] == "fixture-commit" and data["provenance"]["seed"] == 7
    assert len(data["provenance"]["config_sha256"]) == 64
    assert data["provenance"]["eval_seeds"] == list(range(1000, 1010))


def test_schema_rejects_inconsistent_or_incomplete_reports(tmp_path: Path) -> None:
    run = copy_run(tmp_path, "train_run")
    data = build_report(run, CFG, write=False).to_dict()
    validate_report(data)
    bad = copy.deepcopy(data)
    bad["requirements"][0]["status"] = "FAIL"  # verdict PASS with a failing requirement
    with pytest.raises(ReportSchemaError, match="requirements"):
        validate_report(bad)
    for key, value in (("schema_version", "0.9"), ("safety_spec_sha256", "abc"), ("verdict", "OK")):
        bad = copy.deepcopy(data)
        bad[key] = value
        with pytest.raises(ReportSchemaError, match=key):
            validate_report(bad)
    bad = copy.deepcopy(data)
    del bad["claims"]
    with pytest.raises(ReportSchemaError, match="claims"):
        validate_report(bad)


def test_cost_over_the_spec_limit_fails_with_evidence(tmp_path: Path) -> None:
    run = copy_run(tmp_path, "train_run")
    rewrite_jsonl(run / "eval" / "episodes.jsonl",
                  lambda recs: [{**r, "cost": r["cost"] + 3.0} if r["mode"] == "filtered" else r for r in recs])
    report = build_report(run, CFG)
    assert report.exit_code == 1 and "TR-COST" in failing(report) and "TR-CVAR" in failing(report)
    req = next(r for r in report.requirements if r.id == "TR-COST")
    assert req.source == "safety.cost_limit" and req.limit == 2.0
    assert req.measured == pytest.approx(3.3)
    assert "3.3" in req.evidence and "violated" in req.evidence
    assert json.loads((run / "audit" / "report.json").read_text())["verdict"] == "FAIL"


def test_hard_limits_force_speed_keepout_and_thresholds(tmp_path: Path) -> None:
    run = copy_run(tmp_path, "train_run")

    def edit(recs):
        for r in recs:
            if r["mode"] == "filtered" and r["episode"] == 4:
                r.update(max_contact_force=25.0, max_ee_speed=0.3, filter_infeasible=2,
                         min_fragile_distance=0.0)
                r["costs"]["keepout"] = 1.0
        return recs

    rewrite_jsonl(run / "eval" / "episodes.jsonl", edit)
    report = build_report(run, CFG, write=False)
    assert {"TR-FORCE", "TR-SPEED", "TR-KEEPOUT", "TR-INFEASIBLE", "TR-FRAGILE"} <= failing(report)
    # a relative tolerance on force/speed is an explicit audit setting
    tolerant = build_report(run, AuditConfig(min_episodes=10, hard_limit_tolerance=0.25), write=False)
    assert {"TR-FORCE", "TR-SPEED"}.isdisjoint(failing(tolerant))
    strict = build_report(copy_run(tmp_path / "b", "train_run"),
                          AuditConfig(min_episodes=10, min_success_rate=0.95, max_intervention_rate=0.05),
                          write=False)
    assert failing(strict) == {"TR-SUCCESS", "TR-INTERVENE"}


def test_judging_raw_mode_uses_the_unfiltered_episodes(tmp_path: Path) -> None:
    report = build_report(copy_run(tmp_path, "train_run"),
                          AuditConfig(min_episodes=10, judged_mode="raw"), write=False)
    assert {"TR-KEEPOUT", "TR-SPEED", "TR-CVAR"} <= failing(report)
    assert report.metrics["raw"]["near_misses"]["min_fragile_distance_m"] == pytest.approx(0.01)


def test_nan_cost_fails_closed(tmp_path: Path) -> None:
    run = copy_run(tmp_path, "train_run")
    rewrite_jsonl(run / "eval" / "episodes.jsonl",
                  lambda recs: [{**r, "cost": float("nan")} if r["episode"] == 0 else r for r in recs])
    report = build_report(run, CFG)
    req = next(r for r in report.requirements if r.id == "TR-COST")
    assert not req.passed and "not measured" in req.evidence
    assert "NaN" not in (run / "audit" / "report.json").read_text()  # strict JSON


def test_missing_evaluation_gives_a_failing_report_not_a_pass(tmp_path: Path) -> None:
    run = copy_run(tmp_path, "train_run")
    shutil.rmtree(run / "eval")
    report = build_report(run, CFG)
    assert report.exit_code == 1
    assert {"TR-EPISODES", "TR-SUCCESS", "TR-COST", "TR-FORCE"} <= failing(report)
    assert "eval/episodes.jsonl is missing" in report.findings[0]


def test_spec_given_explicitly_must_match_the_checkpoint(tmp_path: Path) -> None:
    run = copy_run(tmp_path, "train_run")
    sidecar = json.loads((run / "checkpoints" / "policy.json").read_text())
    spec_dict = copy.deepcopy(sidecar["safety_spec"])
    spec_dict["cost_limit"] = 0.1
    report = build_report(run, CFG, spec=spec_dict, write=False)
    assert {"TR-SPEC", "TR-COST"} <= failing(report)
    assert report.spec_source == "argument (dict)"
    same = build_report(run, CFG, spec=parse_safety(json.loads(json.dumps(_scene_block())), "x"), write=False)
    assert "TR-SPEC" not in failing(same), "scene-form spec with the same limits hashes the same"


def _scene_block() -> dict:
    import importlib.util

    spec = importlib.util.spec_from_file_location("audit_fixture_gen", FIXTURES / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SAFETY


def test_checkpoint_changed_after_evaluation_fails(tmp_path: Path) -> None:
    run = copy_run(tmp_path, "train_run")
    with open(run / "checkpoints" / "policy.safetensors", "ab") as fh:
        fh.write(b"\0")
    assert "TR-EVAL-CKPT" in failing(build_report(run, CFG, write=False))


def test_evaluation_under_another_spec_fails(tmp_path: Path) -> None:
    run = copy_run(tmp_path, "train_run")
    summary = json.loads((run / "eval" / "summary.json").read_text())
    summary["safety_spec_sha256"] = "a" * 64
    (run / "eval" / "summary.json").write_text(json.dumps(summary))
    assert failing(build_report(run, CFG, write=False)) == {"TR-EVAL-SPEC"}


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda p: p.write_text(p.read_text() + "{not json\n"), "episodes.jsonl:21: malformed JSON"),
    (lambda p: rewrite_jsonl(p, lambda r: [{k: v for k, v in x.items() if k != "cost"} for x in r]),
     "episodes.jsonl: record 1: missing key(s) ['cost']"),
    (lambda p: rewrite_jsonl(p, lambda r: [{**x, "mode": "shielded"} for x in r]),
     "mode must be 'raw' or 'filtered'"),
])
def test_malformed_eval_file_is_an_error_naming_file_and_line(tmp_path: Path, mutate, message: str) -> None:
    run = copy_run(tmp_path, "train_run")
    build_report(run, CFG)
    mutate(run / "eval" / "episodes.jsonl")
    with pytest.raises(AuditError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                       .replace(")", r"\)")):
        build_report(run, CFG)
    assert not (run / "audit" / "report.json").exists(), "a stale report must not survive a failed re-audit"


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="not a run directory"):
        build_report(tmp_path, CFG)
    with pytest.raises(AuditError, match="no such run directory"):
        build_report(tmp_path / "nope", CFG)


def test_audit_config_is_strict_and_validated() -> None:
    with pytest.raises(ConfigError, match="unknown option"):
        config_from_dict(AuditConfig, {"min_sucess_rate": 0.9})
    for bad in ({"min_success_rate": 1.5}, {"cvar_alpha": 1.0}, {"judged_mode": "shielded"},
                {"max_infeasible_count": -1}, {"max_cvar_cost": float("nan")}, {"min_episodes": 2.5}):
        with pytest.raises(ConfigError, match=f"AuditConfig.{next(iter(bad))}"):
            config_from_dict(AuditConfig, bad)
    assert config_from_dict(AuditConfig, {"max_cvar_cost": 3.0}).max_cvar_cost == 3.0


# ---------------------------------------------------------------- deploy-run audits
def test_f1_deploy_report_has_every_f1_field(tmp_path: Path) -> None:
    """F1: config hash, commit, seeds, servo firmware/IDs, latency settings, loop-time stats,
    intervention rate, infeasibility count, every stop with cause and T_stop, comm faults by type."""
    run = copy_run(tmp_path, "deploy_run")
    report = build_report(run, CFG)
    assert report.verdict == "PASS", failing(report)
    data = json.loads((run / "audit" / "report.json").read_text())
    prov = data["provenance"]
    assert len(prov["config_sha256"]) == 64 and prov["code_commit"] == "fixture-commit" and prov["seed"] == 3
    assert [s["id"] for s in prov["servos"]] == [1, 2, 3] and prov["servos"][0]["firmware"] == "1.0"
    assert prov["latency_settings"] == {"usb_latency_timer_ms": 1, "return_delay_us": 0}
    tel = data["metrics"]["telemetry"]
    assert tel["loop_period_ms"]["n"] == 40 and tel["loop_period_ms"]["p99"] == pytest.approx(10.4)
    assert tel["intervention_rate"] == pytest.approx(5 / 40) and tel["filter_infeasible"] == 0
    assert data["metrics"]["comm_faults"] == {"crc": 1}
    assert tel["faults_by_type"] == {"read_failed": 1}
    assert len(data["stops"]) == 1
    stop = data["stops"][0]
    assert stop["cause"] == "estop" and stop["t_stop_s"] == pytest.approx(0.12) and stop["category"] == 1
    assert stop["in_event_log"] and stop["source"] == "events.jsonl + summary.json" and stop["seq"] == 3
    assert stop["stop_distance_rad"] == [0.01, 0.02, 0.0]
    assert data["integrity"]["event_chain"]["status"] == "intact"
    assert data["findings"][0].startswith("No limit violations observed in 40 contiguous")


def test_f2_telemetry_gap_is_flagged_and_no_violation_free_claim(tmp_path: Path) -> None:
    """F2: a gap in the telemetry sequence numbers fails DR-GAPS and blocks the "no violations" claim."""
    run = copy_run(tmp_path, "deploy_run")
    rewrite_jsonl(run / "telemetry.jsonl", lambda recs: [r for r in recs if r["seq"] not in (12, 13, 14)])
    report = build_report(run, CFG)
    assert failing(report) == {"DR-GAPS"}
    gap = report.integrity["telemetry_gaps"]["gaps"][0]
    assert (gap["after"], gap["before"], gap["missing"]) == (11, 15, 3)
    text = (run / "audit" / "report.html").read_text() + (run / "audit" / "report.json").read_text()
    assert "No limit violations" not in text
    assert "cannot be claimed" in report.findings[0] and "11->15" in text


def test_f1_broken_hash_chain_is_detected(tmp_path: Path) -> None:
    """F1 integrity: an edited stop record breaks the event log's hash chain (D's verify_chain)."""
    run = copy_run(tmp_path, "deploy_run")
    lines = (run / "events.jsonl").read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace('"cause":"estop"', '"cause":"operator"')
    (run / "events.jsonl").write_text("".join(lines))
    report = build_report(run, CFG)
    assert failing(report) == {"DR-CHAIN"}
    assert report.integrity["event_chain"]["status"] == "broken"
    assert "edited record" in report.integrity["event_chain"]["detail"]
    assert "No limit violations" not in report.findings[0]


def test_f1_stop_missing_from_the_event_log_is_flagged(tmp_path: Path) -> None:
    """F1: a stop that summary.json reports but the hash-chained log lacks fails DR-STOPS-LOGGED."""
    run = copy_run(tmp_path, "deploy_run")
    summary = json.loads((run / "summary.json").read_text())
    summary["stops"].append({"cause": "bus_fault", "category": 0, "t_mono": 250.0, "t_stop_s": 0.01})
    (run / "summary.json").write_text(json.dumps(summary))
    report = build_report(run, CFG, write=False)
    assert failing(report) == {"DR-STOPS-LOGGED"}
    assert [s["in_event_log"] for s in report.stops] == [True, False]
    assert "bus_fault" in next(r for r in report.requirements if r.id == "DR-STOPS-LOGGED").evidence


def test_f2_records_the_writer_never_wrote_are_a_gap(tmp_path: Path) -> None:
    """F2: periods counted by the runner but missing from telemetry.jsonl (telemetry_missing) are a gap."""
    run = copy_run(tmp_path, "deploy_run")
    summary = json.loads((run / "summary.json").read_text())
    summary["telemetry_missing"] = 5
    (run / "summary.json").write_text(json.dumps(summary))
    report = build_report(run, CFG, write=False)
    assert failing(report) == {"DR-GAPS"}
    assert report.integrity["telemetry_gaps"]["gaps"][-1] == {"after": 39, "before": None, "missing": 5,
                                                              "kind": "unwritten"}
    assert "cannot be claimed" in report.findings[0]


def test_e9_measured_overspeed_fails(tmp_path: Path) -> None:
    """E9: a measured TCP speed above the spec's ee_speed_max (0.25 m/s) fails DR-SPEED."""
    run = copy_run(tmp_path, "deploy_run")
    rewrite_jsonl(run / "telemetry.jsonl", lambda recs: [{**r, "ee_speed": 0.3} if r["seq"] == 7 else r
                                                          for r in recs])
    report = build_report(run, CFG, write=False)
    assert failing(report) == {"DR-SPEED"}
    assert report.metrics["telemetry"]["max_ee_speed"] == pytest.approx(0.3)


def test_f1_records_dropped_from_the_end_are_detected(tmp_path: Path) -> None:
    """F1 integrity: truncating the log's tail is caught against the head kept in summary.json."""
    run = copy_run(tmp_path, "deploy_run")
    lines = (run / "events.jsonl").read_text().splitlines(keepends=True)
    (run / "events.jsonl").write_text("".join(lines[:-2]))
    report = build_report(run, CFG, write=False)
    assert "DR-CHAIN" in failing(report) and "expected head" in report.integrity["event_chain"]["detail"]
    (run / "events.jsonl").unlink()
    report = build_report(run, CFG, write=False)
    assert report.integrity["event_chain"]["status"] == "missing" and "DR-CHAIN" in failing(report)


def test_a1_non_finite_and_a4_overspeed_telemetry_fail(tmp_path: Path) -> None:
    """A1: a NaN in telemetry fails DR-FINITE; A4: a joint speed over the spec limit fails DR-JOINT-VEL."""
    run = copy_run(tmp_path, "deploy_run")

    def edit(recs):
        recs[5]["nominal"] = [float("nan"), 0.0, 0.0]
        recs[9]["dq"] = [0.0, 2.5, 0.0]  # elbow limit is 2.0 rad/s
        recs[10]["filter"]["feasible"] = False
        return recs

    rewrite_jsonl(run / "telemetry.jsonl", edit)
    report = build_report(run, CFG, write=False)
    assert failing(report) == {"DR-FINITE", "DR-JOINT-VEL", "DR-INFEASIBLE"}
    assert report.metrics["joints"]["worst_velocity_excess_rad_s"] == pytest.approx(0.5)


def test_aborted_deploy_without_telemetry_still_reports(tmp_path: Path) -> None:
    """F1 for aborted runs: no telemetry still yields a (failing) report with the stops."""
    run = copy_run(tmp_path, "deploy_run")
    (run / "telemetry.jsonl").unlink()
    report = build_report(run, CFG)
    assert report.exit_code == 1 and "DR-TELEMETRY" in failing(report)
    assert [(s["cause"], s["t_stop_s"]) for s in report.stops] == [("estop", 0.12)]
    assert (run / "audit" / "report.html").is_file()


# ---------------------------------------------------------------- claims and scenarios
def test_f3_report_makes_no_pl_or_sil_claim(tmp_path: Path) -> None:
    """F3: the wording is software risk reduction verified by tests A1-F3; no PL/SIL is claimed."""
    run = copy_run(tmp_path, "train_run")
    report = build_report(run, CFG)
    assert "software risk-reduction measures" in report.claims and "no performance level" in report.claims
    html = (run / "audit" / "report.html").read_text()
    assert "software risk-reduction measures" in html
    for claim in ("PL d", "PL e", "SIL 1", "SIL 2", "SIL 3", "certified"):
        assert claim not in html


def test_f3_scenario_table_from_junit_names_and_docstrings(tmp_path: Path) -> None:
    """F3: each scenario ID lists the tests covering it and their last result."""
    run = copy_run(tmp_path, "train_run")
    report = build_report(run, CFG, junit_xml=FIXTURES / "junit.xml", tests_root=FIXTURES)
    rows = {r["id"]: r for r in report.scenarios}
    assert len(rows) == 52 and list(rows)[0] == "A1" and list(rows)[-1] == "F3"
    assert rows["A1"]["status"] == "passed"
    assert rows["C3"]["status"] == "passed" and "bit_flips[flip7]" in rows["C3"]["tests"][0]["test"]
    assert rows["B3"]["status"] == "failed" and rows["B3"]["tests"][0]["message"] == "assert brake"
    assert rows["F1"]["status"] == "passed"  # from the docstring
    assert rows["C1"]["status"] == rows["C2"]["status"] == "passed"  # docstring range C1-C2
    assert rows["E2"]["status"] == "not covered"  # "e2e" is not scenario E2
    assert rows["D7"]["status"] == "not covered"
    without_docs = build_report(run, CFG, junit_xml=FIXTURES / "junit.xml", write=False)
    assert {r["id"]: r for r in without_docs.scenarios}["F1"]["status"] == "not covered"
    assert {r["status"] for r in build_report(run, CFG, write=False).scenarios} == {"not run"}


def test_unreadable_junit_file_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "junit.xml"
    bad.write_text("<testsuites><testcase")
    with pytest.raises(ValueError, match="junit.xml: not a readable JUnit XML"):
        build_report(copy_run(tmp_path, "train_run"), CFG, junit_xml=bad, write=False)


def test_f3_scenario_ids_in_names_and_docstrings() -> None:
    """F3: IDs are found as words of their own; ranges within a section expand, across sections not."""
    from safetwin.safety.audit_scenarios import ids_in_name, ids_in_text

    assert ids_in_name("test_a1_nan[c3-flip]") == {"A1", "C3"}
    assert ids_in_name("test_e2e_pipeline") == set() and ids_in_name("test_data1") == set()
    assert ids_in_name("test_d8_unknown") == set()  # section D has D1..D7
    assert ids_in_text("Covers C1-C3 and C10..C11, E9.") == {"C1", "C2", "C3", "C10", "C11", "E9"}
    assert ids_in_text("software measures verified by tests A1-F3") == set()


@pytest.mark.parametrize("probe", [None, {"passed": False, "problems": ["elbow: holding: gravity model -1.75 N*m "
                                                                        "but current +0.533 A"], "unverified": []}])
def test_a7_deploy_without_a_passing_self_check_fails(tmp_path: Path, probe) -> None:
    """A7: a deploy run whose startup self-check failed, or never ran, fails DR-SELFCHECK."""
    run = copy_run(tmp_path, "deploy_run")
    assert "DR-SELFCHECK" not in failing(build_report(run, CFG, write=False))
    summary = json.loads((run / "summary.json").read_text())
    if probe is None:
        del summary["startup_probe"]
    else:
        summary["startup_probe"] = probe
    (run / "summary.json").write_text(json.dumps(summary))
    report = build_report(run, CFG, write=False)
    assert failing(report) == {"DR-SELFCHECK"}
    req = next(r for r in report.requirements if r.id == "DR-SELFCHECK")
    assert ("elbow" in req.evidence) if probe else ("not run" in str(req.measured))
