"""The pybullet digital twin as a gymnasium environment (``safetwin/Twin-v0``).

One pybullet DIRECT client per env. A policy step (``control.policy_hz``, 10 Hz) spans
``control_hz / policy_hz`` low-level control steps, each of ``physics_hz / control_hz``
physics substeps. The action (7,) in [-1, 1] is an end-effector delta in the robot **base**
frame, (dx, dy, dz, droll, dpitch, dyaw, gripper), scaled by the scene's action scale (m and
rad per policy step); the low-level controller tracks the interpolated EE pose with damped
least-squares IK and a joint-position controller. At every control step the nominal joint
velocity (rad/s) passes through :attr:`TwinEnv.command_filter` when one is installed; what
the filter returns is applied unchanged, and a filter fault (exception, wrong shape,
non-finite value) brakes the arm (zero joint velocity) instead.

Observation: ``image`` uint8 (H, W, 3) front camera (optional ``wrist_image``), ``proprio``
float32 [q (rad), dq (rad/s), gripper opening in [0, 1]], ``instruction`` text.
Reward: success bonus + potential shaping ``gamma * Phi(s') - Phi(s)`` - time penalty.
Costs: see :mod:`safetwin.twin.costs`.
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

from safetwin.twin import world as twin_world
from safetwin.twin.costs import COST_CATEGORIES, CostMonitor
from safetwin.twin.expert import ExpertView, ScriptedExpert
from safetwin.twin.randomization import EpisodeRandomization, sample
from safetwin.twin.render import Camera, DirectRenderer, Lighting, ProxyRenderer, has_meshes

logger = logging.getLogger(__name__)

CommandFilter = Callable[[np.ndarray, np.ndarray, np.ndarray, float], np.ndarray]
"""``(q (n,) rad, dq (n,) rad/s, qd_nominal (n,) rad/s, dt s) -> qd (n,) rad/s``."""

INSTRUCTION_MAX_LENGTH = 200
IK_DAMPING = 0.05
"""Damping (m) of the least-squares IK at the control rate."""


class TwinEnv(gym.Env):
    """The twin of one scene. See the module docstring for spaces, reward and costs.

    Args:
        scene: bundled scene name (``reach_avoid``, ``tabletop_push``), YAML path or Scene.
        image_size: side (pixels) of the square camera images.
        images: False leaves images out of the observation (state-only training, faster).
        wrist_camera: add ``wrist_image`` to the observation.
        randomize: draw the scene's domain randomisation per episode (False: nominal scene).
        terminate_on_collision: end the episode when the robot hits a fragile/obstacle body
            with a contact force over the spec's ``contact_force_max``.
        render_mode: None or ``rgb_array`` (front camera at ``render_size``).
        renderer: ``auto`` (proxy renderer when the scene has meshes), ``direct`` or ``proxy``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, scene: Any = "tabletop_push", *, image_size: int = 64, images: bool = True,
                 wrist_camera: bool = False, randomize: bool = True, terminate_on_collision: bool = False,
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
        self.world = twin_world.World(scene)
        self.scene, self.spec, self.kin = self.world.scene, self.world.spec, self.world.kin
        self.task = self.world.task
        self.command_filter: CommandFilter | None = None
        self.expert = ScriptedExpert()
        use_proxy = renderer == "proxy" or (renderer == "auto" and has_meshes(self.world.client, self.world.bodies()))
        self.renderer = (ProxyRenderer(self.world.client, self.world.bodies()) if use_proxy
                         else DirectRenderer(self.world.client))
        self.costs = CostMonitor(self.spec, self.world.client, self.world.robot, self.world.hazards)
        n = self.world.n_joints
        spaces: dict[str, gym.Space] = {}
        if self.images:
            spaces["image"] = gym.spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8)
            if self.wrist_camera:
                spaces["wrist_image"] = gym.spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8)
        spaces["proprio"] = gym.spaces.Box(-np.inf, np.inf, (2 * n + 1,), np.float32)
        spaces["instruction"] = gym.spaces.Text(INSTRUCTION_MAX_LENGTH, charset=string.printable)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (7,), np.float32)
        self.params = EpisodeRandomization()
        self._pending: deque[np.ndarray] = deque()
        self._t = 0
        self.instruction = ""
        self.last_command: dict[str, np.ndarray] = {}
        self.filter_faults = 0

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        rng = self.np_random
        w = self.world
        self.params = sample(w.randomization if self.randomize else w.randomization_off, rng,
                             w.object_names, w.n_joints, w.light_direction)
        w.reset_state(self.params, rng)
        self.renderer.sync_colors()
        self.instruction = w.sample_instruction(rng)
        self._pending = deque(np.zeros(7) for _ in range(self.params.action_latency_steps))
        self._t, self.filter_faults = 0, 0
        self._front, self._light = self._episode_camera()
        self._phi = self.task.potential(w)
        self.costs.begin_step()
        info = self._info(success=self.task.success(w))
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
        self._pending.append(act)
        applied = self._pending.popleft()
        self.costs.begin_step()
        self._run_control(applied)
        self._t += 1
        w = self.world
        success = self.task.success(w)
        phi = self.task.potential(w)
        reward = self.task.reward(self._phi, phi, success)
        self._phi = phi
        info = self._info(success=success)
        info["action_fault"] = fault
        severe = (self.terminate_on_collision and info["costs"]["collision"] > 0
                  and info["max_contact_force"] > self.spec.contact_force_max)
        terminated = bool(success or severe)
        truncated = bool(not terminated and self._t >= self.task.max_steps)
        return self._obs(), float(reward), terminated, truncated, info

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        cam = self._front
        big = Camera(cam.eye, cam.target, cam.up, cam.fov_deg, cam.near, cam.far,
                     self.render_size, self.render_size)
        return self.renderer.render(big, self._light)

    def close(self) -> None:
        renderer = getattr(self, "renderer", None)
        if renderer is not None:
            renderer.close()
        world = getattr(self, "world", None)
        if world is not None:
            world.close()

    # ------------------------------------------------------------------ control
    def _run_control(self, action: np.ndarray) -> None:
        """Track the EE delta of ``action`` over one policy period (control + physics steps)."""
        w = self.world
        scale = self.task.action_scale
        q0, _ = w.joint_state()
        p0, r0 = self.kin.ee_pose(q0)
        dp = action[:3] * scale[0]
        rotvec = action[3:6] * scale[1]
        w.set_gripper(float(action[6]))
        n_ctrl = w.control_steps
        dt = w.control_dt
        for k in range(1, n_ctrl + 1):
            frac = k / n_ctrl
            p_des = p0 + frac * dp
            r_des = twin_world.rotvec_to_matrix(frac * rotvec) @ r0
            q, dq = w.joint_state()
            qd_nominal = self._ik_velocity(q, p_des, r_des, dt)
            qd = self._filtered(q, dq, qd_nominal, dt)
            w.apply_joint_velocity(q, qd, dt)
            for _ in range(w.substeps):
                w.step_physics()
                self.costs.observe_contacts()
            q1, dq1 = w.joint_state()
            ee = self.kin.ee_pose(q1)[0]
            speed = float(np.linalg.norm(self.kin.ee_jacobian(q1)[:3] @ dq1))
            centers, radii, _ = self.kin.spheres(q1)
            self.costs.observe_state(q1, dq1, ee, speed, centers, radii)

    def _ik_velocity(self, q: np.ndarray, p_des: np.ndarray, r_des: np.ndarray, dt: float) -> np.ndarray:
        """Damped least-squares joint velocity (rad/s) that moves the EE to (p_des, r_des) in ``dt``."""
        dq = self.kin.ik_step(q, p_des, r_des, damping=IK_DAMPING)
        return np.asarray(dq, dtype=np.float64) / dt

    def _filtered(self, q: np.ndarray, dq: np.ndarray, nominal: np.ndarray, dt: float) -> np.ndarray:
        """The command to apply: the filter's output exactly, or zero (brake) on a filter fault."""
        qd = nominal
        if self.command_filter is not None:
            try:
                out = self.command_filter(q.copy(), dq.copy(), nominal.copy(), dt)
                qd = np.asarray(out, dtype=np.float64)
                if qd.shape != nominal.shape or not np.all(np.isfinite(qd)):
                    raise ValueError(f"command_filter returned shape {qd.shape}, finite={np.all(np.isfinite(qd))}")
            except Exception as exc:  # fail closed: brake on any filter fault
                logger.warning("command_filter fault (%s); braking", exc)
                self.filter_faults += 1
                qd = np.zeros_like(nominal)
        self.last_command = {"q": q, "dq": dq, "nominal": nominal, "applied": qd}
        return qd

    # ------------------------------------------------------------------ observation / info
    def _episode_camera(self) -> tuple[Camera, Lighting]:
        base, prm = self.world.front_camera, self.params
        cam = Camera(tuple(np.add(base.eye, prm.camera_eye_offset)), tuple(np.add(base.target, prm.camera_target_offset)),
                     base.up, base.fov_deg, base.near, base.far, self.image_size, self.image_size)
        light = Lighting(direction=tuple(prm.light_direction), ambient=prm.light_ambient)
        return cam, light

    def _obs(self) -> dict[str, Any]:
        w = self.world
        q, dq = w.joint_state()
        proprio = np.concatenate([q, dq, [w.gripper_opening()]])
        if self.params.observation_noise_std > 0.0:
            proprio = proprio + self.np_random.normal(0.0, self.params.observation_noise_std, proprio.shape)
        obs: dict[str, Any] = {}
        if self.images:
            obs["image"] = self.renderer.render(self._front, self._light)
            if self.wrist_camera:
                obs["wrist_image"] = self.renderer.render(w.wrist_camera(self.image_size), self._light)
        obs["proprio"] = proprio.astype(np.float32)
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
    def expert_view(self) -> ExpertView:
        """The privileged state the scripted expert acts on (base frame)."""
        return self.world.expert_view(self.expert.config)

    def expert_action(self) -> np.ndarray:
        """The scripted expert's action for the current state, (7,) float32 in [-1, 1]."""
        return self.expert.act(self.expert_view())

