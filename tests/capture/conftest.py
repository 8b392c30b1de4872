"""Shared fixtures of the capture tests: a small synthetic world, its rendered capture, and the
real Redwood RGB-D sample (skipped cleanly when /work/shared/data is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from safetwin.twin.capture.formats import Intrinsics
from safetwin.twin.capture.synthetic import Primitive, SyntheticWorld, write_synthetic_capture

REPO = Path(__file__).resolve().parents[2]
REDWOOD = REPO.parent / "shared" / "data" / "rgbd_redwood_sample"
REDWOOD_INTRINSICS = Intrinsics(640, 480, 525.0, 525.0, 319.5, 239.5)


def demo_world() -> SyntheticWorld:
    """A table (top at z = 0 in the base frame), a rotated cube and a cylinder, and the board."""
    table = Primitive("table", "box", (0.8, 1.0, 0.05), (0.45, 0.0, -0.025), rgba=(0.6, 0.45, 0.3, 1))
    objects = [Primitive("cube", "box", (0.05, 0.05, 0.05), (0.45, 0.05, 0.025), 0.3),
               Primitive("can", "cylinder", (0.03, 0.08), (0.55, -0.15, 0.04), rgba=(0.2, 0.4, 0.8, 1))]
    return SyntheticWorld(table, objects, board_xy=(0.1, 0.25))


@pytest.fixture(scope="session")
def synthetic_capture(tmp_path_factory) -> Path:
    return write_synthetic_capture(tmp_path_factory.mktemp("synthetic") / "capture", demo_world(),
                                   progress=False)


@pytest.fixture(scope="session")
def redwood() -> Path:
    if not (REDWOOD / "trajectory.log").is_file():
        pytest.skip(f"Redwood sample not found at {REDWOOD}")
    return REDWOOD


@pytest.fixture(scope="session")
def captured(tmp_path_factory) -> Path:
    """The synthetic round trip of the bundled tabletop_push scene (run once per session)."""
    from safetwin.twin.capture.pipeline import CaptureConfig, run_capture

    out = tmp_path_factory.mktemp("scenes")
    return run_capture(CaptureConfig(scene="tabletop_push", name="cap", out_dir=str(out), progress=False))
