"""Per-episode domain randomisation of the twin, reproducible from the episode seed.

:class:`RandomizationConfig` is the scene's ``randomization:`` block (strict: unknown keys are
errors naming the file and key). :func:`sample` draws one episode's parameters
(:class:`EpisodeRandomization`) from a ``numpy.random.Generator`` (the env's ``np_random``
after ``reset(seed)``), and :func:`apply_dynamics` writes the physical ones into pybullet with
``changeDynamics``. The env applies the rest (poses, colours, lighting, camera, latency,
noise) and reports ``EpisodeRandomization.to_dict()`` as ``info["randomization"]``.

Units: masses as a factor of the nominal mass, friction and restitution dimensionless,
joint damping N*m*s/rad, jitters in m (positions) and rad (yaw), latency in policy steps,
noise as standard deviations in action units (action) and in proprio units (rad, rad/s, m).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import pybullet as p

from safetwin.safety.spec import Fields, SpecError


def _range(f: Fields, name: str, default: tuple[float, float], *, ge: float = 0.0) -> tuple[float, float]:
    lo, hi = f.vector(name, 2, list(default))
    if lo < ge or hi < lo:
        raise f.error(name, f"must be [lo, hi] with {ge:g} <= lo <= hi, got [{lo:g}, {hi:g}]")
    return (lo, hi)


@dataclass(frozen=True)
class RandomizationConfig:
    """Ranges of the per-episode randomisation (the scene's ``randomization:`` block).

    Attributes:
        enabled: False draws the nominal value of everything (no randomisation).
        mass_scale: [lo, hi] factor on each object's nominal mass.
        friction: [lo, hi] lateral friction of each object and of the robot's links.
        restitution: [lo, hi] restitution of each object.
        joint_damping: [lo, hi] joint damping of each robot joint (N*m*s/rad).
        object_xy_jitter: +- m added to each movable/fragile object's x and y (world).
        object_yaw_jitter: +- rad added to each object's yaw.
        target_xy_jitter: +- m added to the task target / goal position x and y.
        color_jitter: +- added to each RGB channel of every object's colour (0..1 scale).
        light_direction_jitter: +- added to each component of the light direction.
        light_ambient: [lo, hi] ambient coefficient of the renderer's light.
        camera_position_jitter: +- m added to each component of the camera eye position.
        camera_target_jitter: +- m added to each component of the camera target point.
        action_latency_steps: [lo, hi] integer number of policy steps an action is delayed.
        action_noise_std: std of Gaussian noise added to each action component (action units).
        observation_noise_std: std of Gaussian noise added to proprio (its own units).
    """

    enabled: bool = True
    mass_scale: tuple[float, float] = (1.0, 1.0)
    friction: tuple[float, float] = (0.5, 0.5)
    restitution: tuple[float, float] = (0.0, 0.0)
    joint_damping: tuple[float, float] = (0.0, 0.0)
    object_xy_jitter: float = 0.0
    object_yaw_jitter: float = 0.0
    target_xy_jitter: float = 0.0
    color_jitter: float = 0.0
    light_direction_jitter: float = 0.0
    light_ambient: tuple[float, float] = (0.6, 0.6)
    camera_position_jitter: float = 0.0
    camera_target_jitter: float = 0.0
    action_latency_steps: tuple[int, int] = (0, 0)
    action_noise_std: float = 0.0
    observation_noise_std: float = 0.0

    def __post_init__(self) -> None:
        lo, hi = self.action_latency_steps
        if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi):
            raise ValueError(f"action_latency_steps must be integers 0 <= lo <= hi, got {self.action_latency_steps}")
        if self.mass_scale[0] <= 0.0:
            raise ValueError(f"mass_scale must be > 0, got {self.mass_scale}")

    @classmethod
    def from_mapping(cls, data: Any, where: str, path: str = "randomization") -> RandomizationConfig:
        """Parse a ``randomization:`` block; errors name ``where`` (the file) and the key path."""
        f = Fields({} if data is None else data, where, path)
        d = cls()
        kwargs: dict[str, Any] = {"enabled": f.raw("enabled", True)}
        if not isinstance(kwargs["enabled"], bool):
            raise f.error("enabled", f"must be true or false, got {kwargs['enabled']!r}")
        for name in ("mass_scale", "friction", "restitution", "joint_damping", "light_ambient"):
            kwargs[name] = _range(f, name, getattr(d, name))
        for name in ("object_xy_jitter", "object_yaw_jitter", "target_xy_jitter", "color_jitter",
                     "light_direction_jitter", "camera_position_jitter", "camera_target_jitter",
                     "action_noise_std", "observation_noise_std"):
            kwargs[name] = f.number(name, getattr(d, name), ge=0.0)
        lat = f.raw("action_latency_steps", list(d.action_latency_steps))
        if (not isinstance(lat, (list, tuple)) or len(lat) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in lat)):
            raise f.error("action_latency_steps", f"must be [lo, hi] integers, got {lat!r}")
        kwargs["action_latency_steps"] = (int(lat[0]), int(lat[1]))
        if kwargs["mass_scale"][0] <= 0.0:
            raise f.error("mass_scale", "must be > 0")
        f.done()
        try:
            return cls(**kwargs)
        except ValueError as exc:
            raise SpecError(where, path, str(exc)) from exc


@dataclass
class EpisodeRandomization:
    """One episode's sampled parameters (see :class:`RandomizationConfig` for units).

    Per-object lists follow the order of the ``objects`` argument of :func:`sample`.
    """

    mass_scale: dict[str, float] = field(default_factory=dict)
    friction: dict[str, float] = field(default_factory=dict)
    restitution: dict[str, float] = field(default_factory=dict)
    robot_friction: float = 0.5
    joint_damping: list[float] = field(default_factory=list)
    object_offset: dict[str, list[float]] = field(default_factory=dict)  # [dx, dy, dyaw] m, m, rad
    target_offset: list[float] = field(default_factory=lambda: [0.0, 0.0])  # m
    color_offset: dict[str, list[float]] = field(default_factory=dict)  # RGB deltas
    light_direction: list[float] = field(default_factory=lambda: [0.4, -0.3, 1.0])
    light_ambient: float = 0.6
    camera_eye_offset: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # m
    camera_target_offset: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # m
    action_latency_steps: int = 0
    action_noise_std: float = 0.0
    observation_noise_std: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (for ``info["randomization"]`` and logs)."""
        return asdict(self)


def _uniform(rng: np.random.Generator, bounds: Sequence[float], enabled: bool) -> float:
    lo, hi = float(bounds[0]), float(bounds[1])
    if not enabled:
        return (lo + hi) / 2
    return float(rng.uniform(lo, hi)) if hi > lo else lo


def _sym(rng: np.random.Generator, half: float, n: int, enabled: bool) -> list[float]:
    if not enabled or half == 0.0:
        return [0.0] * n
    return rng.uniform(-half, half, n).tolist()


def sample(cfg: RandomizationConfig, rng: np.random.Generator, objects: Sequence[str],
           n_joints: int, base_light: Sequence[float] = (0.4, -0.3, 1.0)) -> EpisodeRandomization:
    """Draw one episode's parameters; a fixed generator state gives identical parameters.

    Args:
        cfg: the ranges.
        rng: the env's generator (seeded by ``reset(seed=...)``).
        objects: object names, in a fixed order.
        n_joints: number of robot joints whose damping is drawn.
        base_light: nominal light direction (world) the jitter is added to.
    """
    on = cfg.enabled
    out = EpisodeRandomization()
    for name in objects:
        out.mass_scale[name] = _uniform(rng, cfg.mass_scale, on)
        out.friction[name] = _uniform(rng, cfg.friction, on)
        out.restitution[name] = _uniform(rng, cfg.restitution, on)
        xy = _sym(rng, cfg.object_xy_jitter, 2, on)
        out.object_offset[name] = [*xy, *_sym(rng, cfg.object_yaw_jitter, 1, on)]
        out.color_offset[name] = _sym(rng, cfg.color_jitter, 3, on)
    out.robot_friction = _uniform(rng, cfg.friction, on)
    out.joint_damping = [_uniform(rng, cfg.joint_damping, on) for _ in range(n_joints)]
    out.target_offset = _sym(rng, cfg.target_xy_jitter, 2, on)
    jitter = _sym(rng, cfg.light_direction_jitter, 3, on)
    out.light_direction = [float(b + j) for b, j in zip(base_light, jitter)]
    out.light_ambient = _uniform(rng, cfg.light_ambient, on)
    out.camera_eye_offset = _sym(rng, cfg.camera_position_jitter, 3, on)
    out.camera_target_offset = _sym(rng, cfg.camera_target_jitter, 3, on)
    lo, hi = cfg.action_latency_steps
    out.action_latency_steps = int(rng.integers(lo, hi + 1)) if on else lo
    out.action_noise_std = cfg.action_noise_std if on else 0.0
    out.observation_noise_std = cfg.observation_noise_std if on else 0.0
    return out


def apply_dynamics(client: int, params: EpisodeRandomization, object_bodies: Mapping[str, int],
                   nominal_mass: Mapping[str, float], robot: int, robot_joints: Sequence[int]) -> None:
    """Write the sampled mass, friction, restitution and joint damping into pybullet.

    Args:
        client: pybullet client id.
        params: the sampled parameters.
        object_bodies: object name -> body id (objects with mass 0 stay static).
        nominal_mass: object name -> nominal mass (kg) from the scene.
        robot: robot body id; robot_joints: its joint indices, in ``params.joint_damping`` order.
    """
    for name, body in object_bodies.items():
        kwargs: dict[str, float] = {"lateralFriction": params.friction[name],
                                    "restitution": params.restitution[name]}
        if nominal_mass[name] > 0.0:
            kwargs["mass"] = nominal_mass[name] * params.mass_scale[name]
        p.changeDynamics(body, -1, physicsClientId=client, **kwargs)
    for link in range(-1, p.getNumJoints(robot, physicsClientId=client)):
        p.changeDynamics(robot, link, lateralFriction=params.robot_friction, physicsClientId=client)
    if len(robot_joints) != len(params.joint_damping):
        raise ValueError(f"{len(robot_joints)} robot joints but {len(params.joint_damping)} damping values")
    for joint, damping in zip(robot_joints, params.joint_damping):
        p.changeDynamics(robot, joint, jointDamping=damping, physicsClientId=client)


def config_field_names() -> tuple[str, ...]:
    """Names of the keys a ``randomization:`` block may hold."""
    return tuple(f.name for f in fields(RandomizationConfig))
