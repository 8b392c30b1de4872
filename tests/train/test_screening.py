"""Screening of proposals by the safety critic and the recovery fallback, on the
point mass of test_safety_critic, plus the safe-explore checkpoint round trip."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from safetwin.train.checkpoint import CheckpointError, save_policy
from safetwin.train.policy import CompactVLA, PolicyConfig
from safetwin.train.recovery import RecoveryPolicy
from safetwin.train.safe_explore_data import SafeExploreLearner
from safetwin.train.safe_explore_features import PolicyFeaturizer
from safetwin.train.safe_explore_io import ScreenedPolicy, load_safe_explore, save_safe_explore
from safetwin.train.safety_critic import SafetyCritic
from safetwin.train.screening import SafeExploreScreen

from .conftest import tiny_scene
from .test_safety_critic import train_wall_critic, wall_episodes

EPS = 0.5


def feat_of(obs: dict) -> torch.Tensor:
    return torch.as_tensor(np.asarray(obs["proprio"], np.float32)).reshape(-1, 1)


@pytest.fixture(scope="module")
def learner() -> SafeExploreLearner:
    torch.set_num_threads(1)
    return train_wall_critic(0.3, wall_episodes(500, np.random.default_rng(2)), updates=1200, seed=1)


@pytest.fixture
def screen(learner: SafeExploreLearner) -> SafeExploreScreen:
    return SafeExploreScreen(learner.critic, learner.recovery, feat_of, EPS, 3, (1, 1))


def point(x: float) -> dict:
    return {"proprio": np.array([x], np.float32), "instruction": "stay left of the wall"}


def test_never_executes_above_epsilon_when_a_candidate_passed(screen: SafeExploreScreen) -> None:
    """whenever a proposal passed, the executed chunk is that proposal and its Q_C <= eps;
    every earlier proposal of the same decision was above eps."""
    rng = np.random.default_rng(0)
    resampled_then_passed = 0
    for x in rng.uniform(0.5, 0.79, 150):
        chunk, info = screen.screen(point(x), lambda _o: rng.uniform(-1, 1, (1, 1)))
        if info.accepted:
            q = screen.q(feat_of(point(x)), chunk[None])[0]
            assert q <= EPS and info.q_executed == pytest.approx(q)
            assert np.array_equal(chunk, info.proposed)
            assert all(qp > EPS for qp in info.q_proposals[:-1])
            resampled_then_passed += len(info.q_proposals) > 1
        else:
            assert info.recovery and len(info.q_proposals) == 4
    assert resampled_then_passed > 10


def test_batch_screen_same_guarantee(screen: SafeExploreScreen) -> None:
    """Training path: accepted rows execute their own proposal with Q_C <= eps."""
    rng = np.random.default_rng(1)
    xs = rng.uniform(0.7, 0.79, 64).astype(np.float32)
    obs = {"proprio": xs[:, None], "instruction": ["stay left"] * 64}

    def propose(o: dict) -> tuple[np.ndarray, np.ndarray]:
        n = len(o["proprio"])
        return rng.uniform(-0.3, 1, (n, 1, 1)).astype(np.float32), np.zeros(n, np.float32)

    out = screen.screen_batch(obs, propose)
    assert out.accepted.any() and (~out.accepted).any()
    assert np.all(out.q_executed[out.accepted] <= EPS)
    assert np.array_equal(out.executed[out.accepted], out.proposed[out.accepted])
    assert np.all(out.rejections[out.recovered] == 4)


def test_recovery_acts_and_is_logged_when_nothing_passes(screen: SafeExploreScreen,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """all proposals cross the wall -> the recovery chunk (moving back) is executed, logged."""
    rng = np.random.default_rng(3)
    with caplog.at_level(logging.INFO, logger="safetwin.train.screening"):
        chunk, info = screen.screen(point(0.75), lambda _o: rng.uniform(0.9, 1.0, (1, 1)))
    assert info.recovery and not info.accepted and info.fault == ""
    assert len(info.q_proposals) == 4 and min(info.q_proposals) > EPS and info.rejections == 4
    assert np.allclose(chunk, screen.recovery.act(feat_of(point(0.75))).reshape(1, 1))
    assert chunk[0, 0] < 0 and info.q_executed < min(info.q_proposals)
    assert "recovery acts" in caplog.text


def test_hold_candidate_runs_when_the_critic_prefers_it(learner: SafeExploreLearner) -> None:
    """With ``hold_candidate``, a fully rejected decision executes whichever of the recovery
    chunk and the hold chunk (no motion) has the lower Q_C, on both the single and batch paths;
    the hold keeps the proposal's gripper command."""
    screen = SafeExploreScreen(learner.critic, learner.recovery, feat_of, 0.0, 1, (1, 1), hold_candidate=True)
    xs = np.linspace(-0.5, 0.79, 40).astype(np.float32)
    feat = torch.as_tensor(xs[:, None])
    q_rec = screen.q(feat, learner.recovery.act(feat).reshape(-1, 1, 1))
    q_hold = screen.q(feat, np.zeros((40, 1, 1), np.float32))
    out = screen.screen_batch({"proprio": xs[:, None], "instruction": ["stay left"] * 40},
                              lambda o: (np.ones((len(o["proprio"]), 1, 1), np.float32), np.zeros(len(o["proprio"]))))
    assert out.recovered.all()
    assert np.allclose(out.q_executed, np.minimum(q_rec, q_hold), atol=1e-6)
    held = q_hold < q_rec
    assert held.any() and (~held).any()  # both candidates win somewhere on this line
    assert np.all(out.executed[held] == 0.0)
    chunk, info = screen.screen(point(float(xs[held][0])), lambda _o: np.ones((1, 1), np.float32))
    assert info.recovery and chunk[0, 0] == 0.0 and info.q_executed == pytest.approx(float(q_hold[held][0]), abs=1e-6)

    torch.manual_seed(0)
    critic, recovery = SafetyCritic(3, 14, 16), RecoveryPolicy(3, 14, 16)
    screen7 = SafeExploreScreen(critic, recovery, lambda o: torch.as_tensor(o["proprio"]), 0.0, 0, (2, 7),
                                hold_candidate=True)
    feat7 = torch.as_tensor(np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32))
    proposed = np.full((64, 2, 7), 0.5, np.float32)
    proposed[..., 6] = 0.7
    chunks, _ = screen7.recover(feat7, proposed)
    rec = recovery.act(feat7).reshape(64, 2, 7)
    hold_rows = ~np.all(np.isclose(chunks, rec), axis=(1, 2))
    assert hold_rows.any() and np.all(chunks[hold_rows][..., :6] == 0.0) and np.all(chunks[hold_rows][..., 6] == np.float32(0.7))


