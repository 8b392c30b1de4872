"""PPO-Lagrangian fine-tuning of a VLA policy in the twin (a constrained MDP), CleanRL style.

One iteration, top to bottom:

1. rollout: ``num_envs`` vector envs, ``rollout_decisions`` decisions each; a decision emits a
   chunk of k actions that :class:`~safetwin.train.envs.ChunkedEnv` executes step by step,
   summing discounted rewards and costs into one transition;
2. bootstrap: critic values of final observations of truncated episodes and of the last obs;
3. the Lagrange multiplier is updated from the mean episode cost of the rollout vs the cost
   limit (the scene's ``safety.cost_limit``), BEFORE the policy update;
4. GAE separately for reward and cost; advantage ``(A_R - lambda A_C) / (1 + lambda)``;
5. PPO update: clipped surrogate, entropy bonus, value losses (reward and cost critics,
   asymmetric: they see the privileged twin state), a decaying BC regulariser toward the
   pre-trained policy, optionally constrained self-imitation of the learner's own successful
   safe episodes (:mod:`safetwin.train.self_imitation`), gradient clipping, KL early stop;
6. logging (metrics.jsonl, TensorBoard, tqdm) and checkpoints every ``checkpoint_every``
   iterations (:mod:`safetwin.train.ppo_state`).

With ``cfg.safe_explore.enabled`` (:mod:`safetwin.train.safe_explore`) a conservative safety
critic, pre-trained offline, screens every proposed chunk before it reaches the envs and a
recovery policy acts when no proposal passes; the PPO buffer keeps the proposals (Recovery RL),
the critic's replay keeps what was executed, and both critic and recovery are updated after
each PPO update and saved next to the policy (``checkpoints/safe_explore.safetensors``).
``safety/train_violations`` is the cumulative cost of all finished training episodes.

Envs are reset with seed ``seed + 7919 * iteration`` at the start of every checkpoint interval,
so a run resumed from a checkpoint continues identically to an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from safetwin.safety.runio import ConfigError, JsonlWriter

from .buffer import RolloutBuffer
from .config import TrainConfig
from .envs import (
    COST_CATEGORIES,
    done_episode_outcomes,
    done_episode_stats,
    info_field,
    make_env_fn,
    make_vector_env,
)
from .lagrange import make_lagrange
from .policy import VLAPolicy, obs_slice
from .ppo_state import PPOState, load_latest, save_iteration, truncate_metrics
from .safe_explore import SafeExplorer
from .safe_explore_io import FILE_NAME as SAFE_EXPLORE_FILE
from .self_imitation import SelfImitationReplay, make_replay, self_imitation_loss

logger = logging.getLogger(__name__)

Callback = Callable[[dict[str, Any]], bool]


def _values(policy: VLAPolicy, obs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    v_r, v_c = policy.values(obs, obs["privileged"])
    return v_r.numpy(), v_c.numpy()


def _final_obs_batch(infos: dict[str, Any], idx: np.ndarray) -> dict[str, Any]:
    finals = [infos["final_obs"][i] for i in idx]
    batch = {key: np.stack([np.asarray(f[key]) for f in finals]) for key in finals[0] if key != "instruction"}
    batch["instruction"] = [str(f["instruction"]) for f in finals]
    return batch


def _propose(policy: VLAPolicy, obs: dict[str, Any],
             explorer: SafeExplorer | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(proposed chunk, its logp, executed chunk, extra cost); the screen decides with safe explore."""
    if explorer is None:
        chunk, logp = policy.act(obs)
        return chunk.numpy(), logp.numpy(), chunk.numpy(), np.zeros(len(logp))
    screened = explorer.act(policy, obs)
    return screened.proposed, screened.logp, screened.executed, explorer.extra_cost()


