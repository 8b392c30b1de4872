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
from functools import lru_cache

import numpy as np

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
class JointTerms:
    """Constants of :func:`joint_bounds` for one period ``dt``: ``lam = gamma / dt`` (1/s);
    per joint (n,): limits (rad, rad/s), ``adt = a_max dt`` (rad/s), ``h_star = a_max / lam^2``
    (rad); ``*2`` arrays repeat a joint quantity for the upper and the lower limit (2n,)."""

    lam: float
    lower: np.ndarray
    upper: np.ndarray
    velocity: np.ndarray
    adt: np.ndarray
    adt2: np.ndarray
    a2: np.ndarray
    h_star2: np.ndarray
    unseen_static: np.ndarray | None = None
    """``position_noise + a_max delay^2 / 2`` (n,) rad, or None without state uncertainty (B9)."""
    delay: float = 0.0

    @classmethod
    def make(cls, lim: Limits, dt: float, position_noise: float = 0.0, delay: float = 0.0) -> JointTerms:
        lam = lim.gamma / dt
        a = lim.acceleration
        unseen = position_noise + 0.5 * a * delay * delay if (position_noise > 0.0 or delay > 0.0) else None
        return cls(lam=lam, lower=lim.lower, upper=lim.upper, velocity=lim.velocity, adt=a * dt,
                   adt2=np.tile(a * dt, 2), a2=np.tile(a, 2), h_star2=np.tile(a / (lam * lam), 2),
                   unseen_static=unseen, delay=float(delay))

    def unseen_motion(self, dq: np.ndarray) -> np.ndarray | None:
        """How far (rad) each joint may be from its measured position when the command acts:
        ``position_noise + |dq| delay + a_max delay^2 / 2`` (B9), or None when both are zero."""
        if self.unseen_static is None:
            return None
        return self.unseen_static + np.abs(dq) * self.delay


