"""End to end on the tiny env: demos -> BC -> PPO-Lagrangian -> loadable checkpoint ->
evaluation files; resume after a kill continues identically; strict configs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.torch import load_file

from safetwin.safety.runio import ConfigError, config_from_dict, read_jsonl
from safetwin.train.checkpoint import CheckpointError, load_policy
from safetwin.train.config import TrainConfig
from safetwin.train.evaluate import evaluate
from safetwin.train.run import run_train

from .conftest import TINY_ID, tiny_scene

BASE = dict(env_id=TINY_ID, scene="tiny", demo_episodes=4, bc_epochs=3, total_steps=330, num_envs=2,
            rollout_decisions=12, checkpoint_every=2, progress=False, seed=3, critic_warmup=1)


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):  # noqa: ANN001, ANN201
    root = tmp_path_factory.mktemp("runs")
    run_dir = run_train(TrainConfig(**BASE, run_root=str(root), run_id="ref"), scene=tiny_scene())
    return root, run_dir


def deterministic(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "charts/samples_per_s"} for r in records]


def test_run_train_writes_loadable_checkpoint_and_metrics(reference_run) -> None:  # noqa: ANN001
    _, run_dir = reference_run
    for name in ("config.yaml", "meta.json", "metrics.jsonl", "demos/metadata.json",
                 "checkpoints/bc.safetensors", "checkpoints/policy.safetensors", "checkpoints/policy.json"):
        assert (run_dir / name).is_file(), name
    records = list(read_jsonl(run_dir / "metrics.jsonl"))
    assert len(records) >= 3 and records[-1]["step"] >= 330
    for key in ("charts/episode_return", "charts/success_rate", "safety/episode_cost", "safety/lambda",
                "safety/cost_limit", "safety/costs/collision", "losses/policy_loss", "charts/samples_per_s"):
        assert key in records[-1], key
    assert records[-1]["safety/cost_limit"] == 1.0
    assert all(r["safety/lambda"] >= 0 for r in records)
    policy = load_policy(run_dir / "checkpoints" / "policy.safetensors", scene=tiny_scene())
    obs = {"image": np.zeros((64, 64, 3), np.uint8), "proprio": np.zeros(4, np.float32), "instruction": "reach"}
    assert policy.predict(obs).shape == (4, 7)
    side = json.loads((run_dir / "checkpoints" / "policy.json").read_text())
    assert side["step"] == records[-1]["step"] and side["safety_spec"]["cost_limit"] == 1.0


def test_bc_policy_imitates_expert(reference_run) -> None:  # noqa: ANN001
    _, run_dir = reference_run
    side = json.loads((run_dir / "checkpoints" / "bc.json").read_text())
    losses = side["extra"]["bc_losses"]
    assert losses[-1] < losses[0]


def test_evaluate_writes_episode_records(reference_run, tmp_path) -> None:  # noqa: ANN001
    _, run_dir = reference_run
    summary = evaluate(run_dir / "checkpoints" / "policy.safetensors", tiny_scene(), episodes=3, seed=5,
                       filtered=False, out_dir=tmp_path, env_id=TINY_ID, env_kwargs={"scene": "tiny"}, progress=False)
    recs = list(read_jsonl(tmp_path / "episodes.jsonl"))
    assert [r["seed"] for r in recs] == [5, 6, 7] and {r["mode"] for r in recs} == {"raw"}
    for key in ("success", "return", "cost", "costs", "length", "min_fragile_distance", "filter_interventions",
                "filter_infeasible", "min_barrier", "inference_latency_ms", "truncated", "final_goal_distance"):
        assert key in recs[0], key
    assert summary["modes"]["raw"]["episodes"] == 3
    failures = summary["modes"]["raw"]["failures"]
    assert failures["episodes"] == sum(not r["success"] for r in recs)
    assert failures["timeouts"] == sum(r["truncated"] and not r["success"] for r in recs)
    assert failures["timeouts"] + failures["terminated"] == failures["episodes"]
    assert failures["final_goal_distance_m"] is None  # TinyReach reports no goal distance
    assert summary["modes"]["raw"]["by_target"] is None and all(r["target"] is None for r in recs)  # nor a target
    assert summary["modes"]["raw"]["mean_cost"] == pytest.approx(np.mean([r["cost"] for r in recs]))
    assert json.loads((tmp_path / "summary.json").read_text())["safety_spec_sha256"] == tiny_scene().safety.sha256()


def test_resume_after_kill_continues_identically(reference_run) -> None:  # noqa: ANN001
    root, ref_dir = reference_run

    def kill_at_third(record: dict) -> bool:
        if record["iteration"] == 3:
            raise Killed  # after iteration 3's metrics, before its (non-existent) checkpoint
        return True

    cfg = TrainConfig(**BASE, run_root=str(root), run_id="killed")
    with pytest.raises(Killed):
        run_train(cfg, scene=tiny_scene(), callback=kill_at_third)
    run_dir = root / "killed"
    assert json.loads((run_dir / "checkpoints" / "latest.json").read_text())["iteration"] == 2
    run_train(TrainConfig(**{**BASE, "run_root": str(root), "run_id": "killed", "resume": True}), scene=tiny_scene())
    assert deterministic(list(read_jsonl(run_dir / "metrics.jsonl"))) == \
        deterministic(list(read_jsonl(ref_dir / "metrics.jsonl")))
    a = load_file(str(ref_dir / "checkpoints" / "policy.safetensors"))
    b = load_file(str(run_dir / "checkpoints" / "policy.safetensors"))
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_config_is_strict(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError, match="unknown option"):
        config_from_dict(TrainConfig, {"learning_rate": 1e-3})
    with pytest.raises(ConfigError, match="lagrange"):
        TrainConfig(lagrange="sgd")
    with pytest.raises(ConfigError, match="run_id"):
        TrainConfig(resume=True)
    with pytest.raises(ConfigError, match="latest.json"):
        run_train(TrainConfig(**{**BASE, "run_root": str(tmp_path), "run_id": "none", "resume": True}),
                  scene=tiny_scene())


def test_resume_of_a_one_group_optimizer_state_is_refused(reference_run, tmp_path) -> None:  # noqa: ANN001
    """A training state from the older trainer (actor and critics in one Adam group) is refused
    with a message, not loaded into the two-group optimiser."""
    _, ref_dir = reference_run
    shutil.copytree(ref_dir, tmp_path / "old")
    ckpt = tmp_path / "old" / "checkpoints"
    side = ckpt / json.loads((ckpt / "latest.json").read_text())["dir"] / "train_state.json"
    meta = json.loads(side.read_text())
    groups = meta["optimizer"]["param_groups"]
    meta["optimizer"]["param_groups"] = [{**groups[0], "params": groups[0]["params"] + groups[1]["params"]}]
    side.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="1 parameter group"):
        run_train(TrainConfig(**{**BASE, "run_root": str(tmp_path), "run_id": "old", "resume": True}),
                  scene=tiny_scene())


def test_by_target_splits_the_episodes_by_hand() -> None:
    from safetwin.train.evaluate import _by_target

    recs = [{"target": "red_cube", "success": True, "cost": 0.0}, {"target": "blue_cube", "success": False, "cost": 3.0},
            {"target": "red_cube", "success": False, "cost": 2.0}, {"target": "blue_cube", "success": False, "cost": 1.0}]
    split = _by_target(recs)
    assert split == {"blue_cube": {"episodes": 2, "success_rate": 0.0, "mean_cost": 2.0},
                     "red_cube": {"episodes": 2, "success_rate": 0.5, "mean_cost": 1.0}}
    assert _by_target([{"target": None, "success": True, "cost": 0.0}]) is None
