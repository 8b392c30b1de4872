"""Per-step safety costs of the twin, computed from the scene's :class:`SafetySpec`.

Every limit comes from the spec object (``ee_speed_max``, ``joints``, ``keepout``,
``contact_force_max``); nothing here holds a number of its own. A policy step (0.1 s) spans
several low-level control steps and physics substeps; each category's indicator is 1 when its
condition held at **any** of them:

* ``collision``: a robot link touches a fragile or obstacle body (pybullet contact points);
* ``keepout``: the end effector or a link collision sphere intersects a keep-out box;
* ``ee_speed``: the end-effector linear speed exceeds ``ee_speed_max`` (m/s);
* ``joint_limit``: a joint position lies outside [lower, upper] (rad) or
  |velocity| exceeds its limit (rad/s);
* ``force``: a contact normal force on the robot exceeds ``contact_force_max`` (N).

The step cost is the sum of the five indicators. Frames: keep-out boxes, sphere centres and
the end-effector position are in the robot **base** frame (m).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from dataclasses import dataclass, field

import numpy as np
import pybullet as p

from safetwin.safety.spec import Box, SafetySpec

COST_CATEGORIES: tuple[str, ...] = ("collision", "keepout", "ee_speed", "joint_limit", "force")
"""The cost categories, in the order of ``info["costs"]``."""

HAZARD_ROLES: tuple[str, ...] = ("fragile", "obstacle")
"""Object roles whose contact with the robot counts as a collision."""

CLOSEST_POINT_RANGE = 2.0
"""m: search radius of getClosestPoints for ``min_fragile_distance`` (reported as this value
when no fragile body is nearer)."""


def spheres_in_box(centers: np.ndarray, radii: np.ndarray, box: Box) -> bool:
    """True when any sphere (centres (m, 3) m, radii (m,) m, base frame) intersects ``box``."""
    if len(centers) == 0:
        return False
    lo, hi = np.asarray(box.lo), np.asarray(box.hi)
    closest = np.clip(centers, lo, hi)
    dist2 = np.sum((centers - closest) ** 2, axis=1)
    return bool(np.any(dist2 < np.asarray(radii) ** 2))


def point_in_box(point: np.ndarray, box: Box) -> bool:
    """True when ``point`` (3,) m lies inside ``box`` (closed), base frame."""
    return bool(np.all(point >= np.asarray(box.lo)) and np.all(point <= np.asarray(box.hi)))


def joint_limit_violated(q: np.ndarray, dq: np.ndarray, spec: SafetySpec) -> bool:
    """True when any controlled joint is outside its position range (rad) or over its
    velocity limit (rad/s). ``q`` and ``dq`` are in the spec's joint order."""
    lower = np.array([j.lower for j in spec.joints])
    upper = np.array([j.upper for j in spec.joints])
    vmax = np.array([j.velocity for j in spec.joints])
    q, dq = np.asarray(q, dtype=float), np.asarray(dq, dtype=float)
    if q.shape != lower.shape or dq.shape != lower.shape:
        raise ValueError(f"joint state shapes {q.shape}/{dq.shape} do not match the spec's "
                         f"{len(lower)} joints {spec.joint_names}")
    return bool(np.any(q < lower) or np.any(q > upper) or np.any(np.abs(dq) > vmax))


@dataclass
class StepAccumulator:
    """Cost indicators and peak values gathered over one policy step."""

    flags: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(COST_CATEGORIES, False))
    max_ee_speed: float = 0.0  # m/s
    max_contact_force: float = 0.0  # N

    def costs(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.flags.items()}


