"""Constraint rows of the safety filter QP, generated from a :class:`SafetySpec`.

Decision variable: joint velocities ``u`` (n,) rad/s held for one period ``dt`` (s), so the next
sample is ``q+ = q + u dt``. Every barrier ``h`` uses the discrete-time condition
``h(x+) >= (1 - gamma) h(x)``:

* joint position: ``h = upper - q`` and ``q - lower`` are linear in ``q``, so the condition is
  exact: ``u <= gamma (upper - q) / dt`` and ``u >= -gamma (q - lower) / dt`` (simple bounds);
* velocity ``|u| <= v_max`` and acceleration ``|u - dq| <= a_max dt`` (simple bounds), and a
  braking-distance bound that keeps every joint able to stop inside its range (see
  :func:`joint_bounds`);
* Cartesian barriers on *points* (the end effector, radius 0, and every link sphere that moves):
  workspace faces, the nearest face of each keep-out box, the signed distance to each obstacle's
  box. Each such ``h`` is convex in the point ``p`` (m, base frame), so
  ``h(p+) >= h(p) + grad_h . (p+ - p)``; the forward-kinematics step error obeys
  ``|p+ - p - J_p u dt| <= 0.5 L (dt * sum_i |u_i|)^2`` with ``L`` (m/rad^2) a bound on the second
  derivatives of point positions. That bound, ``fk_margin``, is subtracted from every Cartesian
  barrier so it holds at the next *sample*, not only in continuous time. Keep-out boxes and
  obstacles also subtract ``spec.filter.distance_margin``. The right-hand side is further capped
  by a braking-distance term (:func:`_barrier_rhs`) so points slow down before a barrier;
* end-effector linear speed: ``N J_v u <= c`` with the 26 face normals ``N`` of a polytope
  inscribed in the ball of radius ``ee_speed_max`` (an inner approximation, so it stays a QP).

``G u <= b`` rows are in m/s (Cartesian). This module imports nothing else of SafeTwin's.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from . import filter_kernels as fk
from .spec import Obstacle, SafetySpec

AXES = "xyz"
CARTESIAN_BRAKE_FRACTION = 0.5
"""Share of a barrier row's best-case deceleration that the braking-distance cap assumes (the
other joints' limits and the changing Jacobian take the rest); a shaping factor, not a limit."""
DEGENERATE_ROW_NORM = 1e-9
"""A barrier row whose gradient norm (m/s per rad/s) is below this has no control authority."""


def ee_speed_polytope(ee_speed_max: float) -> tuple[np.ndarray, float]:
    """Face normals ``N`` (26, 3) and offset ``c`` (m/s) with ``{v : N v <= c}`` inside the ball
    ``|v| <= ee_speed_max``: ``c`` is scaled so the polytope's farthest vertex lies on the sphere."""
    normals = np.array([v for v in itertools.product((-1.0, 0.0, 1.0), repeat=3) if any(v)])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    farthest = 0.0
    for idx in itertools.combinations(range(len(normals)), 3):
        face = normals[list(idx)]
        if abs(np.linalg.det(face)) < 1e-9:
            continue
        vertex = np.linalg.solve(face, np.ones(3))
        if np.all(normals @ vertex <= 1.0 + 1e-9):
            farthest = max(farthest, float(np.linalg.norm(vertex)))
    return normals, ee_speed_max / farthest