def collect_rollout(policy: VLAPolicy, envs: Any, obs: dict[str, Any], buf: RolloutBuffer,
                    episodes: list[dict[str, float]],
                    explorer: SafeExplorer | None = None,
                    replay: SelfImitationReplay | None = None) -> tuple[dict[str, Any], int]:
    """Fill ``buf`` with one rollout from ``obs``; returns (next obs, env steps executed).

    With ``explorer``, the envs execute the screened chunk and ``buf`` stores the proposal.
    With ``replay``, each executed chunk is recorded and finished episodes are offered to it.
    """
    n_env_steps = 0
    with torch.no_grad():
        v_r, v_c = _values(policy, obs)
        for t in range(buf.T):
            chunk, logp, executed, extra_cost = _propose(policy, obs, explorer)
            next_obs, reward, term, trunc, infos = envs.step(executed)
            cost = info_field(infos, "cost_sum", buf.N) + extra_cost
            if explorer is not None:
                explorer.observe(infos, term, trunc)
            discount = info_field(infos, "discount", buf.N)
            n_env_steps += int(info_field(infos, "n_steps", buf.N).sum())
            if replay is not None:
                replay.record(obs, executed)
                replay.end_episodes(*done_episode_outcomes(infos, buf.N))
            nv_r, nv_c = _values(policy, next_obs)
            boot_r, boot_c = nv_r.copy(), nv_c.copy()
            done_idx = np.flatnonzero(term | trunc)
            if len(done_idx):  # next_obs of a finished env is the reset obs: value the final obs
                fr, fc = _values(policy, _final_obs_batch(infos, done_idx))
                boot_r[done_idx], boot_c[done_idx] = fr, fc
            buf.add(obs, chunk, logp, reward, cost, discount, term, trunc, v_r, v_c)
            buf.set_next_values(t, boot_r, boot_c)
            episodes.extend(done_episode_stats(infos))
            obs, v_r, v_c = next_obs, nv_r, nv_c
    return obs, n_env_steps


def _advantages(buf: RolloutBuffer, gae_lambda: float, lam: float) -> dict[str, np.ndarray]:
    adv = buf.compute_advantages(gae_lambda)
    a_r = (adv["adv_r"] - adv["adv_r"].mean()) / (adv["adv_r"].std() + 1e-8)
    a_c = adv["adv_c"] - adv["adv_c"].mean()
    adv["adv"] = ((a_r - lam * a_c) / (1.0 + lam)).astype(np.float32)
    return adv


@torch.no_grad()
def _reference_chunks(ref: VLAPolicy, batch: dict[str, Any], size: int = 256) -> np.ndarray:
    obs = {k[4:]: v for k, v in batch.items() if k.startswith("obs/")}
    out = [ref.mean_chunk(obs_slice(obs, slice(i, i + size))).numpy()
           for i in range(0, len(batch["logp"]), size)]
    return np.concatenate(out)


def make_optimizer(policy: VLAPolicy, cfg: TrainConfig) -> torch.optim.Adam:
    """Adam with two groups: the actor at ``cfg.lr`` (group 0), the critics at ``cfg.critic_lr`` (group 1)."""
    critic = [p for p in policy.critic_parameters() if p.requires_grad]
    ids = {id(p) for p in critic}
    actor = [p for p in policy.parameters() if p.requires_grad and id(p) not in ids]
    return torch.optim.Adam([{"params": actor, "lr": cfg.lr}, {"params": critic, "lr": cfg.critic_lr}], eps=1e-5)


