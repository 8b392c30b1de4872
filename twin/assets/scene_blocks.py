"""The ``task``, ``cameras``, ``randomization`` and ``control`` blocks of a scene (see ``scenes/README.md``).

Also the ``task`` block. Kept apart from ``twin/scene.py`` to hold that module under the size
limit; ``scene`` re-exports these types. Every error names the file and the key path (strict :class:`Fields` reader).
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from safetwin.safety.spec import Fields, SpecError

TASK_TYPES = ("reach_avoid", "push", "pick_place")
SUCCESS_TYPES = ("object_in_zone", "ee_in_zone")


class _Named(Protocol):
    role: str
    color_name: str
    label: str

Range = tuple[float, float]


@dataclass(frozen=True)
class CameraConfig:
    """A fixed camera, world frame: ``eye``/``target`` (m), ``up`` vector, vertical ``fov_deg``,
    clip planes ``near``/``far`` (m) and image ``width``/``height`` (px)."""

    eye: tuple[float, float, float]
    target: tuple[float, float, float]
    up: tuple[float, float, float]
    fov_deg: float
    near: float
    far: float
    width: int
    height: int


@dataclass(frozen=True)
class WristCameraConfig:
    """A camera attached to robot ``link``: pose ``xyz`` (m) / ``rpy`` (rad) in the link frame,
    looking along its local +z with local -y up (the OpenCV convention); optics as above."""

    link: str
    xyz: tuple[float, float, float]
    rpy: tuple[float, float, float]
    fov_deg: float
    near: float
    far: float
    width: int
    height: int


@dataclass(frozen=True)
class RandomizationConfig:
    """Domain-randomisation ranges ``(lo, hi)``, sampled uniformly at each reset.

    mass_scale: factor on object masses (> 0). friction: lateral friction (>= 0).
    restitution: [0, 1]. joint_damping: N m s/rad (>= 0). object_xy: offset added to each
    object's x and y (m, world). object_yaw: added yaw (rad). color_jitter: max per-channel
    RGB change (in [0, 1]). light_azimuth / light_elevation: light direction (rad, world).
    camera_pos: offset of the front camera eye per axis (m). camera_rot: rotation of the view
    direction (rad). action_latency: delay in control steps (integers >= 0).
    action_noise_std: std of noise on the normalised action (>= 0). obs_noise_std: std of noise
    on joint positions in the observation (rad, >= 0).
    """

    mass_scale: Range = (1.0, 1.0)
    friction: Range = (0.5, 0.5)
    restitution: Range = (0.0, 0.0)
    joint_damping: Range = (0.1, 0.1)
    object_xy: Range = (0.0, 0.0)
    object_yaw: Range = (0.0, 0.0)
    color_jitter: Range = (0.0, 0.0)
    light_azimuth: Range = (0.0, 0.0)
    light_elevation: Range = (0.8, 0.8)
    camera_pos: Range = (0.0, 0.0)
    camera_rot: Range = (0.0, 0.0)
    action_latency: tuple[int, int] = (0, 0)
    action_noise_std: Range = (0.0, 0.0)
    obs_noise_std: Range = (0.0, 0.0)


@dataclass(frozen=True)
class ControlConfig:
    """Rates (Hz) and action scaling. physics_hz must be a multiple of control_hz, and
    control_hz of policy_hz. action_pos_m: largest EE translation per policy step (m, base);
    action_rot_rad: largest EE rotation per policy step (rad)."""

    policy_hz: int = 10
    control_hz: int = 60
    physics_hz: int = 240
    action_pos_m: float = 0.02
    action_rot_rad: float = 0.1


def _camera_common(f: Fields) -> tuple[float, float, float, int, int]:
    fov = f.number("fov_deg", 60.0, gt=0.0)
    if fov >= 180.0:
        raise f.error("fov_deg", f"must be < 180, got {fov:g}")
    near = f.number("near", 0.01, gt=0.0)
    far = f.number("far", 5.0, gt=0.0)
    if far <= near:
        raise f.error("far", f"must be > near ({near:g}), got {far:g}")
    return fov, near, far, f.integer("width", 64, ge=8), f.integer("height", 64, ge=8)


def parse_camera(f: Fields) -> CameraConfig:
    """A fixed ``front`` camera block."""
    eye, target, up = f.vector("eye", 3), f.vector("target", 3), f.vector("up", 3, (0.0, 0.0, 1.0))
    if eye == target:
        raise f.error("target", "must differ from eye")
    cam = CameraConfig(eye, target, up, *_camera_common(f))  # type: ignore[arg-type]
    f.done()
    return cam


def parse_wrist_camera(f: Fields, links: tuple[str, ...]) -> WristCameraConfig:
    """A link-attached ``wrist`` camera block; ``link`` must be one of ``links``."""
    link = f.string("link")
    if link not in links:
        raise f.error("link", f"{link!r} is not a robot link")
    cam = WristCameraConfig(link, f.vector("xyz", 3, (0.0, 0.0, 0.0)),  # type: ignore[arg-type]
                            f.vector("rpy", 3, (0.0, 0.0, 0.0)), *_camera_common(f))  # type: ignore[arg-type]
    f.done()
    return cam


def _range(f: Fields, name: str, default: Range, lo_min: float | None = None,
           hi_max: float | None = None) -> Range:
    lo, hi = f.vector(name, 2, default)
    if lo > hi:
        raise f.error(name, f"lo {lo:g} must be <= hi {hi:g}")
    if lo_min is not None and lo < lo_min:
        raise f.error(name, f"must be >= {lo_min:g}, got lo {lo:g}")
    if hi_max is not None and hi > hi_max:
        raise f.error(name, f"must be <= {hi_max:g}, got hi {hi:g}")
    return lo, hi


def parse_randomization(f: Fields) -> RandomizationConfig:
    """The ``randomization`` block; every range is checked (lo <= hi, physical signs)."""
    d = RandomizationConfig()
    mass = _range(f, "mass_scale", d.mass_scale, 0.0)
    if mass[0] <= 0:
        raise f.error("mass_scale", f"must be > 0, got lo {mass[0]:g}")
    latency = f.raw("action_latency", list(d.action_latency))
    if (not isinstance(latency, list) or len(latency) != 2 or any(isinstance(v, bool) or not isinstance(v, int)
                                                                  for v in latency)
            or latency[0] < 0 or latency[0] > latency[1]):
        raise f.error("action_latency", f"must be [lo, hi] integers with 0 <= lo <= hi, got {latency!r}")
    cfg = RandomizationConfig(
        mass_scale=mass, friction=_range(f, "friction", d.friction, 0.0),
        restitution=_range(f, "restitution", d.restitution, 0.0, 1.0),
        joint_damping=_range(f, "joint_damping", d.joint_damping, 0.0),
        object_xy=_range(f, "object_xy", d.object_xy), object_yaw=_range(f, "object_yaw", d.object_yaw),
        color_jitter=_range(f, "color_jitter", d.color_jitter, 0.0, 1.0),
        light_azimuth=_range(f, "light_azimuth", d.light_azimuth),
        light_elevation=_range(f, "light_elevation", d.light_elevation, 0.0, 1.5708),
        camera_pos=_range(f, "camera_pos", d.camera_pos), camera_rot=_range(f, "camera_rot", d.camera_rot),
        action_latency=(latency[0], latency[1]),
        action_noise_std=_range(f, "action_noise_std", d.action_noise_std, 0.0),
        obs_noise_std=_range(f, "obs_noise_std", d.obs_noise_std, 0.0))
    f.done()
    return cfg


def parse_control(f: Fields) -> ControlConfig:
    """The ``control`` block (rates must divide evenly)."""
    d = ControlConfig()
    cfg = ControlConfig(f.integer("policy_hz", d.policy_hz, ge=1), f.integer("control_hz", d.control_hz, ge=1),
                        f.integer("physics_hz", d.physics_hz, ge=1),
                        f.number("action_pos_m", d.action_pos_m, gt=0.0),
                        f.number("action_rot_rad", d.action_rot_rad, gt=0.0))
    if cfg.control_hz % cfg.policy_hz:
        raise f.error("control_hz", f"must be a multiple of policy_hz ({cfg.policy_hz}), got {cfg.control_hz}")
    if cfg.physics_hz % cfg.control_hz:
        raise f.error("physics_hz", f"must be a multiple of control_hz ({cfg.control_hz}), got {cfg.physics_hz}")
    f.done()
    return cfg


@dataclass(frozen=True)
class SuccessCondition:
    """``object_in_zone``: the target's centre within ``distance`` (m, xy plane) of the goal
    zone's centre; ``ee_in_zone``: the end effector within ``distance`` (m, 3-D) of the target
    marker's centre."""

    type: str
    distance: float


