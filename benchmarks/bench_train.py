"""Benchmark of the training stack (``make bench-train``) -> benchmarks/results/train.json.

For each scene (reach_avoid, tabletop_push), under domain randomization:

* BC on scripted-expert demos, evaluated raw: ``bc_success``, ``bc_mean_cost``;
* PPO-Lagrangian fine-tuning from the BC policy for the scene's budget of env steps
  (``steps``): ``rl_success``, ``rl_mean_cost`` (vs ``cost_limit``, the scene's budget);
* unconstrained PPO (``lagrange="none"``; where the recipe uses self-imitation, without its cost
  filter) from the same BC checkpoint, same budget: ``ppo_success``, ``ppo_mean_cost``;
* ``samples_per_s`` (our trainer, mean over iterations) and ``sb3_samples_per_s``
  (Stable-Baselines3 PPO, MultiInputPolicy with its NatureCNN image encoder, on the same env
  with the same number of envs and the same images (front, plus wrist where the policy sees
  it), measured in this run over ``--sb3-steps`` steps).

Each scene has its recipe (``RECIPES``, 120k PPO steps per run on both; ``--wrist-camera``,
``--bc-loss``, ``--self-imitation-coef`` and ``--steps`` override it for every scene):

* tabletop_push: the policy also sees the wrist camera, and BC uses the L1 loss on the action
  chunk. In the 64 px front view the cube is a few pixels: a front-only BC policy (seed 1)
  pressed on the cube from above, fingertips at its top face, over the scene's 20 N
  contact-force limit in 15 of 20 episodes. With the wrist view BC success went from 0.02 and
  0.18 to 0.60 and 0.64 (seeds 0 and 1, 50 evaluation episodes; 0.59 and 0.555 at 200).
* tabletop_push without constrained self-imitation (``self_imitation_coef`` 0;
  :mod:`safetwin.train.self_imitation`). With it (coefficient 3, 180k steps per run),
  ``make bench-train`` at commit d2c6b44 measured success 0.655 at cost 0.54 (BC 0.59: +6.5
  points, about as without it) and took 59.7 of the benchmark's 60 minutes, against 43 without
  it (``benchmarks/results/train_self_imitation_180k.json``). Plain PPO-Lagrangian from the BC
  policies of seeds 0, 1 and 2 (success 0.59, 0.555, 0.40) ended at 0.645, 0.655 and 0.44
  (costs 0.64, 0.69, 2.05; 240k steps on seed 0: 0.625); with self-imitation at 180k at 0.69,
  0.595 and 0.59 (costs 0.33, 0.56, 0.325); scratch runs from the same BC checkpoints, 200
  evaluation episodes each (seed 0's with a first version that waited for 256 replayed
  decisions; the trainer waits for one minibatch).
* 90 demonstrations (``--demos``) for both scenes. With 30 on tabletop_push (seed 0, the recipe
  above, and again with self-imitation), PPO-Lagrangian's first 10 iterations (the BC policy
  with exploration noise, mostly) cost 33 per episode (limit 2) at success 0.21 and 0.25
  (with 90: 7.4 at 0.46); by step 98k and 95k the cost was down to 10 and 7, and the training
  success to 0.14 and 0.11 (means over 10 iterations; the runs were stopped there, not
  evaluated).
* reach_avoid: front camera, MSE loss, no self-imitation. With the L1 loss (seed 0)
  BC still succeeded in every episode, but PPO-Lagrangian fine-tuning from it ended at cost
  4.88, over the limit of 2.

Every policy is evaluated on the same ``--episodes`` seeds (200 by default: at 50 one success
rate has a standard error near 0.07, and the 10-point target was decided by luck);
``rl_success_gain`` is the success gain over BC paired by seed, with its standard error
``rl_success_gain_se``. ``failures`` says, per policy (``bc``, ``rl``, ``ppo``), how its failed
episodes ended (timeouts, early terminations, the final distance to the goal; the evaluation
summary's block, :mod:`safetwin.train.evaluate`).

Targets (reported, not asserted): ``rl_mean_cost <= cost_limit`` and ``rl_success >=
min(bc_success + 0.10, 0.95)``; ``samples_per_s >= sb3_samples_per_s``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from safetwin.safety.runio import atomic_write_json, read_jsonl
from safetwin.train.config import TrainConfig
from safetwin.train.evaluate import evaluate
from safetwin.train.run import run_train

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "train.json"
logger = logging.getLogger("bench_train")


class _ImageProprio(gym.ObservationWrapper):
    """SB3 cannot batch Text spaces: keep the images and proprio (the same inputs our actor sees
    except for the instruction; the wrist image too when the env renders it)."""

    KEYS = ("image", "wrist_image", "proprio")

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.keys = [k for k in self.KEYS if k in env.observation_space.spaces]
        self.observation_space = gym.spaces.Dict({k: env.observation_space[k] for k in self.keys})

    def observation(self, obs: dict[str, Any]) -> dict[str, Any]:
        return {k: obs[k] for k in self.keys}


def sb3_samples_per_s(scene: str, num_envs: int, steps: int, seed: int, wrist_camera: bool = False) -> float:
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    import safetwin.twin.registration  # noqa: F401

    venv = DummyVecEnv([lambda: _ImageProprio(gym.make("safetwin/Twin-v0", scene=scene, randomize=True,
                                                       wrist_camera=wrist_camera))
                        for _ in range(num_envs)])
    model = PPO("MultiInputPolicy", venv, n_steps=64, batch_size=64, n_epochs=4, seed=seed, verbose=0,
                device="cpu")
    t0 = time.perf_counter()
    model.learn(total_timesteps=steps)
    elapsed = time.perf_counter() - t0
    venv.close()
    return float(model.num_timesteps / elapsed)


DEFAULT_RECIPE: dict[str, Any] = {"wrist_camera": False, "bc_loss": "mse", "self_imitation_coef": 0.0,
                                  "total_steps": 120_000}
"""Policy inputs, BC loss, self-imitation weight and PPO budget (env steps per run) of a scene
without its own recipe."""
RECIPES: dict[str, dict[str, Any]] = {
    "reach_avoid": DEFAULT_RECIPE,
    "tabletop_push": {**DEFAULT_RECIPE, "wrist_camera": True, "bc_loss": "l1"},
}
"""Per-scene recipes (see the module docstring)."""


def recipe(scene: str, args: argparse.Namespace) -> dict[str, Any]:
    """The scene's ``TrainConfig`` options from ``RECIPES``, with the command line's overrides."""
    out = dict(RECIPES.get(scene, DEFAULT_RECIPE))
    if args.wrist_camera is not None:
        out["wrist_camera"] = scene in args.wrist_camera
    if args.bc_loss is not None:
        out["bc_loss"] = args.bc_loss
    if args.self_imitation_coef is not None:
        out["self_imitation_coef"] = args.self_imitation_coef
    if args.steps is not None:
        out["total_steps"] = args.steps
    return out


def paired_gain(bc_dir: Path, rl_dir: Path) -> tuple[float, float]:
    """Success gain of the fine-tuned policy over BC and its standard error, paired by episode seed.

    Both were evaluated on the same seeds, so the per-seed difference removes the variance the
    two share (start states, randomized parameters).
    """
    def by_seed(folder: Path) -> dict[int, float]:
        return {int(r["seed"]): float(r["success"]) for r in read_jsonl(folder / "episodes.jsonl") if r["mode"] == "raw"}

    bc, rl = by_seed(bc_dir), by_seed(rl_dir)
    diff = np.array([rl[k] - bc[k] for k in sorted(bc) if k in rl])
    return float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")


def bench_scene(scene: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    common = dict(scene=scene, run_root=str(root), seed=args.seed, num_envs=args.num_envs,
                  demo_episodes=args.demos, bc_epochs=args.bc_epochs, progress=not args.quiet,
                  **recipe(scene, args))
    rl_dir = run_train(TrainConfig(**common, run_id=f"{scene}-ppolag", lagrange="adam"))
    bc_ckpt = rl_dir / "checkpoints" / "bc.safetensors"
    # unconstrained: no multiplier, and self-imitation (where the recipe has it) without its cost filter
    ppo_dir = run_train(TrainConfig(**{**common, "self_imitation_max_cost": -1.0}, run_id=f"{scene}-ppo",
                                    lagrange="none", pretrained=str(bc_ckpt)))
    ev = dict(scene=scene, episodes=args.episodes, seed=10_000, filtered=False, progress=not args.quiet)
    bc = evaluate(bc_ckpt, out_dir=rl_dir / "eval_bc", **ev)["modes"]["raw"]
    rl = evaluate(rl_dir / "checkpoints" / "policy.safetensors", out_dir=rl_dir / "eval", **ev)["modes"]["raw"]
    ppo = evaluate(ppo_dir / "checkpoints" / "policy.safetensors", out_dir=ppo_dir / "eval", **ev)["modes"]["raw"]
    sps = [r["charts/samples_per_s"] for r in read_jsonl(rl_dir / "metrics.jsonl")]
    out = {"bc_success": bc["success_rate"], "bc_mean_cost": bc["mean_cost"],
           "rl_success": rl["success_rate"], "rl_mean_cost": rl["mean_cost"], "cost_limit": rl["cost_limit"],
           "ppo_success": ppo["success_rate"], "ppo_mean_cost": ppo["mean_cost"],
           "samples_per_s": float(np.mean(sps)),
           "sb3_samples_per_s": sb3_samples_per_s(scene, args.num_envs, args.sb3_steps, args.seed,
                                                  wrist_camera=common["wrist_camera"]),
           "steps": common["total_steps"], "eval_episodes": args.episodes, "recipe": recipe(scene, args),
           "run_dirs": [str(rl_dir), str(ppo_dir)],
           "failures": {"bc": bc["failures"], "rl": rl["failures"], "ppo": ppo["failures"]}}
    out["rl_success_gain"], out["rl_success_gain_se"] = paired_gain(rl_dir / "eval_bc", rl_dir / "eval")
    out["targets"] = {"rl_cost_within_limit": out["rl_mean_cost"] <= out["cost_limit"],
                      "rl_success_gain": out["rl_success"] >= min(out["bc_success"] + 0.10, 0.95),
                      "faster_than_sb3": out["samples_per_s"] >= out["sb3_samples_per_s"]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", nargs="+", default=["reach_avoid", "tabletop_push"])
    parser.add_argument("--steps", type=int, default=None,
                        help="PPO budget (env steps) per run for every scene (default: RECIPES)")
    parser.add_argument("--num-envs", type=int, default=4)
    parser.add_argument("--demos", type=int, default=90, help="expert demo episodes for BC (tens, not thousands)")
    parser.add_argument("--bc-epochs", type=int, default=30)
    parser.add_argument("--episodes", type=int, default=200,
                        help="evaluation episodes per policy (same seeds for each; at 50 one success rate has a "
                             "standard error near 0.07, as large as most differences measured)")
    parser.add_argument("--wrist-camera", nargs="*", default=None, metavar="SCENE",
                        help="scenes whose policy also sees the wrist camera (default: RECIPES; the flag "
                             "alone: none)")
    parser.add_argument("--bc-loss", choices=("mse", "l1"), default=None,
                        help="BC loss on the action chunk for every scene (default: RECIPES)")
    parser.add_argument("--self-imitation-coef", type=float, default=None,
                        help="self-imitation weight for every scene, 0: off (default: RECIPES)")
    parser.add_argument("--sb3-steps", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="JSON written (default: the committed benchmarks/results/train.json; give another "
                             "path for extra seeds)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    args.torch_threads = torch.get_num_threads()  # recorded: the float bits, and so one seed's path, depend on it
    root = ROOT / "runs" / "bench_train" / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    t0 = time.perf_counter()
    results = {"scenes": {}, "config": {**vars(args), "results": str(args.results)}}
    for scene in args.scenes:
        results["scenes"][scene] = bench_scene(scene, args, root)
        atomic_write_json(args.results, {**results, "wall_s": time.perf_counter() - t0})
    results["wall_s"] = time.perf_counter() - t0
    atomic_write_json(args.results, results)
    cols = ("bc_success", "bc_mean_cost", "rl_success", "rl_mean_cost", "cost_limit", "rl_success_gain",
            "rl_success_gain_se", "ppo_success", "ppo_mean_cost", "samples_per_s", "sb3_samples_per_s")
    print(f"{'scene':<15}" + "".join(f"{c:>18}" for c in cols))
    for scene, r in results["scenes"].items():
        print(f"{scene:<15}" + "".join(f"{r[c]:>18.3f}" for c in cols))
    print(f"wall time {results['wall_s']:.0f} s; written {args.results}")
    print(json.dumps({s: r["targets"] for s, r in results["scenes"].items()}))


if __name__ == "__main__":
    main()
