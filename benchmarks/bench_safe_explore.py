"""Benchmark of safe exploration -> benchmarks/results/safe_explore.json.

On ``tabletop_push`` under domain randomization, from ONE behaviour-cloned policy, two arms with
the same PPO budget (env steps), each trained with ``--seeds`` seeds (``seed``, ``seed + 1``, ...:
the RL, env-reset and critic-data seeds; the BC policy is shared):

* ``lag``: PPO-Lagrangian alone;
* ``csc``: PPO-Lagrangian with the conservative safety critic screening every proposed chunk
  and the recovery policy (``safe_explore.enabled``).

Reported: ``train_violations_lag`` / ``train_violations_csc`` (cumulative cost of all training
episodes, from ``safety/train_violations`` in metrics.jsonl), ``pretrain_violations_csc`` (cost
of the critic's offline data collection in the twin, reported separately), their final
``success`` and ``mean_cost`` (raw policy evaluated in the twin, ``--episodes`` episodes), and
``critic_auc`` (held-out, after pre-training and at the end).
The top-level figures are means over the seeds (``*_std``: their standard deviation; per-seed
figures under ``arms``). One seed is one path through a chaotic system: before the instruction
encoder was made batch-independent, the Lagrangian arm gave 801 or 1153 violations on the same
seed, depending only on the 7th decimal of the instruction embedding.
Target (reported, not asserted), on the means: ``train_violations_csc <= 0.5 *
train_violations_lag`` and ``|success_csc - success_lag| <= 0.05``.

Tiny smoke run: ``python benchmarks/bench_safe_explore.py --steps 200 --demos 2 --bc-epochs 1
--offline-episodes 4 --episodes 2 --num-envs 2 --seeds 2``. ``--set KEY=VALUE`` (repeatable) sets a
``SafeExploreConfig`` field of the csc arm (e.g. ``--set rejection_cost=1.0``); the overrides
are recorded under ``config.safe_explore`` in the JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from safetwin.safety.runio import ConfigError, atomic_write_json, config_from_dict, read_jsonl
from safetwin.train.config import TrainConfig
from safetwin.train.evaluate import evaluate
from safetwin.train.run import run_train
from safetwin.train.safe_explore_config import SafeExploreConfig

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "safe_explore.json"
logger = logging.getLogger("bench_safe_explore")


def _arm(args: argparse.Namespace, root: Path, bc_ckpt: Path, name: str, safe: bool, seed: int) -> dict[str, Any]:
    se = config_from_dict(SafeExploreConfig, {
        **dict(enabled=safe, offline_episodes=args.offline_episodes, offline_updates=args.offline_updates,
               online_updates=args.online_updates), **(args.safe_explore if safe else {})}, "--set")
    cfg = TrainConfig(scene=args.scene, run_root=str(root), run_id=name, seed=seed, total_steps=args.steps,
                      num_envs=args.num_envs, rollout_decisions=args.rollout_decisions,
                      num_minibatches=min(4, args.num_envs * args.rollout_decisions),
                      pretrained=str(bc_ckpt), progress=not args.quiet, safe_explore=se)
    t0 = time.perf_counter()
    run_dir = run_train(cfg)
    wall = time.perf_counter() - t0
    records = list(read_jsonl(run_dir / "metrics.jsonl"))
    ev = evaluate(run_dir / "checkpoints" / "policy.safetensors", scene=args.scene, episodes=args.episodes,
                  seed=20_000, filtered=False, out_dir=run_dir / "eval", progress=not args.quiet)["modes"]["raw"]
    out = {"train_violations": float(records[-1].get("safety/train_violations", 0.0)),
           "success": ev["success_rate"], "mean_cost": ev["mean_cost"], "cost_limit": ev["cost_limit"],
           "steps": int(records[-1]["step"]), "wall_s": wall, "run_dir": str(run_dir), "seed": seed}
    if safe:
        side = json.loads((run_dir / "checkpoints" / "safe_explore.json").read_text(encoding="utf-8"))
        offline = side["extra"].get("offline", {})
        aucs = [r["safety/critic_auc"] for r in records if "safety/critic_auc" in r]
        out.update({"pretrain_violations": float(offline.get("offline_violations", 0.0)),
                    "pretrain_critic_auc": float(offline.get("critic_auc", -1.0)),  # -1: no held-out negatives
                    "critic_auc": float(aucs[-1]) if aucs else float("nan"),
                    "critic_rejections": float(sum(r.get("safety/critic_rejections", 0.0) for r in records)),
                    "recovery_steps": float(sum(r.get("safety/recovery_steps", 0.0) for r in records)),
                    "calibration": side["extra"].get("calibration", {})})
    return out


def _finite(value: Any) -> Any:
    """NaN/inf (e.g. an AUC without held-out negatives) -> None, so the JSON stays standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _overrides(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> a dict (values read as YAML scalars), checked against the config."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    if "enabled" in out:
        parser.error("--set enabled=...: the arms decide that (lag: off, csc: on)")
    try:
        config_from_dict(SafeExploreConfig, out, "--set")
    except ConfigError as exc:
        parser.error(str(exc))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scene", default="tabletop_push")
    parser.add_argument("--steps", type=int, default=20_000, help="PPO budget (env steps) of each arm")
    parser.add_argument("--num-envs", type=int, default=4)
    parser.add_argument("--rollout-decisions", type=int, default=64)
    parser.add_argument("--demos", type=int, default=90, help="expert demo episodes for BC (as bench-train)")
    parser.add_argument("--bc-epochs", type=int, default=30)
    parser.add_argument("--bc-checkpoint", default="", help="reuse this BC policy checkpoint (skips demos + BC)")
    parser.add_argument("--offline-episodes", type=int, default=80, help="critic pre-training episodes")
    parser.add_argument("--offline-updates", type=int, default=600)
    parser.add_argument("--online-updates", type=int, default=100)
    parser.add_argument("--episodes", type=int, default=50, help="evaluation episodes per arm")
    parser.add_argument("--seed", type=int, default=0, help="BC seed and the first arm seed")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per arm (seed, seed + 1, ...)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a SafeExploreConfig field of the csc arm, e.g. --set perturb_std=0.3 (repeatable)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    args.safe_explore = _overrides(parser, args.overrides)
    del args.overrides
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    args.torch_threads = torch.get_num_threads()  # recorded: the float bits, and so one seed's path, depend on it
    root = ROOT / "runs" / "bench_safe_explore" / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    t0 = time.perf_counter()
    if args.bc_checkpoint:
        bc_ckpt = Path(args.bc_checkpoint)
    else:
        bc_dir = run_train(TrainConfig(scene=args.scene, run_root=str(root), run_id="bc", seed=args.seed,
                                       total_steps=0, demo_episodes=args.demos, bc_epochs=args.bc_epochs,
                                       progress=not args.quiet))
        bc_ckpt = bc_dir / "checkpoints" / "policy.safetensors"
    seeds = [args.seed + i for i in range(args.seeds)]
    arms = {name: [_arm(args, root, bc_ckpt, f"{name}-s{seed}", safe=name == "csc", seed=seed) for seed in seeds]
            for name in ("lag", "csc")}
    results = _results(args, arms)
    results["wall_s"] = time.perf_counter() - t0
    atomic_write_json(RESULTS, _finite(results))
    _report(results, arms)


def _mean_std(runs: list[dict[str, Any]], key: str) -> tuple[float, float]:
    values = np.array([r[key] for r in runs], dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _results(args: argparse.Namespace, arms: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Means (and standard deviations) over the seeds of each arm, the targets on the means."""
    out: dict[str, Any] = {"scene": args.scene, "steps": args.steps, "seeds": args.seeds,
                           "cost_limit": arms["lag"][0]["cost_limit"]}
    for name, runs in arms.items():
        for key, label in (("train_violations", "train_violations"), ("success", "success"),
                           ("mean_cost", "mean_cost")):
            out[f"{label}_{name}"], out[f"{label}_{name}_std"] = _mean_std(runs, key)
    csc = arms["csc"]
    out["pretrain_violations_csc"] = _mean_std(csc, "pretrain_violations")[0]
    out["critic_auc"], out["critic_auc_std"] = _mean_std(csc, "critic_auc")
    base = max(out["train_violations_lag"], 1e-9)
    out["violation_reduction"] = 1.0 - out["train_violations_csc"] / base
    out["targets"] = {"violations_halved": out["train_violations_csc"] <= 0.5 * out["train_violations_lag"],
                      "success_within_5_points": abs(out["success_csc"] - out["success_lag"]) <= 0.05}
    out["arms"], out["config"] = arms, vars(args)
    return out


def _report(results: dict[str, Any], arms: dict[str, list[dict[str, Any]]]) -> None:
    cols = ("train_violations", "success", "mean_cost", "wall_s")
    print(f"{'arm':<6}{'seed':>6}" + "".join(f"{c:>18}" for c in cols))
    for name, runs in arms.items():
        for r in runs:
            print(f"{name:<6}{r['seed']:>6d}" + "".join(f"{r[c]:>18.3f}" for c in cols))
        print(f"{name + ' mean':<10}" + "".join(
            f"{results[f'{c}_{name}']:>14.3f} +- {results[f'{c}_{name}_std']:<6.3f}"
            for c in ("train_violations", "success", "mean_cost")))
    print(f"critic AUC {results['critic_auc']:.3f}; offline-data violations (csc, mean) "
          f"{results['pretrain_violations_csc']:.1f}; violation reduction {results['violation_reduction']:.1%}; "
          f"written {RESULTS}")
    print(json.dumps(results["targets"]))

if __name__ == "__main__":
    main()
