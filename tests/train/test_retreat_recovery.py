"""The retreat base of the residual recovery: its layout (lift in the first step, then hold, the
pre-trained policy's gripper command), its save/load contract, its config checks, and what it
does in the real twin: fingertips pressed on the table past the spec's contact-force limit are
relieved by one retreat chunk, where the pressing motion keeps the force cost on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from safetwin.safety.runio import ConfigError
from safetwin.train.policy import CompactVLA, PolicyConfig
from safetwin.train.recovery import GRIPPER_INDEX, ROTATION, STEP_DIM, Z_INDEX, RecoveryPolicy
from safetwin.train.safe_explore_config import SafeExploreConfig
from safetwin.train.safe_explore_features import EE_POS_SCALE, EEFeatures, PolicyFeaturizer, batch_one
from safetwin.train.safe_explore_io import load_safe_explore, save_safe_explore
from safetwin.train.safety_critic import SafetyCritic
from safetwin.train.screening import SafeExploreScreen
from safetwin.twin.env import TwinEnv
from safetwin.twin.scene import load_scene

K = 4
A = K * STEP_DIM


def _features(batch: int, policy_chunk: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.cat([torch.randn(batch, 20), policy_chunk.reshape(batch, A)], dim=1)


def test_retreat_base_lifts_in_the_first_step_then_holds_with_the_policys_gripper() -> None:
    policy_chunk = torch.rand(8, K, STEP_DIM) * 2 - 1
    feat = _features(8, policy_chunk)
    rec = RecoveryPolicy(20 + A, A, 32, residual_scale=0.3, base="retreat", lift=0.4)
    base = rec.base(feat).reshape(8, K, STEP_DIM)
    assert torch.all(base[:, 0, Z_INDEX] == 0.4)
    moving = [i for i in range(STEP_DIM) if i != GRIPPER_INDEX]
    assert torch.all(base[:, 1:, :][..., moving] == 0.0)  # hold after the lift
    assert torch.all(base[:, 0, [i for i in moving if i != Z_INDEX]] == 0.0)
    assert torch.equal(base[..., GRIPPER_INDEX], policy_chunk[..., GRIPPER_INDEX])
    # a fresh residual starts at the base and never leaves +- r of it
    out = rec(feat).detach().reshape(8, K, STEP_DIM)
    np.testing.assert_allclose(out.numpy(), base.numpy(), atol=0.01)
    policy_base = RecoveryPolicy(20 + A, A, 32, residual_scale=0.3, base="policy").base(feat)
    assert torch.equal(policy_base, policy_chunk.reshape(8, A))


def test_retreat_residual_never_rotates() -> None:
    """A residual on the retreat moves and grips but leaves the rotations at zero: a rotation
    residual repeated over the long stretches the recovery acts (43-50 % of the steps) drifted
    the wrist into its joint limits on tabletop_push. A policy-base residual keeps all seven."""
    policy_chunk = torch.zeros(8, K, STEP_DIM)
    feat = _features(8, policy_chunk)
    for base_kind in ("retreat", "policy"):
        rec = RecoveryPolicy(20 + A, A, 32, residual_scale=0.3, base=base_kind, lift=0.0)
        with torch.no_grad():
            rec.net[-1].bias.fill_(5.0)  # saturate the residual: tanh ~ 1 in every component
        dev = (rec(feat) - rec.base(feat)).detach().reshape(8, K, STEP_DIM)
        rotations = dev[..., ROTATION]
        others = dev[..., [0, 1, 2, GRIPPER_INDEX]]
        assert torch.allclose(others, torch.full_like(others, 0.3), atol=1e-3)
        if base_kind == "retreat":
            assert torch.all(rotations == 0.0)
        else:
            assert torch.allclose(rotations, torch.full_like(rotations, 0.3), atol=1e-3)


def test_retreat_recovery_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="base must be one of"):
        RecoveryPolicy(20 + A, A, 8, residual_scale=0.3, base="lift")
    with pytest.raises(ValueError, match="lift in"):
        RecoveryPolicy(20 + A, A, 8, residual_scale=0.3, base="retreat", lift=1.5)
    with pytest.raises(ValueError, match="7-D steps"):
        RecoveryPolicy(30, 10, 8, residual_scale=0.3, base="retreat")
    with pytest.raises(ConfigError, match="recovery_base"):
        SafeExploreConfig(recovery_base="hold")
    with pytest.raises(ConfigError, match="recovery_lift"):
        SafeExploreConfig(recovery_lift=-0.1)
    assert SafeExploreConfig().recovery_base == "retreat"


def test_a_saved_screen_keeps_its_retreat_base_and_lift(tmp_path) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    policy = CompactVLA(PolicyConfig(proprio_dim=13, privileged_dim=0, chunk_len=K, hidden=32, feat_dim=16))
    feat = PolicyFeaturizer(policy, mode_chunk=True)
    rec = RecoveryPolicy(feat.feature_dim, A, 32, residual_scale=0.2, base="retreat", lift=0.3)
    screen = SafeExploreScreen(SafetyCritic(feat.feature_dim, A, 32), rec, feat, 0.5, 1, (K, STEP_DIM))
    spec = load_scene("tabletop_push").safety.sha256()
    loaded = load_safe_explore(save_safe_explore(tmp_path / "safe_explore.safetensors", screen,
                                                 safety_spec_sha256=spec))
    assert (loaded.recovery.base_kind, loaded.recovery.lift, loaded.recovery.residual_scale) == ("retreat", 0.3, 0.2)
    obs = {"image": np.full((64, 64, 3), 70, np.uint8), "instruction": "push the red cube into the green zone",
           "proprio": np.linspace(-1, 1, 13).astype(np.float32)}
    f = feat(batch_one(obs))
    assert torch.equal(loaded.recovery(f), rec(f))


def test_retreat_chunk_relieves_fingertips_pressed_on_the_table_in_the_twin() -> None:
    """Drive the gripper down onto the table until the contact force passes the spec's limit
    (the cost category ``force``). From that same pressed state (same seed, no randomization),
    pressing on keeps the force cost on, while one retreat chunk (the default lift, then hold)
    ends it after its lift step and raises the arm's lowest point."""
    lift = SafeExploreConfig().recovery_lift
    retreat = np.zeros((K, STEP_DIM), np.float32)
    retreat[0, Z_INDEX] = lift
    press = np.tile(_DOWN, (K, 1))
    outcomes = {}
    for name, chunk in (("press", press), ("retreat", retreat)):
        env = TwinEnv(scene="tabletop_push", randomize=False)
        try:
            low_before = _press(env)
            force = [env.step(a)[4]["costs"]["force"] for a in chunk]
            outcomes[name] = (force, _lowest(env) - low_before)
        finally:
            env.close()
    assert sum(outcomes["press"][0]) >= K - 1  # pressing on stays over the force limit
    assert outcomes["retreat"][0][1:] == [0.0] * (K - 1)  # relieved once the lift step has run
    assert outcomes["retreat"][1] > 0.6 * lift * load_scene("tabletop_push").control.action_pos_m  # m: it rose


