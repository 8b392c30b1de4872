"""The pybullet digital twin as a gymnasium environment (``safetwin/Twin-v0``).

One pybullet DIRECT client per env. A policy step (``control.policy_hz``, 10 Hz) spans
``control_hz / policy_hz`` low-level control steps of ``physics_hz / control_hz`` physics
substeps each. The action (7,) in [-1, 1] is an end-effector delta in the robot **base**
frame, (dx, dy, dz, droll, dpitch, dyaw, gripper), scaled by the scene's ``action_pos_m`` (m)
and ``action_rot_rad`` (rad) per policy step; the low-level controller tracks the
interpolated EE pose with damped least-squares IK (``Kinematics.ik_step``) and a
joint-position controller. At every control step the nominal joint velocity (rad/s) passes
through :attr:`TwinEnv.command_filter` when one is installed: what it returns is applied
unchanged, and a filter fault (exception, wrong shape, non-finite value) brakes the arm
(zero joint velocity) instead. A non-finite action is replaced by "hold" (zero delta).

Observation: ``image`` uint8 (H, W, 3) front camera (optional ``wrist_image``), ``proprio``
float32 [q (rad), dq (rad/s), gripper opening in [0, 1]], ``instruction`` text.
Reward and costs: :mod:`safetwin.twin.costs`; :class:`World` builds and reads the pybullet scene.
"""

from __future__ import annotations

import logging
import string
from collections import deque
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import pybullet as p

from safetwin.safety.spec import Obstacle, SafetySpec
from safetwin.twin.costs import CostMonitor, TaskReward
from safetwin.twin.expert import ScriptedExpert, expert_view
from safetwin.twin.kinematics import Kinematics
from safetwin.twin.randomization import EpisodeRandomization, apply_dynamics, apply_object_state, sample
from safetwin.twin.render import (
    Camera,
    DirectRenderer,
    Lighting,
    ProxyRenderer,
    has_meshes,
    link_camera,
    quat_from_matrix,
    rotvec_matrix,
)
from safetwin.twin.scene import Scene, SceneObject, load_scene

logger = logging.getLogger(__name__)

CommandFilter = Callable[[np.ndarray, np.ndarray, np.ndarray, float], np.ndarray]
"""``(q (n,) rad, dq (n,) rad/s, qd_nominal (n,) rad/s, dt s) -> qd (n,) rad/s``."""