class CostMonitor:
    """Evaluates the cost categories of one env in one pybullet client.

    Args:
        spec: the scene's safety spec (the only source of limits).
        client: pybullet client id.
        robot: body id of the robot.
        hazards: body id -> role (``fragile`` / ``obstacle``) of the bodies the robot must not touch.
    """

    def __init__(self, spec: SafetySpec, client: int, robot: int, hazards: Mapping[int, str]) -> None:
        unknown = {r for r in hazards.values() if r not in HAZARD_ROLES}
        if unknown:
            raise ValueError(f"unknown hazard role(s) {sorted(unknown)}; expected {HAZARD_ROLES}")
        self.spec, self.client, self.robot = spec, client, robot
        self.hazards = dict(hazards)
        self.fragile = [b for b, r in self.hazards.items() if r == "fragile"]
        self.acc = StepAccumulator()

    def begin_step(self) -> None:
        """Start a new policy step (clears the indicators)."""
        self.acc = StepAccumulator()

    def observe_contacts(self) -> None:
        """Read the robot's contact points after a physics substep (collision and force)."""
        contacts = p.getContactPoints(bodyA=self.robot, physicsClientId=self.client)
        for c in contacts:
            other = c[2]
            if other == self.robot:
                continue
            force = float(c[9])
            if force > self.acc.max_contact_force:
                self.acc.max_contact_force = force
            if other in self.hazards:
                self.acc.flags["collision"] = True
        if self.acc.max_contact_force > self.spec.contact_force_max:
            self.acc.flags["force"] = True

    def observe_state(self, q: np.ndarray, dq: np.ndarray, ee_pos: np.ndarray, ee_speed: float,
                      centers: np.ndarray, radii: np.ndarray) -> None:
        """Check one control step's kinematic state.

        Args:
            q, dq: joint positions (rad) and velocities (rad/s), spec joint order.
            ee_pos: end-effector position (m, base frame).
            ee_speed: end-effector linear speed (m/s).
            centers, radii: link collision spheres (m, base frame).
        """
        if not np.isfinite(ee_speed) or ee_speed > self.spec.ee_speed_max:
            self.acc.flags["ee_speed"] = True
        self.acc.max_ee_speed = max(self.acc.max_ee_speed, float(ee_speed))
        if joint_limit_violated(q, dq, self.spec):
            self.acc.flags["joint_limit"] = True
        for box in self.spec.keepout:
            if point_in_box(ee_pos, box) or spheres_in_box(centers, radii, box):
                self.acc.flags["keepout"] = True
                break

    def min_fragile_distance(self, bodies: Iterable[int] | None = None) -> float:
        """Smallest distance (m) between the robot and any fragile body (negative when
        penetrating); ``CLOSEST_POINT_RANGE`` when none is within that range or none exists."""
        best = CLOSEST_POINT_RANGE
        for body in self.fragile if bodies is None else bodies:
            pts = p.getClosestPoints(self.robot, body, CLOSEST_POINT_RANGE, physicsClientId=self.client)
            for pt in pts:
                best = min(best, float(pt[8]))
        return best


class TaskReward:
    """The task reward: ``success_bonus * success + shaping_scale * (gamma * Phi(s') - Phi(s))
    - time_penalty`` with the potential Phi = -(progress distance, m):

    * ``ee_in_zone`` (reach): Phi = -|ee - target| (3-D);
    * ``object_in_zone`` (push): Phi = -(|object - goal|_xy + 0.5 |ee - object|), so getting
      to the object and moving it to the goal both pay.

    Args:
        task: the scene's task block (success condition and time penalty).
        success_bonus: reward on the step that reaches success.
        gamma: discount of the potential shaping (match the learner's).
        shaping_scale: factor on the shaping term (per m).
    """

    def __init__(self, task: Any, success_bonus: float, gamma: float, shaping_scale: float) -> None:
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        if success_bonus < 0.0 or shaping_scale < 0.0:
            raise ValueError("success_bonus and shaping_scale must be >= 0")
        self.task, self.bonus, self.gamma, self.scale = task, success_bonus, gamma, shaping_scale

    def _distances(self, world: Any) -> tuple[float, float]:
        ee = world.ee_pose()[0]
        if self.task.success.type == "ee_in_zone":
            return float(np.linalg.norm(ee - world.goal_position())), 0.0
        obj = world.object_pose(world.target)[0]
        return float(np.linalg.norm((obj - world.goal_position())[:2])), float(np.linalg.norm(ee - obj))

    def success(self, world: Any) -> bool:
        """True when the task's success condition holds."""
        return self._distances(world)[0] < self.task.success.distance

    def potential(self, world: Any) -> float:
        d_goal, d_obj = self._distances(world)
        return -(d_goal + 0.5 * d_obj)

    def reward(self, phi_before: float, phi_after: float, success: bool) -> float:
        return (self.bonus * float(success) + self.scale * (self.gamma * phi_after - phi_before)
                - self.task.time_penalty)
