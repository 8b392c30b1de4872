"""Benchmark: the deploy control loop on the virtual robot (pty bus + e-stop emulator + QP filter).

Runs ``run_deploy`` at 100 Hz with a scripted joint-space policy and reports, from the run's
telemetry:

* period_p50_ms / period_p99_ms: wall time between control-period starts (monotonic clock);
* deadline_miss_rate: periods that ended after their deadline;
* bus_roundtrip_p99_ms: Sync Read (state + health) plus Sync Write of all joints in one period;
* estop_trip_periods_max: control periods from the moment each injected fault becomes visible
  to the loop (the injection, or for policy/bus faults the first bad cycle) to the first stop
  command, minus the periods a rule waits by design (K-1 for faults counted K in a row; the
  150 ms heartbeat timeout for a silent e-stop), maximised over all fault kinds. The per-kind
  table shows the raw figures.

Targets: period p99 <= 12 ms, miss rate < 0.5 %, trip within 2 periods (after K-1 for counted
faults). Robot (``--model``): the default scene's arm (twin kinematics, pybullet-backed virtual
robot: the production path) when the twin is installed; otherwise a stand-in 6-joint serial
chain defined here on the kinematic plant.

Prints a table and writes ``benchmarks/results/loop.json`` atomically.
Usage: ``.venv/bin/python benchmarks/bench_loop.py [--duration 10] [--no-fault-runs] [--model auto]``
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from safetwin.robot_io.deploy import DeployConfig, run_deploy
from safetwin.robot_io.deploy_config import FAULT_KINDS
from safetwin.robot_io.deploy_policy import ScriptedPolicy
from safetwin.robot_io.virtual_robot import ServoSpec
from safetwin.safety.runio import atomic_write_json, config_from_dict, read_jsonl, run_metadata
from safetwin.safety.spec import parse_safety

RESULT = Path(__file__).resolve().parent / "results" / "loop.json"
JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")
SERVOS = [ServoSpec(name, i + 1, "XM540-W270" if i < 5 else "XM430-W350", home_rad=0.2 * (i % 3))
          for i, name in enumerate(JOINTS)]
AXES = np.array([[0, 0, 1], [0, 1, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0], [1, 0, 0]], dtype=float)
OFFSETS = np.array([[0, 0, 0.08], [0, 0, 0.1], [0.3, 0, 0], [0.1, 0, 0], [0.2, 0, 0], [0.07, 0, 0]])
COUNTED = {"bus_drop": "read_failed", "nan_action": "action_rejected", "stale_action": "stale_action",
           "policy_freeze": "deadline_miss", "camera_freeze": "deadline_miss", "camera_fail": "deadline_miss"}
"""Faults that stop only after K consecutive observations by design: their trip is counted from
the period the fault first shows, less the K - 1 periods the supervisor is configured to wait."""


def _rot(axis: np.ndarray, angle: float) -> np.ndarray:
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


class SerialChain:
    """Stand-in RobotModel: revolute joints about ``AXES``; joint i sits at the end of offset i-1,
    rotates, then ``OFFSETS[i]`` (m) follows; analytic Jacobians (base frame)."""

    joint_names = JOINTS
    sphere_names = tuple(f"{j}/0" for j in JOINTS[:-1])

    def _chain(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Joint origins (n,3), world joint axes (n,3), link end points (n,3), final rotation."""
        p, r = np.zeros(3), np.eye(3)
        origins, axes, points = [], [], []
        for axis, off, angle in zip(AXES, OFFSETS, np.asarray(q, float), strict=True):
            origins.append(p.copy())
            r = r @ _rot(axis, angle)
            axes.append(r @ axis)
            p = p + r @ off
            points.append(p.copy())
        return np.array(origins), np.array(axes), np.array(points), r

    @staticmethod
    def _point_jac(origins: np.ndarray, axes: np.ndarray, point: np.ndarray, upto: int) -> np.ndarray:
        jac = np.zeros((3, len(origins)))
        jac[:, :upto + 1] = np.cross(axes[:upto + 1], point - origins[:upto + 1]).T
        return jac

    def ee_pose(self, q):
        _, _, points, r = self._chain(q)
        return points[-1], r

    def ee_jacobian(self, q):
        origins, axes, points, _ = self._chain(q)
        return np.vstack([self._point_jac(origins, axes, points[-1], len(q) - 1), axes.T])

    def spheres(self, q):
        origins, axes, points, _ = self._chain(q)
        centers = points[:-1]
        jac = np.stack([self._point_jac(origins, axes, c, i) for i, c in enumerate(centers)])
        return centers, np.full(len(centers), 0.04), jac


SPEC = parse_safety({
    "joint_limits": {j: {"position": [-2.8, 2.8], "velocity": 2.0, "acceleration": 12.0} for j in JOINTS},
    "workspace": {"lo": [-1.0, -1.0, -0.6], "hi": [1.0, 1.0, 1.2]},
    "contact_force_max": 30.0, "cost_limit": 5.0, "filter": {"time_budget_s": 0.005}}, "bench_loop")


MODEL = {"name": "scene"}


