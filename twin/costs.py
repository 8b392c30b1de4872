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

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pybullet as p
from numba import njit

from safetwin.safety.spec import SafetySpec

COST_CATEGORIES: tuple[str, ...] = ("collision", "keepout", "ee_speed", "joint_limit", "force")
"""The cost categories, in the order of ``info["costs"]``."""

HAZARD_ROLES: tuple[str, ...] = ("fragile", "obstacle")
"""Object roles whose contact with the robot counts as a collision."""

CLOSEST_POINT_RANGE = 2.0
"""m: search radius of getClosestPoints for ``min_fragile_distance`` (reported as this value
when no fragile body is nearer)."""


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
        self._lower = np.array([j.lower for j in spec.joints])
        self._upper = np.array([j.upper for j in spec.joints])
        self._vmax = np.array([j.velocity for j in spec.joints])
        self._boxes = [(np.asarray(b.lo, float), np.asarray(b.hi, float)) for b in spec.keepout]
        self._box_lo = np.array([lo for lo, _ in self._boxes], dtype=float).reshape(-1, 3)
        self._box_hi = np.array([hi for _, hi in self._boxes], dtype=float).reshape(-1, 3)
        self.acc = StepAccumulator()

    def begin_step(self) -> None:
        """Start a new policy step (clears the indicators)."""
        self.acc = StepAccumulator()

    def observe_contacts(self) -> None:
        """Read the robot's contact points after a physics substep (collision and force)."""
        contacts = p.getContactPoints(bodyA=self.robot, physicsClientId=self.client)
        if not contacts:
            return
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
        acc, speed = self.acc, float(ee_speed)
        if not speed <= self.spec.ee_speed_max:  # also true for NaN
            acc.flags["ee_speed"] = True
        if speed > acc.max_ee_speed:
            acc.max_ee_speed = speed
        if q.shape != self._lower.shape or dq.shape != q.shape:
            raise ValueError(f"joint state shape {q.shape} does not match the spec's joints {self.spec.joint_names}")
        joint_limit, keepout = _state_violations(q, dq, self._lower, self._upper, self._vmax, ee_pos,
                                                 self._box_lo, self._box_hi, centers, radii)
        acc.flags["joint_limit"] |= joint_limit
        acc.flags["keepout"] |= keepout

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
        goal = world.goal_position()
        if self.task.success.type == "ee_in_zone":
            return math.dist(ee, goal), 0.0
        obj = world.object_pose(world.target)[0]
        return math.hypot(obj[0] - goal[0], obj[1] - goal[1]), math.dist(ee, obj)

    def evaluate(self, world: Any) -> tuple[bool, float, float]:
        """(success, potential, goal distance m) of the present state, from one distance evaluation.

        The goal distance is the task's progress distance: target object to goal centre in the
        table plane (push), EE point to goal (reach, 3-D); success is it below ``success.distance``.
        """
        d_goal, d_obj = self._distances(world)
        return d_goal < self.task.success.distance, -(d_goal + 0.5 * d_obj), d_goal

    def reward(self, phi_before: float, phi_after: float, success: bool) -> float:
        return (self.bonus * float(success) + self.scale * (self.gamma * phi_after - phi_before)
                - self.task.time_penalty)


@njit(cache=True)
def _state_violations(q, dq, lower, upper, vmax, ee, box_lo, box_hi, centers, radii):  # noqa: ANN001, ANN202
    """``(joint_limit, keepout)`` of one state (compiled: it runs every control step).

    joint_limit: some ``q`` outside [lower, upper] (rad) or ``|dq|`` above ``vmax`` (rad/s);
    NaN counts as outside. keepout: the EE point (m) lies in a box, or a sphere (centres (m, 3)
    m, radii (m,) m) reaches into one (squared distance from the centre to the box < r^2).
    """
    joint_limit = False
    for j in range(q.shape[0]):
        if not (lower[j] <= q[j] <= upper[j] and abs(dq[j]) <= vmax[j]):
            joint_limit = True
    keepout = False
    for k in range(box_lo.shape[0]):
        inside = True
        for a in range(3):
            inside = inside and box_lo[k, a] <= ee[a] <= box_hi[k, a]
        keepout = keepout or inside
        for i in range(centers.shape[0]):
            sq = 0.0
            for a in range(3):
                gap = centers[i, a] - min(max(centers[i, a], box_lo[k, a]), box_hi[k, a])
                sq += gap * gap
            keepout = keepout or sq < radii[i] * radii[i]
    return joint_limit, keepout
