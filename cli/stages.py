"""The glue of the stages the CLI runs that no single package owns.

``rollout`` (the scripted expert in the twin), ``audit`` (evaluate a checkpoint, then build the
report), ``deploy`` (the gate, then the runner) and ``verify-log``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from safetwin.safety.runio import ConfigError

logger = logging.getLogger(__name__)


@dataclass
class RolloutConfig:
    """Roll out the scripted expert in the twin and print success rate and costs.

    scene: bundled scene name or path to a scene YAML.
    episodes: number of episodes (each with its own seed, randomized).
    seed: seed of the first episode.
    filtered: run behind the QP safety filter.
    """

    scene: str = "tabletop_push"
    episodes: int = 20
    seed: int = 0
    filtered: bool = False

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ConfigError(f"episodes must be >= 1, got {self.episodes}")


def run_rollout(cfg: RolloutConfig) -> int:
    """Returns 0 when the expert succeeded in every episode at zero cost, 1 otherwise."""
    import gymnasium as gym
    from tqdm import tqdm

    import safetwin.twin.registration  # noqa: F401  (registers safetwin/Twin-v0)

    env = gym.make("safetwin/Twin-v0", scene=cfg.scene)
    if cfg.filtered:
        from safetwin.safety.wrapper import SafetyFilterWrapper

        env = SafetyFilterWrapper(env)
    successes, costs, lengths = [], [], []
    per_category: dict[str, float] = {}
    for ep in tqdm(range(cfg.episodes), desc=f"expert on {cfg.scene}", unit="ep"):
        env.reset(seed=cfg.seed + ep)
        done, cost, steps, info = False, 0.0, 0, {}
        while not done:
            _, _, terminated, truncated, info = env.step(env.unwrapped.expert_action())
            cost += float(info["cost"])
            for key, value in info["costs"].items():
                per_category[key] = per_category.get(key, 0.0) + float(value)
            steps += 1
            done = terminated or truncated
        successes.append(bool(info.get("is_success", False)))
        costs.append(cost)
        lengths.append(steps)
    env.close()
    summary = {"scene": cfg.scene, "episodes": cfg.episodes, "success_rate": float(np.mean(successes)),
               "mean_cost": float(np.mean(costs)), "mean_length": float(np.mean(lengths)),
               "costs_by_category": per_category}
    logger.info("expert rollout: %s", json.dumps(summary))
    print(f"scene {cfg.scene}: success {summary['success_rate']:.0%} over {cfg.episodes} episodes, "
          f"mean cost {summary['mean_cost']:.3f}, mean length {summary['mean_length']:.1f} steps, "
          f"costs by category {per_category}")
    return 0 if summary["success_rate"] == 1.0 and summary["mean_cost"] == 0.0 else 1


def resolve_run_dir(run_dir: str, kind: str) -> Path:
    """``run_dir`` itself, or with ``latest`` the newest folder under ``runs/<kind>/``."""
    if run_dir != "latest":
        path = Path(run_dir)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such run directory")
        return path
    root = Path("runs") / kind
    candidates = sorted((p for p in root.glob("*") if p.is_dir()), key=lambda p: p.name)
    if not candidates:
        raise FileNotFoundError(f"no runs under {root}/: run `make {kind}` first")
    return candidates[-1]