def joint_bounds(t: JointTerms, q: np.ndarray, dq: np.ndarray
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
    ``h`` is first reduced by :meth:`JointTerms.unseen_motion`. Units: rad, rad/s, rad/s^2.
    """
    n = q.shape[0]
    h = np.concatenate([t.upper - q, q - t.lower])  # (2n,): upper then lower clearance
    unseen = t.unseen_motion(dq)
    if unseen is not None:  # B9: the clearance the joint may already have used unseen
        h -= np.concatenate([unseen, unseen])
    pos = t.lam * h
    if h.min() < 0.0:  # B6 recovery ramp; outward speed sign-folded like h
        out_speed = np.concatenate([np.minimum(dq, 0.0), -np.maximum(dq, 0.0)]) - t.adt2
        pos = np.where(h < 0.0, np.maximum(pos, out_speed), pos)
    stop = np.sqrt(np.maximum(t.adt2 * t.adt2 + 2.0 * t.a2 * (h - 0.5 * t.h_star2), 0.0)) - t.adt2
    stop[h <= t.h_star2] = np.inf
    lows, highs = np.empty((4, n)), np.empty((4, n))
    lows[0], highs[0] = -t.velocity, t.velocity
    lows[1], highs[1] = dq - t.adt, dq + t.adt
    lows[2], highs[2] = -pos[n:], pos[:n]
    lows[3], highs[3] = -stop[n:], stop[:n]
    return lows.max(axis=0), highs.min(axis=0), lows, highs


def fk_margin(lipschitz: float, lb: np.ndarray, ub: np.ndarray, dt: float) -> float:
    """Bound (m) on the one-step linearisation error of any point for ``lb <= u <= ub``."""
    reach = float(np.sum(np.maximum(np.abs(lb), np.abs(ub)))) * dt
    return 0.5 * lipschitz * reach * reach


def state_margin(jac: np.ndarray, unseen: np.ndarray | None) -> float:
    """Bound (m) on how far any point may be from where the measured state puts it (B9):
    ``max_p sum_j |J_p[:, j]| unseen_j`` for point Jacobians ``jac`` (P, 3, n); 0 without
    state uncertainty. First order in ``unseen`` (a few mrad), like the Jacobian it uses."""
    if unseen is None:
        return 0.0
    return float((np.sqrt(np.einsum("pcn,pcn->pn", jac, jac)) @ unseen).max(initial=0.0))


def row_names(lim: Limits, points: Sequence[str], obstacles: Sequence[str]) -> tuple[str, ...]:
    """Names of the ``G u <= b`` rows in the order :func:`cartesian_rows` stacks them."""
    names = [f"ee_speed[{i}]" for i in range(len(lim.ee_normals))]
    names += [f"workspace.{a}_hi[{p}]" for p in points for a in AXES]
    names += [f"workspace.{a}_lo[{p}]" for p in points for a in AXES]
    names += [f"keepout[{k}][{p}]" for p in points for k in lim.keep_names]
    names += [f"distance[{o}][{p}]" for p in points for o in obstacles]
    return tuple(names)


_FACE_NORMALS = np.vstack([np.eye(3), -np.eye(3)])
"""Outward normals of the six faces of an axis-aligned box: +x, +y, +z, -x, -y, -z."""
_EYE3 = np.eye(3)


def _box_signed_distance(p: np.ndarray, centers: np.ndarray, half: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Signed distance (P, O) m from points ``p`` (P, 3) to boxes, and its gradient (P, O, 3):
    the unit vector from the nearest surface point outside, the deepest face's normal inside.
    The usual case (every point outside every box) takes a short path with fewer array calls."""
    d = p[:, None, :] - centers
    excess = np.abs(d)
    excess -= half
    outside = np.maximum(excess, 0.0)
    out_norm = np.sqrt(np.einsum("poc,poc->po", outside, outside))
    sign = np.where(d >= 0.0, 1.0, -1.0)
    if out_norm.min(initial=np.inf) > 0.0:  # all outside: max(excess) > 0, so dist = out_norm
        outside /= out_norm[..., None]
        outside *= sign
        return out_norm, outside
    is_out = out_norm > 0.0
    inside_grad = _EYE3[np.argmax(excess, axis=2)]
    grad = np.where(is_out[..., None], outside / np.where(is_out, out_norm, 1.0)[..., None], inside_grad)
    return out_norm + np.minimum(np.max(excess, axis=2), 0.0), grad * sign


@lru_cache(maxsize=32)
def _row_order(npts: int, k: int, o: int) -> np.ndarray:
    """Indices taking the point-major ``(point, slot)`` rows of :func:`cartesian_rows` (slots:
    workspace hi x/y/z, workspace lo x/y/z, the K keep-out boxes, the O obstacles) to the
    block order of :func:`row_names`."""
    slots = 6 + k + o
    base = np.arange(npts)[:, None] * slots
    blocks = [base + np.arange(3), base + 3 + np.arange(3), base + 6 + np.arange(k),
              base + 6 + k + np.arange(o)]
    order = np.concatenate([blk.ravel() for blk in blocks])
    order.flags.writeable = False  # shared by every call through the cache
    return order


def cartesian_rows(lim: Limits, obs: ObstacleArrays, p: np.ndarray, r: np.ndarray, jac: np.ndarray,
                   jv_ee: np.ndarray, dt: float, margin: float, dq: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows ``G`` (R, n), ``b`` (R,) m/s, barrier values ``h`` (R,) m (NaN for speed rows), in
    the order of :func:`row_names`.

    Every barrier row of a point is ``-grad_h(p) . J_p`` (m/s per rad/s); the gradients of all
    points and barriers are stacked as ``(points, slots, 3)`` and multiplied with the point
    Jacobians in one batched product, then reordered once (:func:`_row_order`).

    Args:
        p, r, jac: point positions (P, 3) m base frame, radii (P,) m, Jacobians (P, 3, n).
        jv_ee: linear end-effector Jacobian (3, n).
        margin: the sampled-data margin from :func:`fk_margin` (m).
        dq: current joint velocities (rad/s), for the recovery ramp of violated barriers.
    """
    npts, _, n = jac.shape
    e, k, o = len(lim.ee_normals), len(lim.keep_names), len(obs.names)
    grad = np.empty((npts, 6 + k + o, 3))  # descent direction -grad_h per (point, slot)
    hp = np.empty((npts, 6 + k + o))
    grad[:, :6] = _FACE_NORMALS
    hp[:, :3] = lim.ws_hi - p - r[:, None]
    hp[:, 3:6] = p - r[:, None] - lim.ws_lo
    if k:
        faces = np.empty((npts, k, 6))  # distances past the +x..+z, -x..-z faces (m)
        np.subtract(p[:, None, :], lim.keep_hi, out=faces[..., :3])
        np.subtract(lim.keep_lo, p[:, None, :], out=faces[..., 3:])
        np.negative(_FACE_NORMALS[faces.argmax(axis=2)], out=grad[:, 6:6 + k])
        hp[:, 6:6 + k] = faces.max(axis=2) - r[:, None] - lim.distance_margin
    if o:
        dist, dgrad = _box_signed_distance(p, obs.centers, obs.half)
        np.negative(dgrad, out=grad[:, 6 + k:])
        hp[:, 6 + k:] = dist - r[:, None] - lim.distance_margin
    order = _row_order(npts, k, o)
    G, h = np.empty((e + order.size, n)), np.empty(e + order.size)
    np.matmul(lim.ee_normals, jv_ee, out=G[:e])
    h[:e] = np.nan
    np.take(np.matmul(grad, jac).reshape(-1, n), order, axis=0, out=G[e:])
    np.take(hp.ravel(), order, out=h[e:])
    b = np.empty_like(h)
    b[:e] = lim.ee_offset
    b[e:] = _barrier_rhs(G[e:], h[e:], lim, dt, margin, dq)
    return G, b, h


def _barrier_rhs(G: np.ndarray, h: np.ndarray, lim: Limits, dt: float, margin: float,
                 dq: np.ndarray) -> np.ndarray:
    """Right-hand side (m/s) of the Cartesian barrier rows ``G u <= b``.

    Inside the safe set: the discrete barrier rate ``(gamma h - margin) / dt``, capped by a
    braking-distance term like the joints' one (:func:`joint_bounds`) with the row's deceleration
    authority taken as :data:`CARTESIAN_BRAKE_FRACTION` of ``sum_i |G_i| a_max_i`` (m/s^2), so a
    point approaching a barrier slows down early enough to stay feasible instead of braking.
    Outside it (``h < 0``, scenario B6) the point must move back, its return speed ramping up by
    at most that deceleration times ``dt`` per step (bounded-speed recovery, never deeper).
    Computed for all rows at once; the cases are selected with ``np.where`` (no masked copies);
    the recovery branch is skipped when no row is violated.
    """
    lam = lim.gamma / dt
    h_eff = h - margin / lim.gamma
    rate = lam * h_eff
    decel = np.abs(G) @ lim.brake_acceleration
    h_star = decel / (lam * lam)
    has_authority = decel > 0.0
    adt = decel * dt
    brake = np.sqrt(np.maximum(adt * adt + 2.0 * decel * (h_eff - 0.5 * h_star), 0.0)) - adt
    rate = np.where((h_eff > h_star) & has_authority, np.minimum(rate, brake), rate)
    violated = h < 0.0
    if not violated.any():
        return rate
    # without authority a violated row stays violated: degenerate (see SafetyFilter._build)
    ramp = np.minimum(G @ dq, 0.0) - adt
    recover = np.minimum(np.maximum(rate, ramp), -margin / dt)  # h(x+) >= h(x)
    return np.where(violated & has_authority, recover, rate)
