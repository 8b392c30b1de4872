"""The safety critic's end-effector features: forward kinematics of the measured joints, checked
against pybullet's own link state in the real twin, and the save/load contract (a critic
trained with EE features needs the same robot's kinematics at deployment)."""

from __future__ import annotations

import numpy as np
import pybullet as p
import pytest
import torch

from safetwin.train.checkpoint import CheckpointError
from safetwin.train.policy import CompactVLA, PolicyConfig
from safetwin.train.recovery import RecoveryPolicy
from safetwin.train.safe_explore_features import EE_POS_SCALE, EEFeatures, PolicyFeaturizer, batch_one
from safetwin.train.safe_explore_io import load_safe_explore, save_safe_explore
from safetwin.train.safety_critic import SafetyCritic
from safetwin.train.screening import SafeExploreScreen
from safetwin.twin.env import TwinEnv
from safetwin.twin.kinematics import Kinematics
from safetwin.twin.scene import load_scene

PUSH = load_scene("tabletop_push")


def _policy(proprio_dim: int) -> CompactVLA:
    torch.manual_seed(0)
    return CompactVLA(PolicyConfig(proprio_dim=proprio_dim, privileged_dim=0, chunk_len=2, hidden=32, feat_dim=16))


def test_ee_features_match_pybullets_link_state_in_the_twin() -> None:
    """After real motion in the twin, the EE columns equal pybullet's world pose of the EE link
    (the base sits at the world origin in this scene) and the lowest-point column lies at or
    below the EE and above the table (the arm is not in the table)."""
    env = TwinEnv(scene="tabletop_push", randomize=False)
    try:
        obs, _ = env.reset(seed=3)
        for _ in range(6):  # move down and sideways
            obs, *_ = env.step(np.array([0.5, 0.3, -0.8, 0.0, 0.0, 0.0, 0.0], np.float32))
        w = env.world
        st = p.getLinkState(w.robot, w.ee_index, computeForwardKinematics=True, physicsClientId=w.client)
        q = np.array([p.getJointState(w.robot, j, physicsClientId=w.client)[0] for j in w.joint_ids])[None]
        feats = EEFeatures(env.robot_model)(q)[0]
    finally:
        env.close()
    assert feats.shape == (EEFeatures.dim,)
    np.testing.assert_allclose(feats[:3] / EE_POS_SCALE, st[4], atol=1e-4)
    np.testing.assert_allclose(feats[4:].reshape(3, 3), np.array(p.getMatrixFromQuaternion(st[5])).reshape(3, 3),
                               atol=1e-4)
    lowest = feats[3] / EE_POS_SCALE
    assert -0.01 < lowest <= feats[2] / EE_POS_SCALE


