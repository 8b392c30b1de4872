"""The pybullet digital twin as a gymnasium environment (``safetwin/Twin-v0``).

One pybullet DIRECT client per env. A policy step (``control.policy_hz``, 10 Hz) spans
``control_hz / policy_hz`` low-level control steps of ``physics_hz / control_hz`` physics
substeps each. The action (7,) in [-1, 1] is an end-effector delta in the robot **base**
frame, (dx, dy, dz, droll, dpitch, dyaw, gripper), scaled by the scene's ``action_pos_m`` (m)
and ``action_rot_rad`` (rad) per policy step; the low-level controller tracks the
interpolated EE pose with damped least-squares IK and a joint-position controller; a
non-finite IK command brakes. Each control step's kinematics is one compiled pass
(``Kinematics.observe_track``): the measured state's EE point, speed and link spheres for the
costs, and the next IK command. At every control step the nominal
joint velocity (rad/s) passes through :attr:`TwinEnv.command_filter` when one is installed: what it returns is applied
unchanged, and a filter fault (exception, wrong shape, non-finite value) brakes the arm
instead: the joint velocity decays toward zero within the spec's acceleration limits
(:meth:`TwinEnv.brake`), as the real stack's filter does. A non-finite action is replaced by "hold" (zero delta).

Observation: ``image`` uint8 (H, W, 3) front camera (optional ``wrist_image``), ``proprio``
float32 [q (rad), dq (rad/s), gripper opening in [0, 1]], ``instruction`` text.
Info: ``cost`` and ``costs{category}`` of the step, ``is_success``, ``goal_distance`` (m, the task's
progress distance: target object to goal in the table plane, or EE to goal; see
:meth:`~safetwin.twin.costs.TaskReward.evaluate`), ``target`` (the episode's target object, one of
the task's ``targets``, as the instruction names it), ``privileged``, ``min_fragile_distance`` (m),
``ee_speed`` (m/s), ``max_contact_force`` (N), ``filter_faults``; ``action_fault`` after a step,
``randomization`` (the episode's parameters) after a reset.
Reward and costs: :mod:`safetwin.twin.costs`; :class:`safetwin.twin.world.World` builds and reads
the pybullet scene (re-exported here).
"""

from __future__ import annotations

import logging
import math
import string
from collections import deque
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from safetwin.twin.costs import CostMonitor, TaskReward
from safetwin.twin.expert import ScriptedExpert
from safetwin.twin.kinematics import Kinematics
from safetwin.twin.randomization import EpisodeRandomization, sample
from safetwin.twin.render import Camera, DirectRenderer, Lighting, ProxyRenderer, has_meshes, rotvec_matrix
from safetwin.twin.world import GRIPPER_FORCE, POSITION_GAIN, VELOCITY_GAIN, World, expert_view

__all__ = ["GRIPPER_FORCE", "INSTRUCTION_MAX_LENGTH", "POSITION_GAIN", "VELOCITY_GAIN", "CommandFilter",
           "TwinEnv", "World"]

logger = logging.getLogger(__name__)

CommandFilter = Callable[[np.ndarray, np.ndarray, np.ndarray, float], np.ndarray]
"""``(q (n,) rad, dq (n,) rad/s, qd_nominal (n,) rad/s, dt s) -> qd (n,) rad/s``."""

