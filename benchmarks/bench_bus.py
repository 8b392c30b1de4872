"""Benchmark: Dynamixel bus and driver cycle times on the virtual robot (pseudo-terminal).

Measures, on a 9-servo ViperX-300-S-like chain (6 joints, 2 of them dual-servo, plus the
gripper) backed by the kinematic plant:

* one control cycle = ``get_observation()`` (2 Sync Reads: state + health) + ``send_action()``,
  also on the pybullet-backed virtual vx300s of the ``reach_avoid`` scene;
* a single Read round trip; the packet parser's decode throughput.

Target: a 100 Hz control loop needs the cycle p99 well under 10 ms. A pty has no baud-rate
limit, so on a real 1 Mbps bus add about 7 ms of wire time for this chain.

Prints a table and writes ``benchmarks/results/bus.json`` atomically.
Usage: ``.venv/bin/python benchmarks/bench_bus.py [--cycles 2000]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from safetwin.robot_io import protocol as proto
from safetwin.robot_io.driver import ArmConfig, DynamixelArm
from safetwin.robot_io.virtual_robot import ServoSpec, VirtualRobot
from safetwin.safety.runio import atomic_write_json, run_metadata

VX300S_LIKE = [ServoSpec("waist", 1, "XM540-W270"), ServoSpec("shoulder", 2, "XM540-W270", secondary_id=3),
               ServoSpec("elbow", 4, "XM540-W270", secondary_id=5), ServoSpec("forearm_roll", 6, "XM540-W270"),
               ServoSpec("wrist_angle", 7, "XM540-W270"), ServoSpec("wrist_rotate", 8, "XM430-W350"),
               ServoSpec("gripper", 9, "XM430-W350")]
RESULT = Path(__file__).resolve().parent / "results" / "bus.json"


def stats_ms(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "max_ms": float(a.max()), "n": int(a.size)}


def bench_cycles(cycles: int, scene: str | None = None) -> tuple[dict[str, float], dict[str, float], dict[str, int]]:
    vr_maker = VirtualRobot.from_scene(scene) if scene else VirtualRobot.kinematic(VX300S_LIKE)
    with vr_maker as vr:
        arm = DynamixelArm(ArmConfig.from_dict(vr.arm_config(timeout_s=0.05)))
        with arm:
            arm.enable_torque()
            names = arm.joint_names
            home = arm.get_observation()["position"]
            cycle, single = [], []
            for k in tqdm(range(cycles), desc="control cycles", leave=False):
                t0 = time.perf_counter()
                arm.get_observation()
                goal = np.clip(home + 0.1 * np.sin(0.01 * k), *arm.joint_limits.T)
                arm.send_action(dict(zip(names, goal.tolist(), strict=True)))
                cycle.append(time.perf_counter() - t0)
            for _ in tqdm(range(min(cycles, 500)), desc="single reads", leave=False):
                t0 = time.perf_counter()
                arm.bus.read(1, 132, 4)
                single.append(time.perf_counter() - t0)
            faults = arm.bus.fault_counts()
    return stats_ms(cycle), stats_ms(single), faults


def bench_parser(frames: int = 20000) -> float:
    stream = b"".join(proto.encode_status(i % 250, 0, bytes(range(23))) for i in range(frames))
    parser = proto.PacketParser()
    t0 = time.perf_counter()
    got = 0
    for i in range(0, len(stream), 4096):
        got += len(parser.feed(stream[i:i + 4096]))
    elapsed = time.perf_counter() - t0
    assert got == frames
    return len(stream) / elapsed / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=2000)
    args = ap.parse_args()
    cycle, single, faults = bench_cycles(args.cycles)
    cycle_pb, _, faults_pb = bench_cycles(max(args.cycles // 4, 10), scene="reach_avoid")
    mb_s = bench_parser()
    rows = [("cycle: obs (2 sync reads) + sync write, 9 servos", cycle),
            ("same, pybullet vx300s plant (reach_avoid)", cycle_pb),
            ("single Read round trip", single)]
    print(f"{'measurement':52s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s}")
    for name, s in rows:
        print(f"{name:52s} {s['p50_ms']:8.3f} {s['p99_ms']:8.3f} {s['max_ms']:8.3f}")
    print(f"{'parser throughput (MB/s)':52s} {mb_s:8.2f}")
    total = sum(faults.values()) + sum(faults_pb.values())
    print(f"comm faults during the runs: {total}")
    atomic_write_json(RESULT, {"cycle": cycle, "cycle_pybullet": cycle_pb, "single_read": single,
                               "parser_mb_s": mb_s, "comm_faults": faults, "comm_faults_pybullet": faults_pb, "servos": 9, "transport": "pty (virtual robot)",
                               "meta": run_metadata()})


if __name__ == "__main__":
    main()
