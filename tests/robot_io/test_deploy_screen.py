"""The deploy runner loads the training run's safety critic and recovery policy (saved next to
the checkpoint) and screens every chunk before the QP filter (defence in depth, issue 6)."""

from __future__ import annotations

import numpy as np
import pytest

from safetwin.robot_io.deploy import _load_policy
from safetwin.robot_io.deploy_config import DeployConfig
from safetwin.safety.runio import config_from_dict
from safetwin.train.checkpoint import CheckpointError, save_policy
from safetwin.train.policy import CompactVLA, PolicyConfig
from safetwin.train.recovery import RecoveryPolicy
from safetwin.train.safe_explore_features import PolicyFeaturizer
from safetwin.train.safe_explore_io import ScreenedPolicy, save_safe_explore
from safetwin.train.safety_critic import SafetyCritic
from safetwin.train.screening import SafeExploreScreen
from safetwin.twin.scene import load_scene

SCENE = load_scene("reach_avoid")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An (untrained) policy checkpoint of the scene with a safe-explore screen next to it."""
    import torch

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("ckpt")
    policy = CompactVLA(PolicyConfig(proprio_dim=13, privileged_dim=0, chunk_len=2, hidden=32, feat_dim=16))
    path = save_policy(root / "policy.safetensors", policy, safety_spec_sha256=SCENE.safety.sha256(),
                       scene={"name": SCENE.name, "path": "reach_avoid"}, step=0, lam=0.0, config={})
    feat = PolicyFeaturizer(policy)
    dim = feat.feature_dim
    screen = SafeExploreScreen(SafetyCritic(dim, 14, 32), RecoveryPolicy(dim, 14, 32), feat, 0.5, 2, (2, 7))
    save_safe_explore(root / "safe_explore.safetensors", screen, safety_spec_sha256=SCENE.safety.sha256())
    return path


def cfg(checkpoint, **kw):
    return config_from_dict(DeployConfig, {"checkpoint": str(checkpoint), "accept_unaudited": True, **kw}, "deploy")


def obs(n=13):
    return {"image": np.zeros((64, 64, 3), np.uint8), "proprio": np.zeros(n, np.float32),
            "instruction": "reach the green target", "q": np.zeros(6), "t_mono": 1.0}


def test_screen_next_to_the_checkpoint_wraps_the_policy_and_counts(checkpoint):
    fn = _load_policy(cfg(checkpoint), SCENE, None)
    assert isinstance(fn, ScreenedPolicy)
    assert fn.counters()["decisions"] == 0  # the warm-up call is not counted
    for _ in range(3):
        chunk = fn(obs())
        assert chunk.shape == (2, 7) and np.isfinite(chunk).all()
    counts = fn.counters()
    assert counts["decisions"] == 3 and counts["screen_faults"] == 0
    assert fn.last_info.accepted or fn.last_info.recovery


def test_screen_off_and_required_but_missing(checkpoint, tmp_path):
    assert not isinstance(_load_policy(cfg(checkpoint, safe_explore="off"), SCENE, None), ScreenedPolicy)
    lone = tmp_path / "policy.safetensors"
    lone.write_bytes(checkpoint.read_bytes())
    (tmp_path / "policy.json").write_bytes(checkpoint.with_suffix(".json").read_bytes())
    assert not isinstance(_load_policy(cfg(lone), SCENE, None), ScreenedPolicy)  # auto: none there
    with pytest.raises(CheckpointError, match="no safe_explore.safetensors"):
        _load_policy(cfg(lone, safe_explore="on"), SCENE, None)
    with pytest.raises(ValueError, match="safe_explore"):
        cfg(lone, safe_explore="maybe")


def test_wrist_camera_policy_loads_and_asks_for_the_wrist_view(tmp_path):
    """A policy trained with the wrist camera loads (its warm-up inference gets a wrist image), and
    screened or not, the runner sees that its observation needs ``wrist_image``."""
    from safetwin.robot_io.deploy_camera import policy_image_size, policy_uses_wrist

    policy = CompactVLA(PolicyConfig(proprio_dim=13, privileged_dim=0, chunk_len=2, hidden=32, feat_dim=16,
                                     use_wrist=True))
    path = save_policy(tmp_path / "policy.safetensors", policy, safety_spec_sha256=SCENE.safety.sha256(),
                       scene={"name": SCENE.name, "path": "reach_avoid"}, step=0, lam=0.0, config={})
    fn = _load_policy(cfg(path), SCENE, None)
    assert policy_uses_wrist(fn) and policy_image_size(fn) == 64
    with pytest.raises(KeyError, match="wrist_image"):
        fn(obs())  # without the wrist view it cannot act: the policy thread publishes nothing
    wrist = {**obs(), "wrist_image": np.zeros((64, 64, 3), np.uint8)}
    assert fn(wrist).shape == (2, 7)
    feat = PolicyFeaturizer(fn.__self__)
    screen = SafeExploreScreen(SafetyCritic(feat.feature_dim, 14, 32), RecoveryPolicy(feat.feature_dim, 14, 32),
                               feat, 0.5, 2, (2, 7))
    save_safe_explore(tmp_path / "safe_explore.safetensors", screen, safety_spec_sha256=SCENE.safety.sha256())
    screened = _load_policy(cfg(path), SCENE, None)
    assert isinstance(screened, ScreenedPolicy) and policy_uses_wrist(screened)
    assert screened(wrist).shape == (2, 7) and screened.counters()["screen_faults"] == 0
