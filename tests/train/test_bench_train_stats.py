"""bench-train's statistics: the paired success gain over BC and its standard error, by hand;
the per-scene recipe and its command-line overrides."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from safetwin.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]


def _bench():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("safetwin_bench_train", ROOT / "benchmarks" / "bench_train.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _episodes(folder: Path, successes: dict[int, float]) -> Path:
    folder.mkdir()
    lines = [{"mode": "raw", "seed": s, "success": v} for s, v in successes.items()]
    lines.append({"mode": "filtered", "seed": 0, "success": 1.0})  # other modes are ignored
    (folder / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return folder


def test_paired_gain_and_standard_error_by_hand(tmp_path: Path) -> None:
    bc = _episodes(tmp_path / "bc", {0: 0.0, 1: 1.0, 2: 0.0, 3: 1.0})
    rl = _episodes(tmp_path / "rl", {0: 1.0, 1: 1.0, 2: 0.0, 3: 0.0})
    gain, se = _bench().paired_gain(bc, rl)
    diff = np.array([1.0, 0.0, 0.0, -1.0])  # per seed: rl - bc
    assert gain == pytest.approx(0.0)
    assert se == pytest.approx(diff.std(ddof=1) / 2.0)  # sqrt(2/3) / 2
    gain, se = _bench().paired_gain(bc, _episodes(tmp_path / "same", {0: 0.0, 1: 1.0, 2: 0.0, 3: 1.0}))
    assert gain == 0.0 and se == 0.0  # the same outcomes on every seed: no uncertainty left


def test_recipe_per_scene_and_overrides() -> None:
    bench = _bench()
    none = argparse.Namespace(wrist_camera=None, bc_loss=None, self_imitation_coef=None, steps=None)
    reach = bench.recipe("reach_avoid", none)
    assert reach["wrist_camera"] is False and reach["self_imitation_coef"] == 0.0
    push = bench.recipe("tabletop_push", none)
    assert push["wrist_camera"] is True and push["bc_loss"] == "l1" and push["total_steps"] == 120_000
    assert bench.recipe("some_scene", none) == {"wrist_camera": False, "bc_loss": "mse", "self_imitation_coef": 0.0,
                                                "total_steps": 120_000}
    forced = bench.recipe("tabletop_push", argparse.Namespace(wrist_camera=[], bc_loss="mse", self_imitation_coef=0.0,
                                                              steps=5000))
    assert forced == {"wrist_camera": False, "bc_loss": "mse", "self_imitation_coef": 0.0, "total_steps": 5000}
    TrainConfig(**push)  # every recipe key is a TrainConfig option
