"""Pybullet plant for the virtual servo bus: the bundled arm's joints under servo control.

Each servo's Goal Position becomes pybullet position control of its joint, with the speed
capped at the servo's Profile Velocity (or Velocity Limit) and the force at the model's
stall torque (``control_tables.yaml``). Torque off leaves the joint to gravity against a
gearbox friction torque. Present current = applied joint torque / (stall torque / stall
current). The simulation runs in its own DIRECT client with a fixed step; ``realtime=True``
advances it by the wall-clock time between calls (capped), ``False`` by one step per call.

Angles: rad, servo frame = twin joint frame (tick 2048 = 0 rad). Forces: N*m.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pybullet
from pybullet_utils.bullet_client import BulletClient

from . import control_table as ct
from .virtual_robot import ServoSpec

logger = logging.getLogger(__name__)


class PybulletPlant:
    """Servo-driven joints of one URDF.

    Args:
        urdf: path of the arm's URDF.
        servos: joints with their bus ids and models (secondaries follow their joint).
        time_step_s: physics step, s.
        realtime: advance by elapsed wall time (True) or one step per :meth:`step` (False).
        limp_friction_nm: back-driving friction of one servo's gearbox with torque off, N*m
            (an assumption: the 150:1-270:1 gear trains are hard to back-drive; a joint whose
            gravity load exceeds it still falls, as an unbraked arm does).
        gravity: gravity along world -z, m/s^2.
    """

    def __init__(self, urdf: str | Path, servos: Sequence[ServoSpec], time_step_s: float = 1.0 / 240.0,
                 realtime: bool = True, limp_friction_nm: float = 5.0, gravity: float = 9.81) -> None:
        if not Path(urdf).is_file():
            raise FileNotFoundError(f"virtual robot: URDF not found: {urdf}")
        self.client = BulletClient(connection_mode=pybullet.DIRECT)
        self.client.setGravity(0.0, 0.0, -gravity)
        self.client.setTimeStep(time_step_s)
        self.body = self.client.loadURDF(str(urdf), useFixedBase=True)
        self.dt, self.realtime, self.friction = time_step_s, realtime, limp_friction_nm
        names = {self.client.getJointInfo(self.body, j)[1].decode(): j
                 for j in range(self.client.getNumJoints(self.body))}
        missing = [j for s in servos for j in (s.urdf_joints or (s.joint,)) if j not in names]
        if missing:
            raise KeyError(f"virtual robot: joints {missing} not in {urdf}; it has {sorted(names)}")
        self.spec_of: dict[int, ServoSpec] = {}
        self.kt: dict[int, float] = {}
        self.max_force: dict[int, float] = {}
        self.joints_of: dict[int, list[int]] = {}
        for s in servos:
            table = ct.table_for(s.model)
            for sid in s.ids:
                self.spec_of[sid] = s
            self.joints_of[s.id] = [names[j] for j in (s.urdf_joints or (s.joint,))]
            self.kt[s.id] = table.stall_torque_nm / table.stall_current_a
            # joint-side force limit: stall torque (x2 for dual servos) through the joint scale
            self.max_force[s.id] = table.stall_torque_nm * len(s.ids) / abs(s.scale)
            for j in self.joints_of[s.id]:
                self.client.resetJointState(self.body, j, s.home_rad)
        self.goals: dict[int, tuple[float | None, float]] = {s.id: (None, 0.0) for s in servos}
        self._carry = 0.0
        self._apply()

    def set_goal(self, servo_id: int, goal_rad: float | None, max_speed_rad_s: float) -> None:
        """Goal of a primary servo (a secondary's goal is ignored: it is the same joint)."""
        if servo_id in self.goals:
            self.goals[servo_id] = (goal_rad, max_speed_rad_s)

    def _apply(self) -> None:
        for sid, (goal, speed) in self.goals.items():
            spec = self.spec_of[sid]
            for joint in self.joints_of[sid]:
                if goal is None:
                    self.client.setJointMotorControl2(self.body, joint, pybullet.VELOCITY_CONTROL,
                                                      targetVelocity=0.0,
                                                      force=self.friction * len(spec.ids) / abs(spec.scale))
                else:
                    self.client.setJointMotorControl2(
                        self.body, joint, pybullet.POSITION_CONTROL, targetPosition=spec.to_joint(goal),
                        maxVelocity=max(speed * abs(spec.scale), 1e-4), force=self.max_force[sid])

    def step(self, dt: float) -> None:
        """Advance the physics (see the class docstring for realtime vs lockstep)."""
        self._apply()
        if not self.realtime:
            self.client.stepSimulation()
            return
        self._carry = min(self._carry + dt, 0.1)
        while self._carry >= self.dt:
            self.client.stepSimulation()
            self._carry -= self.dt

    def state(self, servo_id: int) -> tuple[float, float, float]:
        """``(servo angle rad, servo speed rad/s, current A)`` from the servo's (first) joint."""
        spec = self.spec_of[servo_id]
        pos, vel, _, torque = self.client.getJointState(self.body, self.joints_of[spec.id][0])
        servo_torque = float(torque) * spec.scale * len(self.joints_of[spec.id]) / len(spec.ids)
        return spec.to_servo(float(pos)), float(vel) / spec.scale, servo_torque / self.kt[spec.id]

    def close(self) -> None:
        try:
            self.client.disconnect()
        except pybullet.error:
            pass

    @classmethod
    def from_scene(cls, scene: Any, servos: Sequence[ServoSpec], realtime: bool = True) -> PybulletPlant:
        """The plant of a scene's robot (its URDF), for the servo chain ``servos``."""
        return cls(_load(scene).robot.urdf, servos, realtime=realtime)


GRIPPER_TRAVEL_RAD = 1.0
"""Servo rotation (rad) that moves the virtual gripper linkage from closed (servo centre) to
open. The bundled robot data gives the finger range in m but not the linkage ratio; the
virtual robot assumes a linear linkage over this travel (the driver gets the same scale)."""


def _load(scene: Any) -> Any:
    from safetwin.twin.scene import load_scene

    return load_scene(scene) if isinstance(scene, (str, Path)) else scene


def servo_specs_from_scene(scene: Any) -> list[ServoSpec]:
    """The servo chain of a scene's robot: every joint with a ``bus_id`` (shadow servos of dual
    joints from the bundled robot data), limits from the scene's safety spec, and the gripper."""
    scene = _load(scene)
    robot = scene.robot
    shadows = {j.name: j.shadow_bus_id for j in robot.data.joints if j.dual} if robot.data else {}
    limits = {j.name: (j.lower, j.upper) for j in scene.safety.joints}
    specs = []
    for j in robot.joints:
        if j.bus_id is None or j.servo is None:
            continue
        lo, hi = limits.get(j.name, (j.lower, j.upper))
        specs.append(ServoSpec(j.name, int(j.bus_id), j.servo, shadows.get(j.name), float(j.home), lo, hi))
    g = robot.gripper
    if g is not None and g.bus_id is not None and g.servo is not None:
        scale = (g.open - g.closed) / GRIPPER_TRAVEL_RAD
        # home closed, as the twin resets it (the policy was trained on closed fingers)
        specs.append(ServoSpec("gripper", int(g.bus_id), g.servo, None, float(g.closed),
                               min(g.open, g.closed), max(g.open, g.closed), scale, g.closed, tuple(g.joints)))
    if not specs:
        raise ValueError(f"virtual robot: scene {scene.name!r} has no joints with a bus_id and servo")
    return specs
