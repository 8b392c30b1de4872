"""Throughput of the twin env on one core: ``python benchmarks/bench_env.py [--steps N]``.

Measures (policy steps per second, tabletop_push with the bundled arm unless named):

* ``image_steps_per_s``: TwinEnv with the 64x64 front camera;
* ``state_steps_per_s``: TwinEnv without images;
* ``bare_steps_per_s``: the same physics substeps and one render per step, no env code;
* ``panda_proxy_steps_per_s`` / ``panda_full_mesh_steps_per_s``: ``scenes/panda_reach.yaml``
  rendered through the primitive proxy and through the Panda's full visual meshes.

Prints a table and writes ``benchmarks/results/env.json`` atomically.
Targets: image >= 250/s; bare / image <= 1.3; panda proxy >= 5x full mesh.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pybullet as p  # noqa: E402
from tqdm import tqdm  # noqa: E402

from safetwin.safety.runio import atomic_write_json, run_metadata  # noqa: E402
from safetwin.twin.env import TwinEnv  # noqa: E402
from safetwin.twin.render import capture  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("bench_env")


def _env_rate(steps: int, label: str, **kwargs: object) -> float:
    env = TwinEnv(**kwargs)  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    env.step(np.zeros(7, np.float32))  # warm-up
    t0 = time.perf_counter()
    for _ in tqdm(range(steps), desc=label, leave=False):
        _, _, terminated, truncated, _ = env.step(rng.uniform(-0.3, 0.3, 7).astype(np.float32))
        if terminated or truncated:
            env.reset()
    rate = steps / (time.perf_counter() - t0)
    env.close()
    return rate


def _bare_rate(steps: int) -> float:
    """Physics substeps plus one render per policy step, straight on a twin world's client."""
    env = TwinEnv("tabletop_push")
    env.reset(seed=0)
    w, cam, light = env.world, env._front, env._light
    n_sub = w.substeps * w.control_steps
    t0 = time.perf_counter()
    for _ in tqdm(range(steps), desc="bare", leave=False):
        for _ in range(n_sub):
            p.stepSimulation(physicsClientId=w.client)
        capture(w.client, cam, light)
    rate = steps / (time.perf_counter() - t0)
    env.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="policy steps per measurement")
    args = parser.parse_args()
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    panda = str(ROOT / "scenes" / "panda_reach.yaml")
    n = args.steps
    res = {
        "image_steps_per_s": _env_rate(n, "image", scene="tabletop_push"),
        "state_steps_per_s": _env_rate(n, "state", scene="tabletop_push", images=False),
        "bare_steps_per_s": _bare_rate(n),
        "panda_proxy_steps_per_s": _env_rate(n, "panda proxy", scene=panda, renderer="proxy"),
        "panda_full_mesh_steps_per_s": _env_rate(max(n // 4, 20), "panda mesh", scene=panda, renderer="direct"),
    }
    res["bare_over_image"] = res["bare_steps_per_s"] / res["image_steps_per_s"]
    res["panda_proxy_speedup"] = res["panda_proxy_steps_per_s"] / res["panda_full_mesh_steps_per_s"]
    targets = {"image_steps_per_s": (">=", 250.0), "bare_over_image": ("<=", 1.3), "panda_proxy_speedup": (">=", 5.0)}
    met = {k: (res[k] >= v if op == ">=" else res[k] <= v) for k, (op, v) in targets.items()}
    print(f"{'metric':<30}{'value':>12}  target")
    for key, value in res.items():
        target = f"{targets[key][0]} {targets[key][1]:g} ({'met' if met[key] else 'MISSED'})" if key in targets else ""
        print(f"{key:<30}{value:>12.2f}  {target}")
    out = {"results": res, "targets": {k: list(v) for k, v in targets.items()}, "met": met, "steps": n,
           "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
           "meta": run_metadata(seed=0)}
    atomic_write_json(ROOT / "benchmarks" / "results" / "env.json", out)


if __name__ == "__main__":
    main()
