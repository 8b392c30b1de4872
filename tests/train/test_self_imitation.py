"""Constrained self-imitation: which episodes the replay keeps (success and cost filter, across
rollouts, reset), its ring and checkpoint round trip, the loss pulling the deterministic chunk
toward the replayed one, the per-env episode outcomes of a vector step, and a tiny end-to-end
run with it on that resumes identically after a kill."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from safetwin.safety.runio import ConfigError, read_jsonl
from safetwin.train.config import TrainConfig
from safetwin.train.envs import done_episode_outcomes
from safetwin.train.policy import CompactVLA, PolicyConfig
from safetwin.train.run import run_train
from safetwin.train.self_imitation import SelfImitationReplay, self_imitation_loss

from .conftest import tiny_scene
from .test_run_train import BASE, Killed, deterministic

SPACE = {"image": ((64, 64, 3), np.uint8), "proprio": ((4,), np.float32)}


def step_obs(t: int, n: int = 2) -> tuple[dict, np.ndarray]:
    """Observations whose proprio[0] and chunk value encode (step t, env i) as 10 t + i."""
    tag = np.array([10.0 * t + i for i in range(n)], np.float32)
    obs = {"image": np.full((n, 64, 64, 3), t, np.uint8), "proprio": np.repeat(tag[:, None], 4, axis=1),
           "instruction": [f"push {i}" for i in range(n)]}
    return obs, np.broadcast_to(tag[:, None, None], (n, 2, 7)).copy()


def fill(replay: SelfImitationReplay, steps: range) -> None:
    for t in steps:
        replay.record(*step_obs(t))


def test_keeps_only_successful_episodes_within_the_cost_filter() -> None:
    replay = SelfImitationReplay(2, 100, SPACE, (2, 7), max_cost=0.5)
    fill(replay, range(3))
    added = replay.end_episodes(np.array([True, True]), np.array([True, True]), np.array([0.5, 0.6]))
    assert added == 3 and len(replay) == 3 and replay.episodes == 1  # env 1's cost 0.6 > 0.5: dropped
    assert sorted(replay.chunks[:3, 0, 0]) == [0.0, 10.0, 20.0]  # env 0's three decisions, in order
    assert list(replay.instruction[:3]) == ["push 0"] * 3
    fill(replay, range(3, 5))
    assert replay.end_episodes(np.array([True, True]), np.array([False, True]), np.zeros(2)) == 2
    assert sorted(replay.chunks[3:5, 0, 0]) == [31.0, 41.0]  # the failure (env 0) is not kept


def test_episodes_span_rollouts_and_a_reset_drops_the_unfinished() -> None:
    replay = SelfImitationReplay(2, 100, SPACE, (2, 7), max_cost=None)
    fill(replay, range(2))  # one rollout ends with both episodes unfinished
    fill(replay, range(2, 4))  # the next one finishes env 1's
    assert replay.end_episodes(np.array([False, True]), np.array([False, True]), np.array([0.0, 9.0])) == 4
    assert sorted(replay.chunks[:4, 0, 0]) == [1.0, 11.0, 21.0, 31.0]  # no cost filter: cost 9 kept
    replay.drop_pending()  # the envs were reset: env 0's four pending decisions are gone
    fill(replay, range(4, 5))
    assert replay.end_episodes(np.array([True, False]), np.array([True, False]), np.zeros(2)) == 1


def test_ring_keeps_the_newest_and_round_trips_through_a_checkpoint() -> None:
    replay = SelfImitationReplay(2, 3, SPACE, (2, 7))
    fill(replay, range(5))
    replay.end_episodes(np.array([True, False]), np.array([True, False]), np.zeros(2))
    assert len(replay) == 3 and sorted(replay.chunks[:, 0, 0]) == [20.0, 30.0, 40.0]
    tensors, meta = replay.state_tensors()
    json.dumps(meta)  # the sidecar part is plain JSON
    back = SelfImitationReplay(2, 3, SPACE, (2, 7))
    back.load_state(tensors, meta)
    assert back.pos == replay.pos and back.episodes == 1
    assert np.array_equal(back.chunks, replay.chunks) and np.array_equal(back.obs["image"], replay.obs["image"])
    with pytest.raises(ValueError, match="capacity"):
        SelfImitationReplay(2, 2, SPACE, (2, 7)).load_state(tensors, meta)
    larger = SelfImitationReplay(2, 5, SPACE, (2, 7))  # a resume with a larger capacity
    larger.load_state(tensors, meta)
    assert len(larger) == 3 and list(larger.chunks[:3, 0, 0]) == [20.0, 30.0, 40.0]  # oldest first
    exact = SelfImitationReplay(2, 3, SPACE, (2, 7))  # that ring, not full, resumed at its exact size
    exact.load_state(*larger.state_tensors())
    fill(exact, range(5, 6))
    exact.end_episodes(np.array([True, False]), np.array([True, False]), np.zeros(2))
    assert list(exact.chunks[:, 0, 0]) == [50.0, 30.0, 40.0]  # the oldest is overwritten
    fill(larger, range(5, 7))
    larger.end_episodes(np.array([True, False]), np.array([True, False]), np.zeros(2))
    assert len(larger) == 5 and list(larger.chunks[:, 0, 0]) == [20.0, 30.0, 40.0, 50.0, 60.0]  # no empty slot
    with pytest.raises(RuntimeError, match="empty"):
        SelfImitationReplay(2, 2, SPACE, (2, 7)).sample(1, np.random.default_rng(0))


def test_loss_pulls_the_deterministic_chunk_toward_the_replayed_one() -> None:
    torch.manual_seed(0)
    policy = CompactVLA(PolicyConfig(proprio_dim=4, chunk_len=2, hidden=32, feat_dim=16))
    replay = SelfImitationReplay(1, 16, SPACE, (2, 7))
    obs = {"image": np.zeros((1, 64, 64, 3), np.uint8), "proprio": np.zeros((1, 4), np.float32),
           "instruction": ["push the red cube"]}
    target = np.full((1, 2, 7), 0.5, np.float32)
    replay.record(obs, target)
    replay.end_episodes(np.array([True]), np.array([True]), np.zeros(1))
    rng = np.random.default_rng(0)
    optim = torch.optim.Adam(policy.parameters(), lr=1e-3)
    with torch.no_grad():
        before = self_imitation_loss(policy, replay, 4, rng, 0, "l1").item()
        assert before == pytest.approx(float(np.abs(policy.mean_chunk(obs).numpy() - target).mean()), rel=1e-5)
    for _ in range(100):
        optim.zero_grad()
        self_imitation_loss(policy, replay, 4, rng, 0, "l1").backward()
        optim.step()
    after = self_imitation_loss(policy, replay, 4, rng, 0, "l1").item()
    assert after < 0.1 * before


def test_done_episode_outcomes_reads_final_info() -> None:
    infos = {"final_info": {"_episode": np.array([False, True, True]),
                            "episode": {"success": np.array([0.0, 1.0, 0.0]), "cost": np.array([0.0, 2.5, 1.0])}}}
    done, success, cost = done_episode_outcomes(infos, 3)
    assert done.tolist() == [False, True, True] and success.tolist() == [False, True, False]
    assert cost.tolist() == [0.0, 2.5, 1.0]
    assert [a.tolist() for a in done_episode_outcomes({}, 2)] == [[False, False], [False, False], [0.0, 0.0]]


def test_config_ranges() -> None:
    with pytest.raises(ConfigError, match="self_imitation_coef"):
        TrainConfig(self_imitation_coef=-1.0)
    with pytest.raises(ConfigError, match="self_imitation_capacity"):
        TrainConfig(self_imitation_capacity=0)


def test_tiny_run_with_self_imitation_resumes_identically(tmp_path) -> None:  # noqa: ANN001
    # BC long enough that the tiny policy succeeds now and then (BASE's 3 epochs never do)
    sil = {**BASE, "demo_episodes": 8, "bc_epochs": 30, "self_imitation_coef": 1.0, "self_imitation_max_cost": -1.0,
           "run_root": str(tmp_path)}
    ref_dir = run_train(TrainConfig(**sil, run_id="ref"), scene=tiny_scene())
    records = list(read_jsonl(ref_dir / "metrics.jsonl"))
    assert records[-1]["charts/self_imitation_decisions"] > 0  # successful episodes entered the replay
    assert any("losses/self_imitation" in r for r in records)  # and the loss was applied

    def kill_at_third(record: dict) -> bool:
        if record["iteration"] == 3:
            raise Killed
        return True

    with pytest.raises(Killed):
        run_train(TrainConfig(**sil, run_id="killed"), scene=tiny_scene(), callback=kill_at_third)
    run_dir = run_train(TrainConfig(**{**sil, "run_id": "killed", "resume": True}), scene=tiny_scene())
    assert deterministic(list(read_jsonl(run_dir / "metrics.jsonl"))) == deterministic(records)