@dataclass(frozen=True)
class Limits:
    """The spec's limits as arrays. Joint arrays (n,) in rad, rad/s, rad/s^2; boxes (K, 3) m."""

    lower: np.ndarray
    upper: np.ndarray
    velocity: np.ndarray
    acceleration: np.ndarray
    ws_lo: np.ndarray
    ws_hi: np.ndarray
    keep_lo: np.ndarray
    keep_hi: np.ndarray
    keep_names: tuple[str, ...]
    gamma: float
    distance_margin: float
    ee_normals: np.ndarray
    ee_offset: float
    brake_acceleration: np.ndarray = field(init=False)
    """``CARTESIAN_BRAKE_FRACTION * acceleration`` (n,) rad/s^2, derived."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "brake_acceleration", CARTESIAN_BRAKE_FRACTION * self.acceleration)

    @classmethod
    def from_spec(cls, spec: SafetySpec) -> Limits:
        normals, offset = ee_speed_polytope(spec.ee_speed_max)
        keep = spec.keepout
        return cls(
            lower=np.array([j.lower for j in spec.joints]), upper=np.array([j.upper for j in spec.joints]),
            velocity=np.array([j.velocity for j in spec.joints]),
            acceleration=np.array([j.acceleration for j in spec.joints]),
            ws_lo=np.array(spec.workspace.lo, float), ws_hi=np.array(spec.workspace.hi, float),
            keep_lo=np.array([k.lo for k in keep], float).reshape(-1, 3),
            keep_hi=np.array([k.hi for k in keep], float).reshape(-1, 3),
            keep_names=tuple(k.name for k in keep), gamma=spec.filter.gamma,
            distance_margin=spec.filter.distance_margin, ee_normals=normals, ee_offset=offset)


@dataclass(frozen=True)
class ObstacleArrays:
    """Obstacle boxes as arrays: ``centers`` (O, 3) m base frame, ``half`` (O, 3) m, ``names``."""

    centers: np.ndarray
    half: np.ndarray
    names: tuple[str, ...]

    @classmethod
    def from_obstacles(cls, obstacles: Sequence[Obstacle]) -> ObstacleArrays:
        return cls(centers=np.array([o.center for o in obstacles], float).reshape(-1, 3),
                   half=np.array([o.half_extents for o in obstacles], float).reshape(-1, 3),
                   names=tuple(o.name for o in obstacles))

    def finite(self) -> bool:
        return bool(np.all(np.isfinite(self.centers)) and np.all(np.isfinite(self.half))
                    and np.all(self.half >= 0.0))


JOINT_SOURCES = ("velocity", "acceleration", "position", "braking")


@dataclass(frozen=True)
class KernelTables:
    """The constants of one filter (spec limits, period ``dt``, state uncertainty, Lipschitz
    bound) packed for :mod:`filter_kernels`: ``jt`` (8, n), ``sc`` (8,) (layouts documented
    there), ``ee_normals`` (E, 3), ``ws`` (2, 3) = [lo; hi] m, keep-out ``keep_lo``/``keep_hi``
    (K, 3) m. Built once, read-only."""

    jt: np.ndarray
    sc: np.ndarray
    ee_normals: np.ndarray
    ws: np.ndarray
    keep_lo: np.ndarray
    keep_hi: np.ndarray

    @classmethod
    def make(cls, lim: Limits, dt: float, position_noise: float = 0.0, delay: float = 0.0,
             lipschitz: float = 0.0) -> KernelTables:
        """``lam = gamma / dt`` (1/s), ``adt = a_max dt`` (rad/s), ``h_star = a_max / lam^2``
        (rad); ``unseen_static = position_noise + a_max delay^2 / 2`` (rad, B9)."""
        lam = lim.gamma / dt
        a = lim.acceleration
        has_unseen = position_noise > 0.0 or delay > 0.0
        jt = np.vstack([lim.lower, lim.upper, lim.velocity, a, a * dt, a / (lam * lam),
                        position_noise + 0.5 * a * delay * delay, lim.brake_acceleration]).astype(float)
        sc = np.array([lam, delay, float(has_unseen), lipschitz, dt, lim.gamma, lim.ee_offset,
                       lim.distance_margin], dtype=float)
        arrays = (jt, sc, np.ascontiguousarray(lim.ee_normals, float), np.vstack([lim.ws_lo, lim.ws_hi]),
                  np.ascontiguousarray(lim.keep_lo, float), np.ascontiguousarray(lim.keep_hi, float))
        for arr in arrays:
            arr.flags.writeable = False
        return cls(*arrays)


def joint_bounds(t: KernelTables, q: np.ndarray, dq: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Simple bounds on ``u`` (rad/s): ``(lb, ub, lows, highs)``; ``lows``/``highs`` (4, n) hold
    the candidates in the order of :data:`JOINT_SOURCES` (to name the active one in reports).

    Besides the barrier, velocity and acceleration bounds, ``braking`` keeps the joint limits
    persistently feasible under the acceleration limit (no brake needed near a limit). With
    ``lam = gamma / dt`` and ``h_star = a / lam^2``: below ``h_star`` the barrier rate alone is
    self-sustaining (``lam^2 h dt <= a dt``); above it the next sample must be able to brake at
    ``a`` while keeping ``u <= lam h`` all the way, which holds when
    ``u^2 + 2 a dt u <= 2 a (h - h_star / 2)``, i.e.
    ``u <= -a dt + sqrt(a^2 dt^2 + 2 a (h - h_star / 2))`` for ``h = upper - q`` (mirrored at
    ``lower``). Outside the range (``h < 0``, scenario B6) the joint must move back, the return
    speed ramping up by at most ``a dt`` per step (never deeper). With state uncertainty (B9)
    ``h`` is first reduced by the unseen motion ``position_noise + |dq| delay + a delay^2 / 2``.
    Units: rad, rad/s, rad/s^2.
    """
    return fk.joint_bounds(t.jt, t.sc, np.asarray(q, float), np.asarray(dq, float))


