"""Demo noise injection (DART-style), random-shift augmentation and the fine-tuning start."""

from __future__ import annotations

import json

import numpy as np
import pytest

from safetwin.safety.runio import ConfigError
from safetwin.train.bc import random_shift, train_bc
from safetwin.train.config import TrainConfig
from safetwin.train.demos import load_demos, record_demos
from safetwin.train.policy import CompactVLA, PolicyConfig

from .conftest import STEP, TINY_ID, TinyReach


def _clean_expert(privileged: np.ndarray) -> np.ndarray:
    """The tiny env's expert action at the state stored in ``privileged`` (ee, goal, fragile)."""
    env = TinyReach()
    env.ee, env.goal, env.fragile = (privileged[i:i + 3].astype(np.float64) for i in (0, 3, 6))
    return env.expert_action()


def test_noisy_demos_label_the_clean_expert_action(tmp_path) -> None:  # noqa: ANN001
    out = record_demos(TINY_ID, {"scene": "tiny"}, 2, seed=3, out_dir=tmp_path, progress=False, noise=0.3)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["action_noise"] == pytest.approx(0.3)
    ep = load_demos(out, successful_only=False)[0]
    labels = np.stack([_clean_expert(p) for p in ep["privileged"]])
    np.testing.assert_allclose(ep["actions"], labels, atol=1e-5)  # the label is the clean action
    executed = np.diff(ep["proprio"][:, :3], axis=0) / STEP  # m per step -> action units
    gap = np.abs(executed - ep["actions"][:-1, :3]).max(axis=1)
    assert (gap > 0.05).mean() > 0.5  # ...while the env executed a perturbed one


def test_clean_demos_execute_the_label(tmp_path) -> None:  # noqa: ANN001
    ep = load_demos(record_demos(TINY_ID, {"scene": "tiny"}, 1, seed=3, out_dir=tmp_path, progress=False))[0]
    executed = np.diff(ep["proprio"][:, :3], axis=0) / STEP
    np.testing.assert_allclose(executed, ep["actions"][:-1, :3], atol=1e-4)


def test_negative_demo_noise_is_refused(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="noise"):
        record_demos(TINY_ID, {"scene": "tiny"}, 1, seed=0, out_dir=tmp_path, progress=False, noise=-0.1)
    with pytest.raises(ConfigError, match="demo_noise"):
        TrainConfig(demo_noise=-1.0)
    with pytest.raises(ConfigError, match="bc_shift"):
        TrainConfig(bc_shift=-2)
    with pytest.raises(ConfigError, match="finetune_log_std"):
        TrainConfig(finetune_log_std=0.5)


def test_random_shift_translates_within_bound() -> None:
    rng = np.random.default_rng(0)
    img = np.zeros((64, 64, 64, 3), np.uint8)
    img[:, 30, 40] = 255  # one bright pixel away from the border
    assert random_shift(img, 0, rng) is img
    out = random_shift(img, 4, rng)
    assert out.shape == img.shape and out.dtype == np.uint8
    offsets = set()
    for frame in out:
        ys, xs = np.nonzero(frame[..., 0])
        assert len(ys) == 1  # the pixel moved, nothing was duplicated or lost
        dy, dx = int(ys[0]) - 30, int(xs[0]) - 40
        assert abs(dy) <= 4 and abs(dx) <= 4
        offsets.add((dy, dx))
    assert len(offsets) > 10  # offsets vary per image


def test_bc_with_shift_fits_the_demos(tmp_path) -> None:  # noqa: ANN001
    eps = load_demos(record_demos(TINY_ID, {"scene": "tiny"}, 3, seed=5, out_dir=tmp_path, progress=False))
    policy = CompactVLA(PolicyConfig(proprio_dim=4, privileged_dim=9, chunk_len=2, hidden=64, feat_dim=32))
    losses = train_bc(policy, eps, epochs=25, batch_size=8, lr=1e-3, seed=0, progress=False, shift=3)
    assert losses[-1] < 0.5 * losses[0]
    with pytest.raises(ValueError, match="shift"):
        train_bc(policy, eps, epochs=1, batch_size=32, lr=1e-3, seed=0, progress=False, shift=-1)
