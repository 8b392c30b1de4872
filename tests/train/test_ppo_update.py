"""The PPO update's optimiser: actor and critic groups with their own learning rates, the critic
warm-up (critics fitted, actor untouched), and separate gradient clipping of the two groups."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from safetwin.safety.runio import ConfigError
from safetwin.train.config import TrainConfig
from safetwin.train.policy import CompactVLA, PolicyConfig
from safetwin.train.ppo_lag import make_optimizer, ppo_update

CFG = PolicyConfig(proprio_dim=4, privileged_dim=9, chunk_len=2)


def flat_batch(policy: CompactVLA, n: int = 16, seed: int = 0) -> dict:
    """A rollout batch as ``RolloutBuffer.flat`` lays it out, with returns far from the values."""
    rng = np.random.default_rng(seed)
    obs = {"image": rng.integers(0, 255, (n, 64, 64, 3), dtype=np.uint8),
           "proprio": rng.normal(size=(n, 4)).astype(np.float32),
           "privileged": rng.normal(size=(n, 9)).astype(np.float32),
           "instruction": np.array(["reach the green target"] * n)}
    with torch.no_grad():
        chunks, logp = policy.act({**obs, "instruction": list(obs["instruction"])})
    batch = {f"obs/{k}": v for k, v in obs.items()}
    batch.update(chunks=chunks.numpy(), logp=logp.numpy(), adv=rng.normal(size=n).astype(np.float32),
                 ret_r=np.full(n, 5.0, np.float32), ret_c=np.full(n, 2.0, np.float32),
                 ref_chunks=chunks.numpy())
    return batch


def snapshot(params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def changed(before: list[torch.Tensor], params: list[torch.nn.Parameter]) -> bool:
    return any(not torch.equal(a, p.detach()) for a, p in zip(before, params, strict=True))


def test_optimizer_groups_split_actor_and_critic() -> None:
    policy = CompactVLA(CFG)
    optim = make_optimizer(policy, TrainConfig(lr=1e-5, critic_lr=2e-3))
    actor, critic = (g["params"] for g in optim.param_groups)
    assert [g["lr"] for g in optim.param_groups] == [1e-5, 2e-3]
    assert {id(p) for p in critic} == {id(p) for p in policy.critic_parameters()}
    assert not {id(p) for p in actor} & {id(p) for p in critic}
    trainable = {id(p) for p in policy.parameters() if p.requires_grad}
    assert {id(p) for p in actor} | {id(p) for p in critic} == trainable


def test_critic_warmup_fits_values_and_leaves_the_actor() -> None:
    torch.manual_seed(0)
    policy = CompactVLA(CFG)
    cfg = TrainConfig(update_epochs=20, num_minibatches=2, critic_lr=1e-2, target_kl=0.0)
    optim = make_optimizer(policy, cfg)
    batch = flat_batch(policy)
    actor, critic = (g["params"] for g in optim.param_groups)
    a0, c0 = snapshot(actor), snapshot(critic)
    losses = ppo_update(policy, optim, batch, cfg, bc_coef=1.0, rng=np.random.default_rng(0), critic_only=True)
    assert not changed(a0, actor) and changed(c0, critic)
    assert "losses/policy_loss" not in losses
    with torch.no_grad():
        v_r, v_c = policy.values({k[4:]: v for k, v in batch.items() if k.startswith("obs/")},
                                 batch["obs/privileged"])
    assert float((v_r - 5.0).abs().max()) < 1.0 and float((v_c - 2.0).abs().max()) < 1.0  # from ~0 toward 5 and 2


def test_full_update_steps_both_groups() -> None:
    torch.manual_seed(1)
    policy = CompactVLA(CFG)
    cfg = TrainConfig(update_epochs=1, num_minibatches=2, target_kl=0.0)
    optim = make_optimizer(policy, cfg)
    actor, critic = (g["params"] for g in optim.param_groups)
    a0, c0 = snapshot(actor), snapshot(critic)
    losses = ppo_update(policy, optim, flat_batch(policy), cfg, bc_coef=1.0, rng=np.random.default_rng(0))
    assert changed(a0, actor) and changed(c0, critic)
    assert np.isfinite(losses["losses/policy_loss"])


def test_value_gradients_do_not_shrink_the_actor_step() -> None:
    """With one joint clip, a huge value loss would scale the actor's gradient down to nothing;
    clipped per group, the actor moves as far as with a small value loss."""
    steps = []
    for scale in (1.0, 1e6):
        torch.manual_seed(2)
        policy = CompactVLA(CFG)
        cfg = TrainConfig(update_epochs=1, num_minibatches=1, target_kl=0.0, max_grad_norm=1e-3)
        optim = make_optimizer(policy, cfg)
        batch = flat_batch(policy)
        batch["ret_r"] = batch["ret_r"] * scale
        actor = optim.param_groups[0]["params"]
        a0 = snapshot(actor)
        ppo_update(policy, optim, batch, cfg, bc_coef=0.0, rng=np.random.default_rng(0))
        steps.append(sum(float((p.detach() - a).norm()) for a, p in zip(a0, actor, strict=True)))
    assert steps[0] > 0 and steps[1] == pytest.approx(steps[0], rel=1e-4)


def test_bad_critic_settings_refused() -> None:
    with pytest.raises(ConfigError, match="critic_lr"):
        TrainConfig(critic_lr=0.0)
    with pytest.raises(ConfigError, match="critic_warmup"):
        TrainConfig(critic_warmup=-1)
