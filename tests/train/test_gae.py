"""GAE for reward and cost: hand-computed cases, terminated vs truncated (bootstrap)."""

from __future__ import annotations

import numpy as np
import pytest

from safetwin.train.gae import compute_gae


def col(*xs: float) -> np.ndarray:
    return np.asarray(xs, dtype=np.float64)[:, None]


def test_hand_computed_with_truncation_bootstrap() -> None:
    # t=0: r=1, V=0.5, V'=0.6 ; t=1: r=0, V=0.6, truncated, V(final obs)=2.0
    # t=2 (new episode): r=3, V=1.0, terminated, next value ignored
    gamma, lam = 0.9, 0.8
    adv, ret = compute_gae(col(1, 0, 3), col(0.5, 0.6, 1.0), col(0.6, 2.0, 7.0),
                           col(0, 0, 1).astype(bool), col(0, 1, 0).astype(bool), gamma, lam)
    d1 = 0 + 0.9 * 2.0 - 0.6  # bootstrapped from the final observation's value
    d0 = 1 + 0.9 * 0.6 - 0.5
    d2 = 3 - 1.0  # terminated: no bootstrap
    expected = [d0 + gamma * lam * d1, d1, d2]
    np.testing.assert_allclose(adv[:, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(ret[:, 0], np.asarray(expected) + [0.5, 0.6, 1.0], rtol=1e-6)


def test_terminated_and_truncated_differ_only_by_bootstrap() -> None:
    r, v, nv = col(0.0), col(0.0), col(5.0)
    a_term, _ = compute_gae(r, v, nv, col(1).astype(bool), col(0).astype(bool), 0.99, 0.95)
    a_trunc, _ = compute_gae(r, v, nv, col(0).astype(bool), col(1).astype(bool), 0.99, 0.95)
    assert a_term[0, 0] == pytest.approx(0.0)
    assert a_trunc[0, 0] == pytest.approx(0.99 * 5.0)


def test_single_reward_at_end_gives_discounted_returns() -> None:
    """SB3-style: reward 1 only at the terminal step; with lambda=1 and V=0 the advantage is
    gamma^(T-1-t)."""
    T, gamma = 6, 0.9
    rewards = np.zeros((T, 2))
    rewards[-1] = 1.0
    term = np.zeros((T, 2), dtype=bool)
    term[-1] = True
    adv, ret = compute_gae(rewards, np.zeros((T, 2)), np.zeros((T, 2)), term, np.zeros((T, 2), bool), gamma, 1.0)
    np.testing.assert_allclose(adv[:, 0], gamma ** np.arange(T - 1, -1, -1), rtol=1e-6)
    np.testing.assert_allclose(ret, adv)


def test_chunk_discount_per_transition() -> None:
    """A 3-step chunk discounts the next value by gamma^3 (per-transition discount array)."""
    adv, _ = compute_gae(col(1.0, 0.0), col(0.0, 0.0), col(4.0, 0.0), col(0, 0).astype(bool),
                         col(0, 1).astype(bool), col(0.9 ** 3, 0.9), 0.0)
    assert adv[0, 0] == pytest.approx(1.0 + 0.9 ** 3 * 4.0)


def test_episode_boundary_stops_recursion_and_shape_errors() -> None:
    adv, _ = compute_gae(col(0, 10), col(0, 0), col(0, 0), col(1, 0).astype(bool), col(0, 0).astype(bool), 0.9, 1.0)
    assert adv[0, 0] == pytest.approx(0.0)  # the next episode's reward does not leak back
    with pytest.raises(ValueError, match="shape"):
        compute_gae(col(0, 1), col(0), col(0), col(0).astype(bool), col(0).astype(bool), 0.9, 0.9)
    with pytest.raises(ValueError, match="gae_lambda"):
        compute_gae(col(0), col(0), col(0), col(0).astype(bool), col(0).astype(bool), 0.9, 1.5)