_DOWN = np.array([0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0], np.float32)


def _press(env: TwinEnv) -> float:
    """Step straight down until the force cost fires; returns the arm's lowest point then (m)."""
    env.reset(seed=0)
    for _ in range(40):
        _, _, term, trunc, info = env.step(_DOWN)
        assert not (term or trunc)
        if info["costs"]["force"] > 0:
            return _lowest(env)
    raise AssertionError("the arm never pressed on the table past the force limit")


def _lowest(env: TwinEnv) -> float:
    """m: the arm's lowest collision-sphere bottom (base frame), from the measured joints."""
    q, _ = env.world.read_joints()
    return float(EEFeatures(env.robot_model)(q[None])[0, 3]) / EE_POS_SCALE


def test_retreat_lifts_only_below_the_clearance_then_holds() -> None:
    """With the lowest-point column given, the lift applies while the arm's lowest point is
    below ``clearance`` (m) and is replaced by a hold above it, so repeated retreats cannot
    climb into the joint limits; the featurizer names that column."""
    from safetwin.train.safe_explore_features import EE_POS_SCALE

    policy_chunk = torch.zeros(3, K, STEP_DIM)
    feat = _features(3, policy_chunk)
    col = 5
    feat[:, col] = torch.tensor([0.005, 0.029, 0.08]) * EE_POS_SCALE  # m above the base plane
    rec = RecoveryPolicy(20 + A, A, 32, residual_scale=0.1, base="retreat", lift=0.25, clearance=0.03,
                         height_column=col)
    lifts = rec.base(feat).reshape(3, K, STEP_DIM)[:, 0, Z_INDEX]
    assert lifts.tolist() == [0.25, 0.25, 0.0]
    with pytest.raises(ValueError, match="height_column"):
        RecoveryPolicy(20 + A, A, 8, residual_scale=0.1, base="retreat", height_column=20 + A)
    kin_feat = PolicyFeaturizer(CompactVLA(PolicyConfig(proprio_dim=13, privileged_dim=0, chunk_len=K, hidden=32,
                                                        feat_dim=16)),
                                kinematics=_kinematics(), mode_chunk=True)
    q = np.array([0.1, -0.2, 0.4, 0.0, 0.9, 0.0])
    obs = {"image": np.zeros((64, 64, 3), np.uint8), "instruction": "push the red cube into the green zone",
           "proprio": np.concatenate([q, np.zeros(6), [1.0]]).astype(np.float32)}
    lowest = EEFeatures(_kinematics())(q[None].astype(np.float32))[0, 3]
    assert kin_feat(batch_one(obs))[0, kin_feat.lowest_column].item() == pytest.approx(float(lowest), abs=1e-6)
    assert PolicyFeaturizer(CompactVLA(PolicyConfig(proprio_dim=13, privileged_dim=0, chunk_len=K, hidden=32,
                                                    feat_dim=16))).lowest_column == -1


def _kinematics():  # noqa: ANN202
    from safetwin.twin.kinematics import Kinematics

    return Kinematics.for_scene(load_scene("tabletop_push"))
