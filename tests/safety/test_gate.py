"""The deployment gate: only a checkpoint with a passing audit of its exact bytes, under the spec
being deployed, reaches a robot; the unaudited override works on the virtual robot only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from safetwin.safety.audit import AuditConfig, build_report
from safetwin.safety.gate import GateError, audit_report_path, check_deploy_gate
from safetwin.safety.runio import sha256_file

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "audit"


@pytest.fixture(scope="module")
def audited_template(tmp_path_factory) -> Path:
    run = Path(shutil.copytree(FIXTURES / "train_run", tmp_path_factory.mktemp("gate") / "train_run"))
    assert build_report(run, AuditConfig(min_episodes=10)).passed
    return run


@pytest.fixture
def run(audited_template: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(audited_template, tmp_path / "train_run"))


def ckpt(run: Path) -> Path:
    return run / "checkpoints" / "policy.safetensors"


def spec_hash(run: Path) -> str:
    return json.loads((run / "checkpoints" / "policy.json").read_text())["safety_spec_sha256"]


def test_passing_audit_of_these_bytes_is_allowed(run: Path) -> None:
    decision = check_deploy_gate(ckpt(run), spec_hash(run), "/dev/ttyUSB0")
    assert decision.audited and decision.report_path == audit_report_path(ckpt(run))
    assert decision.checkpoint_sha256 == sha256_file(ckpt(run))
    assert check_deploy_gate(ckpt(run), spec_hash(run), "sim").audited


def test_refuses_a_checkpoint_without_audit(run: Path) -> None:
    (run / "audit" / "report.json").unlink()
    with pytest.raises(GateError, match="has no audit") as info:
        check_deploy_gate(ckpt(run), spec_hash(run), "sim")
    assert f"safetwin audit --run-dir {run.resolve()}" in str(info.value)


def test_refuses_a_failing_audit(run: Path) -> None:
    episodes = run / "eval" / "episodes.jsonl"
    records = [json.loads(x) for x in episodes.read_text().splitlines()]
    for r in records:
        r["max_contact_force"] = 50.0
    episodes.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert not build_report(run, AuditConfig(min_episodes=10)).passed
    with pytest.raises(GateError, match="FAILED.*TR-FORCE.*safetwin audit"):
        check_deploy_gate(ckpt(run), spec_hash(run), "sim")


def test_refuses_a_checkpoint_changed_since_the_audit(run: Path) -> None:
    data = bytearray(ckpt(run).read_bytes())
    data[-1] ^= 0x01  # one flipped bit in the weights
    ckpt(run).write_bytes(bytes(data))
    with pytest.raises(GateError, match="changed since its audit.*Re-audit"):
        check_deploy_gate(ckpt(run), spec_hash(run), "/dev/ttyACM0")


def test_refuses_a_different_safety_spec(run: Path) -> None:
    with pytest.raises(GateError, match="differs from the spec the checkpoint was audited under"):
        check_deploy_gate(ckpt(run), "f" * 64, "sim")


def test_override_is_refused_on_a_real_port_even_with_a_passing_audit(run: Path) -> None:
    with pytest.raises(GateError, match="refused for the real port '/dev/ttyUSB0'"):
        check_deploy_gate(ckpt(run), spec_hash(run), "/dev/ttyUSB0", accept_unaudited=True)


def test_override_on_the_virtual_robot_runs_unaudited(run: Path, caplog) -> None:
    (run / "audit" / "report.json").unlink()
    decision = check_deploy_gate(ckpt(run), "0" * 64, "sim", accept_unaudited=True)
    assert not decision.audited and decision.report_path is None
    assert "WITHOUT an audit check" in caplog.text


@pytest.mark.parametrize("content", ["{broken", json.dumps({"verdict": "PASS"})])
def test_refuses_an_unreadable_or_invalid_report(run: Path, content: str) -> None:
    (run / "audit" / "report.json").write_text(content)
    with pytest.raises(GateError, match="unreadable"):
        check_deploy_gate(ckpt(run), spec_hash(run), "sim")


def test_refuses_a_deploy_audit_in_place_of_a_checkpoint_audit(run: Path, tmp_path: Path) -> None:
    deploy = Path(shutil.copytree(FIXTURES / "deploy_run", tmp_path / "deploy_run"))
    build_report(deploy, AuditConfig(min_episodes=10))
    shutil.copy(deploy / "audit" / "report.json", run / "audit" / "report.json")
    with pytest.raises(GateError, match="'deploy' audit, not a checkpoint audit"):
        check_deploy_gate(ckpt(run), spec_hash(run), "sim")


def test_refuses_a_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(GateError, match="does not exist"):
        check_deploy_gate(tmp_path / "checkpoints" / "policy.safetensors", "0" * 64, "sim")