@dataclass(frozen=True)
class TaskConfig:
    """The task. targets: candidate object names (one is drawn per episode and named in the
    instruction); goal: goal_zone object for ``push``; instructions: templates using
    ``{color}`` / ``{object}``; time_limit: policy steps; time_penalty: reward per step."""

    type: str
    targets: tuple[str, ...]
    goal: str | None
    instructions: tuple[str, ...]
    success: SuccessCondition
    time_limit: int
    time_penalty: float

    def instruction(self, index: int, obj: _Named) -> str:
        """Template ``index`` (modulo the count) filled in for ``obj``."""
        return self.instructions[index % len(self.instructions)].format(color=obj.color_name, object=obj.label)


def parse_task(f: Fields, objects: Mapping[str, _Named]) -> TaskConfig:
    """The ``task`` block; ``objects`` by name (their roles are checked)."""
    kind = f.string("type", choices=TASK_TYPES)
    if kind == "pick_place":
        raise f.error("type", "'pick_place' is reserved but not implemented yet; use reach_avoid or push")
    targets = tuple(str(v) for _, v in f.items("targets"))
    want = "goal_zone" if kind == "reach_avoid" else "target"
    for i, name in enumerate(targets):
        if name not in objects or objects[name].role != want:
            raise f.error(f"targets[{i}]", f"{name!r} must name an object with role {want} ({kind})")
    if not targets:
        raise f.error("targets", "at least one target is required")
    goal = f.raw("goal", None)
    if kind == "push" and (goal not in objects or objects[goal].role != "goal_zone"):
        raise f.error("goal", f"push needs a goal_zone object name, got {goal!r}")
    s = f.sub("success")
    success = SuccessCondition(s.string("type", choices=SUCCESS_TYPES), s.number("distance", gt=0.0))
    s.done()
    if success.type != ("ee_in_zone" if kind == "reach_avoid" else "object_in_zone"):
        raise s.error("type", f"{success.type!r} does not fit task type {kind!r}")
    instructions = tuple(_template(v, f.where, p) for p, v in f.items("instructions"))
    if not instructions:
        raise f.error("instructions", "at least one instruction template is required")
    task = TaskConfig(kind, targets, goal, instructions, success, f.integer("time_limit", ge=1),
                      f.number("time_penalty", 0.0, ge=0.0))
    f.done()
    return task


def _template(value: Any, where: str, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SpecError(where, path, f"must be a non-empty string, got {value!r}")
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
    except ValueError as exc:
        raise SpecError(where, path, f"malformed template: {exc}") from exc
    if fields - {"color", "object"}:
        raise SpecError(where, path, f"unknown placeholder(s) {sorted(fields - {'color', 'object'})}; "
                                     "allowed: {color}, {object}")
    return value
