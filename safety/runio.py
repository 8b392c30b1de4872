"""Run-directory I/O shared by every stage: atomic writes, JSONL logs, hashes, metadata,
and strict dataclass configs.

Atomic means: write to a temporary file in the same folder, flush, fsync, then rename over the
target, so a crash leaves either the old file or the new one, never half of one.

This module imports nothing else of SafeTwin's; every package may use it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import typing
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is unknown, missing or invalid; the message names the key."""


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual file mode
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask is process-wide and not thread-safe


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


class JsonlWriter:
    """Append-only JSON-lines log; each record is flushed (and fsynced when ``sync``)."""

    def __init__(self, path: str | os.PathLike[str], sync: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.sync = sync

    def write(self, record: Mapping[str, Any]) -> None:
        self._fh.write(json.dumps(record, sort_keys=True, default=_json_default) + "\n")
        self._fh.flush()
        if self.sync:
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Yield the records of a JSONL file; a malformed line raises ValueError naming file:line."""
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: malformed JSON line: {exc.msg}") from exc


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def git_commit(cwd: str | os.PathLike[str] | None = None) -> str:
    """The code version: ``git rev-parse HEAD`` (+ ``-dirty``), or ``unknown`` outside git."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


_PACKAGES = ("numpy", "torch", "pybullet", "open3d", "cvxpy", "daqp", "gymnasium", "pyserial",
             "safetensors", "scipy")


def run_metadata(seed: int | None = None) -> dict[str, Any]:
    """What is needed to reproduce a run: seed, code version, interpreter and package versions."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"seed": seed, "code_version": git_commit(), "python": sys.version.split()[0],
            "platform": platform.platform(), "packages": versions,
            "created_unix": time.time(), "argv": sys.argv}


def new_run_dir(root: str | os.PathLike[str], prefix: str = "") -> Path:
    """Create ``root/<prefix><UTC timestamp>`` (suffixing ``-N`` when taken) and return it."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for n in range(1000):
        path = root / f"{prefix}{stamp}{'' if n == 0 else f'-{n}'}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a run directory under {root}")


def inside(base: str | os.PathLike[str], relative: str | os.PathLike[str], what: str = "path") -> Path:
    """Resolve ``relative`` under ``base`` and refuse anything that escapes it (``..``, absolute)."""
    base_r = Path(base).resolve()
    target = (base_r / relative).resolve()
    if target != base_r and base_r not in target.parents:
        raise ConfigError(f"{what} {str(relative)!r} escapes {base_r}")
    return target


# ---------------------------------------------------------------- strict dataclass configs
def config_from_dict(cls: type[T], data: Mapping[str, Any] | None, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``: unknown keys are errors, nested dataclasses recurse.

    Validation beyond types belongs in the dataclass's ``__post_init__`` (raise ConfigError).
    """
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {unknown}; valid: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        hint = hints.get(name)
        if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            value = config_from_dict(hint, value, f"{where}.{name}")  # type: ignore[arg-type]
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=_json_default))


def save_config(run_dir: str | os.PathLike[str], cfg: Any, seed: int | None = None) -> None:
    """Write the resolved config (``config.yaml``) and reproduction metadata (``meta.json``)."""
    run_dir = Path(run_dir)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    atomic_write_json(run_dir / "meta.json", run_metadata(seed))


def load_yaml(path: str | os.PathLike[str]) -> Any:
    """``yaml.safe_load`` a file; errors name the file (and line for syntax errors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        loc = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{loc}: malformed YAML: {getattr(exc, 'problem', exc)}") from exc
