"""Conservative safety critic on an analytic case, calibration and AUC.

The analytic case: a point mass on a line, x' = x + 0.2 a (m, a in [-1, 1]); crossing the wall
at x = 0.8 m is a violation and ends the episode. Feature = [x].
No scenario ID of SAFETY_SCENARIOS.md covers a learned critic; the screening tests' fail-closed
case covers A1 (non-finite proposals).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from safetwin.train.recovery import RecoveryPolicy
from safetwin.train.safe_explore_config import SafeExploreConfig
from safetwin.train.safe_explore_data import Episode, SafeExploreLearner, episode_scores
from safetwin.train.safety_critic import SafetyCritic, calibrate_epsilon, roc_auc, td_target, violation_within

WALL, STEP = 0.8, 0.2


def wall_episodes(n: int, rng: np.random.Generator, act_lo: float = -1.0, act_hi: float = 1.0) -> list[Episode]:
    """Random-policy episodes of the point mass (actions uniform in [act_lo, act_hi])."""
    episodes = []
    for _ in range(n):
        x, feats, acts, viol = rng.uniform(-1.0, WALL), [], [], []
        terminated = False
        for _t in range(15):
            a = rng.uniform(act_lo, act_hi)
            feats.append([x])
            acts.append([a])
            x = x + STEP * a
            viol.append(float(x >= WALL))
            if x >= WALL:
                terminated = True
                break
        t = len(acts)
        episodes.append(Episode(feat=np.asarray(feats, np.float32), act=np.asarray(acts, np.float32),
                                proposed=np.asarray(acts, np.float32), violation=np.asarray(viol, np.float32),
                                n_steps=np.ones(t, np.int64), recovered=np.zeros(t, bool),
                                final_feat=np.asarray([x], np.float32), terminated=terminated))
    return episodes


def train_wall_critic(alpha: float, episodes: list[Episode], updates: int = 1500,
                      seed: int = 0) -> SafeExploreLearner:
    torch.manual_seed(seed)
    cfg = SafeExploreConfig(cql_alpha=alpha, hidden=64, batch_size=128, gamma=0.7, critic_lr=1e-3,
                            recovery_lr=1e-3, tau=0.02)
    learner = SafeExploreLearner(SafetyCritic(1, 1, 64), RecoveryPolicy(1, 1, 64), cfg, seed)
    for ep in episodes:
        learner.replay.add_episode(ep)
    learner.update(updates)
    return learner


@pytest.fixture(scope="module")
def wall_learner() -> SafeExploreLearner:
    torch.set_num_threads(1)
    return train_wall_critic(0.3, wall_episodes(600, np.random.default_rng(0)))


def q_at(critic: SafetyCritic, xs: np.ndarray, a: float) -> np.ndarray:
    with torch.no_grad():
        feat = torch.as_tensor(np.asarray(xs, np.float32)[:, None])
        return critic(feat, torch.full((len(xs), 1), float(a))).numpy()


def test_critic_ranks_wall_crossing_above_retreat(wall_learner: SafeExploreLearner) -> None:
    """next to the wall, the chunk that crosses it scores above the one that backs off."""
    xs = np.linspace(0.65, 0.78, 8)
    unsafe, safe = q_at(wall_learner.critic, xs, 1.0), q_at(wall_learner.critic, xs, -1.0)
    assert np.all(unsafe > safe + 0.3), (unsafe, safe)
    assert unsafe.min() > 0.6
    far = q_at(wall_learner.critic, np.linspace(-0.9, -0.2, 8), 0.0)
    assert far.max() < 0.2, far


def test_recovery_backs_away_from_wall(wall_learner: SafeExploreLearner) -> None:
    """trained through the critic, recovery moves away from the wall and lowers Q_C."""
    xs = torch.as_tensor(np.linspace(0.65, 0.78, 8, dtype=np.float32)[:, None])
    rec = wall_learner.recovery.act(xs)
    assert np.all(rec < 0.0), rec
    with torch.no_grad():
        assert torch.all(wall_learner.critic(xs, torch.as_tensor(rec)) < wall_learner.critic(xs, torch.ones(8, 1)))


def test_conservative_term_raises_ood_actions() -> None:
    """with data only in |a| <= 0.3, the conservative critic rates unseen |a| = 1 riskier
    than the plain TD critic (alpha = 0) trained on the same data and seed."""
    episodes = wall_episodes(400, np.random.default_rng(1), -0.3, 0.3)
    plain = train_wall_critic(0.0, episodes, updates=800, seed=3).critic
    cons = train_wall_critic(1.0, episodes, updates=800, seed=3).critic
    xs = np.linspace(-0.8, 0.2, 11)  # one step from here is safe for every action
    for a in (-1.0, 1.0):
        assert q_at(cons, xs, a).mean() > q_at(plain, xs, a).mean() + 0.05
    assert q_at(cons, xs, -1.0).mean() > q_at(cons, xs, 0.0).mean()


def test_td_target_pessimistic_and_absorbing() -> None:
    critic = SafetyCritic(2, 3, 16)
    with torch.no_grad():
        critic.t2[-1].bias.fill_(5.0)  # second target head says "violation almost surely"
    from safetwin.train.safety_critic import CriticBatch

    b = CriticBatch(feat=torch.zeros(3, 2), act=torch.zeros(3, 3), violation=torch.tensor([1.0, 0.0, 0.0]),
                    next_feat=torch.zeros(3, 2), next_act=torch.zeros(3, 3),
                    terminated=torch.tensor([0.0, 0.0, 1.0]))
    y = td_target(critic, b, gamma=0.5)
    assert y[0].item() == pytest.approx(1.0)
    assert y[1].item() == pytest.approx(0.5 * torch.sigmoid(torch.tensor(5.0)).item(), rel=0.05)
    assert y[2].item() == pytest.approx(0.0)


def test_violation_within_horizon_counts_env_steps() -> None:
    viol = np.array([0, 0, 0, 1, 0], float)
    n_steps = np.array([4, 4, 4, 4, 4])
    assert violation_within(viol, n_steps, 5).tolist() == [False, False, True, True, False]
    assert violation_within(viol, n_steps, 13).tolist() == [True, True, True, True, False]


def test_roc_auc_known_values() -> None:
    labels = np.array([0, 0, 1, 1], bool)
    assert roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), labels) == 1.0
    assert roc_auc(np.array([0.9, 0.8, 0.2, 0.1]), labels) == 0.0
    assert roc_auc(np.full(4, 0.5), labels) == 0.5
    assert roc_auc(np.array([0.1, 0.5, 0.5, 0.9]), labels) == pytest.approx(0.875)
    assert np.isnan(roc_auc(np.array([0.1, 0.2]), np.array([0, 0], bool)))


def test_calibration_meets_target_fnr_on_heldout(wall_learner: SafeExploreLearner) -> None:
    """epsilon calibrated on held-out point-mass episodes keeps the FNR at the target."""
    heldout = wall_episodes(200, np.random.default_rng(7))
    scores, labels = episode_scores(wall_learner.critic, heldout, horizon_steps=1)
    cal = calibrate_epsilon(scores, labels, target_fnr=0.1, horizon_steps=1)
    assert cal.fnr <= 0.1 and cal.n_pos > 20
    assert ((scores[labels] <= cal.epsilon).mean()) == pytest.approx(cal.fnr)
    assert cal.auc > 0.95
    with pytest.raises(ValueError, match="no violation"):
        calibrate_epsilon(scores[~labels], labels[~labels], 0.1, 1)