def fk_margin(lipschitz: float, lb: np.ndarray, ub: np.ndarray, dt: float) -> float:
    """Bound (m) on the one-step linearisation error of any point for ``lb <= u <= ub``:
    ``0.5 L (dt sum_i max(|lb_i|, |ub_i|))^2``."""
    return float(fk.fk_margin(float(lipschitz), np.asarray(lb, float), np.asarray(ub, float), float(dt)))


def state_margin(jac: np.ndarray, unseen: np.ndarray | None) -> float:
    """Bound (m) on how far any point may be from where the measured state puts it (B9):
    ``max_p sum_j |J_p[:, j]| unseen_j`` for point Jacobians ``jac`` (P, 3, n); 0 without
    state uncertainty. First order in ``unseen`` (a few mrad), like the Jacobian it uses."""
    if unseen is None:
        return 0.0
    return float(fk.state_margin(np.ascontiguousarray(jac, float), np.asarray(unseen, float)))


def row_names(lim: Limits, points: Sequence[str], obstacles: Sequence[str]) -> tuple[str, ...]:
    """Names of the ``G u <= b`` rows in the order :func:`cartesian_rows` stacks them."""
    names = [f"ee_speed[{i}]" for i in range(len(lim.ee_normals))]
    names += [f"workspace.{a}_hi[{p}]" for p in points for a in AXES]
    names += [f"workspace.{a}_lo[{p}]" for p in points for a in AXES]
    names += [f"keepout[{k}][{p}]" for p in points for k in lim.keep_names]
    names += [f"distance[{o}][{p}]" for p in points for o in obstacles]
    return tuple(names)


def cartesian_rows(t: KernelTables, obs: ObstacleArrays, p: np.ndarray, r: np.ndarray, jac: np.ndarray,
                   jv_ee: np.ndarray, margin: float, dq: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows ``G`` (R, n), ``b`` (R,) m/s, barrier values ``h`` (R,) m (NaN for speed rows), in
    the order of :func:`row_names`.

    Every barrier row of a point is ``-grad_h(p) . J_p`` (m/s per rad/s): workspace faces,
    the keep-out face the point is farthest past, the signed distance to each obstacle box (the
    unit vector from the nearest surface point outside, the deepest face's normal inside).

    Right-hand side: inside the safe set, the discrete barrier rate ``(gamma h - margin) / dt``,
    capped by a braking-distance term like the joints' one (:func:`joint_bounds`) with the row's
    deceleration authority taken as :data:`CARTESIAN_BRAKE_FRACTION` of ``sum_i |G_i| a_max_i``
    (m/s^2), so a point approaching a barrier slows down early enough to stay feasible instead
    of braking. Outside it (``h < 0``, scenario B6) the point must move back, its return speed
    ramping up by at most that deceleration times ``dt`` per step (bounded-speed recovery, never
    deeper); a violated row without authority stays violated (``SafetyFilter`` calls it
    degenerate).

    Args:
        p, r, jac: point positions (P, 3) m base frame, radii (P,) m, Jacobians (P, 3, n).
        jv_ee: linear end-effector Jacobian (3, n).
        margin: the sampled-data margin from :func:`fk_margin` (m).
        dq: current joint velocities (rad/s), for the recovery ramp of violated barriers.
    """
    return fk.cartesian_rows(t.jt, t.sc, t.ee_normals, t.ws, t.keep_lo, t.keep_hi, obs.centers, obs.half,
                             *(np.ascontiguousarray(a, float) for a in (p, r, jac, jv_ee)), float(margin),
                             np.asarray(dq, float))
