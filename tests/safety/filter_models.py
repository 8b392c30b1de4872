"""Small analytic robot models (implementing ``RobotModel``) and specs for the filter tests.

``tests/safety`` is on pytest's ``pythonpath`` (pyproject.toml), so test modules
``import filter_models``; ``test_filter_models.py`` checks the models themselves.
"""

from __future__ import annotations

import numpy as np

from safetwin.safety.spec import Box, FilterParams, JointLimit, Obstacle, SafetySpec


class Slider:
    """One prismatic joint along base x: the end effector and one sphere sit at ``(q, 0, 0)``
    (m). Linear in ``q``, so the filter's exact closed form applies (Lipschitz bound 0)."""

    def __init__(self, radius: float = 0.05) -> None:
        self.joint_names = ("slide",)
        self.sphere_names = ("carriage/0",)
        self.radius = radius

    def ee_pose(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.array([q[0], 0.0, 0.0]), np.eye(3)

    def ee_jacobian(self, q: np.ndarray) -> np.ndarray:
        jac = np.zeros((6, 1))
        jac[0, 0] = 1.0
        return jac

    def spheres(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        jac = np.zeros((1, 3, 1))
        jac[0, 0, 0] = 1.0
        return np.array([[q[0], 0.0, 0.0]]), np.array([self.radius]), jac


class PlanarArm:
    """Revolute arm in the horizontal plane ``z = height`` (joint axes along base z).

    Link ``k`` has length ``lengths[k]`` m; spheres of radius ``radius`` m at the middle and the
    end of each link, plus one static sphere at the base (fixed, zero Jacobian).
    """

    def __init__(self, lengths: tuple[float, ...] = (0.3, 0.25, 0.15), height: float = 0.2,
                 radius: float = 0.03) -> None:
        self.lengths = np.asarray(lengths, float)
        self.height, self.radius = height, radius
        self.joint_names = tuple(f"j{i}" for i in range(len(lengths)))
        self.sphere_names = ("base/0",) + tuple(f"link{k}/{s}" for k in range(len(lengths))
                                                  for s in range(2))

    def _frames(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        theta = np.cumsum(q)
        steps = self.lengths[:, None] * np.stack([np.cos(theta), np.sin(theta), np.zeros_like(theta)], 1)
        origins = np.vstack([np.zeros(3), np.cumsum(steps, 0)]) + [0.0, 0.0, self.height]
        return origins, theta

    def _point_jac(self, p: np.ndarray, origins: np.ndarray, upto: int) -> np.ndarray:
        jac = np.zeros((3, len(self.lengths)))
        for i in range(upto + 1):
            d = p - origins[i]
            jac[:, i] = [-d[1], d[0], 0.0]
        return jac

    def ee_pose(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        origins, theta = self._frames(q)
        c, s = np.cos(theta[-1]), np.sin(theta[-1])
        return origins[-1].copy(), np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])

    def ee_jacobian(self, q: np.ndarray) -> np.ndarray:
        origins, _ = self._frames(q)
        jac = np.zeros((6, len(self.lengths)))
        jac[:3] = self._point_jac(origins[-1], origins, len(self.lengths) - 1)
        jac[5] = 1.0
        return jac

    def spheres(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        origins, _ = self._frames(q)
        centers, jacs = [origins[0].copy()], [np.zeros((3, len(self.lengths)))]
        for k in range(len(self.lengths)):
            for frac in (0.5, 1.0):
                p = origins[k] + frac * (origins[k + 1] - origins[k])
                centers.append(p)
                jacs.append(self._point_jac(p, origins, k))
        return np.array(centers), np.full(len(centers), self.radius), np.array(jacs)


def _axis_rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    x, y, z = axis
    c, s, t = np.cos(angle), np.sin(angle), 1 - np.cos(angle)
    return np.array([[t * x * x + c, t * x * y - s * z, t * x * z + s * y],
                     [t * x * y + s * z, t * y * y + c, t * y * z - s * x],
                     [t * x * z - s * y, t * y * z + s * x, t * z * z + c]])


class SpatialArm:
    """Serial revolute chain in 3-D: joint ``i`` sits at ``offsets[i]`` (m, parent frame) and turns
    about its local ``axes[i]``; the end effector is ``tool`` (m) in the last frame. Spheres of
    ``radius`` m at the middle and the end of every link (the link to the tool included)."""

    def __init__(self, offsets=((0, 0, 0.1), (0, 0, 0.15), (0.3, 0, 0), (0.25, 0, 0)),
                 axes=((0, 0, 1), (0, 1, 0), (0, 1, 0), (0, 1, 0)), tool=(0.12, 0, 0),
                 radius: float = 0.035) -> None:
        self.offsets = [np.asarray(o, float) for o in offsets]
        self.axes = [np.asarray(a, float) / np.linalg.norm(a) for a in axes]
        self.tool, self.radius = np.asarray(tool, float), radius
        self.joint_names = tuple(f"s{i}" for i in range(len(axes)))
        self.sphere_names = tuple(f"slink{k}/{s}" for k in range(len(axes)) for s in range(2))

    def _chain(self, q: np.ndarray):
        rot, pos = np.eye(3), np.zeros(3)
        origins, zs = [], []
        for off, axis, angle in zip(self.offsets, self.axes, q, strict=True):
            pos = pos + rot @ off
            origins.append(pos.copy())
            zs.append(rot @ axis)
            rot = rot @ _axis_rotation(axis, angle)
        return origins, zs, rot, pos + rot @ self.tool

    def _jac(self, p: np.ndarray, origins, zs, upto: int) -> np.ndarray:
        jac = np.zeros((3, len(zs)))
        for i in range(upto + 1):
            jac[:, i] = np.cross(zs[i], p - origins[i])
        return jac

    def ee_pose(self, q):
        _, _, rot, ee = self._chain(q)
        return ee, rot

    def ee_jacobian(self, q):
        origins, zs, _, ee = self._chain(q)
        return np.vstack([self._jac(ee, origins, zs, len(zs) - 1), np.array(zs).T])

    def spheres(self, q):
        origins, zs, _, ee = self._chain(q)
        ends = origins[1:] + [ee]
        centers, jacs = [], []
        for k in range(len(zs)):
            for frac in (0.5, 1.0):
                p = origins[k] + frac * (ends[k] - origins[k])
                centers.append(p)
                jacs.append(self._jac(p, origins, zs, k))
        return np.array(centers), np.full(len(centers), self.radius), np.array(jacs)


def spatial_spec(arm: SpatialArm, **filter_kw: float) -> SafetySpec:
    """Spec for :class:`SpatialArm`: a table-top workspace, a keep-out column and a fragile cup."""
    joints = tuple(JointLimit(n, -2.5, 2.5, 2.0, 10.0) for n in arm.joint_names)
    params = {"gamma": 0.3, "distance_margin": 0.01, "time_budget_s": 1.0, **filter_kw}
    return SafetySpec(
        joints=joints, workspace=Box("workspace", (-0.8, -0.8, 0.0), (0.8, 0.8, 0.9)),
        keepout=(Box("column", (0.3, 0.3, 0.0), (0.45, 0.45, 0.9)),),
        obstacles=(Obstacle("cup", "fragile", (0.35, -0.25, 0.08), (0.04, 0.04, 0.08), 0.1),),
        ee_speed_max=0.25, contact_force_max=30.0, cost_limit=1.0, filter=FilterParams(**params))


def slider_spec(lo: float = -1.0, hi: float = 1.0, vel: float = 2.0, acc: float = 10.0,
                ee_speed: float = 100.0, gamma: float = 0.5, **filter_kw: float) -> SafetySpec:
    """Spec for :class:`Slider`: joint range [lo, hi] m, a workspace much larger than it."""
    params = {"gamma": gamma, "time_budget_s": 1.0, **filter_kw}
    return SafetySpec(joints=(JointLimit("slide", lo, hi, vel, acc),),
                      workspace=Box("workspace", (-10.0, -1.0, -1.0), (10.0, 1.0, 1.0)),
                      ee_speed_max=ee_speed, contact_force_max=30.0, cost_limit=1.0,
                      filter=FilterParams(**params))


def arm_spec(arm: PlanarArm, **filter_kw: float) -> SafetySpec:
    """Spec for :class:`PlanarArm` with a keep-out box, a fragile obstacle and a workspace box."""
    joints = tuple(JointLimit(n, -2.6, 2.6, 1.5, 8.0) for n in arm.joint_names)
    params = {"gamma": 0.3, "distance_margin": 0.01, "time_budget_s": 1.0, **filter_kw}
    return SafetySpec(
        joints=joints,
        workspace=Box("workspace", (-0.75, -0.75, 0.0), (0.75, 0.75, 0.6)),
        keepout=(Box("column", (0.35, 0.35, 0.0), (0.55, 0.55, 0.6)),),
        obstacles=(Obstacle("cup", "fragile", (-0.4, 0.3, 0.2), (0.04, 0.04, 0.06), 0.08),),
        ee_speed_max=0.5, contact_force_max=30.0, cost_limit=1.0, filter=FilterParams(**params))


def numeric_jacobian(fun, q: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    cols = []
    for i in range(len(q)):
        dq = np.zeros_like(q)
        dq[i] = eps
        cols.append((np.asarray(fun(q + dq)) - np.asarray(fun(q - dq))) / (2 * eps))
    return np.stack(cols, axis=-1)
