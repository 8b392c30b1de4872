"""The exploration-noise schedule of PPO fine-tuning (``finetune_log_std_end``): a linear
function of the env step, applied before each rollout, not learnt, and followed again on resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from safetwin.safety.runio import ConfigError, read_jsonl
from safetwin.train.config import TrainConfig
from safetwin.train.ppo_lag import _scheduled_policy, scheduled_log_std
from safetwin.train.run import run_train

from .conftest import TINY_ID, tiny_scene

BASE = dict(env_id=TINY_ID, scene="tiny", demo_episodes=4, bc_epochs=3, total_steps=330, num_envs=2,
            rollout_decisions=12, checkpoint_every=2, progress=False, seed=3, critic_warmup=1,
            finetune_log_std=-2.0, finetune_log_std_end=-4.0)


class Killed(Exception):
    pass


def test_schedule_is_linear_in_env_steps_and_holds_at_the_end() -> None:
    cfg = TrainConfig(total_steps=1000, finetune_log_std=-2.0, finetune_log_std_end=-4.0)
    assert scheduled_log_std(cfg, 0) == pytest.approx(-2.0)
    assert scheduled_log_std(cfg, 250) == pytest.approx(-2.5)
    assert scheduled_log_std(cfg, 1000) == pytest.approx(-4.0)
    assert scheduled_log_std(cfg, 5000) == pytest.approx(-4.0)  # past the budget: the end value
    assert scheduled_log_std(TrainConfig(total_steps=1000), 500) is None  # default: PPO learns it


def test_schedule_end_is_validated_and_needs_a_log_std_parameter() -> None:
    with pytest.raises(ConfigError, match="finetune_log_std_end"):
        TrainConfig(finetune_log_std_end=0.5)
    with pytest.raises(ConfigError, match="no state-independent log_std"):
        _scheduled_policy(torch.nn.Linear(2, 2), TrainConfig(finetune_log_std_end=-4.0))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def scheduled_run(tmp_path_factory):  # noqa: ANN001, ANN201
    root = tmp_path_factory.mktemp("runs")
    cfg = TrainConfig(**BASE, run_root=str(root), run_id="ref")
    return root, cfg, run_train(cfg, scene=tiny_scene())


def test_rollouts_follow_the_schedule_and_ppo_does_not_learn_it(scheduled_run) -> None:  # noqa: ANN001
    _, cfg, run_dir = scheduled_run
    records = list(read_jsonl(run_dir / "metrics.jsonl"))
    starts = [0] + [r["step"] for r in records[:-1]]  # each rollout's log std is set at its first step
    assert [r["charts/action_log_std"] for r in records] == pytest.approx(
        [scheduled_log_std(cfg, s) for s in starts], abs=1e-6)
    assert records[0]["charts/action_log_std"] == pytest.approx(-2.0)
    assert records[-1]["charts/action_log_std"] < -3.5  # annealed most of the way to -4
    weights = load_file(str(run_dir / "checkpoints" / "policy.safetensors"))
    log_std = weights["log_std"].numpy()
    assert np.allclose(log_std, scheduled_log_std(cfg, starts[-1]), atol=1e-6)  # the update left it alone


def test_resume_follows_the_same_schedule(scheduled_run) -> None:  # noqa: ANN001
    root, _, ref_dir = scheduled_run

    def kill_at_third(record: dict) -> bool:
        if record["iteration"] == 3:
            raise Killed
        return True

    with pytest.raises(Killed):
        run_train(TrainConfig(**BASE, run_root=str(root), run_id="killed"), scene=tiny_scene(),
                  callback=kill_at_third)
    run_train(TrainConfig(**BASE, run_root=str(root), run_id="killed", resume=True), scene=tiny_scene())
    strip = [{k: v for k, v in r.items() if k != "charts/samples_per_s"}
             for r in read_jsonl(root / "killed" / "metrics.jsonl")]
    ref = [{k: v for k, v in r.items() if k != "charts/samples_per_s"} for r in read_jsonl(ref_dir / "metrics.jsonl")]
    assert strip == ref
    assert json.loads((root / "killed" / "checkpoints" / "policy.json").read_text())["step"] == ref[-1]["step"]
