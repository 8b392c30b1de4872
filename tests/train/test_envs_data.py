"""Chunk execution, rollout buffer, demo dataset and the offline instruction encoder."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

from safetwin.train.bc import build_bc_arrays
from safetwin.train.buffer import RolloutBuffer
from safetwin.train.demos import load_demos, paraphrase, record_demos
from safetwin.train.envs import ChunkedEnv
from safetwin.train.language import EMBED_DIM, LanguageEncoder, shared_encoder

from .conftest import TINY_ID


def test_chunk_sums_discounted_reward_and_cost_and_stops_at_episode_end() -> None:
    raw = gym.make(TINY_ID, max_steps=3).unwrapped
    env = ChunkedEnv(gym.make(TINY_ID, max_steps=3), chunk_len=5, gamma=0.5)
    obs, _ = env.reset(seed=0)
    raw.reset(seed=0)
    chunk = np.zeros((5, 7), np.float32)
    chunk[:, 0] = 1.0
    rewards = [raw.step(a)[1] for a in chunk[:3]]
    obs, reward, term, trunc, info = env.step(chunk)
    assert info["n_steps"] == 3 and trunc and not term  # truncated after 3 of 5 actions
    assert reward == pytest.approx(rewards[0] + 0.5 * rewards[1] + 0.25 * rewards[2])
    assert info["discount"] == pytest.approx(0.125)
    assert info["episode"]["length"] == 3.0
    assert obs["privileged"].shape == (9,)


def test_chunked_env_rejects_non_finite_chunk_a1() -> None:
    """A1: a NaN in an action chunk is refused before anything reaches the env."""
    env = ChunkedEnv(gym.make(TINY_ID), chunk_len=2, gamma=0.9)
    env.reset(seed=0)
    chunk = np.zeros((2, 7), np.float32)
    chunk[1, 3] = np.nan
    with pytest.raises(FloatingPointError):
        env.step(chunk)


def test_buffer_gae_and_minibatches() -> None:
    buf = RolloutBuffer(3, 2, {"proprio": ((4,), np.float32)}, (2, 7))
    for t in range(3):
        buf.add({"proprio": np.full((2, 4), t, np.float32), "instruction": ["a", "b"]}, np.zeros((2, 2, 7)),
                np.zeros(2), np.ones(2), np.zeros(2), np.full(2, 0.9), np.zeros(2, bool), np.zeros(2, bool),
                np.zeros(2), np.zeros(2))
        buf.set_next_values(t, np.zeros(2), np.zeros(2))
    with pytest.raises(IndexError):
        buf.add({"proprio": np.zeros((2, 4)), "instruction": ["a", "b"]}, *([np.zeros(2)] * 9))
    adv = buf.compute_advantages(1.0)
    np.testing.assert_allclose(adv["adv_r"][:, 0], [1 + 0.9 + 0.81, 1.9, 1.0], rtol=1e-6)
    batch = buf.flat(adv)
    seen = sorted(i for obs, _ in RolloutBuffer.minibatches(batch, 2, np.random.default_rng(0))
                  for i in obs["instruction"])
    assert seen == ["a"] * 3 + ["b"] * 3


def test_record_and_load_demos(tmp_path) -> None:  # noqa: ANN001
    out = record_demos(TINY_ID, {"scene": "tiny"}, 3, seed=10, out_dir=tmp_path, progress=False)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["format"] == "safetwin-demos/1" and len(meta["episodes"]) == 3
    assert all(e["success"] for e in meta["episodes"])
    eps = load_demos(out)
    assert eps[0]["image"].dtype == np.uint8 and eps[0]["actions"].shape[1] == 7
    arrays = build_bc_arrays(eps, 4)
    assert arrays["targets"].shape == (sum(len(e["actions"]) for e in eps), 4, 7)
    with pytest.raises(FileNotFoundError, match="metadata"):
        load_demos(tmp_path / "nope")


def test_paraphrase_keeps_meaning() -> None:
    rng = np.random.default_rng(0)
    variants = {paraphrase("push the block to the target", rng) for _ in range(30)}
    assert len(variants) > 5
    emb = shared_encoder().embed(["push the block to the target", *sorted(variants)[:5], "open the fridge door"])
    assert (emb[1:6] @ emb[0]).min() > emb[6] @ emb[0]  # paraphrases closer than another task


def test_embedding_bits_do_not_depend_on_the_other_strings_encoded() -> None:
    """A string's embedding is bit-identical whether encoded alone or next to longer strings
    (in a padded batch it was not, so seeds replayed differently across processes)."""
    text = "push the red cube into the green zone"
    alone = LanguageEncoder().embed([text])[0]
    crowd = LanguageEncoder().embed(["please slide the blue box onto the green circle now, carefully, robot",
                                     text, "move the red cube to the green target area"])[1]
    assert np.array_equal(alone, crowd)


def test_language_encoder_offline_cache(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    enc = LanguageEncoder(cache_dir=tmp_path)
    vec = enc.embed(["reach the green target", "reach the green target"])
    assert vec.shape == (2, EMBED_DIM) and np.allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-5)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    fresh = LanguageEncoder(cache_dir=tmp_path)
    monkeypatch.setattr(fresh, "_load", lambda: pytest.fail("cache hit must not load the model"))
    np.testing.assert_allclose(fresh.embed(["reach the green target"])[0], vec[0])
