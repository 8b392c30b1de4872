"""Pure-numpy kinematics of a scene's robot: forward kinematics, geometric Jacobians,
collision spheres with their Jacobians, and a damped-least-squares IK step.

:class:`Kinematics` satisfies :class:`safetwin.safety.robot_model.RobotModel`. It parses the
URDF with ``xml.etree`` (no pybullet). Frames: everything is in the robot **base** frame (the
URDF root link); q in rad (m for prismatic joints); Jacobian rows [v (m/s); omega (rad/s)].

Joints that move but are not controlled (the gripper fingers) are held at fixed positions
(default: gripper open, the conservative choice for collision spheres).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from . import kinematics_kernels as kk
from .assets.urdf import Geometry, UrdfJoint, UrdfModel, rpy_matrix

if TYPE_CHECKING:
    from .scene import Scene

MAX_SPHERES_PER_PRIMITIVE = 5


class KinematicsAll(NamedTuple):
    """Everything the safety filter needs at ``q``, from one forward-kinematics pass (base frame).

    ``points`` (1 + m, 3) m stacks the end effector (row 0) and the m sphere centres, and
    ``point_jac`` (1 + m, 3, n) their linear Jacobians (m/s per rad/s); ``centers`` and
    ``sphere_jac`` are views of rows 1.. of those, ``ee_pos`` a view of row 0.
    """

    ee_pos: np.ndarray
    ee_rot: np.ndarray
    ee_jac: np.ndarray
    centers: np.ndarray
    radii: np.ndarray
    sphere_jac: np.ndarray
    points: np.ndarray
    point_jac: np.ndarray


class TrackStep(NamedTuple):
    """One control step of the twin's controller (:meth:`Kinematics.observe_track`), base frame:
    the measured state's EE position ``ee_pos`` (3,) m, sphere ``centers`` (m, 3) m, EE linear
    ``speed`` (m/s) and rotation ``ee_rot`` (3, 3); the moved goal ``p_des`` (3,) m, ``r_des``
    (3, 3); and the DLS joint step ``dq`` (n,) rad toward it."""

    ee_pos: np.ndarray
    centers: np.ndarray
    speed: float
    ee_rot: np.ndarray
    p_des: np.ndarray
    r_des: np.ndarray
    dq: np.ndarray


def _transform(xyz: Sequence[float], rpy: Sequence[float]) -> np.ndarray:
    t = np.eye(4)
    t[:3, :3] = rpy_matrix(tuple(rpy))  # type: ignore[arg-type]
    t[:3, 3] = xyz
    return t


def _joint_motion(joint: UrdfJoint, value: float) -> np.ndarray:
    """Transform (4, 4) of a movable joint at ``value`` (rotation or translation along its axis)."""
    t = np.eye(4)
    axis = np.array(joint.axis)
    if joint.type == "prismatic":
        t[:3, 3] = axis * value
    elif joint.type in ("revolute", "continuous"):
        k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        t[:3, :3] = np.eye(3) + math.sin(value) * k + (1.0 - math.cos(value)) * (k @ k)
    return t


def primitive_spheres(geom: Geometry, max_per: int = MAX_SPHERES_PER_PRIMITIVE) -> list[tuple[np.ndarray, float]]:
    """Spheres ``(centre (3,) m, radius m)`` in the link frame that together cover ``geom``.

    Boxes and cylinders are cut into k equal slabs along their longest axis, each covered by
    its circumscribed sphere; capsules get k spheres along the segment, radius grown to close
    the gaps between neighbours.
    """
    t = _transform(geom.xyz, geom.rpy)
    local: list[tuple[np.ndarray, float]] = []
    if geom.kind == "sphere":
        local = [(np.zeros(3), geom.size[0])]
    elif geom.kind == "box":
        half = np.array(geom.size) / 2.0
        ax = int(np.argmax(half))
        others = np.delete(half, ax)
        k = min(max(1, math.ceil(half[ax] / max(others.max(), 1e-9))), max_per)
        seg = half[ax] / k
        radius = math.sqrt(seg ** 2 + float(others @ others))
        for i in range(k):
            c = np.zeros(3)
            c[ax] = -half[ax] + seg * (2 * i + 1)
            local.append((c, radius))
    elif geom.kind == "cylinder":
        r, h = geom.size
        k = min(max(1, math.ceil(h / (2.0 * r))), max_per)
        seg = h / (2.0 * k)
        local = [(np.array([0.0, 0.0, -h / 2 + seg * (2 * i + 1)]), math.sqrt(seg ** 2 + r * r)) for i in range(k)]
    elif geom.kind == "capsule":
        r, length = geom.size
        k = min(max(2, math.ceil(length / r) + 1), max_per) if length > 0 else 1
        gap = length / (k - 1) if k > 1 else 0.0
        radius = math.sqrt(r * r + (gap / 2.0) ** 2)
        local = [(np.array([0.0, 0.0, -length / 2 + gap * i]), radius) for i in range(k)]
    else:
        raise ValueError(f"no spheres for geometry kind {geom.kind!r}")
    return [(t[:3, :3] @ c + t[:3, 3], r) for c, r in local]


class Kinematics:
    """Kinematics of the controlled joints of one URDF (see the module docstring).

    Args:
        model: the parsed URDF.
        joint_names: controlled joints, in order; all must lie on the chain root -> ``ee_link``.
        ee_link: end-effector link.
        primitives: ``link -> primitives`` (link frame) used for the collision spheres.
        fixed_positions: values (rad or m) for movable joints that are not controlled.
    """

    def __init__(self, model: UrdfModel, joint_names: Sequence[str], ee_link: str,
                 primitives: Callable[[str], Sequence[Geometry]],
                 fixed_positions: Mapping[str, float] | None = None) -> None:
        self.model, self.ee_link = model, ee_link
        self.joint_names = tuple(joint_names)
        self._fixed = dict(fixed_positions or {})
        chain = model.chain(ee_link)
        on_chain = [j.name for j in chain if j.name in self.joint_names]
        if on_chain != list(self.joint_names):
            raise ValueError(f"{model.path}: controlled joints {list(self.joint_names)} must lie, in order, on "
                             f"the chain to {ee_link!r} (found {on_chain})")
        n = len(self.joint_names)
        self._types = np.array([model.joints[name].type == "prismatic" for name in self.joint_names])
        # Constant transforms up to each controlled joint's origin: B_0 from the root, B_k from
        # the frame after joint k-1's motion; and from the last joint to the EE link.
        before = [self._constant_between(chain, None, self.joint_names[0])] + [
            self._constant_between(chain, self.joint_names[k], self.joint_names[k + 1]) for k in range(n - 1)]
        self._before_r = np.array([b[:3, :3] for b in before])
        self._before_p = np.array([b[:3, 3] for b in before])
        ee_const = self._constant_between(chain, self.joint_names[-1], None)
        self._ee_r, self._ee_p = ee_const[:3, :3].copy(), ee_const[:3, 3].copy()
        self._axes = np.array([model.joints[name].axis for name in self.joint_names], dtype=float)
        self._build_spheres(primitives)
        self._build_points()

    # ------------------------------------------------------------------ construction
    def _value(self, joint: UrdfJoint) -> float:
        if joint.name in self._fixed:
            return self._fixed[joint.name]
        if joint.mimic is not None and joint.mimic[0] in self._fixed:
            return self._fixed[joint.mimic[0]] * joint.mimic[1] + joint.mimic[2]
        return 0.0

    def _constant_between(self, chain: list[UrdfJoint], after: str | None, upto: str | None) -> np.ndarray:
        """Product of the transforms after controlled joint ``after``'s motion up to (and
        including the origin of) controlled joint ``upto`` (or the EE link)."""
        t = np.eye(4)
        started = after is None
        for j in chain:
            if not started:
                started = j.name == after
                continue
            t = t @ _transform(j.xyz, j.rpy)
            if j.name == upto:
                return t
            if j.type != "fixed":
                t = t @ _joint_motion(j, self._value(j))
        return t

    def _link_offset(self, link: str) -> tuple[int, np.ndarray] | None:
        """``(k, T)``: the link frame is ``F_k @ T`` with F_k the frame after controlled joint k;
        None for links with no controlled joint above them (they never move)."""
        path = self.model.chain(link)
        idx = [i for i, j in enumerate(path) if j.name in self.joint_names]
        if not idx:
            return None
        t = np.eye(4)
        for j in path[idx[-1] + 1:]:
            t = t @ _transform(j.xyz, j.rpy)
            if j.type != "fixed":
                t = t @ _joint_motion(j, self._value(j))
        return self.joint_names.index(path[idx[-1]].name), t

    def _build_spheres(self, primitives: Callable[[str], Sequence[Geometry]]) -> None:
        names, groups, centres, radii = [], [], [], []
        for link in self.model.links:
            placed = self._link_offset(link)
            if placed is None:
                continue
            k, t = placed
            prims = primitives(link)
            if not prims and self.model.collisions.get(link):
                raise ValueError(f"{self.model.path}: moving link {link!r} has only mesh collision geometry; "
                                 "list primitive proxies for it (robot data 'proxies:')")
            i = 0
            for geom in prims:
                for c, r in primitive_spheres(geom):
                    names.append(f"{link}/{i}")
                    groups.append(k)
                    centres.append(t[:3, :3] @ c + t[:3, 3])
                    radii.append(r)
                    i += 1
        self.sphere_names = tuple(names)
        self._sphere_group = np.array(groups, dtype=int)
        self._sphere_local = np.array(centres).reshape(-1, 3)
        self._sphere_radii = np.array(radii, dtype=float)
        self._sphere_radii.flags.writeable = False

    def _build_points(self) -> None:
        """Tables of :meth:`kinematics_all`: local coordinates (1 + m, 3) of the EE (on the last
        controlled frame) and the sphere centres, and the frame index each is fixed to."""
        n = len(self.joint_names)
        self._pt_local = np.ascontiguousarray(np.vstack([self._ee_p[None], self._sphere_local]))
        self._pt_group = np.concatenate([[n - 1], self._sphere_group]).astype(np.int64)
        self._ee_local = np.ascontiguousarray(self._ee_p[None])
        self._ee_group = np.array([n - 1], dtype=np.int64)

    @classmethod
    def for_scene(cls, scene: Scene) -> Kinematics:
        """Kinematics of ``scene.robot`` (controlled joints, EE link, proxies; gripper held open)."""
        robot = scene.robot
        data = robot.data
        model = robot.model()
        fixed = {name: robot.gripper.open for name in robot.gripper.joints} if robot.gripper else {}
        if data is not None:
            prims: Callable[[str], Sequence[Geometry]] = data.link_primitives
        else:
            def prims(link: str) -> Sequence[Geometry]:
                return tuple(g for g in model.collisions.get(link, ()) if g.kind != "mesh")
        return cls(model, robot.joint_names, robot.ee_link, prims, fixed)

    # ------------------------------------------------------------------ evaluation
    def _checked(self, q: np.ndarray) -> np.ndarray:
        q = np.asarray(q, dtype=float)
        if q.shape != (len(self.joint_names),):
            raise ValueError(f"q must have shape ({len(self.joint_names)},), got {q.shape}")
        return q

    def _tables(self, local: np.ndarray, group: np.ndarray) -> tuple[np.ndarray, ...]:
        """The chain tables and the points (local coordinates, frame index) for a kernel."""
        return self._before_r, self._before_p, self._axes, self._types, local, group, self._ee_r

    def _frames(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rotations (n, 3, 3), origins (n, 3) and world joint axes (n, 3) of the frames after
        each controlled joint, base frame (compiled kernel, :mod:`kinematics_kernels`)."""
        return kk.frames(self._checked(q), self._before_r, self._before_p, self._axes, self._types)

    def ee_pose(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """End-effector position (3,) m and rotation (3, 3), base frame, at ``q`` (n,) rad."""
        rots, origins, _ = self._frames(q)
        r = rots[-1]
        return origins[-1] + r @ self._ee_p, r @ self._ee_r

    def _ee_kinematics(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """EE position (3,) m, rotation (3, 3) and geometric Jacobian (6, n), base frame."""
        points, _, jac, rot = kk.kinematics_all(self._checked(q), *self._tables(self._ee_local, self._ee_group))
        return points[0], rot, jac

    def ee_jacobian(self, q: np.ndarray) -> np.ndarray:
        """Geometric Jacobian (6, n), rows [v (m/s); omega (rad/s)], base frame."""
        return self._ee_kinematics(q)[2]

    def spheres(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Collision spheres: centres (m, 3) m base frame, radii (m,) m, Jacobians (m, 3, n)."""
        k = self.kinematics_all(q)
        return k.centers, k.radii, k.sphere_jac

    def kinematics_all(self, q: np.ndarray) -> KinematicsAll:
        """EE pose and Jacobian, sphere centres and Jacobians at ``q`` (n,) rad from one pass.

        Sphere values equal :meth:`spheres`; the EE values equal :meth:`ee_pose` and
        :meth:`ee_jacobian` up to rounding (~1e-16 m). Fresh arrays on every call.
        """
        points, point_jac, ee_jac, ee_rot = kk.kinematics_all(self._checked(q),
                                                              *self._tables(self._pt_local, self._pt_group))
        return KinematicsAll(ee_pos=points[0], ee_rot=ee_rot, ee_jac=ee_jac, centers=points[1:],
                             radii=self._sphere_radii.copy(), sphere_jac=point_jac[1:], points=points,
                             point_jac=point_jac)

    def track_here(self, q: np.ndarray, inc: np.ndarray, damping: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Start of an EE-delta tracking step: the goal is the EE pose at ``q`` (n,) rad moved by
        ``inc`` (6,) = [dp (m); dtheta (rad, axis-angle, applied on the left)], base frame.
        Returns ``(p_des, r_des, dq)``, ``dq`` (n,) rad the :meth:`ik_step` toward the goal, from
        one kinematics pass. Inputs must be finite (the twin's own state)."""
        return kk.track_here(self._checked(q), inc, float(damping), *self._tables(self._ee_local, self._ee_group))

    def observe_track(self, q: np.ndarray, dq: np.ndarray, p_des: np.ndarray, r_des: np.ndarray, inc: np.ndarray,
                      damping: float) -> TrackStep:
        """One control step of the twin's controller from one kinematics pass: at the measured
        state ``(q, dq)`` (rad, rad/s) the EE pose, sphere centres and EE linear speed ``|J_v dq|``
        (for the costs), and the tracking step: the goal ``(p_des, r_des)`` moved by ``inc`` (as in
        :meth:`track_here`) and the :meth:`ik_step` toward it."""
        points, speed, rot, p_new, r_new, dq_step = kk.observe_track(
            self._checked(q), np.asarray(dq, dtype=float), p_des, r_des, inc, float(damping),
            *self._tables(self._pt_local, self._pt_group))
        return TrackStep(points[0], points[1:], speed, rot, p_new, r_new, dq_step)

    @property
    def sphere_radii(self) -> np.ndarray:
        """Radii (m,) m of the collision spheres (read-only)."""
        return self._sphere_radii

    def ik_step(self, q: np.ndarray, dx: np.ndarray, rot_goal: np.ndarray | float | None = None,
                damping: float | None = None) -> np.ndarray:
        """Damped-least-squares step ``dq = J^T (J J^T + damping^2 I)^-1 dx``.

        Two forms:
            ``ik_step(q, dx, damping)``: ``dx`` (6,) = [dp (m); dtheta (rad, axis-angle)], base frame.
            ``ik_step(q, p_goal, rot_goal, damping=...)``: ``p_goal`` (3,) m and ``rot_goal`` (3, 3)
            base frame; ``dx`` is then :func:`pose_error` from the present EE pose to that goal.

        Args:
            q: joint positions (n,) rad.
            damping: lambda (> 0, default 0.05); larger is slower but well-behaved near singularities.
        Returns:
            dq (n,) rad. Non-finite input raises ValueError (never a NaN step).
        """
        if rot_goal is not None and np.ndim(rot_goal) == 0:
            rot_goal, damping = None, float(rot_goal)  # type: ignore[arg-type]
        damping = 0.05 if damping is None else damping
        q, dx = self._checked(q), np.asarray(dx, dtype=float)
        use_goal = rot_goal is not None
        rot = np.ascontiguousarray(rot_goal, dtype=float) if use_goal else self._ee_r
        if not math.isfinite(float(q.sum() + dx.sum() + rot.sum())):
            raise ValueError(f"ik_step needs finite q and goal, got q={q!r}, dx={dx!r}, rot_goal={rot_goal!r}")
        if dx.shape != ((3,) if use_goal else (6,)) or rot.shape != (3, 3):
            raise ValueError(f"ik_step needs dx (6,), or p_goal (3,) with rot_goal (3, 3); got "
                             f"{dx.shape} and {None if rot_goal is None else rot.shape}")
        if not damping > 0:
            raise ValueError(f"damping must be > 0, got {damping}")
        return kk.ik_step(q, np.ascontiguousarray(dx), rot, use_goal, float(damping),
                          *self._tables(self._ee_local, self._ee_group))


def pose_error(p: np.ndarray, rot: np.ndarray, p_goal: np.ndarray, rot_goal: np.ndarray) -> np.ndarray:
    """The (6,) displacement [p_goal - p (m); axis-angle of rot_goal @ rot^T (rad)], base frame."""
    return kk.pose_error(*(np.asarray(a, dtype=float) for a in (p, rot, p_goal, rot_goal)))
