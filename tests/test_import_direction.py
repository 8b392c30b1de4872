"""The import arrows of ARCHITECTURE.md point one way; this test walks every import.

    safety                  -> nothing of ours
    twin                    -> safety
    train                   -> twin, safety
    robot_io leaf modules   -> nothing of ours (protocol, control table, bus, driver, e-stop)
    robot_io supervisor     -> safety, robot_io leaves
    robot_io virtual robot  -> robot_io leaves, twin (and so safety)
    robot_io deploy runner  -> everything but the CLI
    cli                     -> everything
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("safety", "twin", "train", "robot_io", "cli")


def layer_of(package: str, module: str) -> str:
    """The architectural layer of ``safetwin.<package>.<module>``."""
    if package != "robot_io":
        return package
    if module.startswith("deploy"):
        return "robot_io.deploy"
    if module.startswith("supervisor"):
        return "robot_io.supervisor"
    if module.startswith(("virtual", "emulator")):
        return "robot_io.virtual"
    return "robot_io.leaf"


ALLOWED: dict[str, set[str]] = {
    "safety": {"safety"},
    "twin": {"twin", "safety"},
    "train": {"train", "twin", "safety"},
    "robot_io.leaf": {"robot_io.leaf"},
    "robot_io.supervisor": {"robot_io.supervisor", "robot_io.leaf", "safety"},
    "robot_io.virtual": {"robot_io.virtual", "robot_io.leaf", "twin", "safety"},
    "robot_io.deploy": {"robot_io.deploy", "robot_io.supervisor", "robot_io.virtual",
                        "robot_io.leaf", "train", "twin", "safety"},
    "cli": {"cli", "robot_io.deploy", "robot_io.supervisor", "robot_io.virtual",
             "robot_io.leaf", "train", "twin", "safety"},
}


def our_imports(path: Path, package: str) -> list[tuple[int, str]]:
    """``(line, 'safetwin.<pkg>.<mod>')`` for every import of SafeTwin code in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    rel_parts = path.relative_to(ROOT / package).with_suffix("").parts
    here = ["safetwin", package, *rel_parts[:-1]]  # the containing package
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("safetwin")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
                found += [(node.lineno, f"{name}.{a.name}") for a in node.names]
            elif node.module and node.module.startswith("safetwin"):
                found += [(node.lineno, node.module + "." + a.name) for a in node.names]
    return found


def target_layer(name: str) -> str | None:
    parts = name.split(".")
    if len(parts) < 2 or parts[0] != "safetwin" or parts[1] not in PACKAGES:
        return None
    return layer_of(parts[1], parts[2] if len(parts) > 2 else "__init__")


def test_layer_rules_are_acyclic() -> None:
    for layer, allowed in ALLOWED.items():
        for other in allowed - {layer}:
            assert layer not in ALLOWED[other], f"cycle between {layer} and {other}"


def test_no_bare_top_level_packages_installed() -> None:
    """PyPI's ``safety`` and ``train`` must never be shadowed or imported by mistake."""
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for lineno, name in our_imports(path, package):
                assert name.startswith("safetwin."), f"{path}:{lineno}: {name}"
            text = path.read_text(encoding="utf-8")
            for bare in ("import safety", "from safety", "import train", "from train",
                         "import twin", "from twin", "import robot_io", "from robot_io"):
                assert f"\n{bare}" not in text and not text.startswith(bare), \
                    f"{path}: bare import '{bare}' (use safetwin.<pkg>)"


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_one_way(package: str) -> None:
    violations = []
    for path in sorted((ROOT / package).rglob("*.py")):
        module = path.relative_to(ROOT / package).with_suffix("").parts[0]
        layer = layer_of(package, module)
        for lineno, name in our_imports(path, package):
            target = target_layer(name)
            if target is not None and target not in ALLOWED[layer]:
                violations.append(f"{path.relative_to(ROOT)}:{lineno}: {layer} imports {name} ({target})")
    assert not violations, "imports against ARCHITECTURE.md:\n" + "\n".join(violations)


def test_checker_catches_a_wrong_arrow() -> None:
    """The walker itself must see relative and absolute imports (a check that cannot fail is no check)."""
    fake = ROOT / "safety" / "_probe_wrong_arrow.py"
    fake.write_text("from ..twin import scene\nimport safetwin.train.gae\n")
    try:
        names = [n for _, n in our_imports(fake, "safety")]
    finally:
        fake.unlink()
    assert names == ["safetwin.twin.scene", "safetwin.train.gae"], names
    assert target_layer(names[0]) not in ALLOWED["safety"]
