"""A scripted expert with privileged state, for the behaviour-cloning demonstrations.

The expert sees the true poses (an :class:`ExpertView`, built by ``safetwin.twin.world.expert_view``)
and returns an action in the env's action space (EE delta in the robot **base** frame,
scaled to [-1, 1]). It never moves the end effector faster than ``speed_fraction`` of the
spec's ``ee_speed_max`` and keeps ``clearance`` (m) from every hazard box (fragile objects,
obstacles, keep-out volumes), going over them when the straight line is blocked.

Tasks:

* ``reach``: move the end effector to ``target``.
* ``push``: get behind the named object (on the far side from the goal), then push it along
  the object-to-goal line until its centre is in the goal zone, correcting sideways drift.

Planning is stateless: each step the expert builds a short waypoint list (straight, or up,
over and down) and heads for the furthest waypoint reachable on a hazard-free segment.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

MAX_YAW_OVERRUN = 0.6
"""rad the gripper yaw may go past +-pi/2 (relative to home) to avoid a half-turn flip."""

Box3 = tuple[np.ndarray, np.ndarray]
"""An axis-aligned box as (lo (3,), hi (3,)) in m, base frame."""


@dataclass(frozen=True)
class ExpertConfig:
    """Tuning of the scripted expert.

    Attributes:
        speed_fraction: fraction of ``ee_speed_max`` the commanded EE speed stays under.
        clearance: m kept between the EE point and every hazard box.
        min_clearance: m; the least clearance kept from a hazard the goal lies near.
        cruise_margin: m above the highest blocking hazard the EE crosses at.
        tolerance: m; a waypoint closer than this counts as reached.
        push_standoff: m between the object's back face and the EE at the pre-push pose.
        push_lateral_tolerance: m of sideways misalignment tolerated while pushing.
        object_clearance: m kept from the pushed object while getting behind it.
        push_depth: m below the object's centre the EE pushes at (0 pushes at the centre).
        zone_fraction: fraction of the success distance the object's aim may move off the goal centre.
        pusher_front, pusher_back, pusher_half_length: m; the gripper's footprint on the table
            plane around the EE point at push height, in the gripper's home-yaw frame: it spans
            [-pusher_back, pusher_front] along base x (the wrist and gripper body lie behind) and
            +-pusher_half_length along base y (the finger bar); measured from the bundled arm's
            collision shapes. The push planner checks this footprint, turned by the leg's yaw,
            against every hazard.
        pusher_margin: m kept between the turned footprint and every hazard while pushing.
        turn_margin: m between a hazard and the gripper's reach (``pusher_half_length``) at any
            yaw round a pre-push pose, where the gripper turns (and the EE may overshoot).
        path_clearance: m kept between the pushed object (any yaw) and every hazard by its path.
        push_speed_factor: factor on the speed while in contact (pushing), against contact spikes.
        retreat: m the EE backs off along a finished push before heading for the next one.
        leg_tolerance: m; an intermediate aim point of the pushed object counts as reached.
        max_replans: times per episode the push is planned afresh when the object ends a last leg
            off its aim point.
        lookahead: m past the aim point, on the leg's line, that the push heads for (pure
            pursuit: the push direction stays steady near the aim and drift is steered out).
        reversal_speed: fraction of the speed-limited step above which a reversal of the
            commanded EE motion (a turn by over ~105 degrees) is preceded by one step of hold.
    """

    speed_fraction: float = 0.65
    clearance: float = 0.075
    min_clearance: float = 0.03
    cruise_margin: float = 0.04
    tolerance: float = 0.006
    push_standoff: float = 0.03
    push_lateral_tolerance: float = 0.012
    object_clearance: float = 0.008
    push_depth: float = 0.0
    zone_fraction: float = 0.6
    pusher_front: float = 0.02
    pusher_back: float = 0.058
    pusher_half_length: float = 0.06
    pusher_margin: float = 0.012
    turn_margin: float = 0.03
    path_clearance: float = 0.025
    push_speed_factor: float = 0.7
    retreat: float = 0.04
    leg_tolerance: float = 0.012
    lookahead: float = 0.06
    max_replans: int = 3
    reversal_speed: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 < self.speed_fraction <= 1.0:
            raise ValueError(f"speed_fraction must be in (0, 1], got {self.speed_fraction}")
        if self.reversal_speed < 0.0:
            raise ValueError(f"reversal_speed must be >= 0, got {self.reversal_speed}")
        for name in ("clearance", "cruise_margin", "tolerance", "push_standoff", "push_lateral_tolerance",
                     "object_clearance", "pusher_front", "pusher_back", "pusher_half_length", "pusher_margin",
                     "turn_margin", "path_clearance", "lookahead"):
            if getattr(self, name) < 0.0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class ExpertView:
    """The privileged state the expert acts on (m, rad; robot base frame).

    Attributes:
        ee_pos: end-effector position (3,).
        ee_rot: end-effector rotation matrix (3, 3); ``home_rot`` the orientation to hold.
        hazards: boxes the EE must keep ``clearance`` from.
        step_limit: largest EE displacement per policy step allowed (m).
        translation_scale: m per policy step at action 1; rotation_scale: rad at action 1.
        task: ``reach`` or ``push``.
        target: reach target (3,) (task ``reach``).
        object_pos, object_half: the pushed object's centre (3,) and half extents (3,) (``push``).
        goal: centre (3,) of the goal zone (``push``).
        ee_radius: m, radius of the EE/fingers seen as a ball (``push``).
        gripper: the gripper command to hold, in [-1, 1].
    """

    ee_pos: np.ndarray
    ee_rot: np.ndarray
    home_rot: np.ndarray
    hazards: list[Box3]
    step_limit: float
    translation_scale: float
    rotation_scale: float
    task: str
    target: np.ndarray | None = None
    object_pos: np.ndarray | None = None
    object_half: np.ndarray | None = None
    goal: np.ndarray | None = None
    ee_radius: float = 0.02
    gripper: float = -1.0
    success_distance: float = 0.03
    extra_hazards: list[Box3] = field(default_factory=list)


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


def _clear(a: np.ndarray, b: np.ndarray, boxes: list[tuple[Box3, float]]) -> bool:
    return not any(segment_hits_box(a, b, box, grow) for box, grow in boxes)


def _path_length(points: list[np.ndarray]) -> float:
    return float(sum(np.linalg.norm(b - a) for a, b in zip(points[:-1], points[1:], strict=False)))


def plan(start: np.ndarray, goal: np.ndarray, boxes: list[tuple[Box3, float]], margin: float) -> list[np.ndarray]:
    """Waypoints from ``start`` to ``goal`` around ``boxes`` ((box, grow) pairs): straight when
    clear, else the shortest clear path round one or two corners of a blocking box (at the
    higher of the two heights), else up, across at ``margin`` above the highest box, and down."""
    if _clear(start, goal, boxes):
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
             if _clear(start, c[0], boxes) and all(_clear(a, b, boxes) for a, b in zip(c[:-1], c[1:], strict=False))]
    if clear:
        return min(clear, key=lambda c: _path_length([start, *c]))
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
        if np.linalg.norm(wp - start) > tolerance and not _clear(start, wp, boxes):
            break
        best = wp
    return best


def _rotation_error(rot: np.ndarray, home: np.ndarray) -> np.ndarray:
    """Axis-angle vector (rad, base frame) that rotates ``rot`` onto ``home``."""
    r = home @ rot.T
    angle = float(np.arccos(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0)))
    if angle < 1e-6:
        return np.zeros(3)
    axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    norm = np.linalg.norm(axis)
    return np.zeros(3) if norm < 1e-9 else axis / norm * angle


def footprint(yaw: float, cfg: ExpertConfig) -> Box3:
    """Offsets (lo (3,), hi (3,)) m, base frame, of the axis-aligned box round the gripper's
    footprint (:class:`ExpertConfig` ``pusher_*``) turned by ``yaw`` (rad) about base z."""
    c, s = np.cos(yaw), np.sin(yaw)
    corners = np.array([[x, y] for x in (-cfg.pusher_back, cfg.pusher_front)
                        for y in (-cfg.pusher_half_length, cfg.pusher_half_length)]) @ np.array([[c, s], [-s, c]])
    return np.array([*corners.min(axis=0), 0.0]), np.array([*corners.max(axis=0), 0.0])


def _yaw_options(d: np.ndarray, previous: float) -> list[float]:
    """Yaws laying the finger bar along ``d`` within the wrist's reach, nearest ``previous`` first."""
    base = float(np.arctan2(d[1], d[0]) - np.pi / 2)
    options = [base + k * np.pi for k in range(-2, 3) if abs(base + k * np.pi) <= np.pi / 2 + MAX_YAW_OVERRUN]
    return sorted(options, key=lambda y: abs(y - previous))