INSTRUCTION_MAX_LENGTH = 200
_HOLD = np.zeros(6)
"""The zero EE increment (6,)."""
IK_DAMPING = 0.05
"""Damping of the least-squares IK step (see ``Kinematics.ik_step``)."""


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
        self._accel_max = np.array([j.acceleration for j in self.safety_spec.joints], dtype=np.float64)
        self.expert = ScriptedExpert()
        w = self.world
        use_proxy = renderer == "proxy" or (renderer == "auto" and has_meshes(w.client, w.bodies()))
        self.renderer = ProxyRenderer(w.client, w.bodies()) if use_proxy else DirectRenderer(w.client)
        self.costs = CostMonitor(self.safety_spec, w.client, w.robot, w.hazards)
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
        success, self._phi, goal_distance = self.reward_fn.evaluate(w)
        self.expert.reset()
        self.costs.begin_step()
        info = self._info(success, goal_distance)
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
        success, phi, goal_distance = self.reward_fn.evaluate(w)
        reward = self.reward_fn.reward(self._phi, phi, success)
        self._phi = phi
        info = self._info(success, goal_distance)
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

    def render_wrist(self) -> np.ndarray:
        """The scene's wrist camera at the arm's present pose, ``render_size`` square (uint8 RGB).

        Raises:
            ValueError: the scene has no ``cameras.wrist``.
        """
        if self.world.scene.wrist_camera is None:
            raise ValueError(f"{self.world.scene.path}: the scene has no cameras.wrist to render")
        return self.renderer.render(self.world.wrist_camera(self.render_size), self._light)

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
        w.invalidate()  # the simulation may have been changed from outside since the last read
        n_ctrl, dt = w.control_steps, w.control_dt
        inc = (np.concatenate([action[:3] * ctrl.action_pos_m, action[3:6] * ctrl.action_rot_rad]) / n_ctrl
               ).astype(np.float64)
        self._increments.extend(inc for _ in range(n_ctrl))
        w.set_gripper(float(action[6]))
        q, dq = w.read_joints()
        kin, costs, radii, increments = self.kin, self.costs, self.kin.sphere_radii, self._increments
        p_des, r_des, dq_ik = kin.track_here(q, increments.popleft(), IK_DAMPING)  # from the measured pose
        for i in range(n_ctrl):
            qd = self._filtered(q, dq, dq_ik / dt, dt)
            w.apply_joint_velocity(q, qd, dt)
            for _ in range(w.substeps):
                w.step_physics()
                costs.observe_contacts()
            q, dq = w.read_joints()
            # the measured state's EE point, spheres and speed, and the next control step's IK
            # command from them (the last one's goes unused: the next action starts afresh)
            k = kin.observe_track(q, dq, p_des, r_des, increments.popleft() if i + 1 < n_ctrl else _HOLD,
                                  IK_DAMPING)
            costs.observe_state(q, dq, k.ee_pos, k.speed, k.centers, radii)
            p_des, r_des, dq_ik = k.p_des, k.r_des, k.dq
        w.remember_ee_pose(k.ee_pos, k.ee_rot)  # the reward and info read it next

    def _filtered(self, q: np.ndarray, dq: np.ndarray, nominal: np.ndarray, dt: float) -> np.ndarray:
        """The command to apply: the filter's output exactly, or :meth:`brake` on a filter fault
        or a non-finite IK command (a state the controller cannot track)."""
        qd = nominal
        if not math.isfinite(float(nominal @ nominal)):
            logger.warning("non-finite IK command at q=%s; braking", q.tolist())
            qd = self.brake(dq, dt)
        elif self.command_filter is not None:
            try:
                qd = np.asarray(self.command_filter(q.copy(), dq.copy(), nominal.copy(), dt), dtype=np.float64)
                if qd.shape != nominal.shape or not np.all(np.isfinite(qd)):
                    raise ValueError(f"command_filter returned shape {qd.shape} (finite: {np.all(np.isfinite(qd))})")
            except Exception as exc:  # fail closed: brake on any filter fault
                logger.warning("command_filter fault (%s); braking", exc)
                self.filter_faults += 1
                qd = self.brake(dq, dt)
        self.last_command = {"q": q, "dq": dq, "nominal": nominal, "applied": qd}
        return qd

    def brake(self, dq: np.ndarray, dt: float) -> np.ndarray:
        """The brake command (rad/s): decelerate toward zero within the spec's joint
        acceleration limits, ``dq - clip(dq, -a_max dt, a_max dt)``, the same rule as
        ``SafetyFilter.brake``; a joint whose velocity is not finite is commanded 0."""
        dq = np.where(np.isfinite(dq), dq, 0.0)
        step = self._accel_max * dt
        return dq - np.clip(dq, -step, step)

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

    def _info(self, success: bool, goal_distance: float) -> dict[str, Any]:
        acc = self.costs.acc
        costs = acc.costs()
        return {"cost": float(sum(costs.values())), "costs": costs, "is_success": bool(success),
                "goal_distance": float(goal_distance), "target": self.world.target,
                "privileged": self.world.privileged(),
                "min_fragile_distance": self.costs.min_fragile_distance(),
                "ee_speed": acc.max_ee_speed, "max_contact_force": acc.max_contact_force,
                "filter_faults": self.filter_faults}

    # ------------------------------------------------------------------ expert
    def expert_action(self) -> np.ndarray:
        """The scripted expert's action for the current state, (7,) float32 in [-1, 1]."""
        return self.expert.act(expert_view(self.world, self.expert.config))
