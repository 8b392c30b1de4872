"""The deployment gate: only an audited, passing, unchanged checkpoint reaches a robot.

The audit of a checkpoint lives beside it: ``<train_run>/audit/report.json`` for
``<train_run>/checkpoints/policy.safetensors``. The report records the SHA-256 of the checkpoint
file and of the safety spec it was audited under. :func:`check_deploy_gate` refuses, with a
:class:`GateError` that says why and what to run, when

- the checkpoint is missing, or has no audit (or an unreadable one);
- the audit failed;
- the checkpoint's bytes changed since the audit;
- the spec of the scene being deployed differs from the audited spec;
- ``accept_unaudited`` is asked for on a real port (it is allowed only for the virtual robot,
  port ``"sim"``).

This module imports nothing else of SafeTwin's outside the safety package.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from .audit_schema import ReportSchemaError, validate_report
from .runio import sha256_file

logger = logging.getLogger(__name__)

SIM_PORT = "sim"
"""The port name of the virtual robot; the only port where an unaudited checkpoint may run."""


class GateError(PermissionError):
    """Deployment refused; the message says why and what to run."""


@dataclass(frozen=True)
class GateDecision:
    """Why deployment may go ahead.

    audited: True when a passing audit of these exact checkpoint bytes and this spec was found.
    checkpoint_sha256: hash of the checkpoint file as it is now.
    report_path: the audit report that was checked (None when running unaudited on sim).
    port: the port being deployed to.
    """

    audited: bool
    checkpoint_sha256: str
    report_path: Path | None
    port: str


def audit_report_path(checkpoint_path: str | Path) -> Path:
    """``<train_run>/audit/report.json`` for ``<train_run>/checkpoints/<name>.safetensors``."""
    return Path(checkpoint_path).resolve().parent.parent / "audit" / "report.json"


def _audit_cmd(checkpoint: Path) -> str:
    return f"run `safetwin audit --run-dir {checkpoint.resolve().parent.parent}`"


def _load_report(path: Path, checkpoint: Path) -> dict:
    if not path.is_file():
        raise GateError(f"checkpoint {checkpoint} has no audit ({path} is missing): {_audit_cmd(checkpoint)}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        validate_report(data, str(path))
    except (json.JSONDecodeError, UnicodeDecodeError, ReportSchemaError) as exc:
        raise GateError(f"audit report {path} is unreadable ({exc}): {_audit_cmd(checkpoint)} again") from exc
    if data["kind"] != "train":
        raise GateError(f"{path} is a {data['kind']!r} audit, not a checkpoint audit: {_audit_cmd(checkpoint)}")
    return data


def check_deploy_gate(checkpoint_path: str | Path, spec_sha256: str, port: str,
                      accept_unaudited: bool = False) -> GateDecision:
    """Allow deploying ``checkpoint_path`` under the spec hashing to ``spec_sha256`` on ``port``,
    or raise :class:`GateError`.

    ``accept_unaudited`` (the CLI's ``--i-accept-unaudited``) skips the audit checks on the
    virtual robot (``port == "sim"``) only, with a warning; on any other port it is refused.
    """
    checkpoint = Path(checkpoint_path)
    if accept_unaudited and port != SIM_PORT:
        raise GateError(f"--i-accept-unaudited is refused for the real port {port!r}: it is allowed only "
                        f"for the virtual robot (port {SIM_PORT!r}). Audit the checkpoint instead: "
                        f"{_audit_cmd(checkpoint)}")
    if not checkpoint.is_file():
        raise GateError(f"checkpoint {checkpoint} does not exist: run `safetwin train` or pass the "
                        "checkpoint of an existing training run")
    current = sha256_file(checkpoint)
    if accept_unaudited:
        logger.warning("deploying %s (sha256 %s) on the virtual robot WITHOUT an audit check "
                       "(--i-accept-unaudited)", checkpoint, current)
        return GateDecision(audited=False, checkpoint_sha256=current, report_path=None, port=port)
    path = audit_report_path(checkpoint)
    data = _load_report(path, checkpoint)
    if data["verdict"] != "PASS":
        failing = ", ".join(f"{r['id']} ({r['evidence']})" for r in data["requirements"] if r["status"] != "PASS")
        raise GateError(f"the audit of {checkpoint} FAILED ({path}): {failing}. Fix the policy or the "
                        f"thresholds, retrain if needed, then {_audit_cmd(checkpoint)}")
    if data["checkpoint_sha256"] != current:
        raise GateError(f"checkpoint {checkpoint} changed since its audit: sha256 now {current}, audited "
                        f"{data['checkpoint_sha256']} ({path}). Re-audit these bytes: {_audit_cmd(checkpoint)}")
    if data["safety_spec_sha256"] != spec_sha256:
        raise GateError(f"the safety spec being deployed (sha256 {spec_sha256}) differs from the spec the "
                        f"checkpoint was audited under ({data['safety_spec_sha256']}, {path}). Deploy on "
                        f"the audited scene, or {_audit_cmd(checkpoint)} against this scene's spec")
    logger.info("deploy gate: %s audited PASS (%s), spec %s, port %s", checkpoint, path, spec_sha256[:12], port)
    return GateDecision(audited=True, checkpoint_sha256=current, report_path=path, port=port)