def _leg_yaw(a: np.ndarray, b: np.ndarray, flat: list[Box3], grow: float, reach: float, yaw0: float,
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
    for yaw in _yaw_options(d[:2], yaw0):
        lo, hi = footprint(yaw, cfg)
        if not any(segment_hits_box(ea, eb, (box[0] - hi, box[1] - lo), cfg.pusher_margin) for box in flat):
            return yaw
    return None


def _plan_object_path(obj: np.ndarray, goal: np.ndarray, hazards: list[Box3], grow: float, zone: float,
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
            new = _leg_yaw(a, b, flat, grow, reach, yaw, cfg)
            if new is None:
                break
            legs.append((b, new))
            turn, yaw = turn + abs(new - yaw), new
        if len(legs) == len(path) - 1:
            cost = _path_length(path) + 0.15 * (len(path) - 2) + 0.1 * turn  # ~0.1 m of pushing per rad turned
            if cost < best_cost:
                best, best_cost = legs, cost
    return best or []


class ScriptedExpert:
    """Computes the expert's action from an :class:`ExpertView`; call :meth:`reset` per episode."""

    def __init__(self, config: ExpertConfig | None = None) -> None:
        self.config = config or ExpertConfig()
        self.reset()

    def reset(self) -> None:
        """Forget the pushed object's planned path (a new episode starts)."""
        self._legs: list[tuple[np.ndarray, float]] | None = None
        self._starts: list[np.ndarray] = []
        self._replans = 0
        self._retreat_yaw = 0.0
        self._leg = 0
        self._yaw = 0.0
        self._slow = 1.0
        self._retreat: np.ndarray | None = None
        self._push_dir = np.zeros(2)
        self._last_delta = np.zeros(3)

    def act(self, view: ExpertView) -> np.ndarray:
        """Action (7,) float32 in [-1, 1]: (dx, dy, dz, droll, dpitch, dyaw, gripper)."""
        if view.task == "reach":
            if view.target is None:
                raise ValueError("reach task needs ExpertView.target")
            aim = self._route(view, np.asarray(view.target, dtype=float), [])
        elif view.task == "push":
            aim = self._push_aim(view)
        else:
            raise ValueError(f"unknown expert task {view.task!r}; expected 'reach' or 'push'")
        return self._action(view, aim, self._yaw if view.task == "push" else 0.0)

    def _boxes(self, view: ExpertView, goal: np.ndarray, extra: list[tuple[Box3, float]]) -> list[tuple[Box3, float]]:
        """Hazards with their growth: ``clearance``, reduced (down to ``min_clearance``) for a box
        the goal or the EE itself lies closer to (per-axis gap), so a goal near a hazard stays
        reachable and the EE can leave a spot near one (it never gets closer than it is)."""
        cfg, out = self.config, []
        ee = np.asarray(view.ee_pos, dtype=float)
        for box in view.hazards + view.extra_hazards:
            gap = min(float(np.max(np.maximum(box[0] - p, p - box[1]))) for p in (goal, ee))
            out.append((box, min(cfg.clearance, max(cfg.min_clearance, gap - cfg.tolerance))))
        return out + extra

    def _route(self, view: ExpertView, goal: np.ndarray, extra: list[tuple[Box3, float]]) -> np.ndarray:
        boxes = self._boxes(view, goal, extra)
        ee = np.asarray(view.ee_pos, dtype=float)
        waypoints = plan(ee, goal, boxes, self.config.cruise_margin)
        return next_point(ee, waypoints, boxes, self.config.tolerance)

    def _object_aim(self, view: ExpertView, obj: np.ndarray, half: np.ndarray, reach: float) -> np.ndarray:
        """The object's present aim point (xy); plans the legs at the first call of an episode
        and sets the leg's gripper yaw."""
        cfg = self.config
        if self._legs is not None and self._replans < cfg.max_replans and self._leg == len(self._legs) - 1 \
                and self._leg_done(obj[:2]) and np.linalg.norm(self._legs[-1][0] - obj[:2]) > cfg.leg_tolerance:
            # the object drifted off the last leg's aim: back off and plan afresh from where it is
            self._legs, self._leg, self._replans = None, 0, self._replans + 1
            ee = np.asarray(view.ee_pos, float)
            self._retreat_yaw = self._yaw
            self._retreat = np.array([*(ee[:2] - self._push_dir * cfg.retreat), ee[2]])
        if self._legs is None:
            # the full clearances first; tighter ones (down to touching distance) when nothing clears
            for scale in (1.0, 0.3, 0.0):
                grow = float(np.hypot(half[0], half[1])) + scale * cfg.path_clearance  # any object yaw
                tight = replace(cfg, pusher_margin=scale * cfg.pusher_margin)
                self._legs = _plan_object_path(obj[:2], np.asarray(view.goal, float)[:2], view.hazards, grow,
                                               cfg.zone_fraction * view.success_distance, reach, tight)
                if self._legs:
                    break
            if not self._legs:
                d = np.asarray(view.goal, float)[:2] - obj[:2]
                self._legs = [(np.asarray(view.goal, float)[:2], _yaw_options(d, self._yaw)[0])]
            self._starts = [obj[:2].copy()] + [aim for aim, _ in self._legs[:-1]]
        while self._leg < len(self._legs) - 1 and self._leg_done(obj[:2]):
            self._leg += 1
            # back off along the finished push before turning or lifting the gripper
            ee = np.asarray(view.ee_pos, float)
            self._retreat_yaw = self._yaw
            self._retreat = np.array([*(ee[:2] - self._push_dir * cfg.retreat), ee[2]])
        aim, self._yaw = self._legs[self._leg]
        return aim

    def _leg_dir(self) -> np.ndarray:
        """Unit direction (xy) of the present leg, from its start to its aim point."""
        d = self._legs[self._leg][0] - self._starts[self._leg]
        return d / max(float(np.linalg.norm(d)), 1e-9)

    def _leg_done(self, obj: np.ndarray) -> bool:
        """The object is at the leg's aim point, or has travelled the leg's length along it."""
        aim, start = self._legs[self._leg][0], self._starts[self._leg]
        progress = float((obj - start) @ self._leg_dir())
        tol = self.config.leg_tolerance
        return bool(np.linalg.norm(aim - obj) < tol or progress > float(np.linalg.norm(aim - start)) - tol)

    def _push_aim(self, view: ExpertView) -> np.ndarray:
        if view.object_pos is None or view.object_half is None or view.goal is None:
            raise ValueError("push task needs ExpertView.object_pos, object_half and goal")
        cfg = self.config
        obj, half = np.asarray(view.object_pos, float), np.asarray(view.object_half, float)
        aim_xy = self._object_aim(view, obj, half, float(np.max(half[:2])) + view.ee_radius)
        if self._retreat is not None:
            if np.linalg.norm(self._retreat - np.asarray(view.ee_pos, float)) > cfg.tolerance:
                self._yaw = self._retreat_yaw  # turn for the next leg only once backed off
                return self._retreat
            self._retreat = None
        dist = max(float((aim_xy - obj[:2]) @ self._leg_dir()), 0.0)  # m left along the leg
        # pure pursuit: head for a point past the aim on the leg's line (steady d near the aim)
        to_pursuit = aim_xy + self._leg_dir() * cfg.lookahead - obj[:2]
        d = to_pursuit / max(float(np.linalg.norm(to_pursuit)), 1e-9)
        reach = float(np.abs(d[0]) * half[0] + np.abs(d[1]) * half[1]) + view.ee_radius
        push_z = obj[2] - cfg.push_depth
        ee = np.asarray(view.ee_pos, float)
        rel = ee[:2] - obj[:2]
        along = float(rel @ d)
        lateral = float(np.linalg.norm(rel - along * d))
        behind = along < -(reach - 0.5 * cfg.push_standoff)
        if behind and lateral < cfg.push_lateral_tolerance and abs(ee[2] - push_z) < 0.015:
            # pushing: move along d, steering back onto the line through the object's centre
            line_point = obj[:2] - d * reach
            off_line = (ee[:2] - line_point) - ((ee[:2] - line_point) @ d) * d
            step = d * dist - off_line
            self._slow, self._push_dir = cfg.push_speed_factor, d
            return np.array([ee[0] + step[0], ee[1] + step[1], push_z])
        pre = np.array([*(obj[:2] - d * (reach + cfg.push_standoff)), push_z])
        if along < -reach and abs(ee[2] - push_z) < 0.015:
            return self._route(view, pre, [])  # behind the object already: slide straight into line
        obj_box: Box3 = (obj - half, obj + half)
        return self._route(view, pre, [(obj_box, cfg.object_clearance + view.ee_radius)])

    def _action(self, view: ExpertView, aim: np.ndarray, yaw: float = 0.0) -> np.ndarray:
        delta = aim - np.asarray(view.ee_pos, float)
        norm = float(np.linalg.norm(delta))
        limit = view.step_limit * self._slow
        self._slow = 1.0
        if norm > limit:
            delta = delta / norm * limit
        # stop for one step before reversing a fast motion: a sudden reversal overshoots the speed limit
        last = float(np.linalg.norm(self._last_delta))
        if last > self.config.reversal_speed * view.step_limit and \
                float(delta @ self._last_delta) < -0.25 * last * float(np.linalg.norm(delta)):
            delta = np.zeros(3)
        self._last_delta = delta
        c, s_ = np.cos(yaw), np.sin(yaw)
        rz = np.array([[c, -s_, 0.0], [s_, c, 0.0], [0.0, 0.0, 1.0]])
        rot = _rotation_error(np.asarray(view.ee_rot, float), rz @ np.asarray(view.home_rot, float))
        out = np.zeros(7, dtype=np.float64)
        out[:3] = delta / view.translation_scale
        out[3:6] = np.clip(rot, -view.rotation_scale, view.rotation_scale) / view.rotation_scale
        out[6] = view.gripper
        return np.clip(out, -1.0, 1.0).astype(np.float32)