def test_faults_fail_closed_a1(screen: SafeExploreScreen) -> None:
    """A1: a non-finite proposal is never executed; a failing proposer hands over to recovery;
    broken features or a broken recovery policy hold still (zero chunk, fault set)."""
    def boom(_o: dict) -> np.ndarray:
        raise RuntimeError("policy thread died")

    _, info = screen.screen(point(0.0), boom)
    assert info.recovery and info.q_proposals == ()
    chunk, info = screen.screen(point(0.0), lambda _o: np.full((1, 1), np.nan))
    assert info.recovery and np.isfinite(chunk).all()
    broken = SafeExploreScreen(screen.critic, screen.recovery, lambda _o: torch.full((1, 1), float("nan")),
                               EPS, 3, (1, 1))
    chunk, info = broken.screen(point(0.0), lambda _o: np.zeros((1, 1)))
    assert not info.accepted  # a NaN score is never accepted
    bad_rec = RecoveryPolicy(1, 1, 8)
    with torch.no_grad():
        bad_rec.net[-1].bias.fill_(float("nan"))
    no_rec = SafeExploreScreen(screen.critic, bad_rec, feat_of, EPS, 1, (1, 1))
    chunk, info = no_rec.screen(point(0.78), lambda _o: np.ones((1, 1)))
    assert info.fault.startswith("recovery policy failed") and np.all(chunk == 0.0)


def test_deterministic_proposer_is_not_resampled(screen: SafeExploreScreen) -> None:
    _, info = screen.screen(point(0.77), lambda _o: np.ones((1, 1)))
    assert info.recovery and len(info.q_proposals) == 2


