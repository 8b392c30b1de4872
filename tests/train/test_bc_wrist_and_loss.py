"""BC inputs and loss: the wrist camera flows from the twin's demos into BC and evaluation; L1 loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from safetwin.safety.runio import ConfigError
from safetwin.train.bc import build_bc_arrays, train_bc
from safetwin.train.checkpoint import save_policy
from safetwin.train.config import TrainConfig
from safetwin.train.demos import load_demos, record_demos
from safetwin.train.evaluate import evaluate
from safetwin.train.policy import CompactVLA, PolicyConfig


def _episodes(n: int, length: int, rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    """Synthetic episodes whose action (dx) is +-0.5 by the side of a bright square that only the
    wrist image shows; the front image and proprio carry no information about it."""
    eps = []
    for _ in range(n):
        side = rng.integers(0, 2, size=length)
        wrist = np.zeros((length, 64, 64, 3), np.uint8)
        for t, s in enumerate(side):
            wrist[t, 24:40, (8 if s else 40):(8 if s else 40) + 16] = 255
        actions = np.zeros((length, 7), np.float32)
        actions[:, 0] = np.where(side == 1, 0.5, -0.5)
        eps.append({"image": np.full((length, 64, 64, 3), 90, np.uint8), "wrist_image": wrist,
                    "proprio": rng.normal(size=(length, 4)).astype(np.float32),
                    "privileged": np.zeros((length, 2), np.float32), "actions": actions,
                    "instruction": np.asarray("push the cube")})
    return eps


def _policy(use_wrist: bool) -> CompactVLA:
    torch.manual_seed(0)
    return CompactVLA(PolicyConfig(proprio_dim=4, privileged_dim=2, chunk_len=1, hidden=64, feat_dim=32,
                                   use_wrist=use_wrist))


def _held_out_dx_error(policy: CompactVLA, eps: list[dict[str, np.ndarray]]) -> float:
    data = build_bc_arrays(eps, 1)
    obs = {key: data[key] for key in ("image", "wrist_image", "proprio")}
    with torch.no_grad():
        pred = policy.mean_chunk({**obs, "instruction": list(data["instruction"])}).numpy()
    return float(np.mean(np.square(pred[:, 0, 0] - data["targets"][:, 0, 0])))


def test_bc_learns_from_the_wrist_image() -> None:
    train, test = _episodes(4, 16, np.random.default_rng(0)), _episodes(2, 16, np.random.default_rng(1))
    errors = {}
    for use_wrist in (True, False):
        policy = _policy(use_wrist)
        train_bc(policy, train, epochs=30, batch_size=16, lr=3e-3, seed=0, progress=False)
        errors[use_wrist] = _held_out_dx_error(policy, test)
    # 0.25 is the error of predicting dx = 0; only the wrist view tells the sign on new frames
    assert errors[True] < 0.05 < errors[False]


def test_wrist_policy_needs_wrist_demos() -> None:
    eps = _episodes(1, 4, np.random.default_rng(0))
    for ep in eps:
        del ep["wrist_image"]
    assert "wrist_image" not in build_bc_arrays(eps, 1)
    with pytest.raises(ValueError, match="wrist_image"):
        train_bc(_policy(True), eps, epochs=1, batch_size=4, lr=1e-3, seed=0, progress=False)


def test_l1_loss_is_the_masked_mean_absolute_error() -> None:
    eps = _episodes(2, 5, np.random.default_rng(1))
    policy = CompactVLA(PolicyConfig(proprio_dim=4, privileged_dim=2, chunk_len=3, hidden=32, feat_dim=16))
    data = build_bc_arrays(eps, 3)
    policy.update_normalizers({"proprio": data["proprio"]})
    with torch.no_grad():
        pred = policy.mean_chunk({"image": data["image"], "proprio": data["proprio"],
                                  "instruction": list(data["instruction"])}).numpy()
    mask = data["mask"][..., None]
    expected = float((np.abs(pred - data["targets"]) * mask).sum() / (mask.sum() * 7))
    squared = float((np.square(pred - data["targets"]) * mask).sum() / (mask.sum() * 7))
    # one batch holding every decision, a negligible step: the reported loss is the initial one
    (l1,) = train_bc(policy, eps, epochs=1, batch_size=64, lr=1e-12, seed=0, progress=False, loss="l1")
    assert l1 == pytest.approx(expected, rel=1e-4)
    assert abs(l1 - squared) > 1e-3
    with pytest.raises(ValueError, match="loss"):
        train_bc(policy, eps, epochs=1, batch_size=64, lr=1e-3, seed=0, progress=False, loss="huber")
    with pytest.raises(ConfigError, match="bc_loss"):
        TrainConfig(bc_loss="huber")


def test_wrist_camera_reaches_demos_and_evaluation(tmp_path) -> None:  # noqa: ANN001
    cfg = TrainConfig(scene="reach_avoid", wrist_camera=True)
    assert cfg.env_kwargs()["wrist_camera"] is True
    assert "wrist_camera" not in TrainConfig(scene="reach_avoid").env_kwargs()
    out = record_demos(cfg.env_id, cfg.env_kwargs(), 1, seed=0, out_dir=tmp_path / "demos", progress=False)
    ep = load_demos(out, successful_only=False)[0]
    assert ep["wrist_image"].shape == ep["image"].shape and ep["wrist_image"].dtype == np.uint8
    assert np.abs(ep["wrist_image"].astype(int) - ep["image"].astype(int)).mean() > 5  # another view
    from safetwin.twin.scene import load_scene

    scene = load_scene("reach_avoid")
    policy = CompactVLA(PolicyConfig(proprio_dim=ep["proprio"].shape[1], privileged_dim=ep["privileged"].shape[1],
                                     chunk_len=25, hidden=32, feat_dim=16, use_wrist=True))
    ckpt = tmp_path / "wrist.safetensors"
    save_policy(ckpt, policy, safety_spec_sha256=scene.safety.sha256(), scene={"name": "reach_avoid"}, step=0,
                lam=0.0, config={})
    summary = evaluate(ckpt, scene, episodes=1, seed=0, filtered=False, out_dir=tmp_path / "eval", progress=False)
    assert summary["modes"]["raw"]["episodes"] == 1  # the eval env rendered the wrist view the policy reads
