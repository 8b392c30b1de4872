"""The pybullet world of one twin scene: building it and reading its state.

:class:`World` owns one pybullet DIRECT client holding the table, the robot (from the
scene's URDF, fixed base) and the scene objects. It resets the episode state (home pose,
randomised object poses and dynamics), drives the joints (position motors with velocity
feed-forward) and reads joint states, object poses and boxes. Everything it hands out is in
the robot **base** frame (m, rad); pybullet works in the world frame and the scene's
``robot.base`` pose links the two. :class:`safetwin.twin.env.TwinEnv` wraps it as a gymnasium env.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pybullet as p

from safetwin.safety.spec import Obstacle, SafetySpec
from safetwin.twin.expert import ExpertConfig, ExpertView
from safetwin.twin.kinematics import Kinematics
from safetwin.twin.randomization import EpisodeRandomization, apply_dynamics, apply_object_state
from safetwin.twin.render import Camera, link_camera, quat_from_matrix
from safetwin.twin.scene import Scene, SceneObject, load_scene

logger = logging.getLogger(__name__)

POSITION_GAIN, VELOCITY_GAIN = 0.3, 1.0
"""Gains of pybullet's joint-position motors (dimensionless, pybullet's convention)."""
GRIPPER_FORCE = 20.0
"""N: force of the finger position motors."""


class World:
    """The pybullet world of one scene: table, robot and objects in a DIRECT client.

    All poses handed out are in the robot **base** frame (m); pybullet works in the world
    frame and the scene's ``robot.base`` pose links the two.
    """

    def __init__(self, scene: Any) -> None:
        self.scene: Scene = scene if isinstance(scene, Scene) else load_scene(scene)
        self.spec, self.kin = self.scene.safety, Kinematics.for_scene(self.scene)
        ctrl = self.scene.control
        self.substeps, self.control_steps = ctrl.physics_hz // ctrl.control_hz, ctrl.control_hz // ctrl.policy_hz
        self.control_dt = 1.0 / ctrl.control_hz
        self.client = c = p.connect(p.DIRECT)
        try:
            self._build()
        except Exception:
            p.disconnect(c)
            raise
        self._snapshot = p.saveState(physicsClientId=c)

    def _build(self) -> None:
        """(Re)create the whole simulation; body ids come out the same every time."""
        c, robot = self.client, self.scene.robot
        self._cache: dict[tuple[str, ...], Any] = {}
        p.resetSimulation(physicsClientId=c)
        p.setGravity(0.0, 0.0, -9.81, physicsClientId=c)
        p.setTimeStep(1.0 / self.scene.control.physics_hz, physicsClientId=c)
        p.setPhysicsEngineParameter(deterministicOverlappingPairs=1, physicsClientId=c)
        self.base_T = robot.base.matrix()
        self._base_identity = bool(np.allclose(self.base_T[:3, :3], np.eye(3)))
        self._base_rt, self._base_t = np.ascontiguousarray(self.base_T[:3, :3].T), self.base_T[:3, 3].copy()
        self.robot = p.loadURDF(str(robot.urdf), robot.base.xyz, p.getQuaternionFromEuler(robot.base.rpy),
                                useFixedBase=True, flags=p.URDF_USE_INERTIA_FROM_FILE, physicsClientId=c)
        index = {p.getJointInfo(self.robot, i, physicsClientId=c)[1].decode(): i
                 for i in range(p.getNumJoints(self.robot, physicsClientId=c))}
        self.link_index = {p.getJointInfo(self.robot, i, physicsClientId=c)[12].decode(): i for i in index.values()}
        self.joint_ids = [index[name] for name in robot.joint_names]
        self.ee_index = self.link_index[robot.ee_link]
        self.efforts = [max(j.effort, 1.0) for j in robot.joints]
        self._gains = ([POSITION_GAIN] * len(robot.joints), [VELOCITY_GAIN] * len(robot.joints))
        self.gripper_ids = [index[name] for name in robot.gripper.joints] if robot.gripper else []
        self.n_joints = len(self.joint_ids)
        self.table = _make_body(c, self.scene.table)
        objs = [o for o in self.scene.objects]
        self.body = {o.name: _make_body(c, o) for o in objs}
        self.object_names = [o.name for o in objs]
        self.hazards = {self.body[o.name]: o.role for o in objs if o.role in ("fragile", "obstacle")}
        self.target = self.scene.task.targets[0]
        self.home_rot = self.kin.ee_pose(robot.home)[1]

    def current_spec(self) -> SafetySpec:
        """The scene's spec with its obstacles at the objects' present poses (base frame)."""
        nominal = {o.name: o for o in self.spec.obstacles}
        obstacles = []
        for name, ob in nominal.items():
            lo, hi = self.object_box(name)
            obstacles.append(Obstacle(name=name, role=ob.role, center=tuple(float(v) for v in (lo + hi) / 2),
                                      half_extents=tuple(float(v) for v in (hi - lo) / 2), radius=ob.radius))
        return self.spec.with_obstacles(obstacles)

    def bodies(self) -> list[int]:
        return [self.table, self.robot, *self.body.values()]

    def reset_state(self, params: EpisodeRandomization) -> None:
        """Home the robot and place every object at its (jittered) pose with its sampled
        dynamics and colour."""
        c, robot = self.client, self.scene.robot
        self._restore()
        for jid, home in zip(self.joint_ids, robot.home, strict=False):
            p.resetJointState(self.robot, jid, float(home), 0.0, physicsClientId=c)
        p.setJointMotorControlArray(self.robot, self.joint_ids, p.POSITION_CONTROL,
                                    targetPositions=list(robot.home), forces=self.efforts, physicsClientId=c)
        if robot.gripper:
            for gid in self.gripper_ids:
                p.resetJointState(self.robot, gid, robot.gripper.closed, 0.0, physicsClientId=c)
            self.set_gripper(-1.0)
        apply_object_state(c, self.scene.objects, self.body, params)
        dynamic = {o.name: self.body[o.name] for o in self.scene.objects if o.collides}
        apply_dynamics(c, params, dynamic, {o.name: o.mass for o in self.scene.objects}, self.robot, self.joint_ids)
        self._cache.clear()

    def _restore(self) -> None:
        """Return the simulation to its state just after it was built (bodies at their nominal
        poses, at rest, no contacts), so nothing of the last episode carries over (determinism).

        Restores the in-memory snapshot taken after :meth:`_build` (positions, velocities and
        contact caches; a few ms cheaper per episode than rebuilding). When the snapshot no
        longer fits (bodies added or removed from outside), it rebuilds and snapshots again.
        Dynamics, motors and colours are not in the snapshot: :meth:`reset_state` writes all of them.
        """
        c = self.client
        try:
            # Restoring keeps contact manifolds the snapshot does not know (and their
            # warm-start impulses): first pull every body apart, far from the others, and let
            # the broadphase drop all pairs, so no contact of the last episode survives.
            for i, body in enumerate(self.bodies()):
                p.resetBasePositionAndOrientation(body, [0.0, 0.0, 1e3 * (i + 1)], [0.0, 0.0, 0.0, 1.0],
                                                  physicsClientId=c)
            p.performCollisionDetection(physicsClientId=c)
            p.restoreState(self._snapshot, physicsClientId=c)
        except p.error:
            logger.warning("pybullet snapshot does not fit the simulation any more; rebuilding the world")
            self._build()
            self._snapshot = p.saveState(physicsClientId=self.client)

    def choose_target(self, rng: np.random.Generator) -> str:
        """Draw the episode's target object and instruction template; return the instruction."""
        task = self.scene.task
        self.target = task.targets[int(rng.integers(len(task.targets)))]
        return task.instruction(int(rng.integers(len(task.instructions))), self.scene.object(self.target))

    # ------------------------------------------------------------------ state
    def invalidate(self) -> None:
        """Forget the cached state reads (call after changing the simulation from outside)."""
        self._cache.clear()

    def joint_state(self) -> tuple[np.ndarray, np.ndarray]:
        """Controlled joint positions (rad) and velocities (rad/s), read-only arrays.

        Reads are cached until the next physics step, :meth:`reset_state` or :meth:`invalidate`."""
        hit = self._cache.get(("joints",))
        if hit is None:
            self.read_joints()
            hit = self._cache[("joints",)]
        return hit

    def read_joints(self) -> tuple[np.ndarray, np.ndarray]:
        """Read the controlled joints now: fresh writable arrays q (rad) and dq (rad/s), which
        the caller must not modify; :meth:`joint_state` hands out read-only views of them.

        (The env's controller passes these to compiled kernels: numba dispatches writable
        arrays a few microseconds faster than read-only ones.)"""
        states = p.getJointStates(self.robot, self.joint_ids, physicsClientId=self.client)
        q, dq = np.array([s[0] for s in states]), np.array([s[1] for s in states])
        q_view, dq_view = q.view(), dq.view()
        q_view.setflags(write=False)
        dq_view.setflags(write=False)
        self._cache[("joints",)] = (q_view, dq_view)
        return q, dq

    def gripper_opening(self) -> float:
        """Gripper opening in [0, 1] (0 closed, 1 open); 0 without a gripper (cached like
        :meth:`joint_state`)."""
        g = self.scene.robot.gripper
        if not g:
            return 0.0
        hit = self._cache.get(("gripper",))
        if hit is None:
            pos = p.getJointState(self.robot, self.gripper_ids[0], physicsClientId=self.client)[0]
            hit = self._cache[("gripper",)] = min(max((pos - g.closed) / (g.open - g.closed), 0.0), 1.0)
        return hit

    def set_gripper(self, command: float) -> None:
        """Drive the fingers to ``closed + (command + 1) / 2 * (open - closed)`` (m)."""
        g = self.scene.robot.gripper
        if not g:
            return
        target = g.closed + (float(np.clip(command, -1.0, 1.0)) + 1.0) / 2.0 * (g.open - g.closed)
        p.setJointMotorControlArray(self.robot, self.gripper_ids, p.POSITION_CONTROL,
                                    targetPositions=[target] * len(self.gripper_ids),
                                    forces=[GRIPPER_FORCE] * len(self.gripper_ids), physicsClientId=self.client)

    def apply_joint_velocity(self, q: np.ndarray, qd: np.ndarray, dt: float) -> None:
        """Joint-position control toward ``q + qd * dt`` with feed-forward velocity ``qd`` (rad/s)."""
        p.setJointMotorControlArray(self.robot, self.joint_ids, p.POSITION_CONTROL,
                                    targetPositions=(q + qd * dt).tolist(), targetVelocities=qd.tolist(),
                                    forces=self.efforts, positionGains=self._gains[0],
                                    velocityGains=self._gains[1], physicsClientId=self.client)

    def step_physics(self) -> None:
        """One physics substep (drops the cached state reads)."""
        p.stepSimulation(physicsClientId=self.client)
        self._cache.clear()

    def object_pose(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Object centre (3,) m and quaternion (x, y, z, w), base frame (cached like :meth:`joint_state`)."""
        hit = self._cache.get(("object", name))
        if hit is None:
            hit = self._cache[("object", name)] = self._read_object_pose(name)
        return hit

    def _read_object_pose(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        pos, orn = p.getBasePositionAndOrientation(self.body[name], physicsClientId=self.client)
        if self._base_identity:
            quat = np.array(orn)
        else:
            quat = quat_from_matrix(self._base_rt @ np.array(p.getMatrixFromQuaternion(orn)).reshape(3, 3))
        return self._base_rt @ (np.array(pos) - self._base_t), quat

    def object_box(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned bounds (lo, hi) of an object's collision shape (m, base frame)."""
        lo, hi = p.getAABB(self.body[name], physicsClientId=self.client)
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        local = (corners - self.base_T[:3, 3]) @ self.base_T[:3, :3]
        return local.min(axis=0), local.max(axis=0)

    def ee_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """EE position (m) and rotation, base frame (from the kinematics; cached like :meth:`joint_state`)."""
        hit = self._cache.get(("ee",))
        if hit is None:
            pos, rot = (np.array(a, dtype=np.float64) for a in self.kin.ee_pose(self.joint_state()[0]))
            pos.setflags(write=False)
            rot.setflags(write=False)
            hit = self._cache[("ee",)] = (pos, rot)
        return hit

    def remember_ee_pose(self, pos: np.ndarray, rot: np.ndarray) -> None:
        """Cache the EE pose (position (3,) m, rotation (3, 3), base frame) that the caller
        computed from the present :meth:`joint_state`, so :meth:`ee_pose` does not recompute it."""
        pos, rot = np.array(pos, dtype=np.float64), np.array(rot, dtype=np.float64)
        pos.setflags(write=False)
        rot.setflags(write=False)
        self._cache[("ee",)] = (pos, rot)

    def privileged(self) -> np.ndarray:
        """float32 state for asymmetric critics (base frame): EE position (3) and the first two
        columns of its rotation (6), q, dq, gripper opening, the target object's position and
        quaternion (7), the goal position (3), every object's position (3 each, scene order)
        and a one-hot of the drawn target among ``task.targets``."""
        q, dq = self.joint_state()
        ee_p, ee_r = self.ee_pose()
        t_pos, t_quat = self.object_pose(self.target)
        goal = self.goal_position()
        objs = [self.object_pose(n)[0] for n in self.object_names]
        onehot = [float(t == self.target) for t in self.scene.task.targets]
        return np.concatenate([ee_p, ee_r[:, 0], ee_r[:, 1], q, dq, [self.gripper_opening()], t_pos, t_quat,
                               goal, *objs, onehot]).astype(np.float32)

    def goal_position(self) -> np.ndarray:
        """The goal (m, base): the goal zone's centre (push) or the target marker's (reach)."""
        goal = self.scene.task.goal
        return self.object_pose(goal if goal is not None else self.target)[0]

    def wrist_camera(self, size: int) -> Camera:
        """The scene's wrist camera at the present link pose."""
        cfg = self.scene.wrist_camera
        return link_camera(self.client, self.robot, self.link_index[cfg.link], cfg, size)

    def close(self) -> None:
        if p.isConnected(self.client):
            p.disconnect(self.client)


def _make_body(client: int, obj: SceneObject) -> int:
    """A pybullet body for a scene object (goal zones are visual-only)."""
    s, kw = obj.shape, {"physicsClientId": client}
    if s.kind == "box":
        col = {"shapeType": p.GEOM_BOX, "halfExtents": [v / 2 for v in s.size]}
        vis = dict(col)
    elif s.kind == "sphere":
        col = vis = {"shapeType": p.GEOM_SPHERE, "radius": s.size[0]}
    elif s.kind == "cylinder":
        col = {"shapeType": p.GEOM_CYLINDER, "radius": s.size[0], "height": s.size[1]}
        vis = {"shapeType": p.GEOM_CYLINDER, "radius": s.size[0], "length": s.size[1]}
    else:
        col = {"shapeType": p.GEOM_MESH, "fileName": str(s.collision), "meshScale": list(s.size)}
        vis = {"shapeType": p.GEOM_MESH, "fileName": str(s.mesh), "meshScale": list(s.size)}
    col_id = p.createCollisionShape(**col, **kw) if obj.collides else -1
    vis_id = p.createVisualShape(rgbaColor=list(obj.rgba), **vis, **kw)
    return p.createMultiBody(baseMass=obj.mass if obj.collides else 0.0, baseCollisionShapeIndex=col_id,
                             baseVisualShapeIndex=vis_id, basePosition=list(obj.pose.xyz),
                             baseOrientation=p.getQuaternionFromEuler(obj.pose.rpy), **kw)


def expert_view(world: World, config: ExpertConfig) -> ExpertView:
    """The scripted expert's privileged view of ``world`` (base frame; see :mod:`safetwin.twin.expert`)."""
    scene, spec = world.scene, world.spec
    ee_p, ee_r = world.ee_pose()
    hazards = [world.object_box(o.name) for o in scene.objects if o.role in ("fragile", "obstacle")]
    hazards += [(np.asarray(b.lo, float), np.asarray(b.hi, float)) for b in spec.keepout]
    ctrl = scene.control
    view = ExpertView(ee_pos=ee_p, ee_rot=ee_r, home_rot=world.home_rot, hazards=hazards,
                      step_limit=config.speed_fraction * spec.ee_speed_max / ctrl.policy_hz,
                      translation_scale=ctrl.action_pos_m, rotation_scale=ctrl.action_rot_rad,
                      task="reach" if scene.task.success.type == "ee_in_zone" else "push",
                      success_distance=scene.task.success.distance)
    if view.task == "reach":
        view.target = world.goal_position()
    else:
        lo, hi = world.object_box(world.target)
        view.object_pos, view.object_half = world.object_pose(world.target)[0], (hi - lo) / 2.0
        view.goal = world.goal_position()
    return view
