"""Run-directory I/O: atomic writes, strict configs, path confinement."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from safetwin.safety import runio


@dataclass
class Inner:
    """rate_hz: a positive rate (Hz)."""

    rate_hz: float = 10.0

    def __post_init__(self) -> None:
        if self.rate_hz <= 0:
            raise runio.ConfigError(f"rate_hz must be > 0, got {self.rate_hz}")


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)


def test_config_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(runio.ConfigError, match=r"cfg.inner: unknown option\(s\) \['rate'\]"):
        runio.config_from_dict(Outer, {"inner": {"rate": 3}}, "cfg")


def test_config_from_dict_builds_nested_and_validates() -> None:
    cfg = runio.config_from_dict(Outer, {"name": "y", "inner": {"rate_hz": 5}})
    assert cfg.inner.rate_hz == 5 and cfg.name == "y"
    with pytest.raises(runio.ConfigError, match="rate_hz must be > 0"):
        runio.config_from_dict(Outer, {"inner": {"rate_hz": -1}})


def test_save_config_writes_resolved_config_and_metadata(tmp_path: Path) -> None:
    runio.save_config(tmp_path, Outer(), seed=7)
    assert "rate_hz: 10.0" in (tmp_path / "config.yaml").read_text()
    meta = (tmp_path / "meta.json").read_text()
    assert '"seed": 7' in meta and '"code_version"' in meta and '"torch"' in meta


def test_atomic_write_leaves_old_file_when_write_fails(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    runio.atomic_write_json(target, {"ok": 1})
    with pytest.raises(TypeError):
        runio.atomic_write_json(target, {"bad": object()})
    assert target.read_text().strip().startswith("{") and '"ok": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"], "temp file left behind"


def test_inside_refuses_escapes(tmp_path: Path) -> None:
    assert runio.inside(tmp_path, "a/b.txt") == (tmp_path / "a/b.txt").resolve()
    for bad in ("../x", "/etc/passwd", "a/../../x"):
        with pytest.raises(runio.ConfigError, match="escapes"):
            runio.inside(tmp_path, bad)


def test_load_yaml_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "s.yaml"
    bad.write_text("a: 1\nb: [1, 2\n")
    with pytest.raises(runio.ConfigError, match=r"s\.yaml:\d+:\d+: malformed YAML"):
        runio.load_yaml(bad)
    with pytest.raises(FileNotFoundError, match="no such file"):
        runio.load_yaml(tmp_path / "missing.yaml")


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    evil = tmp_path / "e.yaml"
    evil.write_text("x: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(runio.ConfigError):
        runio.load_yaml(evil)


def test_jsonl_roundtrip_and_malformed_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    with runio.JsonlWriter(path) as w:
        w.write({"step": 1})
        w.write({"step": 2})
    assert [r["step"] for r in runio.read_jsonl(path)] == [1, 2]
    with open(path, "a") as fh:
        fh.write("{oops\n")
    with pytest.raises(ValueError, match=r"m\.jsonl:3: malformed"):
        list(runio.read_jsonl(path))


def test_new_run_dir_is_unique(tmp_path: Path) -> None:
    a, b = runio.new_run_dir(tmp_path), runio.new_run_dir(tmp_path)
    assert a != b and a.is_dir() and b.is_dir()
    assert os.path.commonpath([a, tmp_path]) == str(tmp_path)


def test_atomic_write_gives_the_usual_file_mode(tmp_path: Path) -> None:
    path = runio.atomic_write_text(tmp_path / "r.txt", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
