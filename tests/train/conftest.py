"""Fixtures of the train tests: a tiny gymnasium env with the twin's observation/info contract.

``TinyReach``: a 3-D point end effector must reach a goal while staying away from a fragile
sphere. Observation Dict ``image`` uint8 (64, 64, 3) (top view: goal green, fragile red, EE
blue), ``proprio`` float32 (4,) (EE position m in the base frame, gripper), ``instruction`` Text;
action Box(-1, 1, (7,)) (EE deltas, only dx, dy, dz act). ``info``: ``cost``, ``costs`` (the
twin's five categories), ``is_success``, ``privileged`` (EE, goal, fragile centre), and
``min_fragile_distance``. ``expert_action()`` steers around the fragile sphere.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from safetwin.safety.spec import SafetySpec, parse_safety

TINY_ID = "safetwin_test/TinyReach-v0"
INSTRUCTIONS = ("reach the green target", "move the gripper to the green goal",
                "go to the target without touching the red ball")
STEP = 0.05  # m per step at |action| = 1
FRAGILE_R = 0.08  # m


class TinyReach(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, scene: str = "tiny", max_steps: int = 30, randomize: bool = True) -> None:
        self.observation_space = gym.spaces.Dict({
            "image": gym.spaces.Box(0, 255, (64, 64, 3), np.uint8),
            "proprio": gym.spaces.Box(-np.inf, np.inf, (4,), np.float32),
            "instruction": gym.spaces.Text(200, charset=string.printable)})
        self.action_space = gym.spaces.Box(-1.0, 1.0, (7,), np.float32)
        self.max_steps, self.randomize = max_steps, randomize

    def reset(self, *, seed: int | None = None, options: dict | None = None):  # noqa: ANN201
        super().reset(seed=seed)
        rng = self.np_random
        jitter = 0.05 if self.randomize else 0.0
        self.ee = np.array([-0.25, 0.0, 0.1]) + rng.uniform(-jitter, jitter, 3)
        self.goal = np.array([0.25, 0.0, 0.1]) + rng.uniform(-jitter, jitter, 3)
        self.fragile = np.array([0.0, 0.0, 0.1]) + rng.uniform(-jitter, jitter, 3) * np.array([1, 0.5, 0])
        self.instruction = INSTRUCTIONS[int(rng.integers(len(INSTRUCTIONS)))]
        self.t = 0
        return self._obs(), self._info(np.zeros(3))

    def _obs(self) -> dict:
        img = np.zeros((64, 64, 3), np.uint8)
        for p, ch in ((self.goal, 1), (self.fragile, 0), (self.ee, 2)):
            u, v = (np.clip((p[:2] + 0.5) * 64, 0, 63)).astype(int)
            img[max(u - 3, 0):u + 3, max(v - 3, 0):v + 3, ch] = 255
        proprio = np.concatenate([self.ee, [0.0]]).astype(np.float32)
        return {"image": img, "proprio": proprio, "instruction": self.instruction}

    def _info(self, delta: np.ndarray) -> dict:
        dist = float(np.linalg.norm(self.ee - self.fragile)) - FRAGILE_R
        costs = {"collision": float(dist < 0), "keepout": 0.0,
                 "ee_speed": float(np.linalg.norm(delta) > 1.5 * STEP), "joint_limit": 0.0, "force": 0.0}
        return {"cost": sum(costs.values()), "costs": costs,
                "is_success": bool(np.linalg.norm(self.ee - self.goal) < 0.05),
                "privileged": np.concatenate([self.ee, self.goal, self.fragile]).astype(np.float32),
                "min_fragile_distance": dist}

    def step(self, action):  # noqa: ANN001, ANN201
        action = np.clip(np.asarray(action, dtype=np.float64), -1, 1)
        before = np.linalg.norm(self.ee - self.goal)
        delta = action[:3] * STEP
        self.ee = self.ee + delta
        self.t += 1
        info = self._info(delta)
        reward = 10.0 * (before - np.linalg.norm(self.ee - self.goal)) + (1.0 if info["is_success"] else 0.0)
        return self._obs(), float(reward), info["is_success"], self.t >= self.max_steps, info

    def expert_action(self) -> np.ndarray:
        to_goal = self.goal - self.ee
        away = self.ee - self.fragile
        d = np.linalg.norm(away[:2])
        push = np.zeros(3)
        if d < FRAGILE_R + 0.08:  # go around the fragile ball
            side = np.array([0.0, 1.0 if away[1] >= 0 else -1.0, 0.0])
            push = side * 1.5
        direction = to_goal / max(np.linalg.norm(to_goal), 1e-6) + push
        step = direction / max(np.linalg.norm(direction), 1e-6) * min(1.0, np.linalg.norm(to_goal) / STEP)
        return np.concatenate([step, np.zeros(4)]).astype(np.float32)


if TINY_ID not in gym.registry:
    gym.register(TINY_ID, entry_point=TinyReach)


@dataclass
class TinyScene:
    """The parts of a twin Scene the trainer uses: name, path, safety."""

    name: str
    path: Path
    safety: SafetySpec


def tiny_scene(cost_limit: float = 1.0) -> TinyScene:
    safety = parse_safety({
        "joint_limits": {"j1": {"position": [-3.0, 3.0], "velocity": 2.0, "acceleration": 10.0}},
        "workspace": {"lo": [-1, -1, -1], "hi": [1, 1, 1]},
        "contact_force_max": 20.0, "cost_limit": cost_limit}, "tiny.yaml")
    return TinyScene("tiny", Path("tiny.yaml"), safety)


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    """One torch thread for every test here, set before module-scoped fixtures run: a run's float
    bits depend on the thread count, so the reference run of a resume test must use the same."""
    torch.set_num_threads(1)


@pytest.fixture
def scene() -> TinyScene:
    return tiny_scene()
