"""``TrainConfig``: every option of ``safetwin train`` (BC pre-training + PPO-Lagrangian)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from safetwin.safety.runio import ConfigError

from .bc import LOSSES
from .safe_explore_config import SafeExploreConfig


@dataclass
class TrainConfig:
    """Behaviour cloning on scripted-expert demos, then PPO-Lagrangian fine-tuning.

    scene: bundled scene name or path to a scene YAML (its safety block gives the cost limit).
    env_id: gymnasium id of the twin env.
    domain_randomization: sample the twin's randomized parameters at every reset.
    run_root: folder holding the run directories.
    run_id: run directory name under run_root (empty: a UTC timestamp).
    resume: continue run_id from its latest checkpoint (optimisers, lambda, RNG restored).
    seed: seed of torch, numpy and the env resets.
    pretrained: policy checkpoint to start from (skips demos and BC); empty: do BC first.
    policy: "compact" (fine-tune the whole VLA) or "residual" (frozen BC base + bounded residual).
    chunk_len: k, actions per decision.
    wrist_camera: also record and feed the scene's wrist camera (``wrist_image``) to the policy; it
        shows the pushed object close up, where the 64 px front view gives it a few pixels.
    demo_episodes: scripted-expert episodes recorded for BC.
    demo_noise: std of the Gaussian noise added to the expert's executed motion while recording
        (normalised action units; the clean action is the label; 0: clean demos).
    bc_shift: random-shift image augmentation during BC, in pixels (0: none).
    bc_epochs: passes over the demo dataset.
    bc_batch_size: BC minibatch size (decisions).
    bc_lr: BC Adam learning rate.
    bc_loss: per-component BC loss on the action chunk, ``"mse"`` or ``"l1"``.
    total_steps: PPO budget in env steps (0: BC only).
    finetune_log_std: log std (pre-tanh) the compact policy starts PPO with, in [-5, 0]; small
        values keep exploration, and so the cost of exploring, near the safe BC policy. The
        multiplier sees the cost of the sampled policy, not of the deterministic one that is
        evaluated and deployed. On tabletop_push (wrist camera, one fine-tuned policy, 50
        episodes) sampling at -3 gave success 0.50 and cost 3.80 where the deterministic policy
        gave 0.68 and 0.52; at -4 sampling gave 0.72 and 0.42. Fine-tuning at -4 from the same BC
        policy kept the multiplier near 1.2 but learnt less: 0.60 and 0.60, against 0.68 and 0.52 at -3.
    finetune_log_std_end: log std at total_steps, annealed linearly from finetune_log_std (None: PPO learns it).
        In [-5, 0]; the scheduled log std (compact or residual policy) is not learnt. The sampled
        policy, whose cost the multiplier sees, thus converges to the deterministic one that is
        evaluated and deployed. Not the default: on tabletop_push (wrist camera, 200 evaluation
        episodes) -3 to -4.5 raised success by 3.5 and 1 points on seeds 0 and 1, but seed 2
        ended at cost 3.8 against 2.05 without it (limit 2). The exploring policy's extra cost is
        a margin for the deterministic one; annealing spends it while the multiplier still
        oscillates.
    num_envs: parallel envs.
    vector: "sync" (SyncVectorEnv) or "async" (AsyncVectorEnv, shared_memory=False).
    rollout_decisions: decisions per env per iteration.
    gamma: discount per env step.
    gae_lambda: GAE lambda.
    lr: PPO Adam learning rate. Small on purpose: fine-tuning starts from a good BC policy, and
        Adam's fixed step size turns noisy policy gradients into a drift away from it (one
        reach_avoid run from the bench's BC checkpoint collapsed to 14% success and cost 80 at 1e-4).
    critic_lr: Adam learning rate of the reward and cost critics. Larger than ``lr``: the critics
        start untrained and must fit the returns quickly, while the actor starts from BC and must
        not drift; the two groups are also gradient-clipped separately.
    critic_warmup: first iterations that update only the critics (the actor is not stepped),
        so the first policy gradients use fitted baselines, not an untrained critic's noise. On
        tabletop_push from one BC policy (success 0.06, 120k steps, one seed, 50 evaluation
        episodes) the fine-tuned success was 0.22 with critic_lr 3e-4 and 5 warm-up iterations,
        0.14 with 3e-4 and none (the actor and critics had shared ``lr`` and one gradient clip
        before, which gave 0.12 on the bench).
    update_epochs: PPO epochs per iteration.
    num_minibatches: minibatches per epoch.
    clip_coef: PPO ratio clip.
    ent_coef: entropy bonus coefficient.
    vf_coef: value-loss coefficient (reward and cost critics).
    max_grad_norm: global gradient-norm clip.
    target_kl: stop the epochs when the approximate KL exceeds this (0: never).
    bc_reg_coef: initial weight of the BC regulariser toward the pre-trained policy.
    bc_reg_decay: its per-iteration decay factor.
    self_imitation_coef: weight of the constrained self-imitation loss in the PPO update (0: off).
        The loss: ``bc_loss`` of the deterministic chunk to the executed chunks of the learner's own
        successful training episodes whose cost is at most ``self_imitation_max_cost``, replayed
        across iterations (:mod:`safetwin.train.self_imitation`).
    self_imitation_capacity: decisions the self-imitation replay keeps (the newest).
    self_imitation_max_cost: largest episode cost an imitated episode may have (negative: no cost
        filter, for unconstrained PPO).
    lagrange: multiplier rule "adam" (PPOLag), "pid" (CPPOPID) or "none" (unconstrained PPO).
    lagrange_init: initial multiplier (a warm start: the BC policy is trusted to be safe, so
        fine-tuning starts cost-averse and lambda relaxes while the cost stays under the limit).
    lagrange_lr: Adam learning rate of the multiplier (rule "adam").
    cost_limit: CMDP budget per episode; negative: the scene's safety.cost_limit.
    checkpoint_every: iterations between checkpoints (env resets align with them).
    progress: show tqdm progress bars.
    safe_explore: conservative safety critic + screening + recovery policy (``enabled``, off by
        default; see :class:`~safetwin.train.safe_explore_config.SafeExploreConfig`).
    """

    scene: str = "tabletop_push"
    env_id: str = "safetwin/Twin-v0"
    domain_randomization: bool = True
    run_root: str = "runs/train"
    run_id: str = ""
    resume: bool = False
    seed: int = 0
    pretrained: str = ""
    policy: str = "compact"
    chunk_len: int = 4
    wrist_camera: bool = False
    demo_episodes: int = 30
    demo_noise: float = 0.05
    bc_shift: int = 4
    bc_epochs: int = 30
    bc_batch_size: int = 64
    bc_lr: float = 1e-3
    bc_loss: str = "mse"
    total_steps: int = 20000
    finetune_log_std: float = -3.0
    finetune_log_std_end: float | None = None
    num_envs: int = 4
    vector: str = "sync"
    rollout_decisions: int = 64
    gamma: float = 0.99
    gae_lambda: float = 0.95
    lr: float = 3e-5
    critic_lr: float = 3e-4
    critic_warmup: int = 5
    update_epochs: int = 4
    num_minibatches: int = 4
    clip_coef: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    target_kl: float = 0.02
    bc_reg_coef: float = 5.0
    bc_reg_decay: float = 0.99
    self_imitation_coef: float = 0.0
    self_imitation_capacity: int = 4096
    self_imitation_max_cost: float = 0.0
    lagrange: str = "adam"
    lagrange_init: float = 1.0
    lagrange_lr: float = 0.035
    cost_limit: float = -1.0
    checkpoint_every: int = 5
    progress: bool = True
    safe_explore: SafeExploreConfig = field(default_factory=SafeExploreConfig)

    def __post_init__(self) -> None:
        choices = {"policy": ("compact", "residual"), "vector": ("sync", "async"),
                   "lagrange": ("adam", "pid", "none"), "bc_loss": tuple(LOSSES)}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"train.{name}: {getattr(self, name)!r} is not one of {list(allowed)}")
        self._check_ranges()
        if self.num_minibatches > self.num_envs * self.rollout_decisions:
            raise ConfigError("train.num_minibatches exceeds the transitions per iteration "
                              f"({self.num_envs} x {self.rollout_decisions})")
        if not self.pretrained and self.demo_episodes < 1 and not self.resume:
            raise ConfigError("train.demo_episodes must be >= 1 when no pretrained checkpoint is given")
        if self.resume and not self.run_id:
            raise ConfigError("train.resume needs train.run_id (the run to continue)")

    def _check_ranges(self) -> None:
        """Each numeric option in its documented range (ConfigError naming the option)."""
        positive = ("chunk_len", "bc_epochs", "bc_batch_size", "num_envs", "rollout_decisions",
                    "update_epochs", "num_minibatches", "checkpoint_every", "self_imitation_capacity")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("demo_episodes", "demo_noise", "bc_shift", "total_steps", "ent_coef", "target_kl", "bc_reg_coef",
                     "lagrange_init", "vf_coef", "critic_warmup", "self_imitation_coef"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("gamma", "gae_lambda", "bc_reg_decay"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"train.{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("bc_lr", "lr", "critic_lr", "clip_coef", "max_grad_norm", "lagrange_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"train.{name} must be > 0, got {getattr(self, name)}")
        for name in ("finetune_log_std", "finetune_log_std_end"):
            value = getattr(self, name)
            if value is not None and not -5.0 <= value <= 0.0:
                raise ConfigError(f"train.{name} must be in [-5, 0], got {value}")

    def env_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``gymnasium.make(env_id, ...)``."""
        kwargs: dict[str, Any] = {"scene": self.scene, "randomize": self.domain_randomization}
        if self.wrist_camera:
            kwargs["wrist_camera"] = True
        return kwargs

    def lagrange_kwargs(self) -> dict[str, Any]:
        if self.lagrange == "adam":
            return {"init": self.lagrange_init, "lr": self.lagrange_lr}
        return {"init": self.lagrange_init}
