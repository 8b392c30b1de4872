"""``SafeExploreConfig``: the conservative safety critic, screening and recovery options.

Kept free of torch imports so :mod:`safetwin.train.config` can nest it in ``TrainConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass

from safetwin.safety.runio import ConfigError

RECOVERY_BASES = ("retreat", "policy")
"""Base chunks of a residual recovery (see :mod:`safetwin.train.recovery`)."""


@dataclass
class SafeExploreConfig:
    """Safe exploration after Conservative Safety Critics and Recovery RL (off by default).

    The defaults follow what ``bench-safe-explore`` showed on tabletop_push:
    - **Offline data.** It comes from the policy's own neighbourhood: no random episodes, half
      of them clean, a perturbation of 0.3. Random and strongly perturbed rollouts violate at
      nearly every step, so a critic trained on them calls everything risky and its threshold
      sits near 1.
    - **Screening horizon.** H is 5 steps.
    - **Recovery.** A retreat (1 cm lift, then hold) plus a residual of at most 0.1 per entry,
      held near the retreat (``recovery_action_reg`` 10). One seed from one BC policy, 20k
      steps, 10 % FNR, against 714 training violations for PPO-Lagrangian alone (two torch
      threads): the policy's chunk as the base, residual 0.3, regulariser 1: 735 (two threads);
      on one thread, a retreat with residual 0.3, regulariser 1: 1011; 0.1 and 1: 403; 0.1 and
      10: 339. A residual the critic may pull far finds chunks the critic misjudges: joint-limit,
      keep-out and glass violations of its own.
    - **Threshold.** Calibrated for a 5 % false-negative rate: with the retreat, flagging more
      states costs progress rather than safety (same seed: 181 training violations at 5 %,
      339 at 10 %). The recovery then runs a large share of the steps (43-50 % per seed on
      ``bench-safe-explore``, BC seed 0; 23-59 % before the PPO critic's warm-up).
    - **Rejected proposals.** They cost the task policy 3.0 (``rejection_cost``), so it learns
      to stop proposing what the critic rejects. With 0, screening alone raised the
      violations above the Lagrangian arm's.

    enabled: screen every proposed chunk with the safety critic; recovery acts when none passes.
    offline_episodes: twin episodes collected before PPO to pre-train critic and recovery
        (perturbed-policy and random-policy rollouts under domain randomization).
    random_fraction: share of the offline episodes driven by uniformly random chunks (the rest
        are the pre-trained policy with Gaussian perturbation ``perturb_std`` on its chunk).
    clean_fraction: share of the policy-driven (not random) offline episodes that run the policy's
        own mean chunk with no perturbation: the safe side of the data.
    perturb_std: std of the perturbation added to the policy's chunk in offline episodes
        (action units, the chunk is clipped to [-1, 1] afterwards).
    heldout_fraction: share of the offline episodes, and of the finished training episodes, kept
        out of the critic's training for calibration and the AUC.
    calibration_window: the newest held-out training episodes that epsilon is calibrated on,
        together with the offline held-out ones (0: offline held-out only). The screen judges
        the current policy's chunks, so the stated false-negative rate must hold on them: a
        threshold fitted on the offline data alone drifted up (0.80 -> 0.88) and let the
        policy's own violations through. It has not yet paid off in violations: on
        ``bench-safe-explore`` (one BC, 3 seeds) 884 +- 126 with it, 893 +- 118 with 0.
    horizon_steps: H: a held-out transition is positive when a violation (cost > 0) happens
        within the next H env steps (its own chunk included).
    target_fnr: calibrated false-negative rate: the share of held-out positives whose Q_C is
        <= epsilon (they would pass the screen).
    max_resamples: N: proposals re-drawn from the policy after a rejected one; recovery acts
        when all N + 1 are rejected.
    gamma: per-decision discount of the violation probability Q_C.
    hidden: width of the critic and recovery MLPs.
    cql_alpha: weight of the conservative term (data actions down, out-of-distribution up).
    n_ood: uniformly random action chunks per state in the conservative term.
    critic_lr: Adam learning rate of the critic.
    critic_weight_decay: decoupled weight decay of the critic (AdamW; fights over-fitting on
        small offline data sets).
    tau: Polyak factor of the two target critics.
    batch_size: replay minibatch size (decisions).
    offline_updates: critic (and recovery) gradient steps of the offline pre-training.
    online_updates: gradient steps after every PPO iteration.
    recovery_lr: Adam learning rate of the recovery policy.
    recovery_action_reg: weight of an L2 penalty on the recovery chunk's deviation from its base.
    recovery_hold: score a hold chunk (no end-effector motion) next to the recovery policy's chunk
        and execute the one with the lower Q_C (see :mod:`safetwin.train.screening`). Off by
        default: in one ``bench-safe-explore`` seed it gave 603 training violations against
        537 without it (success 0.06 against 0.08).
    recovery_residual: r > 0: the recovery is a base chunk (``recovery_base``) plus a residual
        bounded by r that the critic trains; 0: a recovery from scratch (see
        :mod:`~safetwin.train.recovery`).
    recovery_base: the base of a residual recovery: ``"retreat"`` (lift by ``recovery_lift`` in
        the chunk's first step, then hold; the pre-trained policy's gripper command) or
        ``"policy"`` (the frozen pre-trained policy's noise-free chunk). The retreat is the
        default: in the states the critic flags the pre-trained policy itself presses on the table.
    recovery_lift: the retreat's first-step z action, normalised (x the scene's
        ``control.action_pos_m``: 1 cm on the bundled scenes at 0.25), in [0, 1].
    recovery_clearance: m above the robot's base plane: with ``ee_features`` the retreat lifts
        only while the arm's lowest point is below it, and holds above (without EE features it
        always lifts), so repeated retreats cannot lift the arm without bound. On
        ``bench-safe-explore`` 0.08 gave the same runs as no bound (6 seeds on two BC policies);
        0.03 kept the arm near the table and gave 418 +- 94 training violations against 215 +- 93
        (BC seed 0).
    ee_features: add the end-effector pose and the arm's lowest point (forward kinematics of
        the measured joints, base frame) to the critic's features
        (:class:`~safetwin.train.safe_explore_features.EEFeatures`).
    replay_capacity: decisions kept in the safety replay buffer (oldest dropped first).
    rejection_cost: extra cost given to the task policy's transition when its proposal was
        rejected (0: the task policy learns from its proposals as in Recovery RL).
    """

    enabled: bool = False
    offline_episodes: int = 80
    random_fraction: float = 0.0
    clean_fraction: float = 0.5
    perturb_std: float = 0.3
    heldout_fraction: float = 0.25
    calibration_window: int = 40
    horizon_steps: int = 5
    target_fnr: float = 0.05
    max_resamples: int = 3
    gamma: float = 0.8
    hidden: int = 128
    cql_alpha: float = 0.3
    n_ood: int = 4
    critic_lr: float = 3e-4
    critic_weight_decay: float = 0.01
    tau: float = 0.01
    batch_size: int = 256
    offline_updates: int = 600
    online_updates: int = 100
    recovery_lr: float = 3e-4
    recovery_action_reg: float = 10.0
    recovery_hold: bool = False
    recovery_residual: float = 0.1
    recovery_base: str = "retreat"
    recovery_lift: float = 0.25
    recovery_clearance: float = 0.08
    ee_features: bool = True
    replay_capacity: int = 100_000
    rejection_cost: float = 3.0

    def __post_init__(self) -> None:
        for name in ("horizon_steps", "hidden", "n_ood", "batch_size", "replay_capacity"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"train.safe_explore.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("offline_episodes", "calibration_window", "max_resamples", "offline_updates", "online_updates",
                     "cql_alpha", "recovery_action_reg", "critic_weight_decay", "rejection_cost", "perturb_std",
                     "recovery_clearance"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.safe_explore.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("random_fraction", "clean_fraction", "gamma"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"train.safe_explore.{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("heldout_fraction", "target_fnr", "tau"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ConfigError(f"train.safe_explore.{name} must be in (0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.recovery_residual <= 2.0:
            raise ConfigError(f"train.safe_explore.recovery_residual must be in [0, 2], got {self.recovery_residual}")
        if self.recovery_base not in RECOVERY_BASES:
            raise ConfigError(f"train.safe_explore.recovery_base: {self.recovery_base!r} is not one of "
                              f"{list(RECOVERY_BASES)}")
        if not 0.0 <= self.recovery_lift <= 1.0:
            raise ConfigError(f"train.safe_explore.recovery_lift must be in [0, 1], got {self.recovery_lift}")
        for name in ("critic_lr", "recovery_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"train.safe_explore.{name} must be > 0, got {getattr(self, name)}")
        if self.enabled and self.offline_episodes < 2:
            raise ConfigError("train.safe_explore.offline_episodes must be >= 2 when enabled "
                              "(training and held-out calibration episodes)")
