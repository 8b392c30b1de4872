"""Safety-scenario coverage for the audit report: which of A1..F3 the tests cover, with results.

The scenario list is data taken from /work/shared/SAFETY_SCENARIOS.md (sections A-F). The
results come from a JUnit XML file written by ``pytest --junitxml``; a test covers a scenario
when its name (e.g. ``test_a1_nan_action_rejected``), its parametrize id or its docstring
(read from the test's source file when ``source_root`` is given) names the scenario ID.

This module imports nothing else of SafeTwin's.
"""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SCENARIO_COUNTS = {"A": 9, "B": 9, "C": 15, "D": 7, "E": 9, "F": 3}
"""Number of scenarios per section of SAFETY_SCENARIOS.md (A: policy inputs, B: safety filter,
C: serial/protocol/servo faults, D: timing and process faults, E: e-stop supervisor, F: audit)."""

SCENARIO_IDS = tuple(f"{s}{i}" for s, n in SCENARIO_COUNTS.items() for i in range(1, n + 1))

# In test names the ID is a word of its own between separators (``test_c3_crc``, ``[A1]``);
# a following digit or letter means it is part of another word (``e2e``, ``a10x``).
_NAME_ID = re.compile(r"(?<![A-Za-z0-9])([A-Fa-f])(\d{1,2})(?![A-Za-z0-9])")
_DOC_ID = re.compile(r"(?<![A-Za-z0-9])([A-F])(\d{1,2})(?![A-Za-z0-9])")
_DOC_RANGE = re.compile(r"(?<![A-Za-z0-9])([A-F])(\d{1,2})\s*(?:-|–|\.\.)\s*([A-F])?(\d{1,2})(?![A-Za-z0-9])")


@dataclass(frozen=True)
class TestResult:
    """One test case of the JUnit file. ``outcome``: passed, failed, error or skipped."""

    __test__ = False  # not a pytest test class

    nodeid: str
    outcome: str
    message: str
    scenarios: tuple[str, ...]


def ids_in_name(name: str) -> set[str]:
    """Scenario IDs named in a test name or parametrize id (case-insensitive)."""
    found = {f"{s.upper()}{int(n)}" for s, n in _NAME_ID.findall(name)}
    return found & set(SCENARIO_IDS)


def ids_in_text(text: str) -> set[str]:
    """Scenario IDs named in a docstring (upper case); ``C1-C3`` and ``C1..C3`` are ranges.

    A range across sections (``A1-F3``, "the whole list") names no particular scenario.
    """
    found: set[str] = set()
    for s1, a, s2, b in _DOC_RANGE.findall(text):
        if not s2 or s2 == s1:
            found |= {f"{s1}{i}" for i in range(int(a), int(b) + 1)}
    found |= {f"{s}{int(n)}" for s, n in _DOC_ID.findall(_DOC_RANGE.sub(" ", text))}
    return found & set(SCENARIO_IDS)


def _docstrings(path: Path) -> dict[str, str]:
    """``{qualified function name: docstring}`` of a test module (``Class.test`` for methods)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return {}
    docs: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            docs[node.name] = ast.get_docstring(node) or ""
        elif isinstance(node, ast.ClassDef):
            class_doc = ast.get_docstring(node) or ""
            for sub in node.body:
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    docs[f"{node.name}.{sub.name}"] = class_doc + "\n" + (ast.get_docstring(sub) or "")
    return docs


def _source_for(classname: str, source_root: Path) -> tuple[Path | None, str]:
    """Map a JUnit ``classname`` (``tests.safety.test_x`` or ``tests.safety.test_x.TestY``) to
    the module file under ``source_root`` and the class prefix."""
    parts = classname.split(".")
    for cut in range(len(parts), 0, -1):
        candidate = source_root.joinpath(*parts[:cut]).with_suffix(".py")
        if candidate.is_file():
            return candidate, ".".join(parts[cut:])
    return None, ""


def parse_junit(path: str | Path, source_root: str | Path | None = None) -> list[TestResult]:
    """Every test case of a pytest JUnit XML file with the scenario IDs it names."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise ValueError(f"{path}: not a readable JUnit XML file: {exc}") from exc
    doc_cache: dict[Path, dict[str, str]] = {}
    results = []
    for case in root.iter("testcase"):
        classname, name = case.get("classname", ""), case.get("name", "")
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            child = case.find(tag)
            if child is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                message = (child.get("message") or "")[:300]
                break
        ids = ids_in_name(name) | ids_in_name(classname.rsplit(".", 1)[-1])
        if source_root is not None:
            module, cls = _source_for(classname, Path(source_root))
            if module is not None:
                docs = doc_cache.setdefault(module, _docstrings(module))
                func = name.split("[", 1)[0]
                ids |= ids_in_text(docs.get(f"{cls}.{func}" if cls else func, ""))
        results.append(TestResult(nodeid=f"{classname}::{name}", outcome=outcome, message=message,
                                  scenarios=tuple(sorted(ids, key=SCENARIO_IDS.index))))
    return results


def scenario_table(results: Iterable[TestResult] | None) -> list[dict[str, object]]:
    """One row per scenario A1..F3: status ``passed``/``failed``/``skipped``/``not covered``
    (``not run`` when no results file was given) and the tests that cover it."""
    rows: dict[str, dict[str, object]] = {
        sid: {"id": sid, "status": "not run" if results is None else "not covered", "tests": []}
        for sid in SCENARIO_IDS}
    if results is None:
        return list(rows.values())
    for res in results:
        for sid in res.scenarios:
            rows[sid]["tests"].append({"test": res.nodeid, "outcome": res.outcome,  # type: ignore[union-attr]
                                       "message": res.message})
    for row in rows.values():
        outcomes = {t["outcome"] for t in row["tests"]}  # type: ignore[union-attr]
        if outcomes & {"failed", "error"}:
            row["status"] = "failed"
        elif "passed" in outcomes:
            row["status"] = "passed"
        elif outcomes:
            row["status"] = "skipped"
    return list(rows.values())