def _value_loss(policy: VLAPolicy, obs: dict[str, Any], mb: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    v_r, v_c = policy.values(obs, obs["privileged"])
    return (0.5 * (v_r - torch.as_tensor(mb["ret_r"])).pow(2).mean(),
            0.5 * (v_c - torch.as_tensor(mb["ret_c"])).pow(2).mean())


def _step(optim: torch.optim.Optimizer, loss: torch.Tensor, max_grad_norm: float) -> None:
    """One Adam step; actor and critic gradients are clipped separately, so large value-loss
    gradients early in fine-tuning do not shrink the actor's step."""
    optim.zero_grad()
    loss.backward()
    for group in optim.param_groups:
        nn.utils.clip_grad_norm_(group["params"], max_grad_norm)
    optim.step()


def ppo_update(policy: VLAPolicy, optim: torch.optim.Optimizer, batch: dict[str, Any],
               cfg: TrainConfig, bc_coef: float, rng: np.random.Generator,
               critic_only: bool = False, replay: SelfImitationReplay | None = None) -> dict[str, float]:
    """Clipped-surrogate PPO epochs over one rollout batch; returns mean losses.

    ``critic_only`` (the warm-up): fit the reward and cost critics only; the actor is not stepped.
    ``replay``: add ``cfg.self_imitation_coef`` x the self-imitation loss on a replay minibatch the
    size of a PPO minibatch, once the replay holds that many decisions.
    """
    stats: dict[str, list[float]] = {k: [] for k in ("policy_loss", "value_loss_reward", "value_loss_cost",
                                                     "entropy", "approx_kl", "clipfrac", "bc_reg",
                                                     "self_imitation")}
    for _epoch in range(cfg.update_epochs):
        epoch_kl = []
        for obs, mb in RolloutBuffer.minibatches(batch, cfg.num_minibatches, rng):
            v_loss_r, v_loss_c = _value_loss(policy, obs, mb)
            stats["value_loss_reward"].append(v_loss_r.item())
            stats["value_loss_cost"].append(v_loss_c.item())
            if critic_only:
                _step(optim, cfg.vf_coef * (v_loss_r + v_loss_c), cfg.max_grad_norm)
                continue
            logp, entropy, mode = policy.evaluate_with_mean(obs, torch.as_tensor(mb["chunks"]))
            log_ratio = logp - torch.as_tensor(mb["logp"])
            ratio = log_ratio.exp()
            with torch.no_grad():
                approx_kl = ((ratio - 1) - log_ratio).mean().item()
                clipfrac = ((ratio - 1.0).abs() > cfg.clip_coef).float().mean().item()
            epoch_kl.append(approx_kl)
            if cfg.target_kl > 0 and approx_kl > 1.5 * cfg.target_kl:
                logger.debug("KL early stop before a step (kl %.4f)", approx_kl)
                break
            adv = torch.as_tensor(mb["adv"])
            pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()
            bc_reg = (mode - torch.as_tensor(mb["ref_chunks"])).pow(2).mean()
            loss = (pg_loss - cfg.ent_coef * entropy.mean() + cfg.vf_coef * (v_loss_r + v_loss_c)
                    + bc_coef * bc_reg)
            if replay is not None and len(replay) >= len(adv):
                sil = self_imitation_loss(policy, replay, len(adv), rng, cfg.bc_shift, cfg.bc_loss)
                loss = loss + cfg.self_imitation_coef * sil
                stats["self_imitation"].append(sil.item())
            _step(optim, loss, cfg.max_grad_norm)
            for key, val in (("policy_loss", pg_loss.item()), ("entropy", entropy.mean().item()),
                             ("approx_kl", approx_kl), ("clipfrac", clipfrac), ("bc_reg", bc_reg.item())):
                stats[key].append(val)
        if epoch_kl and cfg.target_kl > 0 and float(np.mean(epoch_kl)) > cfg.target_kl:
            logger.debug("KL early stop after epoch %d (kl %.4f)", _epoch, np.mean(epoch_kl))
            break
    return {f"losses/{k}": float(np.mean(v)) for k, v in stats.items() if v}


def scheduled_log_std(cfg: TrainConfig, global_step: int) -> float | None:
    """Exploration log std of the rollout that starts at ``global_step`` (None: PPO learns it).

    Linear in env steps from ``cfg.finetune_log_std`` to ``cfg.finetune_log_std_end`` at
    ``cfg.total_steps``; a function of the step alone, so a resumed run follows the same schedule.
    """
    if cfg.finetune_log_std_end is None:
        return None
    frac = min(global_step / max(cfg.total_steps, 1), 1.0)
    return cfg.finetune_log_std + frac * (cfg.finetune_log_std_end - cfg.finetune_log_std)


def _scheduled_policy(policy: VLAPolicy, cfg: TrainConfig) -> None:
    """With a log-std schedule the optimiser must not learn the log std: freeze it (before the optimiser)."""
    if cfg.finetune_log_std_end is None:
        return
    log_std = getattr(policy, "log_std", None)
    if not isinstance(log_std, nn.Parameter):
        raise ConfigError(f"train.finetune_log_std_end: {type(policy).__name__} has no state-independent "
                          "log_std parameter to schedule")
    log_std.requires_grad_(False)


def episode_metrics(episodes: list[dict[str, float]], last: dict[str, float]) -> dict[str, float]:
    """Means over the episodes finished in this iteration (the previous values when none did)."""
    if not episodes:
        return dict(last)
    mean = {key: float(np.mean([e[key] for e in episodes])) for key in episodes[0]}
    out = {"charts/episode_return": mean["return"], "charts/success_rate": mean["success"],
           "charts/episode_length": mean["length"], "safety/episode_cost": mean["cost"],
           "charts/episodes": float(len(episodes))}
    out.update({f"safety/costs/{c}": mean.get(f"cost_{c}", 0.0) for c in COST_CATEGORIES})
    return out


def train_ppo_lag(cfg: TrainConfig, policy: VLAPolicy, ref_policy: VLAPolicy, run_dir: Path,
                  scene_info: dict[str, Any], resume: bool = False,
                  callback: Callback | None = None) -> PPOState:
    """Run PPO-Lagrangian until ``cfg.total_steps`` env steps; returns the final state.

    ``scene_info``: ``{"name", "path", "safety_spec_sha256", "cost_limit"}``. ``callback`` gets
    each iteration's metrics record and may return False to stop (after a checkpoint).
    """
    # ---------------------------------------------------------------- setup (boilerplate)
    ckpt_dir = run_dir / "checkpoints"
    cost_limit = cfg.cost_limit if cfg.cost_limit >= 0 else float(scene_info["cost_limit"])
    lagrange = make_lagrange(cfg.lagrange, cost_limit, **cfg.lagrange_kwargs()) if cfg.lagrange != "none" else None
    _scheduled_policy(policy, cfg)
    optim = make_optimizer(policy, cfg)
    torch.manual_seed(cfg.seed)
    state = PPOState(rng=np.random.default_rng(cfg.seed))
    envs = make_vector_env(cfg.env_id, cfg.num_envs, cfg.chunk_len, cfg.gamma, cfg.env_kwargs(),
                           asynchronous=cfg.vector == "async")
    replay = make_replay(cfg, envs.single_observation_space)
    if resume:
        state = load_latest(ckpt_dir, policy, ref_policy, optim, lagrange, scene_info, replay)
        truncate_metrics(run_dir / "metrics.jsonl", state.iteration)
    buf = RolloutBuffer(cfg.rollout_decisions, cfg.num_envs,
                        {k: (s.shape, s.dtype) for k, s in envs.single_observation_space.spaces.items()
                         if k != "instruction"}, (cfg.chunk_len, 7))
    metrics_log = JsonlWriter(run_dir / "metrics.jsonl")
    writer = _tensorboard(run_dir, cfg, state.global_step)
    bar = tqdm(total=cfg.total_steps, initial=min(state.global_step, cfg.total_steps), unit="step",
               desc="PPO-Lag", dynamic_ncols=True, disable=not cfg.progress)
    ref_policy.eval()
    explorer = _safe_explorer(cfg, policy, ckpt_dir, resume)
    obs: dict[str, Any] = {}
    try:
        while state.global_step < cfg.total_steps:
            it = state.iteration
            t0 = time.perf_counter()
            if it % cfg.checkpoint_every == 0 or not obs:
                obs, _ = envs.reset(seed=cfg.seed + 7919 * it)
                if replay is not None:
                    replay.drop_pending()
            # ---------------------------------------------------------- rollout
            policy.eval()
            log_std = scheduled_log_std(cfg, state.global_step)
            if log_std is not None:
                with torch.no_grad():
                    policy.log_std.fill_(log_std)
            episodes: list[dict[str, float]] = []
            buf.reset()
            obs, n_steps = collect_rollout(policy, envs, obs, buf, episodes, explorer, replay)
            state.global_step += n_steps
            # ---------------------------------------------------------- lambda BEFORE the policy update
            ep = episode_metrics(episodes, state.last_episode_metrics)
            ep["safety/train_violations"] = (state.last_episode_metrics.get("safety/train_violations", 0.0)
                                             + float(sum(e["cost"] for e in episodes)))
            if lagrange is not None and episodes:
                state.lam = lagrange.update(ep["safety/episode_cost"])
            # ---------------------------------------------------------- GAE (reward and cost)
            adv = _advantages(buf, cfg.gae_lambda, state.lam)
            batch = buf.flat({k: adv[k] for k in ("adv", "ret_r", "ret_c")})
            batch["ref_chunks"] = _reference_chunks(ref_policy, batch)
            # ---------------------------------------------------------- PPO update
            policy.train()
            warmup = it < cfg.critic_warmup  # critics only: the actor waits for fitted baselines
            bc_coef = cfg.bc_reg_coef * cfg.bc_reg_decay ** max(it - cfg.critic_warmup, 0)
            losses = ppo_update(policy, optim, batch, cfg, bc_coef, state.rng, critic_only=warmup, replay=replay)
            if policy.cfg.privileged_dim:  # critic input statistics; the actor's stay as after BC
                policy.priv_rms.update(torch.as_tensor(batch["obs/privileged"], dtype=torch.float64))
            safe_metrics = explorer.end_iteration() if explorer is not None else {}
            # ---------------------------------------------------------- logging
            state.iteration += 1
            state.last_episode_metrics = ep
            sps = n_steps / max(time.perf_counter() - t0, 1e-9)
            record = {"step": state.global_step, "iteration": state.iteration, **ep, **losses,
                      "charts/samples_per_s": sps, "charts/action_log_std": _mean_log_std(policy),
                      "safety/lambda": state.lam,
                      "safety/cost_limit": cost_limit, "losses/bc_reg_coef": bc_coef, **safe_metrics}
            if replay is not None:
                record.update({"charts/self_imitation_decisions": len(replay),
                               "charts/self_imitation_episodes": replay.episodes})
            metrics_log.write(record)
            for key, value in record.items():
                if key not in ("step", "iteration") and value is not None:
                    writer.add_scalar(key, value, state.global_step)
            bar.update(min(n_steps, max(cfg.total_steps - bar.n, 0)))
            bar.set_postfix(sps=f"{sps:.0f}", success=f"{ep.get('charts/success_rate', 0.0):.2f}",
                            cost=f"{ep.get('safety/episode_cost', 0.0):.2f}", lam=f"{state.lam:.3f}")
            stop = callback is not None and callback(record) is False
            done = stop or state.global_step >= cfg.total_steps
            # ---------------------------------------------------------- checkpoint
            if done or state.iteration % cfg.checkpoint_every == 0:
                folder = save_iteration(ckpt_dir, state, policy, ref_policy, optim, lagrange, cfg, scene_info,
                                        replay)
                if explorer is not None:  # next to each policy checkpoint (resume, deploy)
                    for where in (folder, ckpt_dir):
                        explorer.save(where / SAFE_EXPLORE_FILE, scene_info["safety_spec_sha256"],
                                      {"step": state.global_step})
            if stop:
                break
    finally:
        bar.close()
        writer.close()
        metrics_log.close()
        envs.close()
    return state


def _mean_log_std(policy: VLAPolicy) -> float | None:
    log_std = getattr(policy, "log_std", None)
    return float(log_std.detach().mean()) if isinstance(log_std, torch.Tensor) else None


def _safe_explorer(cfg: TrainConfig, policy: VLAPolicy, ckpt_dir: Path, resume: bool) -> SafeExplorer | None:
    """The safe-exploration screen: pre-trained offline in the twin, or restored on resume."""
    se = cfg.safe_explore
    if not se.enabled:
        return None
    env_fn = make_env_fn(cfg.env_id, cfg.chunk_len, cfg.gamma, cfg.env_kwargs())
    kinematics = _robot_kinematics(env_fn) if se.ee_features else None
    if resume:
        latest = json.loads((ckpt_dir / "latest.json").read_text(encoding="utf-8"))
        return SafeExplorer.from_checkpoint(se, ckpt_dir / latest["dir"] / SAFE_EXPLORE_FILE, policy, cfg.seed,
                                            kinematics)
    explorer = SafeExplorer(se, policy, cfg.seed, kinematics)
    stats = explorer.pretrain(env_fn, policy, progress=cfg.progress)
    logger.info("safe exploration ready: %s", {k: round(v, 4) for k, v in stats.items()})
    return explorer


def _robot_kinematics(env_fn: Callable[[], Any]) -> Any:
    """The env's robot kinematics (the twin's ``robot_model``), None for an env without one."""
    env = env_fn()
    try:
        return getattr(env.unwrapped, "robot_model", None)
    finally:
        env.close()


def _tensorboard(run_dir: Path, cfg: TrainConfig, step: int) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run_dir / "tb"), purge_step=step if step > 0 else None)