def test_checkpoint_roundtrip_and_refusals(tmp_path) -> None:  # noqa: ANN001
    """At deployment: the saved screen reloads (next to the policy checkpoint) and decides
    identically; a spec mismatch is refused."""
    torch.manual_seed(0)
    scene = tiny_scene()
    policy = CompactVLA(PolicyConfig(proprio_dim=4, privileged_dim=0, chunk_len=2, hidden=32, feat_dim=16))
    feat = PolicyFeaturizer(policy)
    critic, rec = SafetyCritic(36, 14, 32), RecoveryPolicy(36, 14, 32)
    screen = SafeExploreScreen(critic, rec, feat, 0.05, 2, (2, 7))
    save_policy(tmp_path / "policy.safetensors", policy, safety_spec_sha256=scene.safety.sha256(),
                scene={"name": "tiny", "path": "x"}, step=0, lam=0.0, config={})
    save_safe_explore(tmp_path / "safe_explore.safetensors", screen, safety_spec_sha256=scene.safety.sha256(),
                      extra={"calibration": {"auc": 0.9}})
    loaded = load_safe_explore(tmp_path / "policy.safetensors", scene=scene)
    rng = np.random.default_rng(0)
    obs = {"image": rng.integers(0, 255, (64, 64, 3), dtype=np.uint8),
           "proprio": rng.normal(size=4).astype(np.float32), "instruction": "reach the green target"}
    prop = np.linspace(-1, 1, 14, dtype=np.float32).reshape(2, 7)
    a, ia = screen.screen(obs, lambda _o: prop)
    b, ib = loaded.screen(obs, lambda _o: prop)
    assert np.array_equal(a, b) and ia.q_proposals == pytest.approx(ib.q_proposals)
    assert loaded.meta["calibration"]["auc"] == 0.9 and loaded.epsilon == 0.05
    deploy_fn = ScreenedPolicy(policy, loaded)
    out = deploy_fn({**obs, "q": np.zeros(3), "t_mono": 1.0})  # the deploy runner's obs dict
    assert out.shape == (2, 7) and np.isfinite(out).all()
    assert deploy_fn.last_info.accepted or deploy_fn.last_info.recovery
    assert deploy_fn.last_info.accepted or len(deploy_fn.last_info.q_proposals) == 3  # mode + 2 samples
    other = tiny_scene(cost_limit=5.0)
    with pytest.raises(CheckpointError, match="safety spec mismatch"):
        load_safe_explore(tmp_path / "safe_explore.safetensors", scene=other)
    (tmp_path / "safe_explore.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no safe_explore.safetensors"):
        load_safe_explore(tmp_path / "policy.safetensors")


def test_explorer_pretrains_screens_and_records_on_tiny_env(tmp_path) -> None:  # noqa: ANN001
    """Offline pre-training + calibration on rollouts of a real env, then a screened vector
    rollout: recovery decisions are marked in the replay, the executed chunk is what ran and
    the proposal is kept for the task policy; the saved screen reloads."""
    from safetwin.train.envs import make_env_fn, make_vector_env
    from safetwin.train.safe_explore import SafeExplorer
    from safetwin.train.safe_explore_config import SafeExploreConfig

    from .conftest import TINY_ID

    torch.manual_seed(0)
    policy = CompactVLA(PolicyConfig(proprio_dim=4, privileged_dim=9, chunk_len=2, hidden=32, feat_dim=16))
    cfg = SafeExploreConfig(enabled=True, offline_episodes=8, offline_updates=60, online_updates=5,
                            batch_size=32, hidden=32, horizon_steps=4, random_fraction=0.5, clean_fraction=0.25,
                            perturb_std=0.5)  # risky offline data: the tiny env's held-out set needs violations
    explorer = SafeExplorer(cfg, policy, seed=0)
    stats = explorer.pretrain(make_env_fn(TINY_ID, 2, 0.99, {}), policy)
    assert stats["offline_violations"] > 0 and 0.0 <= stats["safety/critic_auc"] <= 1.0
    assert stats["safety/critic_fnr"] <= cfg.target_fnr
    n_offline = len(explorer.learner.replay)
    explorer.screen.epsilon = 0.0  # Q_C > 0 everywhere: every proposal is rejected
    envs = make_vector_env(TINY_ID, 2, 2, 0.99, {})
    obs, _ = envs.reset(seed=0)
    try:
        for _ in range(20):
            out = explorer.act(policy, obs)
            assert out.recovered.all() and not np.array_equal(out.executed, out.proposed)
            obs, _, term, trunc, infos = envs.step(out.executed)
            explorer.observe(infos, term, trunc)
    finally:
        envs.close()
    metrics = explorer.end_iteration()
    assert metrics["safety/critic_rejections"] == 2 * 20 * (cfg.max_resamples + 1)
    assert metrics["safety/recovery_steps"] == 2 * 20 * 2  # every env step was a recovery step
    rows = slice(n_offline, len(explorer.learner.replay))
    assert len(explorer.learner.replay) > n_offline
    assert explorer.learner.replay.data["recovered"][rows].all()
    data = explorer.learner.replay.data
    assert not np.allclose(data["act"][rows], data["proposed"][rows])
    assert 0.0 <= explorer.screen.epsilon <= 1.0 and "safety/critic_auc" in metrics
    explorer.save(tmp_path / "safe_explore.safetensors", tiny_scene().safety.sha256())
    loaded = load_safe_explore(tmp_path / "safe_explore.safetensors", scene=tiny_scene())
    assert loaded.epsilon == explorer.screen.epsilon and loaded.meta["offline"]["offline_violations"] > 0


