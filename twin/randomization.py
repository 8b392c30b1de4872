"""Per-episode domain randomisation of the twin, reproducible from the episode seed.

The ranges are the scene's ``randomization:`` block
(:class:`safetwin.twin.scene.RandomizationConfig`, parsed strictly by the scene loader).
:func:`sample` draws one episode's parameters (:class:`EpisodeRandomization`) from a
``numpy.random.Generator`` (the env's ``np_random`` after ``reset(seed)``), and
:func:`apply_dynamics` writes the physical ones into pybullet with ``changeDynamics``. The env
applies the rest (poses, colours, lighting, camera, latency, noise) and reports
``EpisodeRandomization.to_dict()`` as ``info["randomization"]``.

Units: masses as a factor of the nominal mass, friction and restitution dimensionless,
joint damping N*m*s/rad, offsets in m (x, y, world) and rad (yaw), light direction as a unit
vector (world), latency in control steps, noise as standard deviations (action units for
the action, rad for the observed joint positions).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pybullet as p

from safetwin.twin.scene import RandomizationConfig


@dataclass
class EpisodeRandomization:
    """One episode's sampled parameters (units in the module docstring); per-object values
    are keyed by object name."""

    mass_scale: dict[str, float] = field(default_factory=dict)
    friction: dict[str, float] = field(default_factory=dict)
    restitution: dict[str, float] = field(default_factory=dict)
    robot_friction: float = 0.5
    joint_damping: list[float] = field(default_factory=list)
    object_offset: dict[str, list[float]] = field(default_factory=dict)  # [dx m, dy m, dyaw rad]
    color_offset: dict[str, list[float]] = field(default_factory=dict)  # RGB deltas
    light_direction: list[float] = field(default_factory=lambda: [0.0, 0.0, 1.0])
    camera_eye_offset: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # m, world
    camera_rotation: list[float] = field(default_factory=lambda: [0.0, 0.0])  # yaw, pitch of the view (rad)
    action_latency: int = 0  # control steps
    action_noise_std: float = 0.0
    obs_noise_std: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (for ``info["randomization"]`` and logs)."""
        return asdict(self)


def _u(rng: np.random.Generator, bounds: Sequence[float], enabled: bool, n: int | None = None) -> Any:
    """Uniform draw in [lo, hi] (the mid-point when ``enabled`` is False); n values when n is given."""
    lo, hi = float(bounds[0]), float(bounds[1])
    if not enabled or hi <= lo:
        mid = (lo + hi) / 2 if enabled is False else lo
        return mid if n is None else [mid] * n
    return float(rng.uniform(lo, hi)) if n is None else rng.uniform(lo, hi, n).tolist()


def sample(cfg: RandomizationConfig, rng: np.random.Generator, objects: Sequence[str],
           n_joints: int, enabled: bool = True) -> EpisodeRandomization:
    """Draw one episode's parameters; the same generator state gives identical parameters.

    Args:
        cfg: the scene's ranges.
        rng: the env's generator (seeded by ``reset(seed=...)``).
        objects: names of the randomised objects, in a fixed order.
        n_joints: number of controlled joints whose damping is drawn.
        enabled: False gives the mid-point of every range, no jitter, no latency and no noise.
    """
    out = EpisodeRandomization()
    for name in objects:
        out.mass_scale[name] = _u(rng, cfg.mass_scale, enabled)
        out.friction[name] = _u(rng, cfg.friction, enabled)
        out.restitution[name] = _u(rng, cfg.restitution, enabled)
        xy = _u(rng, cfg.object_xy, enabled, 2) if enabled else [0.0, 0.0]
        yaw = _u(rng, cfg.object_yaw, enabled) if enabled else 0.0
        out.object_offset[name] = [*xy, yaw]
        jitter = _u(rng, cfg.color_jitter, enabled) if enabled else 0.0
        out.color_offset[name] = (rng.uniform(-jitter, jitter, 3).tolist() if jitter > 0 else [0.0] * 3)
    out.robot_friction = _u(rng, cfg.friction, enabled)
    out.joint_damping = [_u(rng, cfg.joint_damping, enabled) for _ in range(n_joints)]
    az, el = _u(rng, cfg.light_azimuth, enabled), _u(rng, cfg.light_elevation, enabled)
    out.light_direction = [math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)]
    if enabled:
        out.camera_eye_offset = _u(rng, cfg.camera_pos, True, 3)
        out.camera_rotation = _u(rng, cfg.camera_rot, True, 2)
        lo, hi = cfg.action_latency
        out.action_latency = int(rng.integers(lo, hi + 1))
        out.action_noise_std = _u(rng, cfg.action_noise_std, True)
        out.obs_noise_std = _u(rng, cfg.obs_noise_std, True)
    return out


def apply_dynamics(client: int, params: EpisodeRandomization, object_bodies: Mapping[str, int],
                   nominal_mass: Mapping[str, float], robot: int, robot_joints: Sequence[int]) -> None:
    """Write the sampled mass, friction, restitution and joint damping into pybullet.

    Args:
        client: pybullet client id.
        params: the sampled parameters.
        object_bodies: object name -> body id (objects with nominal mass 0 stay static).
        nominal_mass: object name -> nominal mass (kg) from the scene.
        robot: robot body id; robot_joints: its controlled joint indices, in
            ``params.joint_damping`` order.
    """
    if len(robot_joints) != len(params.joint_damping):
        raise ValueError(f"{len(robot_joints)} robot joints but {len(params.joint_damping)} damping values")
    for name, body in object_bodies.items():
        kwargs: dict[str, float] = {"lateralFriction": params.friction[name],
                                    "restitution": params.restitution[name]}
        if nominal_mass[name] > 0.0:
            kwargs["mass"] = nominal_mass[name] * params.mass_scale[name]
        p.changeDynamics(body, -1, physicsClientId=client, **kwargs)
    for link in range(-1, p.getNumJoints(robot, physicsClientId=client)):
        p.changeDynamics(robot, link, lateralFriction=params.robot_friction, physicsClientId=client)
    for joint, damping in zip(robot_joints, params.joint_damping, strict=False):
        p.changeDynamics(robot, joint, jointDamping=damping, physicsClientId=client)


def apply_object_state(client: int, objects: Sequence[Any], bodies: Mapping[str, int],
                       params: EpisodeRandomization) -> None:
    """Place each scene object at its nominal pose plus the sampled (dx, dy, dyaw) offset
    (world frame), at rest, with its colour shifted by the sampled RGB offset."""
    for obj in objects:
        dx, dy, dyaw = params.object_offset[obj.name]
        pos = np.add(obj.pose.xyz, (dx, dy, 0.0))
        rpy = np.add(obj.pose.rpy, (0.0, 0.0, dyaw))
        body = bodies[obj.name]
        p.resetBasePositionAndOrientation(body, pos.tolist(), p.getQuaternionFromEuler(rpy), physicsClientId=client)
        p.resetBaseVelocity(body, [0, 0, 0], [0, 0, 0], physicsClientId=client)
        rgba = np.clip(np.add(obj.rgba[:3], params.color_offset[obj.name]), 0.0, 1.0).tolist() + [obj.rgba[3]]
        p.changeVisualShape(body, -1, rgbaColor=rgba, physicsClientId=client)
