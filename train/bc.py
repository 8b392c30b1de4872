"""Behaviour cloning of a VLA policy on a demo dataset (chunked targets).

For every step t of a demo, the target is the chunk ``actions[t : t + k]`` (padded past the
episode end, padded entries masked out). The loss is the masked mean squared error between the
policy's deterministic chunk (tanh of the Gaussian mean) and the target. Before training, the
policy's proprio and privileged normalisers are fitted to the dataset (and then kept).

With ``shift > 0`` every image of a minibatch is randomly translated by up to ``shift`` pixels
(edge-replicate padding, then a random crop back to the original size; DrQ-style augmentation),
which keeps a CNN trained from scratch on tens of demos from memorising pixel positions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .policy import VLAPolicy, chunk_targets

logger = logging.getLogger(__name__)
LOSSES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"mse": torch.square, "l1": torch.abs}
"""Per-component BC losses of the chunk error (prediction - target)."""


def build_bc_arrays(episodes: list[dict[str, np.ndarray]], k: int) -> dict[str, Any]:
    """Concatenate episodes into per-decision arrays with chunked targets (T_total, k, 7)."""
    targets, masks = zip(*(chunk_targets(ep["actions"], k) for ep in episodes), strict=True)
    instr = np.concatenate([np.full(len(ep["actions"]), str(ep["instruction"]), dtype=object)
                            for ep in episodes])
    out = {"image": np.concatenate([ep["image"] for ep in episodes]),
           "proprio": np.concatenate([ep["proprio"] for ep in episodes]).astype(np.float32),
           "privileged": np.concatenate([ep["privileged"] for ep in episodes]).astype(np.float32),
           "instruction": instr, "targets": np.concatenate(targets), "mask": np.concatenate(masks)}
    if all("wrist_image" in ep for ep in episodes):
        out["wrist_image"] = np.concatenate([ep["wrist_image"] for ep in episodes])
    return out


def random_shift(images: np.ndarray, shift: int, rng: np.random.Generator) -> np.ndarray:
    """Translate each uint8 image (B, H, W, C) by a random integer offset in [-shift, shift] px."""
    if shift <= 0:
        return images
    b, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="edge")
    dy, dx = rng.integers(0, 2 * shift + 1, size=(2, b))
    return np.stack([padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])


def train_bc(policy: VLAPolicy, episodes: list[dict[str, np.ndarray]], epochs: int, batch_size: int,
             lr: float, seed: int, progress: bool = True, shift: int = 0, loss: str = "mse") -> list[float]:
    """Fit ``policy`` to the demos; returns the mean loss of each epoch.

    ``shift``: random-shift image augmentation in pixels (0: none).
    ``loss``: ``"mse"`` (squared error) or ``"l1"`` (absolute error) per action component.
    """
    if not episodes:
        raise ValueError("train_bc: no demo episodes")
    if shift < 0:
        raise ValueError(f"train_bc: shift must be >= 0, got {shift}")
    if loss not in LOSSES:
        raise ValueError(f"train_bc: loss must be one of {list(LOSSES)}, got {loss!r}")
    data = build_bc_arrays(episodes, policy.cfg.chunk_len)
    if policy.cfg.use_wrist and "wrist_image" not in data:
        raise ValueError("train_bc: the policy uses the wrist camera but the demos have no wrist_image")
    policy.update_normalizers({"proprio": data["proprio"]}, data["privileged"])
    params = [p for n, p in policy.named_parameters() if p.requires_grad and not n.startswith(("critic", "v_"))]
    optim = torch.optim.Adam(params, lr=lr)
    rng = np.random.default_rng(seed)
    n = len(data["targets"])
    losses = []
    policy.train()
    bar = tqdm(range(epochs), desc="behaviour cloning", unit="epoch", disable=not progress)
    for _ in bar:
        epoch = []
        for idx in np.array_split(rng.permutation(n), max(1, n // batch_size)):
            obs = {"image": random_shift(data["image"][idx], shift, rng), "proprio": data["proprio"][idx],
                   "instruction": [str(s) for s in data["instruction"][idx]]}
            if policy.cfg.use_wrist:
                obs["wrist_image"] = random_shift(data["wrist_image"][idx], shift, rng)
            pred = policy.mean_chunk(obs)
            mask = torch.as_tensor(data["mask"][idx])[..., None]
            err = LOSSES[loss](pred - torch.as_tensor(data["targets"][idx])) * mask
            value = err.sum() / (mask.sum() * pred.shape[-1]).clamp(min=1.0)
            optim.zero_grad()
            value.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optim.step()
            epoch.append(value.item())
        losses.append(float(np.mean(epoch)))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    logger.info("BC: %d decisions, %d epochs, final loss %.5f", n, epochs, losses[-1])
    policy.eval()
    return losses
