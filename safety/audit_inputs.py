"""Reading the files of a run for the audit: run kind, safety spec, eval, metrics, telemetry, events.

Formats are those of docs/INTERFACES.md. A missing optional file is returned as ``None`` (the
audit turns it into a failing requirement, so an incomplete run never passes); a malformed file
raises :class:`AuditError` naming the file, line and key.

This module imports nothing else of SafeTwin's except the safety package's own helpers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .runio import load_yaml, read_jsonl, sha256_file
from .spec import Box, FilterParams, JointLimit, Obstacle, SafetySpec, SpecError, parse_safety

logger = logging.getLogger(__name__)

CHECKPOINT = Path("checkpoints") / "policy.safetensors"
SIDECAR = Path("checkpoints") / "policy.json"
EPISODE_KEYS = ("mode", "episode", "seed", "success", "return", "cost", "length")


class AuditError(ValueError):
    """A run file is malformed or the run cannot be audited; the message names file and key."""


@dataclass
class RunFiles:
    """Everything the audit read from one run directory (``None`` where a file is absent)."""

    run_dir: Path
    kind: str  # "train" or "deploy"
    config_sha256: str | None = None
    meta: dict[str, Any] | None = None
    sidecar: dict[str, Any] | None = None
    checkpoint_sha256: str | None = None
    metrics: list[dict[str, Any]] | None = None
    episodes: list[dict[str, Any]] | None = None
    eval_summary: dict[str, Any] | None = None
    telemetry: list[dict[str, Any]] | None = None
    events_path: Path | None = None
    events: list[dict[str, Any]] | None = None
    summary: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


def detect_kind(run_dir: Path) -> str:
    """``"deploy"`` when the run has telemetry or an event log, ``"train"`` when it has a
    checkpoint, eval/ or metrics.jsonl; otherwise :class:`AuditError`."""
    if (run_dir / "telemetry.jsonl").exists() or (run_dir / "events.jsonl").exists():
        return "deploy"
    if any((run_dir / p).exists() for p in (CHECKPOINT, Path("eval"), Path("metrics.jsonl"))):
        return "train"
    raise AuditError(f"{run_dir}: not a run directory (no checkpoints/, eval/, metrics.jsonl, "
                     "telemetry.jsonl or events.jsonl)")


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, ``None`` when the file is absent."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AuditError(f"{path}: malformed JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise AuditError(f"{path}: must hold a JSON object, got {type(data).__name__}")
    return data


def read_records(path: Path) -> list[dict[str, Any]] | None:
    """The records of a JSONL file, ``None`` when the file is absent."""
    if not path.is_file():
        return None
    try:
        records = list(tqdm(read_jsonl(path), desc=f"audit: reading {path.name}", unit="rec",
                            leave=False, disable=None))
    except ValueError as exc:
        raise AuditError(str(exc)) from exc
    for i, rec in enumerate(records, 1):
        if not isinstance(rec, dict):
            raise AuditError(f"{path}: record {i}: must be a JSON object")
    return records


def require_keys(records: list[dict[str, Any]], keys: tuple[str, ...], path: Path) -> None:
    for i, rec in enumerate(records, 1):
        missing = [k for k in keys if k not in rec]
        if missing:
            raise AuditError(f"{path}: record {i}: missing key(s) {missing}")


def _validate_episodes(episodes: list[dict[str, Any]], path: Path) -> None:
    require_keys(episodes, EPISODE_KEYS, path)
    for i, ep in enumerate(episodes, 1):
        if ep["mode"] not in ("raw", "filtered"):
            raise AuditError(f"{path}: record {i}: mode must be 'raw' or 'filtered', got {ep['mode']!r}")
        for key in ("return", "cost", "length"):
            if isinstance(ep[key], bool) or not isinstance(ep[key], (int, float)):
                raise AuditError(f"{path}: record {i}: {key} must be a number, got {ep[key]!r}")


def _validate_telemetry(records: list[dict[str, Any]], path: Path) -> None:
    require_keys(records, ("seq",), path)
    for i, rec in enumerate(records, 1):
        if isinstance(rec["seq"], bool) or not isinstance(rec["seq"], int):
            raise AuditError(f"{path}: record {i}: seq must be an integer, got {rec['seq']!r}")


def read_run(run_dir: str | Path) -> RunFiles:
    """Read every file the audit uses from ``run_dir`` (see docs/INTERFACES.md)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise AuditError(f"{run_dir}: no such run directory")
    files = RunFiles(run_dir=run_dir, kind=detect_kind(run_dir))
    if (run_dir / "config.yaml").is_file():
        files.config_sha256 = sha256_file(run_dir / "config.yaml")
    files.meta = read_json(run_dir / "meta.json")
    if files.kind == "train":
        files.sidecar = read_json(run_dir / SIDECAR)
        if (run_dir / CHECKPOINT).is_file():
            files.checkpoint_sha256 = sha256_file(run_dir / CHECKPOINT)
        files.metrics = read_records(run_dir / "metrics.jsonl")
        files.episodes = read_records(run_dir / "eval" / "episodes.jsonl")
        if files.episodes is not None:
            _validate_episodes(files.episodes, run_dir / "eval" / "episodes.jsonl")
        files.eval_summary = read_json(run_dir / "eval" / "summary.json")
    else:
        files.telemetry = read_records(run_dir / "telemetry.jsonl")
        if files.telemetry is not None:
            _validate_telemetry(files.telemetry, run_dir / "telemetry.jsonl")
        if (run_dir / "events.jsonl").is_file():
            files.events_path = run_dir / "events.jsonl"
            files.events = read_records(files.events_path)
        files.summary = read_json(run_dir / "summary.json")
    return files


