"""VLA policy: squashed-Gaussian log-probs (numerical change of variables), entropy estimate,
act/evaluate consistency, residual adapter, FiLM conditioning, bad inputs (A1, A2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from safetwin.train.policy import CompactVLA, PolicyConfig, chunk_targets, squashed_entropy, squashed_log_prob
from safetwin.train.residual import ResidualPolicy

CFG = PolicyConfig(proprio_dim=4, privileged_dim=9, chunk_len=3)


def numeric_log_density(a: np.ndarray, mean: np.ndarray, std: np.ndarray, h: float = 1e-5) -> float:
    """log density of tanh(u), u ~ N(mean, std) at ``a`` from CDF differences (per dimension)."""
    hi = norm.cdf((np.arctanh(a + h) - mean) / std)
    lo = norm.cdf((np.arctanh(a - h) - mean) / std)
    return float(np.sum(np.log((hi - lo) / (2 * h))))


def make_obs(b: int = 5, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 255, (b, 64, 64, 3), dtype=np.uint8),
            "proprio": rng.normal(size=(b, 4)).astype(np.float32),
            "privileged": rng.normal(size=(b, 9)).astype(np.float32),
            "instruction": ["reach the green target", "go to the goal"] * (b // 2) + ["reach"] * (b % 2)}


def test_squashed_log_prob_matches_numerical_change_of_variables() -> None:
    rng = np.random.default_rng(1)
    for _ in range(5):
        mean = rng.normal(scale=0.8, size=6)
        log_std = rng.uniform(-1.0, 0.3, size=6)
        u = mean + np.exp(log_std) * rng.normal(size=6)
        a = np.tanh(u)
        ours = squashed_log_prob(torch.tensor(u), torch.tensor(mean), torch.tensor(log_std)).item()
        assert ours == pytest.approx(numeric_log_density(a, mean, np.exp(log_std)), abs=2e-3)


def test_entropy_estimate_matches_monte_carlo() -> None:
    torch.manual_seed(0)
    mean = torch.tensor([0.3, -1.2, 0.0])
    log_std = torch.tensor([-0.5, 0.2, -1.0])
    est = torch.stack([squashed_entropy(mean, log_std) for _ in range(4000)]).mean().item()
    u = mean + log_std.exp() * torch.randn(20000, 3)
    mc = -squashed_log_prob(u, mean, log_std).mean().item()
    assert est == pytest.approx(mc, abs=0.05)
    gauss = (0.5 + 0.5 * math.log(2 * math.pi) + log_std).sum().item()
    assert est < gauss  # squashing into (-1, 1) lowers the entropy


def test_act_and_evaluate_agree_and_shapes() -> None:
    torch.manual_seed(0)
    policy = CompactVLA(CFG)
    obs = make_obs()
    chunk, logp = policy.act(obs)
    assert chunk.shape == (5, 3, 7) and logp.shape == (5,)
    assert chunk.abs().max() < 1.0
    logp2, entropy = policy.evaluate(obs, chunk)
    torch.testing.assert_close(logp2, logp, atol=1e-3, rtol=1e-4)
    assert entropy.shape == (5,)
    v_r, v_c = policy.values(obs, obs["privileged"])
    assert v_r.shape == v_c.shape == (5,)


def test_compact_logp_matches_numerical_density_of_its_distribution() -> None:
    torch.manual_seed(3)
    policy = CompactVLA(PolicyConfig(proprio_dim=4, chunk_len=1, init_log_std=-0.5))
    obs = make_obs(1)
    chunk, _ = policy.act(obs)
    logp, _ = policy.evaluate(obs, chunk)
    mean, log_std, _ = policy._dist_params(obs)
    expected = numeric_log_density(chunk.detach().reshape(-1).double().numpy(), mean.detach().double().numpy()[0],
                                   log_std.detach().exp().double().numpy())
    assert logp.item() == pytest.approx(expected, abs=5e-3)


def test_residual_policy_bounded_and_logp_includes_scale() -> None:
    torch.manual_seed(0)
    base = CompactVLA(CFG)
    res = ResidualPolicy(PolicyConfig(**{**CFG.__dict__, "residual_scale": 0.2}), base)
    obs = make_obs()
    base_chunk = base.act(obs, deterministic=True)[0]
    chunk, logp = res.act(obs)
    assert (chunk - base_chunk).abs().max() <= 0.2 + 1e-6
    logp2, _ = res.evaluate(obs, chunk)
    torch.testing.assert_close(logp2, logp, atol=1e-3, rtol=1e-4)
    mean, log_std, ctx = res._dist_params(obs)
    squashed = ((chunk.detach().reshape(5, -1) - ctx["base"]) / 0.2)[0].double().numpy()
    expected = numeric_log_density(squashed, mean.detach().double().numpy()[0],
                                   log_std.detach().exp().double().numpy()) - 21 * math.log(0.2)
    assert logp[0].item() == pytest.approx(expected, abs=5e-3)
    assert all(not p.requires_grad for p in base.parameters())
    assert not any(n.startswith("base_policy") for n, p in res.named_parameters() if p.requires_grad)


def test_residual_with_external_callable_base() -> None:
    """Any callable obs -> chunk (e.g. a served VLA) works as the frozen base."""
    res = ResidualPolicy(CFG, lambda obs: np.full((len(obs["instruction"]), 3, 7), 0.5, np.float32))
    det = res.act(make_obs(), deterministic=True)[0]
    assert det.shape == (5, 3, 7)
    assert (det - 0.5).abs().max() < 0.05  # near-zero residual at initialisation


def test_film_instruction_changes_actions() -> None:
    torch.manual_seed(0)
    policy = CompactVLA(CFG)
    torch.nn.init.normal_(policy.trunk.film.proj.weight, std=0.5)
    obs = make_obs(2)
    obs["image"][1] = obs["image"][0]
    obs["proprio"][1] = obs["proprio"][0]
    obs["instruction"] = ["push the red block left", "open the drawer"]
    chunk = policy.mean_chunk(obs)
    assert (chunk[0] - chunk[1]).abs().max() > 1e-4


def test_predict_unbatched_and_bad_inputs_a1_a2() -> None:
    """A2: wrong shapes/dtypes are rejected naming the key; A1: non-finite output raises."""
    policy = CompactVLA(CFG)
    one = {k: (v[0] if k != "instruction" else v[0]) for k, v in make_obs(1).items()}
    out = policy.predict(one)
    assert out.shape == (3, 7) and out.dtype == np.float32
    with pytest.raises(ValueError, match="proprio"):
        policy.predict({**one, "proprio": np.zeros(5, np.float32)})
    with pytest.raises(ValueError, match="image"):
        policy.predict({**one, "image": np.zeros((64, 64, 3), np.float32)})
    with torch.no_grad():
        policy.mean_head[-1].bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError):
        policy.predict(one)


def test_chunk_targets_pad_and_mask() -> None:
    actions = np.arange(3 * 7, dtype=np.float32).reshape(3, 7)
    targets, mask = chunk_targets(actions, 4)
    assert targets.shape == (3, 4, 7)
    np.testing.assert_array_equal(targets[1, :2], actions[1:3])
    np.testing.assert_array_equal(targets[2, 3], actions[2])  # padded with the last action
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]])


def test_policy_config_validation() -> None:
    from safetwin.safety.runio import ConfigError

    with pytest.raises(ConfigError, match="chunk_len"):
        PolicyConfig(chunk_len=0)
    with pytest.raises(ConfigError, match="residual_scale"):
        PolicyConfig(residual_scale=0.0)


def test_saturated_policy_logp_is_recoverable_from_chunks() -> None:
    """Even when the head pushes far into tanh saturation (as BC on +-1 expert actions does), the
    log-prob of a stored chunk equals the one at sampling time (PPO ratio stays 1)."""
    torch.manual_seed(0)
    policy = CompactVLA(CFG)
    with torch.no_grad():
        policy.mean_head[-1].bias.fill_(50.0)
    obs = make_obs()
    chunk, logp = policy.act(obs)
    logp2, _ = policy.evaluate(obs, chunk)
    assert (logp2 - logp).abs().max().item() < 0.05
