"""The safety specification: every limit SafeTwin enforces, as typed data.

A scene's ``safety:`` block is parsed once into a :class:`SafetySpec` and used by four
consumers: the twin env (costs), the trainer (the CMDP cost limit), the QP filter (hard
constraints) and the audit (pass/fail criteria). No limit is written in code anywhere else.

Frames and units: positions in metres in the robot **base** frame, joint positions in rad,
joint velocities in rad/s, joint accelerations in rad/s^2, speeds in m/s, forces in N.

This module imports nothing else of SafeTwin's (see ARCHITECTURE.md).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

ISO_10218_REDUCED_SPEED = 0.25
"""m/s: the reduced TCP speed for collaborative operation (ISO 10218-1), the default limit."""


class SpecError(ValueError):
    """A spec value is missing, malformed or out of range.

    The message always names the file and the key path, e.g.
    ``scenes/x.yaml: objects[2].mass: must be > 0``.
    """

    def __init__(self, where: str, path: str, message: str) -> None:
        self.where, self.path, self.detail = where, path, message
        super().__init__(f"{where}: {path}: {message}" if path else f"{where}: {message}")


class Fields:
    """Strict reader for one mapping of a YAML document.

    Every read records the key; :meth:`done` raises on any key that was not read, so a typo
    (``cost_limt``) is an error rather than a silently ignored option.
    """

    def __init__(self, data: Any, where: str, path: str) -> None:
        if not isinstance(data, Mapping):
            raise SpecError(where, path, f"must be a mapping, got {type(data).__name__}")
        self.data, self.where, self.path = data, where, path
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, message: str) -> SpecError:
        return SpecError(self.where, self.key(name), message)

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str, default: Any = ..., ) -> Any:
        self._seen.add(name)
        if name not in self.data:
            if default is ...:
                raise self.error(name, "required key is missing")
            return default
        return self.data[name]

    def sub(self, name: str, default: Any = ...) -> Fields:
        return Fields(self.raw(name, {} if default is ... else default), self.where, self.key(name))

    def number(self, name: str, default: Any = ..., *, gt: float | None = None,
               ge: float | None = None, le: float | None = None) -> float:
        value = self.raw(name, default)
        return check_number(value, self.where, self.key(name), gt=gt, ge=ge, le=le)

    def integer(self, name: str, default: Any = ..., *, ge: int | None = None) -> int:
        value = self.raw(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"must be an integer, got {value!r}")
        if ge is not None and value < ge:
            raise self.error(name, f"must be >= {ge}, got {value}")
        return value

    def string(self, name: str, default: Any = ..., *, choices: Sequence[str] | None = None) -> str:
        value = self.raw(name, default)
        if not isinstance(value, str) or not value:
            raise self.error(name, f"must be a non-empty string, got {value!r}")
        if choices is not None and value not in choices:
            raise self.error(name, f"must be one of {list(choices)}, got {value!r}")
        return value

    def vector(self, name: str, size: int, default: Any = ...) -> tuple[float, ...]:
        value = self.raw(name, default)
        return check_vector(value, size, self.where, self.key(name))

    def items(self, name: str, default: Any = ...) -> list[tuple[str, Any]]:
        """Elements of a list as ``(key_path, element)`` pairs, e.g. ``objects[2]``."""
        value = self.raw(name, default)
        if not isinstance(value, list):
            raise self.error(name, f"must be a list, got {type(value).__name__}")
        return [(f"{self.key(name)}[{i}]", v) for i, v in enumerate(value)]

    def done(self) -> None:
        unknown = sorted(set(map(str, self.data)) - self._seen)
        if unknown:
            raise SpecError(self.where, self.path or "<top>", f"unknown key(s) {unknown}")


def check_number(value: Any, where: str, path: str, *, gt: float | None = None,
                 ge: float | None = None, le: float | None = None) -> float:
    """Return ``value`` as a finite float or raise :class:`SpecError` naming ``path``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(where, path, f"must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise SpecError(where, path, f"must be finite, got {value}")
    if gt is not None and not value > gt:
        raise SpecError(where, path, f"must be > {gt:g}, got {value:g}")
    if ge is not None and not value >= ge:
        raise SpecError(where, path, f"must be >= {ge:g}, got {value:g}")
    if le is not None and not value <= le:
        raise SpecError(where, path, f"must be <= {le:g}, got {value:g}")
    return value


def check_vector(value: Any, size: int, where: str, path: str) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or len(value) != size:
        raise SpecError(where, path, f"must be a list of {size} numbers, got {value!r}")
    return tuple(check_number(v, where, f"{path}[{i}]") for i, v in enumerate(value))


@dataclass(frozen=True)
class Box:
    """Axis-aligned box in the robot base frame (m)."""

    name: str
    lo: tuple[float, float, float]
    hi: tuple[float, float, float]

    def contains(self, p: Sequence[float], margin: float = 0.0) -> bool:
        """True when point ``p`` (m, base) lies inside the box grown by ``margin`` (m)."""
        return all(self.lo[i] - margin <= p[i] <= self.hi[i] + margin for i in range(3))


@dataclass(frozen=True)
class Obstacle:
    """A body the robot must not touch, approximated for the filter's distance barriers.

    ``center`` (m, base frame) and ``half_extents`` (m) of an axis-aligned bounding box, and
    ``radius`` (m) of the bounding sphere about ``center``. ``role`` is ``fragile`` or
    ``obstacle``. The twin fills these from the scene's objects at reset.
    """

    name: str
    role: str
    center: tuple[float, float, float]
    half_extents: tuple[float, float, float]
    radius: float


@dataclass(frozen=True)
class JointLimit:
    """Limits of one joint: position [lower, upper] (rad), |velocity| (rad/s), |accel| (rad/s^2)."""

    name: str
    lower: float
    upper: float
    velocity: float
    acceleration: float


@dataclass(frozen=True)
class FilterParams:
    """Tuning of the CBF-QP filter (safety/filter.py), part of the spec so it is audited too.

    gamma: discrete-time barrier rate in (0, 1]: h(x_{k+1}) >= (1 - gamma) h(x_k).
    distance_margin: m added to every distance barrier (sensing and modelling error).
    slack_tolerance: largest slack accepted before the solve counts as failed.
    time_budget_s: a solve slower than this is treated as failed (s).
    regularization: weight of the joint-space term when the nominal is a task-space twist.
    position_noise_rad: bound on the joint position measurement error (rad): encoder
        quantisation and noise (half a tick of a 4096-tick encoder is 0.00077 rad).
    state_delay_s: age of the measured state when the command takes effect (s): bus read,
        computation and write (scenario B9). With the noise bound it tightens every barrier by
        what the joint may have moved unseen: ``position_noise_rad + |dq| delay + a_max delay^2 / 2``
        per joint, and by that motion mapped through the point Jacobians for the Cartesian ones.
    """

    gamma: float = 0.3
    distance_margin: float = 0.01
    slack_tolerance: float = 1e-6
    time_budget_s: float = 0.002
    regularization: float = 1e-3
    position_noise_rad: float = 0.0
    state_delay_s: float = 0.0


@dataclass(frozen=True)
class SafetySpec:
    """Every limit of one scene. See the module docstring for units and frames.

    joints: per controlled joint, in the robot's joint order.
    ee_speed_max: end-effector linear speed limit (m/s), default ISO 10218-1 reduced speed.
    workspace: box the end effector and the link spheres must stay inside (base frame).
    keepout: boxes the end effector and link spheres must stay out of (base frame).
    obstacles: fragile/obstacle bodies for distance barriers (filled from scene objects).
    contact_force_max: largest contact force allowed on any body (N).
    cost_limit: CMDP budget, the expected sum of step costs per episode.
    filter: the QP filter's tuning.
    """

    joints: tuple[JointLimit, ...]
    workspace: Box
    keepout: tuple[Box, ...] = ()
    obstacles: tuple[Obstacle, ...] = ()
    ee_speed_max: float = ISO_10218_REDUCED_SPEED
    contact_force_max: float = 30.0
    cost_limit: float = 5.0
    filter: FilterParams = field(default_factory=FilterParams)

    @property
    def joint_names(self) -> tuple[str, ...]:
        return tuple(j.name for j in self.joints)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def sha256(self) -> str:
        """SHA-256 of the canonical JSON of the whole spec (the audit/deploy gate compares it)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def with_obstacles(self, obstacles: Sequence[Obstacle]) -> SafetySpec:
        from dataclasses import replace

        return replace(self, obstacles=tuple(obstacles))


def _parse_box(data: Any, where: str, path: str, default_name: str) -> Box:
    f = Fields(data, where, path)
    name = f.string("name", default_name)
    lo, hi = f.vector("lo", 3), f.vector("hi", 3)
    f.done()
    for i, axis in enumerate("xyz"):
        if not lo[i] < hi[i]:
            raise SpecError(where, f"{path}.hi", f"empty box: hi.{axis}={hi[i]:g} <= lo.{axis}={lo[i]:g}")
    return Box(name=name, lo=lo, hi=hi)  # type: ignore[arg-type]


def _parse_joint(name: str, data: Any, where: str, path: str) -> JointLimit:
    f = Fields(data, where, path)
    lower, upper = f.vector("position", 2)
    if not lower < upper:
        raise f.error("position", f"lower {lower:g} must be < upper {upper:g}")
    limit = JointLimit(name=name, lower=lower, upper=upper,
                       velocity=f.number("velocity", gt=0.0),
                       acceleration=f.number("acceleration", gt=0.0))
    f.done()
    return limit


def _parse_filter(f: Fields) -> FilterParams:
    params = FilterParams(
        gamma=f.number("gamma", FilterParams.gamma, gt=0.0, le=1.0),
        distance_margin=f.number("distance_margin", FilterParams.distance_margin, ge=0.0),
        slack_tolerance=f.number("slack_tolerance", FilterParams.slack_tolerance, gt=0.0),
        time_budget_s=f.number("time_budget_s", FilterParams.time_budget_s, gt=0.0),
        regularization=f.number("regularization", FilterParams.regularization, gt=0.0),
        position_noise_rad=f.number("position_noise_rad", FilterParams.position_noise_rad, ge=0.0),
        state_delay_s=f.number("state_delay_s", FilterParams.state_delay_s, ge=0.0),
    )
    f.done()
    return params


def parse_safety(data: Any, where: str, path: str = "safety",
                 joint_order: Sequence[str] | None = None) -> SafetySpec:
    """Parse a ``safety:`` block. ``joint_order`` (the robot's controlled joints) must match
    the joints listed under ``joint_limits`` exactly, or a :class:`SpecError` is raised."""
    f = Fields(data, where, path)
    jl = f.sub("joint_limits")
    names = list(map(str, jl.data))
    if not names:
        raise f.error("joint_limits", "at least one joint is required")
    if joint_order is not None and list(joint_order) != names:
        raise f.error("joint_limits", f"joints {names} must match the robot's controlled joints "
                                      f"{list(joint_order)} in order")
    joints = tuple(_parse_joint(n, jl.raw(n), where, jl.key(n)) for n in names)
    jl.done()
    workspace = _parse_box(f.raw("workspace"), where, f.key("workspace"), "workspace")
    keepout = tuple(_parse_box(v, where, p, f"keepout_{i}")
                    for i, (p, v) in enumerate(f.items("keepout", [])))
    spec = SafetySpec(
        joints=joints, workspace=workspace, keepout=keepout,
        ee_speed_max=f.number("ee_speed_max", ISO_10218_REDUCED_SPEED, gt=0.0),
        contact_force_max=f.number("contact_force_max", gt=0.0),
        cost_limit=f.number("cost_limit", ge=0.0),
        filter=_parse_filter(f.sub("filter", {})),
    )
    f.done()
    return spec
