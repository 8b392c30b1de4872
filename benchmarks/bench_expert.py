"""The scripted expert over randomised episodes: ``python benchmarks/bench_expert.py [--episodes N]``.

For each bundled scene and both expert modes (``markov=False``: the plan is kept across an
episode, the default; ``markov=True``: planned afresh from the present state every step) it
measures the success rate, the mean cost per episode, the share of episodes with any cost and
the largest EE speed (m/s), on seeds 0..N-1 with domain randomization.

Prints a table and writes ``benchmarks/results/expert.json`` atomically.
Target (issue 2, the default expert): success >= 0.9 and zero cost over 100 episodes.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from safetwin.safety.runio import atomic_write_json, run_metadata
from safetwin.twin.env import TwinEnv
from safetwin.twin.expert import ExpertConfig, ScriptedExpert

ROOT = Path(__file__).resolve().parents[1]
SCENES = ("reach_avoid", "tabletop_push")


def rollouts(scene: str, episodes: int, markov: bool) -> dict[str, float]:
    """Success rate, mean cost, share of costly episodes and top EE speed of one expert mode."""
    env = TwinEnv(scene, images=False)
    env.expert = ScriptedExpert(ExpertConfig(markov=markov))
    success, costs, top_speed = [], [], 0.0
    for seed in tqdm(range(episodes), desc=f"{scene} markov={markov}", leave=False):
        env.reset(seed=seed)
        done, cost, info = False, 0.0, {}
        while not done:
            _, _, terminated, truncated, info = env.step(env.expert_action())
            cost += info["cost"]
            top_speed = max(top_speed, info["ee_speed"])
            done = terminated or truncated
        success.append(bool(info["is_success"]))
        costs.append(cost)
    env.close()
    return {"success": float(np.mean(success)), "mean_cost": float(np.mean(costs)),
            "costly_episodes": float(np.mean(np.asarray(costs) > 0)), "max_ee_speed": top_speed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=100)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    res = {f"{scene}/{'markov' if markov else 'memory'}": rollouts(scene, args.episodes, markov)
           for scene in SCENES for markov in (False, True)}
    met = {f"{scene}/memory": res[f"{scene}/memory"]["success"] >= 0.9 and res[f"{scene}/memory"]["mean_cost"] == 0.0
           for scene in SCENES}
    print(f"{'expert':<28}{'success':>9}{'mean cost':>11}{'costly eps':>12}{'max ee m/s':>12}")
    for key, r in res.items():
        print(f"{key:<28}{r['success']:>9.2f}{r['mean_cost']:>11.3f}{r['costly_episodes']:>12.2f}"
              f"{r['max_ee_speed']:>12.3f}")
    print("target (default expert): success >= 0.9, zero cost ->", {k: "met" if v else "MISSED" for k, v in met.items()})
    atomic_write_json(ROOT / "benchmarks" / "results" / "expert.json",
                      {"results": res, "met": met, "episodes": args.episodes, "meta": run_metadata(seed=0)})


if __name__ == "__main__":
    main()
