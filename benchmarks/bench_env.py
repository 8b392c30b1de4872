"""Throughput of the twin env on one core: ``python benchmarks/bench_env.py [--steps N]``.

Measures (policy steps per second, tabletop_push with the bundled arm unless named):

* ``image_steps_per_s``: TwinEnv with the 64x64 front camera;
* ``state_steps_per_s``: TwinEnv without images;
* ``bare_steps_per_s``: the same physics substeps (the arm driven by the image run's recorded
  motor commands) and one render per step, no env code;
* ``panda_proxy_steps_per_s`` / ``panda_full_mesh_steps_per_s``: ``scenes/panda_reach.yaml``
  rendered through the primitive proxy and through the Panda's full visual meshes;
* ``reset_ms``: one ``reset()`` of the image env (no target; it is in the step rates too).

The runners of a comparison are measured interleaved (``--rounds`` blocks, rotating order) on
one pinned core, so the machine's drift does not land on one of them.

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
from safetwin.twin.world import POSITION_GAIN, VELOCITY_GAIN  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("bench_env")


class _EnvRunner:
    """A TwinEnv stepped with random actions (uniform in [-0.3, 0.3]), reset when an episode ends."""

    def __init__(self, label: str, **kwargs: object) -> None:
        self.label, self.env = label, TwinEnv(**kwargs)  # type: ignore[arg-type]
        self.rng = np.random.default_rng(0)
        self.env.reset(seed=0)
        self.env.step(np.zeros(7, np.float32))  # warm-up

    def run(self, steps: int) -> float:
        """Seconds for ``steps`` policy steps."""
        env, rng = self.env, self.rng
        t0 = time.perf_counter()
        for _ in range(steps):
            _, _, terminated, truncated, _ = env.step(rng.uniform(-0.3, 0.3, 7).astype(np.float32))
            if terminated or truncated:
                env.reset()
        return time.perf_counter() - t0

    def close(self) -> None:
        self.env.close()


def record_motor_commands(steps: int) -> list[tuple[list[tuple[list, list]], object, bool]]:
    """The physics inputs of the image runner's run (same scene, seed and actions): per policy
    step, the arm motor commands (target positions rad, velocities rad/s; one per control step),
    the gripper command, and whether the episode was reset after it."""
    env = TwinEnv("tabletop_push")
    env.reset(seed=0)
    env.step(np.zeros(7, np.float32))
    w, rng = env.world, np.random.default_rng(0)
    arm: list[tuple[list, list]] = []
    grip: list[object] = []
    apply_arm, set_gripper = w.apply_joint_velocity, w.set_gripper
    w.apply_joint_velocity = lambda q, qd, dt: (arm.append(((q + qd * dt).tolist(), qd.tolist())),
                                                apply_arm(q, qd, dt))
    w.set_gripper = lambda cmd: (grip.append(cmd), set_gripper(cmd))
    log = []
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(rng.uniform(-0.3, 0.3, 7).astype(np.float32))
        log.append((arm[:], grip[-1], terminated or truncated))
        arm.clear()
        if terminated or truncated:
            env.reset()
    env.close()
    return log


class _BareRunner:
    """The same physics substeps plus one render per policy step, with no env code: the image
    runner's recorded motor commands (:func:`record_motor_commands`) are sent straight to
    pybullet before each control step's substeps, so the arm moves as it does in the env (a
    static arm is cheaper to simulate), and the state is restored where the env reset."""

    label = "bare"

    def __init__(self, commands: list) -> None:
        self.env = TwinEnv("tabletop_push")
        self.env.reset(seed=0)
        w = self.env.world
        self.client, self.substeps = w.client, w.substeps
        self.commands, self.cursor = commands, 0
        self.initial = p.saveState(physicsClientId=self.client)
        self.gripper = self.env.scene.robot.gripper

    def run(self, steps: int) -> float:
        w, client, cam, light = self.env.world, self.client, self.env._front, self.env._light
        robot, joints, efforts, n = w.robot, w.joint_ids, w.efforts, w.n_joints
        kp, kd = [POSITION_GAIN] * n, [VELOCITY_GAIN] * n
        t0 = time.perf_counter()
        for _ in range(steps):
            arm, grip, reset = self.commands[self.cursor % len(self.commands)]
            self.cursor += 1
            w.set_gripper(grip)  # one pybullet call, as the env makes it
            for targets, velocities in arm:
                p.setJointMotorControlArray(robot, joints, p.POSITION_CONTROL, targetPositions=targets,
                                            targetVelocities=velocities, forces=efforts, positionGains=kp,
                                            velocityGains=kd, physicsClientId=client)
                for _ in range(self.substeps):
                    p.stepSimulation(physicsClientId=client)
            capture(client, cam, light)
            if reset:
                p.restoreState(self.initial, physicsClientId=client)
        return time.perf_counter() - t0

    def close(self) -> None:
        self.env.close()


def interleaved_rates(runners: dict[str, object], steps: int, rounds: int) -> dict[str, float]:
    """Steps per second of each runner, measured in ``rounds`` interleaved blocks of
    ``steps // rounds`` steps (the order rotating each round), so slow drifts of a shared
    machine fall on every runner alike instead of on whichever ran last."""
    block = max(steps // rounds, 1)
    spent = dict.fromkeys(runners, 0.0)
    names = list(runners)
    for r in tqdm(range(rounds), desc="rounds", leave=False):
        for name in names[r % len(names):] + names[:r % len(names)]:
            spent[name] += runners[name].run(block)  # type: ignore[attr-defined]
    return {name: block * rounds / spent[name] for name in names}


def reset_ms(env: TwinEnv, resets: int) -> float:
    """Mean milliseconds of ``env.reset()`` (new randomisation, snapshot restore, first image)."""
    env.reset(seed=1)
    t0 = time.perf_counter()
    for _ in range(resets):
        env.reset()
    return (time.perf_counter() - t0) / resets * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="policy steps per measurement")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved blocks per measurement")
    args = parser.parse_args()
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one process on one core
    panda = str(ROOT / "scenes" / "panda_reach.yaml")
    n = args.steps
    runners = {"image_steps_per_s": _EnvRunner("image", scene="tabletop_push"),
               "state_steps_per_s": _EnvRunner("state", scene="tabletop_push", images=False),
               "bare_steps_per_s": _BareRunner(record_motor_commands(n))}
    res = interleaved_rates(runners, n, args.rounds)
    panda_runners = {"panda_proxy_steps_per_s": _EnvRunner("panda proxy", scene=panda, renderer="proxy"),
                     "panda_full_mesh_steps_per_s": _EnvRunner("panda mesh", scene=panda, renderer="direct")}
    res.update(interleaved_rates(panda_runners, max(n // 4, 20), args.rounds))
    res["reset_ms"] = reset_ms(runners["image_steps_per_s"].env, max(n // 20, 10))  # type: ignore[attr-defined]
    for runner in (*runners.values(), *panda_runners.values()):
        runner.close()
    res["bare_over_image"] = res["bare_steps_per_s"] / res["image_steps_per_s"]
    res["panda_proxy_speedup"] = res["panda_proxy_steps_per_s"] / res["panda_full_mesh_steps_per_s"]
    targets = {"image_steps_per_s": (">=", 250.0), "bare_over_image": ("<=", 1.3), "panda_proxy_speedup": (">=", 5.0)}
    met = {k: (res[k] >= v if op == ">=" else res[k] <= v) for k, (op, v) in targets.items()}
    print(f"{'metric':<30}{'value':>12}  target")
    for key, value in res.items():
        target = f"{targets[key][0]} {targets[key][1]:g} ({'met' if met[key] else 'MISSED'})" if key in targets else ""
        print(f"{key:<30}{value:>12.2f}  {target}")
    out = {"results": res, "targets": {k: list(v) for k, v in targets.items()}, "met": met, "steps": n,
           "rounds": args.rounds,
           "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
           "meta": run_metadata(seed=0)}
    atomic_write_json(ROOT / "benchmarks" / "results" / "env.json", out)


if __name__ == "__main__":
    main()