# ---------------------------------------------------------------- the safety spec
def spec_from_mapping(data: Mapping[str, Any], where: str) -> SafetySpec:
    """A :class:`SafetySpec` from either form a run stores it in.

    The scene-YAML ``safety:`` block (has ``joint_limits``) is parsed with ``parse_safety``; the
    ``SafetySpec.to_dict()`` form (has ``joints``) is rebuilt field by field, so its
    ``sha256()`` equals that of the spec that wrote it.
    """
    if "joint_limits" in data:
        return parse_safety(dict(data), where)
    if "joints" not in data:
        raise AuditError(f"{where}: safety spec has neither 'joint_limits' (scene form) nor "
                         "'joints' (SafetySpec.to_dict form)")
    try:
        return SafetySpec(
            joints=tuple(JointLimit(**j) for j in data["joints"]),
            workspace=_box(data["workspace"]),
            keepout=tuple(_box(b) for b in data.get("keepout", ())),
            obstacles=tuple(Obstacle(name=o["name"], role=o["role"], center=tuple(o["center"]),
                                     half_extents=tuple(o["half_extents"]), radius=o["radius"])
                            for o in data.get("obstacles", ())),
            ee_speed_max=data["ee_speed_max"], contact_force_max=data["contact_force_max"],
            cost_limit=data["cost_limit"], filter=FilterParams(**data.get("filter", {})),
        )
    except (KeyError, TypeError) as exc:
        raise AuditError(f"{where}: malformed SafetySpec dict: {exc!r}") from exc


def _box(data: Mapping[str, Any]) -> Box:
    return Box(name=data["name"], lo=tuple(data["lo"]), hi=tuple(data["hi"]))  # type: ignore[arg-type]


def resolve_spec(files: RunFiles, spec: SafetySpec | Mapping[str, Any] | None) -> tuple[SafetySpec, str]:
    """The spec to audit against and where it came from.

    An explicit ``spec`` wins; otherwise the checkpoint sidecar's ``safety_spec``, the deploy
    ``summary.json``'s ``safety_spec``, or the ``safety`` block of the run's config.yaml.
    """
    if isinstance(spec, SafetySpec):
        return spec, "argument (SafetySpec)"
    if spec is not None:
        return _checked(spec, "argument (dict)"), "argument (dict)"
    candidates = [(files.sidecar, str(files.run_dir / SIDECAR)),
                  (files.summary, str(files.run_dir / "summary.json"))]
    for holder, where in candidates:
        if holder and isinstance(holder.get("safety_spec"), Mapping):
            return _checked(holder["safety_spec"], f"{where}: safety_spec"), f"{where}: safety_spec"
    config_path = files.run_dir / "config.yaml"
    if config_path.is_file():
        config = load_yaml(config_path)
        if isinstance(config, Mapping) and isinstance(config.get("safety"), Mapping):
            return _checked(config["safety"], f"{config_path}: safety"), f"{config_path}: safety"
    raise AuditError(f"{files.run_dir}: no safety spec found (looked for 'safety_spec' in {SIDECAR} "
                     "and summary.json, and 'safety' in config.yaml); pass the scene's spec explicitly")


def _checked(data: Any, where: str) -> SafetySpec:
    if not isinstance(data, Mapping):
        raise AuditError(f"{where}: safety spec must be a mapping, got {type(data).__name__}")
    try:
        return spec_from_mapping(data, where.split(":")[0])
    except SpecError as exc:
        raise AuditError(str(exc)) from exc
