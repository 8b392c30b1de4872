"""Evaluate a policy checkpoint in the twin under domain randomization, raw and filtered.

``evaluate(checkpoint, scene, episodes, seed, filtered, out_dir)`` rolls the policy out for
``episodes`` episodes (seeds ``seed, seed + 1, ...``): in mode ``"raw"`` always, and when
``filtered`` also behind the QP safety filter (``safetwin.safety.wrapper.SafetyFilterWrapper``)
on the same seeds. The policy emits chunks (k, 7) that are executed step by step.

Writes (atomically) ``<out_dir>/episodes.jsonl`` (one record per episode and mode: ``mode,
episode, seed, success, return, cost, costs{category}, length, min_fragile_distance (m),
final_goal_distance (m, the env's ``goal_distance`` at the end; None when the env has none),
truncated (the episode ran out of time), target (the env's ``target``, the object the episode's
instruction names; None when the env has none),
filter_interventions, filter_infeasible, min_barrier, max_ee_speed (m/s),
max_contact_force (N), inference_latency_ms [per decision]``) and ``<out_dir>/summary.json``
(``checkpoint, checkpoint_sha256, safety_spec_sha256, scene, episodes, seed, modes{mode:
{success_rate, mean_return, mean_cost, cost_limit, mean_costs{category}, mean_length,
min_fragile_distance, filter_interventions, filter_infeasible, min_barrier,
inference_latency_ms{p50, p99, mean}, failures, by_target}}}``). ``failures`` says how the failed
episodes ended: ``{episodes, timeouts`` (truncated), ``terminated`` (ended early without
success, e.g. a severe collision), ``final_goal_distance_m{p50, max}}`` (None without failures
or distances). ``by_target`` splits the episodes by target object: ``{name: {episodes,
success_rate, mean_cost}}`` (None when the env names no target).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from tqdm import tqdm

from safetwin.safety.runio import atomic_write_json, atomic_write_text, sha256_file

from .checkpoint import load_policy
from .envs import COST_CATEGORIES, import_env_package
from .policy import VLAPolicy

logger = logging.getLogger(__name__)
TWIN_ID = "safetwin/Twin-v0"


def _scene(scene: Any) -> Any:
    if isinstance(scene, (str, os.PathLike)):
        from safetwin.twin.scene import load_scene

        return load_scene(scene)
    return scene


def _filter_counts(finfo: dict[str, Any] | None, acc: dict[str, float]) -> None:
    """Fold one env step's ``info["filter"]`` (per-step counts of the low-level filter calls,
    see ``safetwin.safety.wrapper``) into the episode's counters: sums and the minimum barrier."""
    if not finfo:
        return
    for key, out in (("interventions", "filter_interventions"), ("infeasible", "filter_infeasible")):
        acc[out] += float(finfo.get(key) or 0)
    barrier = finfo.get("min_barrier")
    if barrier is not None and math.isfinite(float(barrier)):
        acc["min_barrier"] = min(acc["min_barrier"], float(barrier))


def run_episode(env: gym.Env, policy: VLAPolicy, seed: int) -> dict[str, Any]:
    """One episode; returns the per-episode record (without mode/episode)."""
    obs, info = env.reset(seed=seed)
    rec: dict[str, Any] = {"seed": seed, "return": 0.0, "cost": 0.0, "length": 0,
                           "costs": dict.fromkeys(COST_CATEGORIES, 0.0),
                           "min_fragile_distance": math.inf, "max_ee_speed": 0.0, "max_contact_force": 0.0,
                           "final_goal_distance": None, "target": None}
    acc = {"filter_interventions": 0.0, "filter_infeasible": 0.0, "min_barrier": math.inf}
    latency: list[float] = []
    done = False
    while not done:
        t0 = time.perf_counter()
        chunk = policy.predict(obs)
        latency.append(1000.0 * (time.perf_counter() - t0))
        for action in chunk:
            obs, reward, terminated, truncated, info = env.step(action)
            rec["return"] += float(reward)
            rec["cost"] += float(info["cost"])
            rec["length"] += 1
            for cat, value in info.get("costs", {}).items():
                rec["costs"][cat] = rec["costs"].get(cat, 0.0) + float(value)
            if "min_fragile_distance" in info:
                rec["min_fragile_distance"] = min(rec["min_fragile_distance"], float(info["min_fragile_distance"]))
            rec["max_ee_speed"] = max(rec["max_ee_speed"], float(info.get("ee_speed", 0.0)))
            rec["max_contact_force"] = max(rec["max_contact_force"], float(info.get("max_contact_force", 0.0)))
            _filter_counts(info.get("filter"), acc)
            done = terminated or truncated
            if done:
                break
    rec["success"] = bool(info.get("is_success", False))
    rec["truncated"] = bool(truncated)
    if "goal_distance" in info:
        rec["final_goal_distance"] = float(info["goal_distance"])
    if info.get("target") is not None:
        rec["target"] = str(info["target"])
    rec.update(acc)
    rec["inference_latency_ms"] = latency
    return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in rec.items()}


