"""Benchmark the CBF-QP safety filter.

Measures, on the bundled arm with the ``tabletop_push`` spec (the twin's ``Kinematics``):
p50/p99 latency of one whole ``certify`` call (kinematics, constraint assembly, presolve, DAQP
solve, verification against every row), the same problems through the cvxpy reference
(assembly + cvxpy solve of all rows), the rows left for the solver after the exact presolve,
the speed-up, and a B2 adversarial run (trials, feasible solves, violations). When the twin is
not installed it falls back to the 6-DoF analytic test arm and says so in the output.

    .venv/bin/python benchmarks/bench_filter.py [--timed-calls 5000] [--adversarial-steps 100000]

Prints a table and writes ``benchmarks/results/filter.json`` atomically.
Targets: p99 <= 250 us, speed-up >= 5x, violations = 0.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from safetwin.safety.filter import FilterState, Nominal, SafetyFilter
from safetwin.safety.filter_check import adversarial_run, random_safe_state
from safetwin.safety.qp import CvxpyReference
from safetwin.safety.runio import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "filter.json"


def _fallback(dt: float) -> tuple[SafetyFilter, str]:
    path = ROOT / "tests" / "safety" / "test_filter_models.py"
    spec = importlib.util.spec_from_file_location("safetwin_bench_filter_models", path)
    models = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = models
    spec.loader.exec_module(models)
    arm = models.SpatialArm(offsets=((0, 0, 0.1), (0, 0, 0.1), (0.25, 0, 0), (0.22, 0, 0), (0.08, 0, 0),
                                     (0.06, 0, 0)),
                            axes=((0, 0, 1), (0, 1, 0), (0, 1, 0), (0, 1, 0), (1, 0, 0), (0, 1, 0)))
    return SafetyFilter.from_spec(models.spatial_spec(arm), arm, dt), "analytic 6-DoF test arm (twin missing)"


def load_filter(dt: float) -> tuple[SafetyFilter, str]:
    """The filter on the bundled arm + tabletop_push spec, or the analytic fallback."""
    try:
        from safetwin.twin.kinematics import Kinematics
        from safetwin.twin.scene import load_scene
    except ImportError:
        return _fallback(dt)
    scene = load_scene("tabletop_push")
    return SafetyFilter.from_spec(scene.safety, Kinematics.for_scene(scene), dt), "bundled arm, tabletop_push"


def problems(filt: SafetyFilter, count: int, seed: int) -> list[tuple[FilterState, Nominal]]:
    rng = np.random.default_rng(seed)
    vel = np.array([j.velocity for j in filt.spec.joints])
    out = []
    for _ in range(count):
        q, dq = random_safe_state(filt.spec, filt.robot, rng)
        out.append((FilterState(q, dq), Nominal.joint(rng.uniform(-1.5, 1.5, len(q)) * vel)))
    return out


class Precomputed:
    """A robot model answering from a table of precomputed kinematics (keyed by ``q``), to time
    the filter's own work (assembly, solve, verification) without the kinematics."""

    def __init__(self, model, states) -> None:
        self.joint_names, self.sphere_names = model.joint_names, model.sphere_names
        self._table = {s.q.tobytes(): (model.ee_pose(s.q), model.ee_jacobian(s.q), model.spheres(s.q))
                       for s in states}
        self._model = model

    def _get(self, q):
        hit = self._table.get(np.asarray(q).tobytes())
        if hit is None:  # the construction-time probe asks for other configurations
            return self._model.ee_pose(q), self._model.ee_jacobian(q), self._model.spheres(q)
        return hit

    def ee_pose(self, q):
        return self._get(q)[0]

    def ee_jacobian(self, q):
        return self._get(q)[1]

    def spheres(self, q):
        return self._get(q)[2]


def time_calls(fn, items, desc: str) -> np.ndarray:
    """Wall time (us) of ``fn(*item)`` per item, monotonic clock, GC collected beforehand."""
    gc.collect()
    times = np.empty(len(items))
    for i, item in enumerate(tqdm(items, desc=desc, unit="call", leave=False)):
        t0 = time.perf_counter()
        fn(*item)
        times[i] = (time.perf_counter() - t0) * 1e6
    return times


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--timed-calls", type=int, default=5000, help="certify calls timed")
    parser.add_argument("--cvxpy-trials", type=int, default=300, help="cvxpy reference solves timed")
    parser.add_argument("--adversarial-steps", type=int, default=100_000,
                        help="B2 steps (0 to skip); reported as trials / violations")
    parser.add_argument("--dt", type=float, default=0.01, help="control period (s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the adversarial run brakes on purpose; keep quiet

    filt, robot = load_filter(args.dt)
    items = problems(filt, args.timed_calls, args.seed)
    for item in items[:200]:
        filt.certify(*item)  # warm-up
    fast = time_calls(filt.certify, items, "certify (DAQP)")
    table = Precomputed(filt.robot, [s for s, _ in items])
    own = time_calls(SafetyFilter.from_spec(filt.spec, table, args.dt).certify, items, "certify w/o FK")
    ref = CvxpyReference()
    sub = items[: args.cvxpy_trials]
    ref(filt.build(*sub[0]).qp)  # compile once, as a reference user would
    slow = time_calls(lambda s, n: ref(filt.build(s, n).qp), sub, "cvxpy reference")
    built = [filt.build(*item) for item in sub]
    daqp_solve = time_calls(filt.solver, [(fp.reduced(),) for fp in built], "DAQP solve only (presolved)")
    cvxpy_solve = time_calls(ref, [(fp.qp,) for fp in built], "cvxpy solve only (all rows)")
    rows = filt.build(*items[0]).qp.G.shape[0]
    solver_rows = [filt.build(*item).reduced().G.shape[0] for item in items]
    result: dict[str, object] = {
        "robot": robot, "dt_s": args.dt, "n_joints": filt.n, "constraint_rows": rows,
        "bound_rows": 2 * filt.n, "solver_rows_p50": float(np.percentile(solver_rows, 50)),
        "solver_rows_max": int(max(solver_rows)), "timed_calls": args.timed_calls,
        "p50_us": float(np.percentile(fast, 50)), "p99_us": float(np.percentile(fast, 99)),
        "max_us": float(fast.max()), "cvxpy_trials": len(sub),
        "cvxpy_p50_us": float(np.percentile(slow, 50)),
        "speedup_vs_cvxpy": float(np.percentile(slow, 50) / np.percentile(fast, 50)),
        "filter_only_p50_us": float(np.percentile(own, 50)), "filter_only_p99_us": float(np.percentile(own, 99)),
        "daqp_solve_p50_us": float(np.percentile(daqp_solve, 50)),
        "cvxpy_solve_p50_us": float(np.percentile(cvxpy_solve, 50)),
        "solve_speedup": float(np.percentile(cvxpy_solve, 50) / np.percentile(daqp_solve, 50)),
        "machine": f"{platform.processor() or platform.machine()} ({platform.node()})",
    }
    if args.adversarial_steps:
        stats = adversarial_run(filt, args.adversarial_steps, seed=args.seed + 1, progress=True)
        result.update(trials=stats.trials, adversarial_feasible=stats.feasible,
                      violations=stats.violations, brakes=stats.brakes,
                      brake_deeper_than_nominal=stats.deeper)
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULT, result)
    width = max(len(k) for k in result)
    print(f"{'metric':<{width}}  value")
    for key, value in result.items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    print(f"targets: p99 <= 250 us, speedup >= 5x, violations = 0  -> written {RESULT.relative_to(ROOT)}")
    return result


if __name__ == "__main__":
    main()