def _run(root: Path, duration: float, fault: str | None = None) -> Path:
    cfg = config_from_dict(DeployConfig, {
        "run_dir": str(root), "action_space": "joint", "duration_s": duration, "policy_hz": 10.0,
        "fault_script": [[0.6, fault]] if fault else [], "supervisor": {"hold_s": 0.1},
        # camera faults act on the twin-rendered camera, which the runner starts only when asked
        **({"camera": "sim"} if fault and fault.startswith("camera_") else {})}, "bench")
    policy = ScriptedPolicy("sine", 4, cfg.chunk_dt, amplitude=0.3, freq_hz=0.3)
    if MODEL["name"] == "scene":  # the production path: scene, kinematics, pybullet-backed virtual arm
        return run_deploy(cfg, policy=policy)
    return run_deploy(cfg, policy=policy, spec=SPEC, robot_model=SerialChain(), sim_servos=SERVOS)


def _pick_model(requested: str) -> str:
    if requested == "standin":
        return requested
    try:
        import safetwin.twin.kinematics  # noqa: F401
        import safetwin.twin.scene  # noqa: F401
    except ImportError:
        if requested == "scene":
            raise
        return "standin"
    return "scene"


def _nominal(root: Path, duration: float) -> dict[str, float]:
    run = _run(root, duration)
    summary = json.loads((run / "summary.json").read_text())
    tele = list(read_jsonl(run / "telemetry.jsonl"))
    armed = [r for r in tele if r["state"] == "ARMED"]
    periods = np.array([r["period_ms"] for r in armed[1:]])
    rt = np.array([r["bus_read_ms"] + r["bus_write_ms"] for r in armed if r["bus_write_ms"] is not None])
    return {"period_p50_ms": float(np.percentile(periods, 50)), "period_p99_ms": float(np.percentile(periods, 99)),
            "period_max_ms": float(periods.max()),
            "deadline_miss_rate": summary["loop"]["deadline_misses"] / max(1, summary["cycles"]),
            "bus_roundtrip_p50_ms": float(np.percentile(rt, 50)), "bus_roundtrip_p99_ms": float(np.percentile(rt, 99)),
            "cycle_p99_ms": summary["loop"]["cycle_ms"]["p99"], "cycles": summary["cycles"],
            "filter_interventions": summary["interventions"]["filter"], "armed_cycles": len(armed),
            "stops": [(x["cause"], x["detail"]) for x in summary["stops"]]}


def _trip(root: Path, fault: str) -> dict[str, object]:
    run = _run(root, 1.4, fault)
    summary = json.loads((run / "summary.json").read_text())
    tele = list(read_jsonl(run / "telemetry.jsonl"))
    inj = next(r for r in tele if r["injected"])
    stop = next((r for r in tele if r["seq"] >= inj["seq"] and r["stop_cmd"]), None)
    if fault in COUNTED:
        seen = next((r for r in tele if r["seq"] >= inj["seq"] and any(f.startswith(COUNTED[fault])
                                                                       for f in r["faults"])), inj)
    else:
        seen = inj
    return {"cause": summary["stops"][0]["cause"] if summary["stops"] else None,
            "from_injection": None if stop is None else stop["seq"] - inj["seq"],
            "after_visible": None if stop is None else stop["seq"] - seen["seq"],
            "counted": fault in COUNTED}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=10.0, help="nominal run length (s)")
    ap.add_argument("--no-fault-runs", action="store_true", help="skip the fault-injection runs")
    ap.add_argument("--model", choices=("auto", "scene", "standin"), default="auto",
                    help="scene: default scene on the pybullet virtual robot; standin: kinematic plant "
                         "and the 6-joint chain here; auto: scene when the twin is installed")
    args = ap.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    MODEL["name"] = _pick_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        nominal = _nominal(Path(tmp) / "nominal", args.duration)
        trips = {} if args.no_fault_runs else {
            kind: _trip(Path(tmp) / kind, kind) for kind in tqdm(FAULT_KINDS, desc="fault runs")}
    cfg = config_from_dict(DeployConfig, {}, "bench")
    k = cfg.supervisor
    allowed = {"bus_drop": k.bus_fault_limit - 1, "nan_action": k.nonfinite_limit - 1,
               "policy_freeze": k.deadline_miss_limit - 1, "camera_freeze": k.deadline_miss_limit - 1,
               "camera_fail": k.deadline_miss_limit - 1,
               "estop_stale": int(np.ceil(cfg.estop_stale_s * cfg.control_hz))}
    excess = [t["after_visible"] - allowed.get(kind, 0) for kind, t in trips.items() if t["after_visible"] is not None]
    result = {**nominal, "estop_trip_periods_max": max(excess) if excess else None,
              "trips": trips, "counted_allowance": allowed,
              "model": MODEL["name"],
              "targets": {"period_p99_ms": 12.0, "deadline_miss_rate": 0.005, "estop_trip_periods_max": 2},
              "meta": run_metadata()}
    print(f"robot: {MODEL['name']}\n{'measurement':34s} {'value':>10s} {'target':>10s}")
    for name, target in (("period_p50_ms", None), ("period_p99_ms", "<= 12"), ("deadline_miss_rate", "< 0.005"),
                         ("bus_roundtrip_p50_ms", None), ("bus_roundtrip_p99_ms", None),
                         ("estop_trip_periods_max", "<= 2")):
        value = result[name]
        shown = "n/a" if value is None else f"{value:10.4f}"
        print(f"{name:34s} {shown:>10s} {target or '':>10s}")
    print(f"\n{'fault':16s} {'cause':18s} {'from inj.':>9s} {'after visible':>13s}")
    for kind, t in trips.items():
        print(f"{kind:16s} {str(t['cause']):18s} {str(t['from_injection']):>9s} {str(t['after_visible']):>13s}")
    atomic_write_json(RESULT, result)
    print(f"\nwrote {RESULT}")


if __name__ == "__main__":
    main()