def _summary(records: list[dict[str, Any]], cost_limit: float) -> dict[str, Any]:
    def mean(key: str) -> float:
        return float(np.mean([r[key] for r in records]))

    lat = [v for r in records for v in r["inference_latency_ms"]]
    frag = [r["min_fragile_distance"] for r in records if r["min_fragile_distance"] is not None]
    barriers = [r["min_barrier"] for r in records if r["min_barrier"] is not None]
    return {"episodes": len(records), "success_rate": mean("success"), "mean_return": mean("return"),
            "mean_cost": mean("cost"), "cost_limit": cost_limit,
            "mean_costs": {c: float(np.mean([r["costs"].get(c, 0.0) for r in records])) for c in COST_CATEGORIES},
            "mean_length": mean("length"), "min_fragile_distance": min(frag) if frag else None,
            "filter_interventions": float(sum(r["filter_interventions"] for r in records)),
            "filter_infeasible": float(sum(r["filter_infeasible"] for r in records)),
            "min_barrier": min(barriers) if barriers else None,
            "inference_latency_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
                                     "mean": float(np.mean(lat))} if lat else None,
            "failures": _failures(records), "by_target": _by_target(records)}


def _by_target(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Episodes, success rate and mean cost per target object (None when no record names one)."""
    names = sorted({r["target"] for r in records if r.get("target") is not None})
    if not names:
        return None
    out = {}
    for name in names:
        mine = [r for r in records if r.get("target") == name]
        out[name] = {"episodes": len(mine), "success_rate": float(np.mean([r["success"] for r in mine])),
                     "mean_cost": float(np.mean([r["cost"] for r in mine]))}
    return out


def _failures(records: list[dict[str, Any]]) -> dict[str, Any]:
    """How the failed episodes ended: how many ran out of time, how far from the goal (m)."""
    failed = [r for r in records if not r["success"]]
    dist = [r["final_goal_distance"] for r in failed if r.get("final_goal_distance") is not None]
    timeouts = sum(r["truncated"] for r in failed)
    return {"episodes": len(failed), "timeouts": timeouts, "terminated": len(failed) - timeouts,
            "final_goal_distance_m": {"p50": float(np.median(dist)), "max": float(max(dist))} if dist else None}


def make_eval_env(scene: Any, filtered: bool, env_id: str = TWIN_ID,
                  env_kwargs: dict[str, Any] | None = None) -> gym.Env:
    """The twin (domain randomization on), wrapped in the safety filter when ``filtered``."""
    import_env_package(env_id)
    kwargs = {"scene": str(getattr(scene, "path", scene)), "randomize": True, **(env_kwargs or {})}
    env = gym.make(env_id, **kwargs)
    if filtered:
        from safetwin.safety.wrapper import SafetyFilterWrapper

        env = SafetyFilterWrapper(env, scene.safety)  # obstacle poses: read from the env each step
    return env


def evaluate(checkpoint: str | os.PathLike[str], scene: Any, episodes: int = 100, seed: int = 0,
             filtered: bool = True, out_dir: str | os.PathLike[str] | None = None,
             env_id: str = TWIN_ID, env_kwargs: dict[str, Any] | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``scene`` (name, path or Scene); returns the summary dict.

    ``out_dir`` defaults to ``<run>/eval`` for ``<run>/checkpoints/<name>.safetensors``.
    """
    if episodes < 1:
        raise ValueError(f"evaluate: episodes must be >= 1, got {episodes}")
    checkpoint = Path(checkpoint)
    scene = _scene(scene)
    policy = load_policy(checkpoint, scene=scene)
    if policy.cfg.use_wrist:  # the policy reads obs["wrist_image"]: the twin must render it
        env_kwargs = {"wrist_camera": True, **(env_kwargs or {})}
    out = Path(out_dir) if out_dir is not None else checkpoint.resolve().parents[1] / "eval"
    modes = ["raw", "filtered"] if filtered else ["raw"]
    records: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"checkpoint": str(checkpoint), "checkpoint_sha256": sha256_file(checkpoint),
                               "safety_spec_sha256": scene.safety.sha256(),
                               "scene": str(getattr(scene, "name", scene)), "episodes": episodes,
                               "seed": seed, "modes": {}}
    for mode in modes:
        env = make_eval_env(scene, mode == "filtered", env_id, env_kwargs)
        try:
            mode_recs = [{"mode": mode, "episode": i, **run_episode(env, policy, seed + i)}
                         for i in tqdm(range(episodes), desc=f"eval {mode}", unit="ep", disable=not progress)]
        finally:
            env.close()
        records += mode_recs
        summary["modes"][mode] = _summary(mode_recs, float(scene.safety.cost_limit))
        logger.info("eval %s: success %.2f, mean cost %.3f", mode, summary["modes"][mode]["success_rate"],
                    summary["modes"][mode]["mean_cost"])
    atomic_write_text(out / "episodes.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    atomic_write_json(out / "summary.json", summary)
    return summary
