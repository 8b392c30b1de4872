"""Checkpoints: safetensors + JSON round trip; refusals of pickle files, spec mismatches and
mismatched weight/sidecar pairs, each with a clear error."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
import torch

from safetwin.train.checkpoint import CheckpointError, load_policy, save_policy
from safetwin.train.policy import CompactVLA, PolicyConfig
from safetwin.train.residual import ResidualPolicy

from .conftest import tiny_scene


def one_obs() -> dict:
    rng = np.random.default_rng(0)
    return {"image": rng.integers(0, 255, (64, 64, 3), dtype=np.uint8),
            "proprio": rng.normal(size=4).astype(np.float32), "instruction": "reach the green target"}


def save(path, policy, scene) -> None:  # noqa: ANN001
    save_policy(path, policy, safety_spec_sha256=scene.safety.sha256(), scene={"name": scene.name, "path": "x"},
                step=7, lam=0.25, config={"seed": 0}, safety_spec=scene.safety.to_dict())


def trained_policy() -> CompactVLA:
    torch.manual_seed(0)
    policy = CompactVLA(PolicyConfig(proprio_dim=4, privileged_dim=9, chunk_len=2))
    policy.update_normalizers({"proprio": np.random.default_rng(1).normal(3.0, 2.0, (50, 4))})
    with torch.no_grad():
        policy.mean_head[-1].bias.uniform_(-0.5, 0.5)
    return policy


def test_roundtrip_predicts_identically(tmp_path) -> None:  # noqa: ANN001
    scene, policy = tiny_scene(), trained_policy()
    path = tmp_path / "policy.safetensors"
    save(path, policy, scene)
    loaded = load_policy(path, scene=scene)
    np.testing.assert_array_equal(loaded.predict(one_obs()), policy.predict(one_obs()))
    torch.testing.assert_close(loaded.proprio_rms.mean, policy.proprio_rms.mean)
    meta = loaded.checkpoint_meta
    assert meta["step"] == 7 and meta["lambda"] == 0.25
    assert meta["normalizer"]["proprio"]["mean"] == pytest.approx(policy.proprio_rms.mean.tolist())
    assert meta["safety_spec_sha256"] == scene.safety.sha256()
    assert not path.read_bytes().startswith(b"\x80")  # not a pickle stream


def test_residual_with_embedded_base_roundtrip(tmp_path) -> None:  # noqa: ANN001
    scene, base = tiny_scene(), trained_policy()
    res = ResidualPolicy(base.cfg, base)
    path = tmp_path / "res.safetensors"
    save(path, res, scene)
    loaded = load_policy(path, scene=scene)
    assert isinstance(loaded, ResidualPolicy) and loaded.base_policy is not None
    np.testing.assert_allclose(loaded.predict(one_obs()), res.predict(one_obs()), atol=1e-6)


def test_pickle_file_is_refused(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "policy.safetensors"
    path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_policy(path)
    pt = tmp_path / "policy.pt"
    torch.save(trained_policy().state_dict(), pt)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_policy(pt)


def test_spec_hash_mismatch_is_refused(tmp_path) -> None:  # noqa: ANN001
    scene = tiny_scene(cost_limit=1.0)
    path = tmp_path / "policy.safetensors"
    save(path, trained_policy(), scene)
    other = dataclasses.replace(scene, safety=tiny_scene(cost_limit=2.0).safety)
    with pytest.raises(CheckpointError, match="safety spec mismatch"):
        load_policy(path, scene=other)


def test_weights_and_sidecar_from_different_saves_are_refused(tmp_path) -> None:  # noqa: ANN001
    scene = tiny_scene()
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save(a, trained_policy(), scene)
    p2 = trained_policy()
    with torch.no_grad():
        p2.log_std.add_(0.1)
    save(b, p2, scene)
    a.write_bytes(b.read_bytes())
    with pytest.raises(CheckpointError, match="do not match the sidecar"):
        load_policy(a)
    (tmp_path / "b.json").unlink()
    with pytest.raises(CheckpointError, match="sidecar JSON"):
        load_policy(b)