def test_trainer_switch_logs_metrics_saves_and_resumes(tmp_path) -> None:  # noqa: ANN001
    """TrainConfig.safe_explore.enabled: the trainer pre-trains the critic, logs the safety
    metrics in metrics.jsonl, saves the screen next to the policy (loadable for deploy), and a
    resume restores it and keeps counting train_violations."""
    from safetwin.safety.runio import read_jsonl
    from safetwin.train.config import TrainConfig
    from safetwin.train.run import run_train
    from safetwin.train.safe_explore_config import SafeExploreConfig

    from .conftest import TINY_ID

    se = SafeExploreConfig(enabled=True, offline_episodes=12, random_fraction=0.8, offline_updates=30, online_updates=3,
                           batch_size=32, hidden=32, horizon_steps=4)
    base = dict(env_id=TINY_ID, scene="tiny", demo_episodes=3, bc_epochs=2, num_envs=2, rollout_decisions=12,
                checkpoint_every=2, progress=False, seed=3, run_root=str(tmp_path), run_id="se", safe_explore=se)
    run_dir = run_train(TrainConfig(**base, total_steps=200), scene=tiny_scene())
    records = list(read_jsonl(run_dir / "metrics.jsonl"))
    for key in ("safety/critic_rejections", "safety/recovery_steps", "safety/train_violations",
                "safety/critic_epsilon"):
        assert all(key in r for r in records), key
    assert any(0.0 <= r.get("safety/critic_auc", -1.0) <= 1.0 for r in records)
    assert sum(r["safety/critic_rejections"] for r in records) > 0
    screen = load_safe_explore(run_dir / "checkpoints" / "policy.safetensors", scene=tiny_scene())
    assert screen.epsilon == pytest.approx(records[-1]["safety/critic_epsilon"])
    assert screen.chunk_shape == (4, 7)
    resumed = run_train(TrainConfig(**{**base, "resume": True}, total_steps=400), scene=tiny_scene())
    after = list(read_jsonl(resumed / "metrics.jsonl"))
    assert len(after) > len(records) and after[-1]["step"] >= 400
    tv = [r["safety/train_violations"] for r in after]
    assert all(b >= a for a, b in zip(tv, tv[1:], strict=False))


