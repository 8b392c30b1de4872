"""Validation of a safety filter's setup (scenario B8: refuse to start when misconfigured).

A :class:`SafetySpec` built by ``parse_safety`` is already checked, but a spec can also be built
in code, so the filter re-checks everything it relies on and probes the robot model once.
This module imports nothing else of SafeTwin's outside ``safetwin.safety``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from .robot_model import RobotModel
from .spec import SafetySpec

logger = logging.getLogger(__name__)

PROBE_SAMPLES = 64
"""Configurations sampled at construction to find the moving spheres and the curvature bound."""
LIPSCHITZ_SAFETY = 1.5
"""Factor on the largest sampled second derivative ``|d^2 p / dq_i dq_j|`` (m/rad^2) of any point,
to cover configurations between the samples."""
FD_STEP = 1e-5
"""rad: central-difference step for the second derivatives."""


class FilterConfigError(ValueError):
    """The filter's spec, robot model or period is invalid; the message names the field."""


@dataclass(frozen=True)
class FilterSetup:
    """What construction learns: indices of spheres that move with the joints, and the
    sampled-data curvature bound ``lipschitz`` (m/rad^2)."""

    moving_spheres: np.ndarray
    lipschitz: float


def _positive(value: float, path: str, *, allow_zero: bool = False) -> None:
    ok = math.isfinite(value) and (value >= 0.0 if allow_zero else value > 0.0)
    if not ok:
        raise FilterConfigError(f"{path}: must be {'>= 0' if allow_zero else '> 0'} and finite, "
                                f"got {value!r}")


def _check_spec(spec: SafetySpec) -> None:
    f = spec.filter
    if not (math.isfinite(f.gamma) and 0.0 < f.gamma <= 1.0):
        raise FilterConfigError(f"safety.filter.gamma: must be in (0, 1] (class-K rate), got {f.gamma!r}")
    _positive(f.distance_margin, "safety.filter.distance_margin", allow_zero=True)
    _positive(f.slack_tolerance, "safety.filter.slack_tolerance")
    _positive(f.time_budget_s, "safety.filter.time_budget_s")
    _positive(f.regularization, "safety.filter.regularization")
    _positive(f.position_noise_rad, "safety.filter.position_noise_rad", allow_zero=True)
    _positive(f.state_delay_s, "safety.filter.state_delay_s", allow_zero=True)
    _positive(spec.ee_speed_max, "safety.ee_speed_max")
    if not spec.joints:
        raise FilterConfigError("safety.joint_limits: at least one joint is required")
    for j in spec.joints:
        path = f"safety.joint_limits.{j.name}"
        if not (math.isfinite(j.lower) and math.isfinite(j.upper) and j.lower < j.upper):
            raise FilterConfigError(f"{path}.position: need finite lower < upper, got [{j.lower}, {j.upper}]")
        _positive(j.velocity, f"{path}.velocity")
        _positive(j.acceleration, f"{path}.acceleration")
    for box in (spec.workspace, *spec.keepout):
        lo, hi = np.asarray(box.lo, float), np.asarray(box.hi, float)
        if lo.shape != (3,) or hi.shape != (3,) or not np.all(np.isfinite(lo) & np.isfinite(hi)) \
                or not np.all(lo < hi):
            raise FilterConfigError(f"safety box {box.name!r}: empty or malformed box lo={box.lo} hi={box.hi}")
    for o in spec.obstacles:
        if not (np.all(np.isfinite(o.center)) and np.all(np.isfinite(o.half_extents))
                and np.all(np.asarray(o.half_extents) >= 0.0)):
            raise FilterConfigError(f"safety.obstacles[{o.name}]: non-finite or negative geometry")


def _points_jacobian(robot: RobotModel, q: np.ndarray) -> np.ndarray:
    """Linear Jacobians (1 + m, 3, n) of the end effector and every sphere centre at ``q``."""
    return np.concatenate([np.asarray(robot.ee_jacobian(q), float)[None, :3],
                           np.asarray(robot.spheres(q)[2], float)])


def _check_outputs(robot: RobotModel, q: np.ndarray, n: int) -> np.ndarray:
    """Validate one evaluation of the model at ``q``; return the sphere Jacobians (m, 3, n)."""
    m = len(tuple(robot.sphere_names))
    p, rot = robot.ee_pose(q)
    jac6 = np.asarray(robot.ee_jacobian(q), float)
    centers, radii, jac = (np.asarray(a, float) for a in robot.spheres(q))
    if (np.shape(p) != (3,) or np.shape(rot) != (3, 3) or jac6.shape != (6, n)
            or centers.shape != (m, 3) or radii.shape != (m,) or jac.shape != (m, 3, n)):
        raise FilterConfigError(
            f"robot model {type(robot).__name__}: output shapes ee {np.shape(p)}, R {np.shape(rot)}, "
            f"J {jac6.shape}, spheres {centers.shape}/{radii.shape}/{jac.shape} do not match "
            f"{n} joints and {m} spheres")
    if not all(np.all(np.isfinite(a)) for a in (p, rot, jac6, centers, radii, jac)):
        raise FilterConfigError(f"robot model {type(robot).__name__}: non-finite output at q={q.tolist()}")
    return jac


def _probe(spec: SafetySpec, robot: RobotModel) -> tuple[np.ndarray, float]:
    """Moving-sphere mask and the largest second derivative ``|d^2 p / dq_i dq_j|`` (m/rad^2) of
    any point over sampled configurations within the joint limits (central differences)."""
    lower = np.array([j.lower for j in spec.joints])
    upper = np.array([j.upper for j in spec.joints])
    n = len(lower)
    rng = np.random.default_rng(0)
    samples = np.vstack([(lower + upper) / 2, rng.uniform(lower, upper, (PROBE_SAMPLES, n))])
    moving = np.zeros(len(tuple(robot.sphere_names)), bool)
    curvature = 0.0
    for q in samples:
        moving |= np.any(_check_outputs(robot, q, n) != 0.0, axis=(1, 2))
        for i in range(n):
            step = np.zeros(n)
            step[i] = FD_STEP
            d2 = (_points_jacobian(robot, q + step) - _points_jacobian(robot, q - step)) / (2 * FD_STEP)
            curvature = max(curvature, float(np.max(np.linalg.norm(d2, axis=1))))
    if not np.isfinite(curvature):
        raise FilterConfigError(f"robot model {type(robot).__name__}: non-finite Jacobian derivatives")
    return moving, curvature


def validate_setup(spec: SafetySpec, robot: RobotModel, dt: float,
                   lipschitz: float | None) -> FilterSetup:
    """Check everything (scenario B8) and probe the robot; raise :class:`FilterConfigError`."""
    if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not math.isfinite(dt) or dt <= 0:
        raise FilterConfigError(f"dt: control period must be a finite number > 0 s, got {dt!r}")
    _check_spec(spec)
    names = tuple(getattr(robot, "joint_names", ()))
    if names != spec.joint_names:
        raise FilterConfigError(f"robot model joint_names {list(names)} do not match the spec's joints "
                                f"{list(spec.joint_names)} (same names, same order)")
    moving, curvature = _probe(spec, robot)
    if lipschitz is None:
        lipschitz = LIPSCHITZ_SAFETY * curvature
    _positive(float(lipschitz), "jacobian_lipschitz", allow_zero=True)
    static = [robot.sphere_names[i] for i in np.flatnonzero(~moving)]
    if static:
        logger.info("safety filter: spheres fixed to the base (no barrier rows): %s", static)
    return FilterSetup(moving_spheres=np.flatnonzero(moving), lipschitz=float(lipschitz))