INSTRUCTION_MAX_LENGTH = 200
IK_DAMPING = 0.05
"""Damping of the least-squares IK step (see ``Kinematics.ik_step``)."""
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

    def _build(self) -> None:
        """(Re)create the whole simulation; body ids come out the same every time."""
        c, robot = self.client, self.scene.robot
        p.resetSimulation(physicsClientId=c)
        p.setGravity(0.0, 0.0, -9.81, physicsClientId=c)
        p.setTimeStep(1.0 / self.scene.control.physics_hz, physicsClientId=c)
        p.setPhysicsEngineParameter(deterministicOverlappingPairs=1, physicsClientId=c)
        self.base_T = robot.base.matrix()
        self._base_identity = bool(np.allclose(self.base_T[:3, :3], np.eye(3)))
        self._keepout_world: list[tuple[list[float], list[float]]] | None = None
        self.robot = p.loadURDF(str(robot.urdf), robot.base.xyz, p.getQuaternionFromEuler(robot.base.rpy),
                                useFixedBase=True, flags=p.URDF_USE_INERTIA_FROM_FILE, physicsClientId=c)
        index = {p.getJointInfo(self.robot, i, physicsClientId=c)[1].decode(): i
                 for i in range(p.getNumJoints(self.robot, physicsClientId=c))}
        self.link_index = {p.getJointInfo(self.robot, i, physicsClientId=c)[12].decode(): i for i in index.values()}
        self.joint_ids = [index[name] for name in robot.joint_names]
        self.ee_index = self.link_index[robot.ee_link]
        self.efforts = [max(j.effort, 1.0) for j in robot.joints]
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
        self._build()  # a fresh simulation: no contact caches or solver state carried over (determinism)
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

    def choose_target(self, rng: np.random.Generator) -> str:
        """Draw the episode's target object and instruction template; return the instruction."""
        task = self.scene.task
        self.target = task.targets[int(rng.integers(len(task.targets)))]
        return task.instruction(int(rng.integers(len(task.instructions))), self.scene.object(self.target))

    # ------------------------------------------------------------------ state
    def joint_state(self) -> tuple[np.ndarray, np.ndarray]:
        """Controlled joint positions (rad) and velocities (rad/s)."""
        states = p.getJointStates(self.robot, self.joint_ids, physicsClientId=self.client)
        return np.array([s[0] for s in states]), np.array([s[1] for s in states])

    def gripper_opening(self) -> float:
        """Gripper opening in [0, 1] (0 closed, 1 open); 0 without a gripper."""
        g = self.scene.robot.gripper
        if not g:
            return 0.0
        pos = p.getJointState(self.robot, self.gripper_ids[0], physicsClientId=self.client)[0]
        return float(np.clip((pos - g.closed) / (g.open - g.closed), 0.0, 1.0))

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
                                    forces=self.efforts, positionGains=[POSITION_GAIN] * self.n_joints,
                                    velocityGains=[VELOCITY_GAIN] * self.n_joints, physicsClientId=self.client)

    def step_physics(self) -> None:
        p.stepSimulation(physicsClientId=self.client)

    def object_pose(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Object centre (3,) m and quaternion (x, y, z, w), base frame."""
        pos, orn = p.getBasePositionAndOrientation(self.body[name], physicsClientId=self.client)
        if self._base_identity:
            quat = np.asarray(orn)
        else:
            quat = quat_from_matrix(self.base_T[:3, :3].T @ np.array(p.getMatrixFromQuaternion(orn)).reshape(3, 3))
        return self.base_T[:3, :3].T @ (np.asarray(pos) - self.base_T[:3, 3]), quat

    def object_box(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned bounds (lo, hi) of an object's collision shape (m, base frame)."""
        lo, hi = p.getAABB(self.body[name], physicsClientId=self.client)
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        local = (corners - self.base_T[:3, 3]) @ self.base_T[:3, :3]
        return local.min(axis=0), local.max(axis=0)

    def ee_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """EE position (m) and rotation, base frame (from the kinematics)."""
        return self.kin.ee_pose(self.joint_state()[0])

    def robot_near_keepout(self, margin: float) -> bool:
        """Broad phase: does any robot link AABB overlap a keep-out box grown by ``margin`` (m)?"""
        if self._keepout_world is None:
            boxes = []
            for box in self.spec.keepout:
                corners = np.array([[x, y, z] for x in (box.lo[0], box.hi[0]) for y in (box.lo[1], box.hi[1])
                                    for z in (box.lo[2], box.hi[2])]) @ self.base_T[:3, :3].T + self.base_T[:3, 3]
                boxes.append(((corners.min(axis=0) - margin).tolist(), (corners.max(axis=0) + margin).tolist()))
            self._keepout_world = boxes
        for lo, hi in self._keepout_world:
            hits = p.getOverlappingObjects(lo, hi, physicsClientId=self.client) or ()
            if any(body == self.robot for body, _ in hits):
                return True
        return False

    def ee_point_velocity(self) -> tuple[np.ndarray, float]:
        """EE position (m, base frame) and linear speed (m/s), measured by pybullet."""
        st = p.getLinkState(self.robot, self.ee_index, computeLinkVelocity=1, computeForwardKinematics=1,
                            physicsClientId=self.client)
        pos = self.base_T[:3, :3].T @ (np.asarray(st[4]) - self.base_T[:3, 3])
        return pos, float(np.linalg.norm(st[6]))

    def privileged(self) -> np.ndarray:
        """float32 state for asymmetric critics (base frame): EE position (3) and the first two
        columns of its rotation (6), q, dq, gripper opening, the target object's position and
        quaternion (7), the goal position (3), every object's position (3 each, scene order)
        and a one-hot of the drawn target among ``task.targets``."""
        q, dq = self.joint_state()
        ee_p, ee_r = self.kin.ee_pose(q)
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


class TwinEnv(gym.Env):
    """The twin of one scene. See the module docstring for spaces, reward and costs.

    Args:
        scene: bundled scene name (``reach_avoid``, ``tabletop_push``), YAML path or Scene.
        image_size: side (pixels) of the square camera images.
        images: False leaves images out of the observation (state-only training, faster).
        wrist_camera: add ``wrist_image`` (the scene's wrist camera) to the observation.
        randomize: draw the scene's domain randomisation per episode (False: nominal scene).
        terminate_on_collision: end the episode when the robot touches a fragile/obstacle
            body with a contact force over the spec's ``contact_force_max``.
        success_bonus, gamma, shaping_scale: reward terms (see :class:`TaskReward`).
        render_mode: None or ``rgb_array`` (front camera at ``render_size`` pixels).
        renderer: ``auto`` (proxy renderer when the scene has meshes), ``direct`` or ``proxy``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, scene: Any = "tabletop_push", *, image_size: int = 64, images: bool = True,
                 wrist_camera: bool = False, randomize: bool = True, terminate_on_collision: bool = False,
                 success_bonus: float = 10.0, gamma: float = 0.99, shaping_scale: float = 10.0,
                 render_mode: str | None = None, renderer: str = "auto", render_size: int = 256) -> None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if renderer not in ("auto", "direct", "proxy"):
            raise ValueError(f"renderer must be 'auto', 'direct' or 'proxy', got {renderer!r}")
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {image_size}")
        self.render_mode, self.render_size = render_mode, int(render_size)
        self.images, self.wrist_camera, self.image_size = bool(images), bool(wrist_camera), int(image_size)
        self.randomize, self.terminate_on_collision = bool(randomize), bool(terminate_on_collision)
        self.world = World(scene)
        if self.wrist_camera and self.world.scene.wrist_camera is None:
            raise ValueError(f"{self.world.scene.path}: wrist_camera=True but the scene has no cameras.wrist")
        self.scene, self.safety_spec, self.kin = self.world.scene, self.world.spec, self.world.kin
        self.reward_fn = TaskReward(self.scene.task, success_bonus, gamma, shaping_scale)
        self.command_filter: CommandFilter | None = None
        self.expert = ScriptedExpert()
        w = self.world
        use_proxy = renderer == "proxy" or (renderer == "auto" and has_meshes(w.client, w.bodies()))
        self.renderer = ProxyRenderer(w.client, w.bodies()) if use_proxy else DirectRenderer(w.client)
        self.costs = CostMonitor(self.safety_spec, w.client, w.robot, w.hazards)
        # broad phase of the keep-out check: link AABBs grown by the largest sphere radius
        self._sphere_margin = float(np.max(self.kin.spheres(self.scene.robot.home)[1], initial=0.0)) + 0.02
        spaces: dict[str, gym.Space] = {}
        if self.images:
            spaces["image"] = gym.spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8)
            if self.wrist_camera:
                spaces["wrist_image"] = gym.spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8)
        spaces["proprio"] = gym.spaces.Box(-np.inf, np.inf, (2 * w.n_joints + 1,), np.float32)
        spaces["instruction"] = gym.spaces.Text(INSTRUCTION_MAX_LENGTH, charset=string.printable)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (7,), np.float32)
        self.params = EpisodeRandomization()
        self._increments: deque[np.ndarray] = deque()
        self._t, self._phi, self.filter_faults = 0, 0.0, 0
        self.instruction = ""
        self.last_command: dict[str, np.ndarray] = {}
        self._front, self._light = self._episode_camera()

    @property
    def robot_model(self) -> Kinematics:
        """The robot's kinematics (a ``safetwin.safety.robot_model.RobotModel``), base frame."""
        return self.kin

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        rng, w = self.np_random, self.world
        self.params = sample(self.scene.randomization, rng, w.object_names, w.n_joints, self.randomize)
        w.reset_state(self.params)
        self.instruction = w.choose_target(rng)
        self.safety_spec = w.current_spec()
        self.renderer.sync_colors()
        zero = np.zeros(6)
        self._increments = deque(zero for _ in range(self.params.action_latency))
        self._t, self.filter_faults = 0, 0
        self._front, self._light = self._episode_camera()
        success, self._phi = self.reward_fn.evaluate(w)
        self.expert.reset()
        self.costs.begin_step()
        info = self._info(success=success)
        info["randomization"] = self.params.to_dict()
        return self._obs(), info

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:
        act = np.asarray(action, dtype=np.float64)
        if act.shape != (7,):
            raise ValueError(f"action must have shape (7,), got {act.shape}")
        fault = not bool(np.all(np.isfinite(act)))
        act = np.zeros(7) if fault else np.clip(act, -1.0, 1.0)
        if self.params.action_noise_std > 0.0 and not fault:
            act = np.clip(act + self.np_random.normal(0.0, self.params.action_noise_std, 7), -1.0, 1.0)
        self.costs.begin_step()
        self._run_control(act)
        self._t += 1
        w = self.world
        success, phi = self.reward_fn.evaluate(w)
        reward = self.reward_fn.reward(self._phi, phi, success)
        self._phi = phi
        info = self._info(success=success)
        info["action_fault"] = fault
        severe = (self.terminate_on_collision and info["costs"]["collision"] > 0
                  and info["max_contact_force"] > self.safety_spec.contact_force_max)
        terminated = bool(success or severe)
        truncated = bool(not terminated and self._t >= self.scene.task.time_limit)
        return self._obs(), float(reward), terminated, truncated, info

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        c = self._front
        big = Camera(c.eye, c.target, c.up, c.fov_deg, c.near, c.far, self.render_size, self.render_size)
        return self.renderer.render(big, self._light)

    def close(self) -> None:
        if getattr(self, "renderer", None) is not None:
            self.renderer.close()
        if getattr(self, "world", None) is not None:
            self.world.close()

    # ------------------------------------------------------------------ control
    def _run_control(self, action: np.ndarray) -> None:
        """Track the EE delta of ``action`` over one policy period (control + physics steps).

        The delta is split into equal per-control-step increments queued behind the
        ``action_latency`` increments still pending from earlier actions."""
        w, ctrl = self.world, self.scene.control
        n_ctrl, dt = w.control_steps, w.control_dt
        inc = np.concatenate([action[:3] * ctrl.action_pos_m, action[3:6] * ctrl.action_rot_rad]) / n_ctrl
        self._increments.extend(inc for _ in range(n_ctrl))
        w.set_gripper(float(action[6]))
        q0, dq0 = w.joint_state()
        p_des, r_des = self.kin.ee_pose(q0)
        rotations: dict[bytes, np.ndarray] = {}
        q, dq = q0, dq0
        for _ in range(n_ctrl):
            step = self._increments.popleft()
            p_des = p_des + step[:3]
            key = step[3:].tobytes()
            if key not in rotations:
                rotations[key] = rotvec_matrix(step[3:])
            r_des = rotations[key] @ r_des
            nominal = np.asarray(self.kin.ik_step(q, p_des, r_des, damping=IK_DAMPING), dtype=np.float64) / dt
            qd = self._filtered(q, dq, nominal, dt)
            w.apply_joint_velocity(q, qd, dt)
            for _ in range(w.substeps):
                w.step_physics()
                self.costs.observe_contacts()
            q, dq = w.joint_state()
            ee, speed = w.ee_point_velocity()
            near = w.robot_near_keepout(self._sphere_margin)
            centers, radii, _ = self.kin.spheres(q) if near else (np.zeros((0, 3)), np.zeros(0), None)
            self.costs.observe_state(q, dq, ee, speed, centers, radii)

    def _filtered(self, q: np.ndarray, dq: np.ndarray, nominal: np.ndarray, dt: float) -> np.ndarray:
        """The command to apply: the filter's output exactly, or zero (brake) on a filter fault."""
        qd = nominal
        if self.command_filter is not None:
            try:
                qd = np.asarray(self.command_filter(q.copy(), dq.copy(), nominal.copy(), dt), dtype=np.float64)
                if qd.shape != nominal.shape or not np.all(np.isfinite(qd)):
                    raise ValueError(f"command_filter returned shape {qd.shape} (finite: {np.all(np.isfinite(qd))})")
            except Exception as exc:  # fail closed: brake on any filter fault
                logger.warning("command_filter fault (%s); braking", exc)
                self.filter_faults += 1
                qd = np.zeros_like(nominal)
        self.last_command = {"q": q, "dq": dq, "nominal": nominal, "applied": qd}
        return qd

    # ------------------------------------------------------------------ observation / info
    def _episode_camera(self) -> tuple[Camera, Lighting]:
        base, prm = self.scene.front_camera, self.params
        eye = np.add(base.eye, prm.camera_eye_offset)
        yaw, pitch = prm.camera_rotation
        view = np.subtract(base.target, base.eye)
        horizontal = np.cross(view, base.up)
        rot = rotvec_matrix(np.asarray(base.up, float) / np.linalg.norm(base.up) * yaw)
        if np.linalg.norm(horizontal) > 1e-9:
            rot = rot @ rotvec_matrix(horizontal / np.linalg.norm(horizontal) * pitch)
        target = eye + rot @ view
        cam = Camera(tuple(eye), tuple(target), base.up, base.fov_deg, base.near, base.far,
                     self.image_size, self.image_size)
        return cam, Lighting(direction=tuple(prm.light_direction))

    def _obs(self) -> dict[str, Any]:
        w = self.world
        q, dq = w.joint_state()
        if self.params.obs_noise_std > 0.0:
            q = q + self.np_random.normal(0.0, self.params.obs_noise_std, q.shape)
        obs: dict[str, Any] = {}
        if self.images:
            obs["image"] = self.renderer.render(self._front, self._light)
            if self.wrist_camera:
                obs["wrist_image"] = self.renderer.render(w.wrist_camera(self.image_size), self._light)
        obs["proprio"] = np.concatenate([q, dq, [w.gripper_opening()]]).astype(np.float32)
        obs["instruction"] = self.instruction
        return obs

    def _info(self, success: bool) -> dict[str, Any]:
        acc = self.costs.acc
        costs = acc.costs()
        return {"cost": float(sum(costs.values())), "costs": costs, "is_success": bool(success),
                "privileged": self.world.privileged(),
                "min_fragile_distance": self.costs.min_fragile_distance(),
                "ee_speed": acc.max_ee_speed, "max_contact_force": acc.max_contact_force,
                "filter_faults": self.filter_faults}

    # ------------------------------------------------------------------ expert
    def expert_action(self) -> np.ndarray:
        """The scripted expert's action for the current state, (7,) float32 in [-1, 1]."""
        return self.expert.act(expert_view(self.world, self.expert.config))
