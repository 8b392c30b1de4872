"""Geometry for the scripted expert: segment/box tests, waypoint routing round hazard boxes,
and the push planner (the pushed object's legs and the gripper yaw for each).

All positions are m in the robot **base** frame, yaws rad about base z relative to the home
orientation. Boxes are axis-aligned (lo (3,), hi (3,)).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from safetwin.twin.expert import ExpertConfig

MAX_YAW_OVERRUN = 0.6
"""rad the gripper yaw may go past +-pi/2 (relative to home) to avoid a half-turn flip."""

YAW_HYSTERESIS = 0.2
"""rad: a yaw up to this far past the overrun stays an option while the gripper is already within
this much of it, so a push direction that drifts across the limit does not flip the gripper."""

Box3 = tuple[np.ndarray, np.ndarray]
"""An axis-aligned box as (lo (3,), hi (3,)) in m, base frame."""


def segment_hits_box(a: np.ndarray, b: np.ndarray, box: Box3, grow: float) -> bool:
    """True when segment a->b (m) passes through ``box`` grown by ``grow`` (m) on every side."""
    lo, hi = box[0] - grow, box[1] + grow
    d = b - a
    t0, t1 = 0.0, 1.0
    for i in range(3):
        if abs(d[i]) < 1e-12:
            if a[i] < lo[i] or a[i] > hi[i]:
                return False
            continue
        ta, tb = (lo[i] - a[i]) / d[i], (hi[i] - a[i]) / d[i]
        t0, t1 = max(t0, min(ta, tb)), min(t1, max(ta, tb))
        if t0 > t1:
            return False
    return True


def segment_clear(a: np.ndarray, b: np.ndarray, boxes: list[tuple[Box3, float]]) -> bool:
    return not any(segment_hits_box(a, b, box, grow) for box, grow in boxes)


def path_length(points: list[np.ndarray]) -> float:
    return float(sum(np.linalg.norm(b - a) for a, b in zip(points[:-1], points[1:], strict=False)))


def plan(start: np.ndarray, goal: np.ndarray, boxes: list[tuple[Box3, float]], margin: float) -> list[np.ndarray]:
    """Waypoints from ``start`` to ``goal`` around ``boxes`` ((box, grow) pairs): straight when
    clear, else the shortest clear path round one or two corners of a blocking box (at the
    higher of the two heights), else up, across at ``margin`` above the highest box, and down."""
    if segment_clear(start, goal, boxes):
        return [goal]
    z = max(float(start[2]), float(goal[2]))
    candidates: list[list[np.ndarray]] = []
    for box, grow in boxes:
        if not segment_hits_box(start, goal, box, grow):
            continue
        g = grow + margin / 2
        lo, hi = box[0] - g, box[1] + g
        corners = [np.array([x, y, z]) for x, y in ((lo[0], lo[1]), (hi[0], lo[1]), (hi[0], hi[1]), (lo[0], hi[1]))]
        for i, c in enumerate(corners):
            candidates.append([c, goal])
            candidates.append([c, corners[(i + 1) % 4], goal])
            candidates.append([c, corners[(i - 1) % 4], goal])
    clear = [c for c in candidates
             if segment_clear(start, c[0], boxes) and all(segment_clear(a, b, boxes) for a, b in zip(c[:-1], c[1:], strict=False))]
    if clear:
        return min(clear, key=lambda c: path_length([start, *c]))
    # cross above the boxes under the straight line (seen from above), not above every box
    a0, b0 = np.array([start[0], start[1], 0.0]), np.array([goal[0], goal[1], 0.0])
    under = [(box, grow) for box, grow in boxes
             if segment_hits_box(a0, b0, (np.array([*box[0][:2], -1.0]), np.array([*box[1][:2], 1.0])), grow)]
    top = max((float(box[1][2]) + grow for box, grow in under or boxes), default=0.0)
    cruise = max(top + margin, float(start[2]), float(goal[2]))
    return [np.array([start[0], start[1], cruise]), np.array([goal[0], goal[1], cruise]), goal]


def next_point(start: np.ndarray, waypoints: list[np.ndarray], boxes: list[tuple[Box3, float]],
               tolerance: float) -> np.ndarray:
    """The furthest waypoint that a hazard-free straight segment from ``start`` reaches."""
    best = waypoints[0]
    for wp in waypoints:
        if np.linalg.norm(wp - start) > tolerance and not segment_clear(start, wp, boxes):
            break
        best = wp
    return best


def footprint(yaw: float, cfg: ExpertConfig) -> Box3:
    """Offsets (lo (3,), hi (3,)) m, base frame, of the axis-aligned box round the gripper's
    footprint (:class:`ExpertConfig` ``pusher_*``) turned by ``yaw`` (rad) about base z."""
    c, s = np.cos(yaw), np.sin(yaw)
    corners = np.array([[x, y] for x in (-cfg.pusher_back, cfg.pusher_front)
                        for y in (-cfg.pusher_half_length, cfg.pusher_half_length)]) @ np.array([[c, s], [-s, c]])
    return np.array([*corners.min(axis=0), 0.0]), np.array([*corners.max(axis=0), 0.0])


def yaw_options(d: np.ndarray, previous: float) -> list[float]:
    """Yaws (rad) laying the finger bar along ``d`` within the wrist's reach, nearest ``previous``
    (rad) first."""
    base = float(np.arctan2(d[1], d[0]) - np.pi / 2)
    limit = np.pi / 2 + MAX_YAW_OVERRUN
    candidates = [base + k * np.pi for k in range(-2, 3)]
    options = [y for y in candidates
               if abs(y) <= limit or (abs(y) <= limit + YAW_HYSTERESIS and abs(y - previous) < YAW_HYSTERESIS)]
    return sorted(options, key=lambda y: abs(y - previous))


def leg_yaw(a: np.ndarray, b: np.ndarray, flat: list[Box3], grow: float, reach: float, yaw0: float,
             cfg: ExpertConfig) -> float | None:
    """The yaw for pushing the object from ``a`` to ``b`` (xy, m) such that the object (grown by
    ``grow``) and the gripper footprint behind it (``reach`` m back along the leg) clear every
    hazard; None when no yaw does."""
    a3, b3 = np.array([*a, 0.0]), np.array([*b, 0.0])
    if any(segment_hits_box(a3, b3, box, grow) for box in flat):
        return None
    d = (b3 - a3) / max(float(np.linalg.norm(b3 - a3)), 1e-9)
    ea, eb = a3 - d * (reach + cfg.push_standoff), b3 - d * reach  # from the pre-push pose on
    if any(segment_hits_box(ea, ea, box, cfg.pusher_half_length + cfg.turn_margin) for box in flat):
        return None  # the gripper turns to the leg's yaw at the pre-push pose: room for any yaw
    for yaw in yaw_options(d[:2], yaw0):
        lo, hi = footprint(yaw, cfg)
        if not any(segment_hits_box(ea, eb, (box[0] - hi, box[1] - lo), cfg.pusher_margin) for box in flat):
            return yaw
    return None


def plan_object_path(obj: np.ndarray, goal: np.ndarray, hazards: list[Box3], grow: float, zone: float,
                      reach: float, cfg: ExpertConfig, yaw0: float = 0.0) -> list[tuple[np.ndarray, float]]:
    """Legs (aim point xy m, gripper yaw rad) for the pushed object: straight to the goal when the
    swept object (grown by ``grow``) and the gripper's swept footprint clear every hazard, else the
    shortest axis-aligned detour that does, ending anywhere within ``zone`` of the goal centre;
    empty when no candidate clears."""
    flat = [(np.array([h[0][0], h[0][1], -1.0]), np.array([h[1][0], h[1][1], 1.0])) for h in hazards]
    aims = [goal + np.array(v) * zone for v in ((0, 0), (0, 1), (0, -1), (1, 0), (-1, 0))]
    paths = []
    for aim in aims:
        paths += [[obj, aim], [obj, np.array([obj[0], aim[1]]), aim], [obj, np.array([aim[0], obj[1]]), aim]]
        for side in (0.03, -0.03, 0.05, -0.05, 0.07, -0.07, 0.09, -0.09):
            y = aim[1] + side
            paths.append([obj, np.array([obj[0], y]), np.array([aim[0], y]), aim])
    best, best_cost = None, np.inf
    for path in paths:
        legs, yaw, turn = [], yaw0, 0.0
        for a, b in zip(path[:-1], path[1:], strict=False):
            new = leg_yaw(a, b, flat, grow, reach, yaw, cfg)
            if new is None:
                break
            legs.append((b, new))
            turn, yaw = turn + abs(new - yaw), new
        if len(legs) == len(path) - 1:
            cost = path_length(path) + 0.15 * (len(path) - 2) + 0.1 * turn  # ~0.1 m of pushing per rad turned
            if cost < best_cost:
                best, best_cost = legs, cost
    return best or []