def test_heldout_split_is_stratified_so_calibration_sees_both_classes() -> None:
    """With few violating episodes among many clean ones (or the reverse), the held-out set still
    gets some of each, so epsilon calibration and the ROC AUC have both classes."""
    from safetwin.train.safe_explore import SafeExplorer
    from safetwin.train.safe_explore_config import SafeExploreConfig
    from safetwin.train.safe_explore_data import Episode

    def episode(violates: bool) -> Episode:
        v = np.zeros(5)
        v[2] = float(violates)
        return Episode(np.zeros((5, 2)), np.zeros((5, 1)), np.zeros((5, 1)), v, np.ones(5, int),
                       np.zeros(5, bool), np.zeros(2), False)

    policy = CompactVLA(PolicyConfig(proprio_dim=4, privileged_dim=0, chunk_len=1, hidden=32, feat_dim=16))
    explorer = SafeExplorer(SafeExploreConfig(enabled=True, heldout_fraction=0.25), policy, seed=0)
    for n_bad, n_good in ((1, 19), (19, 1), (10, 10)):
        episodes = [episode(True)] * n_bad + [episode(False)] * n_good
        held = explorer._heldout_split(episodes)
        labels = {bool(np.any(episodes[i].violation)) for i in held}
        assert labels == {True, False}, (n_bad, n_good, held)
        assert len(held) == len(set(held)) <= max(2, round(0.25 * 20) + 1)


@pytest.mark.parametrize("window", [40, 3, 0])
def test_online_heldout_episodes_calibrate_epsilon_and_stay_out_of_the_replay(window: int) -> None:
    """A ``heldout_fraction`` share of the finished training episodes is withheld from the
    critic's replay; epsilon is then calibrated on the offline held-out episodes plus the newest
    ``calibration_window`` online ones (window 0: everything goes to the replay)."""
    from safetwin.train.safe_explore import SafeExplorer
    from safetwin.train.safe_explore_config import SafeExploreConfig
    from safetwin.train.safe_explore_data import Episode

    policy = CompactVLA(PolicyConfig(proprio_dim=4, privileged_dim=0, chunk_len=1, hidden=32, feat_dim=16))
    cfg = SafeExploreConfig(enabled=True, heldout_fraction=0.5, calibration_window=window, online_updates=0,
                            horizon_steps=1)
    explorer = SafeExplorer(cfg, policy, seed=0)
    f, a = explorer.learner.critic.feature_dim, explorer.learner.critic.action_dim
    rng = np.random.default_rng(0)

    def episode(violates: bool, t: int = 5) -> Episode:
        v = np.zeros(t)
        v[3] = float(violates)
        return Episode(rng.normal(size=(t, f)).astype(np.float32), rng.uniform(-1, 1, (t, a)).astype(np.float32),
                       np.zeros((t, a), np.float32), v, np.ones(t, int), np.zeros(t, bool),
                       np.zeros(f, np.float32), False)

    explorer.heldout = [episode(True), episode(False)]
    explorer._new_episodes = [episode(i % 2 == 0) for i in range(20)]
    metrics = explorer.end_iteration()
    n_held = len(explorer.heldout_online) if window else 0
    assert metrics["safety/critic_heldout_online"] == n_held
    withheld = 20 - len(explorer.learner.replay) // 5
    if window == 0:
        assert withheld == 0
    else:
        assert 0 < n_held == min(withheld, window)  # about half withheld, the newest `window` kept
        assert 6 <= withheld <= 14
    cal = explorer.calibration
    assert cal is not None and cal.n_pos + cal.n_neg == 5 * (2 + n_held)
    assert explorer.screen.epsilon == cal.epsilon


def test_unscored_recovery_chunk_is_replaced_by_a_hold_a1() -> None:
    """A1: when the critic's scores are NaN, every proposal is rejected and the recovery chunk
    (unscored) does not run either: the hold (no motion) does, on both screening paths."""
    torch.manual_seed(0)
    critic, recovery = SafetyCritic(1, 1, 16), RecoveryPolicy(1, 1, 16)
    with torch.no_grad():
        recovery.net[-1].bias.fill_(2.0)  # a clearly non-zero recovery chunk
        for p in critic.parameters():
            p.fill_(float("nan"))
    screen = SafeExploreScreen(critic, recovery, feat_of, EPS, 1, (1, 1))
    out = screen.screen_batch({"proprio": np.full((4, 1), 0.5, np.float32), "instruction": ["x"] * 4},
                              lambda o: (np.full((len(o["proprio"]), 1, 1), 0.3, np.float32), np.zeros(len(o["proprio"]))))
    assert out.recovered.all() and np.all(out.executed == 0.0)
    chunk, info = screen.screen(point(0.5), lambda _o: np.full((1, 1), 0.3, np.float32))
    assert info.recovery and chunk[0, 0] == 0.0
