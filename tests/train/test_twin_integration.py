"""Integration with the real twin (pybullet) and the QP safety filter: a tiny BC + PPO-Lag run on
reach_avoid, a loadable checkpoint, and raw vs filtered evaluation records (B-series filter data
in info["filter"] reaches eval/episodes.jsonl)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from safetwin.safety.runio import read_jsonl
from safetwin.train.checkpoint import CheckpointError, load_policy
from safetwin.train.config import TrainConfig
from safetwin.train.evaluate import evaluate
from safetwin.train.run import run_train

from .conftest import tiny_scene

scene_mod = pytest.importorskip("safetwin.twin.scene")


def test_twin_train_checkpoint_and_filtered_eval(tmp_path) -> None:  # noqa: ANN001
    cfg = TrainConfig(scene="reach_avoid", run_root=str(tmp_path), run_id="twin", demo_episodes=2, bc_epochs=2,
                      total_steps=150, num_envs=2, rollout_decisions=10, checkpoint_every=2, progress=False)
    run_dir = run_train(cfg)
    scene = scene_mod.load_scene("reach_avoid")
    ckpt = run_dir / "checkpoints" / "policy.safetensors"
    side = json.loads(ckpt.with_suffix(".json").read_text())
    assert side["safety_spec_sha256"] == scene.safety.sha256()
    assert side["scene"]["name"] == "reach_avoid"
    records = list(read_jsonl(run_dir / "metrics.jsonl"))
    assert records[-1]["safety/cost_limit"] == scene.safety.cost_limit
    with pytest.raises(CheckpointError, match="safety spec mismatch"):
        load_policy(ckpt, scene=tiny_scene())
    summary = evaluate(ckpt, scene, episodes=1, seed=3, filtered=True, progress=False)
    eps = list(read_jsonl(run_dir / "eval" / "episodes.jsonl"))
    assert [e["mode"] for e in eps] == ["raw", "filtered"]
    filtered = eps[1]
    assert filtered["min_barrier"] is not None  # the filter certified every control step
    assert eps[0]["min_barrier"] is None and eps[0]["filter_interventions"] == 0  # raw: no filter
    assert all(np.isfinite(filtered["inference_latency_ms"]))
    assert set(summary["modes"]) == {"raw", "filtered"}
    for ep, mode in zip(eps, ("raw", "filtered"), strict=True):  # the twin reports the goal distance (m)
        assert 0.0 <= ep["final_goal_distance"] < 2.0
        assert ep["target"] in scene.task.targets  # the twin names the episode's target
        assert summary["modes"][mode]["by_target"] == {ep["target"]: {
            "episodes": 1, "success_rate": float(ep["success"]), "mean_cost": pytest.approx(ep["cost"])}}
        fail = summary["modes"][mode]["failures"]
        assert fail["episodes"] == int(not ep["success"])
        if not ep["success"]:
            assert fail["final_goal_distance_m"]["max"] == pytest.approx(ep["final_goal_distance"])