def test_featurizer_appends_the_ee_features_of_the_proprio_joints() -> None:
    kin = Kinematics.for_scene(PUSH)
    n = len(kin.joint_names)
    policy = _policy(2 * n + 1)
    plain, with_ee = PolicyFeaturizer(policy), PolicyFeaturizer(policy, kinematics=kin)
    assert with_ee.feature_dim == plain.feature_dim + EEFeatures.dim
    q = np.array([0.2, -0.3, 0.5, 0.0, 1.0, 0.1])
    obs = {"image": np.zeros((64, 64, 3), np.uint8), "instruction": "push the red cube into the green zone",
           "proprio": np.concatenate([q, np.zeros(n), [1.0]]).astype(np.float32)}
    f_plain, f_ee = plain(batch_one(obs)), with_ee(batch_one(obs))
    assert torch.equal(f_ee[:, :plain.feature_dim], f_plain)
    pos, rot = kin.ee_pose(q.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(f_ee[0, plain.feature_dim:plain.feature_dim + 3].numpy() / EE_POS_SCALE, pos, atol=1e-6)
    np.testing.assert_allclose(f_ee[0, plain.feature_dim + 4:].numpy().reshape(3, 3), rot, atol=1e-6)


def test_a_screen_with_ee_features_and_a_residual_recovery_reloads_only_with_the_same_robot(tmp_path) -> None:  # noqa: ANN001
    kin = Kinematics.for_scene(PUSH)
    n = len(kin.joint_names)
    feat = PolicyFeaturizer(_policy(2 * n + 1), kinematics=kin, mode_chunk=True)
    dim = feat.feature_dim
    rec = RecoveryPolicy(dim, 14, 32, residual_scale=0.3)
    screen = SafeExploreScreen(SafetyCritic(dim, 14, 32), rec, feat, 0.5, 1, (2, 7))
    path = save_safe_explore(tmp_path / "safe_explore.safetensors", screen, safety_spec_sha256=PUSH.safety.sha256())
    with pytest.raises(CheckpointError, match="end-effector features; load it with the scene"):
        load_safe_explore(path)
    loaded = load_safe_explore(path, scene=PUSH)
    obs = {"image": np.full((64, 64, 3), 90, np.uint8), "instruction": "push the blue cube into the green zone",
           "proprio": np.linspace(-0.5, 0.5, 2 * n + 1).astype(np.float32)}
    f = feat(batch_one(obs))
    assert torch.equal(loaded.featurize(batch_one(obs)), f)
    assert loaded.recovery.residual_scale == 0.3 and torch.equal(loaded.recovery(f), rec(f))
    panda = Kinematics.for_scene(load_scene("panda_reach"))
    with pytest.raises(CheckpointError, match="EE features were trained on"):
        load_safe_explore(path, kinematics=panda)


def test_mode_chunk_features_are_the_frozen_policys_noise_free_chunk() -> None:
    policy = _policy(13)
    feat = PolicyFeaturizer(policy, mode_chunk=True)
    assert feat.feature_dim == PolicyFeaturizer(policy).feature_dim + 14
    obs = {"image": np.full((64, 64, 3), 40, np.uint8), "instruction": "push the red cube into the green zone",
           "proprio": np.linspace(-1, 1, 13).astype(np.float32)}
    with torch.no_grad():
        mode = policy.mean_chunk(batch_one(obs)).reshape(1, -1)
    assert torch.equal(feat(batch_one(obs))[:, -14:], mode)


class _PushNegative(SafetyCritic):
    """A critic whose violation probability falls as the chunk's entries fall: the recovery
    update pushes every entry down, as far as it is allowed to."""

    def forward(self, feat: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(3.0 * act.reshape(act.shape[0], -1).sum(-1) / act.shape[-1])


def test_residual_recovery_stays_within_its_bound_of_the_base_chunk() -> None:
    """The residual recovery is the base chunk (the features' last A columns) plus at most r per
    entry, clipped to [-1, 1], however hard the critic pulls; the regulariser ties it to the base,
    not to zero (a hold)."""
    from safetwin.train.recovery import recovery_update

    torch.manual_seed(0)
    a_dim, r = 14, 0.3
    rec = RecoveryPolicy(20 + a_dim, a_dim, 32, residual_scale=r)
    critic = _PushNegative(20 + a_dim, a_dim, 8)
    base = torch.rand(64, a_dim) * 1.6 - 0.8
    feat = torch.cat([torch.randn(64, 20), base], dim=1)
    np.testing.assert_allclose(rec(feat).detach().numpy(), base.numpy(), atol=0.01)  # starts at the base
    optim = torch.optim.Adam(rec.parameters(), lr=1e-2)
    for _ in range(300):
        recovery_update(rec, optim, critic, feat, action_reg=0.0)
    dev = (rec(feat) - base).detach().numpy()
    assert dev.mean() < -0.25 and dev.min() >= -r - 1e-5  # pushed down to the bound, not beyond
    assert rec(feat).detach().min() >= -1.0
    torch.manual_seed(0)  # a strong regulariser holds a fresh one at the base chunk, not at 0 (a hold)
    tied = RecoveryPolicy(20 + a_dim, a_dim, 32, residual_scale=r)
    optim = torch.optim.Adam(tied.parameters(), lr=1e-2)
    for _ in range(300):
        recovery_update(tied, optim, critic, feat, action_reg=50.0)
    assert np.abs((tied(feat) - base).detach().numpy()).mean() < 0.05
    with pytest.raises(ValueError, match="residual"):
        RecoveryPolicy(14, 14, 8, residual_scale=0.3)  # no room for a base chunk in the features
