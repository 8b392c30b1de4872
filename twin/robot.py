"""The one robot interface shared by the twin and the hardware (after LeRobot's ``Robot``).

:class:`Robot` is an ABC: ``connect()``, ``disconnect()``, ``is_connected``,
``get_observation()``, ``send_action(action) -> action_sent``, ``observation_features`` and
``action_features`` (usable while disconnected), and context-manager support.

Keys: observation ``"<joint>.pos"`` (rad), ``"<joint>.vel"`` (rad/s) per controlled joint plus
``"gripper.pos"`` (m, finger position) and ``"gripper.vel"`` (m/s); action ``"<joint>.pos"``
(goal position, rad) plus ``"gripper.pos"`` (m). ``send_action`` rejects missing, extra or
non-finite entries (scenarios A1, A2: nothing is sent), clamps goals to the joint limits and,
when ``max_relative_target`` is set, to that step from the present position (A3, A4), logs
every clamp with the original and clipped values, and returns what was really sent.

:class:`TwinRobot` drives the controlled joints of a pybullet body with position control.
"""

from __future__ import annotations

import functools
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:
    from .scene import Scene

logger = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
GRIPPER = "gripper"


class DeviceNotConnectedError(ConnectionError):
    """An operation needs a connected robot."""


class DeviceAlreadyConnectedError(ConnectionError):
    """``connect()`` was called on a connected robot."""


def check_if_connected(method: F) -> F:
    """Raise :class:`DeviceNotConnectedError` when ``self`` is not connected."""

    @functools.wraps(method)
    def wrapper(self: Robot, *args: Any, **kwargs: Any) -> Any:
        if not self.is_connected:
            raise DeviceNotConnectedError(f"{self.name}: {method.__name__}() needs a connected robot; call connect()")
        return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class Robot(ABC):
    """A robot with named joints (see the module docstring for keys, units and checks).

    Subclasses provide ``joint_names``, ``has_gripper``, ``limits`` (per action key:
    (lower, upper) in rad or m) and the private ``_connect``, ``_disconnect``, ``_read``
    (-> positions, velocities, gripper position, gripper velocity) and ``_write`` (goal
    positions (n,) rad, gripper goal m or None).
    """

    name: str = "robot"
    joint_names: tuple[str, ...] = ()
    has_gripper: bool = False
    limits: dict[str, tuple[float, float]]
    max_relative_target: float | None = None

    # ---------------------------------------------------------------- features
    @property
    def action_features(self) -> dict[str, type]:
        keys = [f"{j}.pos" for j in self.joint_names] + ([f"{GRIPPER}.pos"] if self.has_gripper else [])
        return dict.fromkeys(keys, float)

    @property
    def observation_features(self) -> dict[str, type]:
        names = list(self.joint_names) + ([GRIPPER] if self.has_gripper else [])
        return {f"{n}.{kind}": float for n in names for kind in ("pos", "vel")}

    # ---------------------------------------------------------------- lifecycle
    @property
    @abstractmethod
    def is_connected(self) -> bool: ...

    def connect(self) -> None:
        if self.is_connected:
            raise DeviceAlreadyConnectedError(f"{self.name}: already connected")
        self._connect()
        logger.info("%s connected", self.name)

    def disconnect(self) -> None:
        """Idempotent (scenario D5): a second call on a disconnected robot does nothing."""
        if not self.is_connected:
            return
        self._disconnect()
        logger.info("%s disconnected", self.name)

    def __enter__(self) -> Robot:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    # ---------------------------------------------------------------- I/O
    @check_if_connected
    def get_observation(self) -> dict[str, float]:
        """Joint positions (rad) and velocities (rad/s), gripper position (m) and velocity (m/s)."""
        q, dq, g, dg = self._read()
        obs = {f"{n}.pos": float(v) for n, v in zip(self.joint_names, q, strict=True)}
        obs.update({f"{n}.vel": float(v) for n, v in zip(self.joint_names, dq, strict=True)})
        if self.has_gripper:
            obs[f"{GRIPPER}.pos"], obs[f"{GRIPPER}.vel"] = float(g), float(dg)
        return obs

    @check_if_connected
    def send_action(self, action: Mapping[str, float]) -> dict[str, float]:
        """Validate, clamp and send goal positions; return the goals really sent."""
        goal = self._validate(action)
        present = None
        if self.max_relative_target is not None:
            q, _, g, _ = self._read()
            present = dict(zip([f"{n}.pos" for n in self.joint_names], q, strict=True))
            if self.has_gripper:
                present[f"{GRIPPER}.pos"] = g
        sent = {}
        for key, value in goal.items():
            lo, hi = self.limits[key]
            if present is not None and key in present:
                lo = max(lo, present[key] - self.max_relative_target)  # type: ignore[operator]
                hi = min(hi, present[key] + self.max_relative_target)  # type: ignore[operator]
            clipped = min(max(value, lo), hi)
            if clipped != value:
                logger.warning("%s: %s goal %.6g clamped to %.6g (allowed [%.6g, %.6g])",
                               self.name, key, value, clipped, lo, hi)
            sent[key] = clipped
        q_goal = np.array([sent[f"{n}.pos"] for n in self.joint_names])
        self._write(q_goal, sent.get(f"{GRIPPER}.pos"))
        return sent

    def _validate(self, action: Mapping[str, float]) -> dict[str, float]:
        if not isinstance(action, Mapping):
            raise TypeError(f"{self.name}: action must be a mapping of {list(self.action_features)}, "
                            f"got {type(action).__name__}")
        want = set(self.action_features)
        missing, extra = sorted(want - set(action)), sorted(set(action) - want)
        if missing or extra:
            raise ValueError(f"{self.name}: action keys must match {sorted(want)}: missing {missing}, extra {extra}")
        out = {}
        for key in self.action_features:
            value = action[key]
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
                raise TypeError(f"{self.name}: action[{key!r}] must be a number, got {value!r}")
            if not math.isfinite(float(value)):
                raise ValueError(f"{self.name}: action[{key!r}] is not finite ({value}); nothing was sent")
            out[key] = float(value)
        return out

    @abstractmethod
    def _connect(self) -> None: ...

    @abstractmethod
    def _disconnect(self) -> None: ...

    @abstractmethod
    def _read(self) -> tuple[np.ndarray, np.ndarray, float, float]: ...

    @abstractmethod
    def _write(self, q_goal: np.ndarray, gripper_goal: float | None) -> None: ...


class TwinRobot(Robot):
    """A pybullet body as a :class:`Robot` (position control of the controlled joints).

    Args:
        client_id: pybullet physics client id.
        body_id: the robot body's unique id in that client.
        joint_names: controlled joints, in order.
        gripper_joints: finger joints driven together (the same goal), or () for none.
        limits: optional ``{action key: (lower, upper)}`` overriding the URDF limits, e.g. the
            safety spec's joint limits; every other key uses the URDF limits.
        max_relative_target: largest goal step from the present position per call (rad or m).
        position_gain: pybullet position gain of the motors (0..1).

    The twin does not step the simulation: whoever owns the client (the env) does.
    """

    def __init__(self, client_id: int, body_id: int, joint_names: Sequence[str],
                 gripper_joints: Sequence[str] = (), limits: Mapping[str, tuple[float, float]] | None = None,
                 max_relative_target: float | None = None, position_gain: float = 0.3,
                 name: str = "twin") -> None:
        if max_relative_target is not None and not max_relative_target > 0:
            raise ValueError(f"max_relative_target must be > 0, got {max_relative_target}")
        self.client_id, self.body_id, self.name = client_id, body_id, name
        self.joint_names, self.gripper_joints = tuple(joint_names), tuple(gripper_joints)
        self.has_gripper = bool(self.gripper_joints)
        self.max_relative_target, self.position_gain = max_relative_target, position_gain
        self._limit_override = dict(limits or {})
        self.limits = {}
        self._connected = False
        self._idx: np.ndarray = np.zeros(0, dtype=int)
        self._gidx: list[int] = []
        self._forces: list[float] = []

    @classmethod
    def from_scene(cls, scene: Scene, client_id: int, body_id: int, **kwargs: Any) -> TwinRobot:
        """The scene's robot with the safety spec's joint limits and the gripper's open/closed range."""
        limits = {f"{j.name}.pos": (j.lower, j.upper) for j in scene.safety.joints}
        g = scene.robot.gripper
        if g is not None:
            limits[f"{GRIPPER}.pos"] = (min(g.open, g.closed), max(g.open, g.closed))
        return cls(client_id, body_id, scene.robot.joint_names, g.joints if g else (), limits,
                   name=kwargs.pop("name", scene.robot.name), **kwargs)

    @property
    def is_connected(self) -> bool:
        return self._connected

    def _connect(self) -> None:
        import pybullet as p

        try:
            n = p.getNumJoints(self.body_id, physicsClientId=self.client_id)
        except p.error as exc:
            raise ConnectionError(f"{self.name}: no body {self.body_id} in pybullet client {self.client_id}") from exc
        info = {p.getJointInfo(self.body_id, i, physicsClientId=self.client_id)[1].decode(): i for i in range(n)}
        missing = [j for j in (*self.joint_names, *self.gripper_joints) if j not in info]
        if missing:
            raise ConnectionError(f"{self.name}: body {self.body_id} has no joint(s) {missing}")
        self._idx = np.array([info[j] for j in self.joint_names])
        self._gidx = [info[j] for j in self.gripper_joints]
        limits, forces = {}, []
        for key, i in [(f"{j}.pos", info[j]) for j in self.joint_names] + \
                      [(f"{GRIPPER}.pos", gi) for gi in self._gidx[:1]]:
            ji = p.getJointInfo(self.body_id, i, physicsClientId=self.client_id)
            lo, hi = (ji[8], ji[9]) if ji[8] < ji[9] else (-math.pi, math.pi)
            o_lo, o_hi = self._limit_override.get(key, (lo, hi))
            limits[key] = (max(lo, o_lo), min(hi, o_hi))
            forces.append(ji[10] if ji[10] > 0 else 100.0)
        self.limits, self._forces = limits, forces
        self._connected = True

    def _disconnect(self) -> None:
        import pybullet as p

        q, _, g, _ = self._read()
        try:  # hold the present pose: the twin never goes limp on disconnect
            self._write(q, g if self.has_gripper else None)
        except p.error as exc:
            logger.warning("%s: could not hold the pose on disconnect: %s", self.name, exc)
        self._connected = False

    def _read(self) -> tuple[np.ndarray, np.ndarray, float, float]:
        import pybullet as p

        idx = [int(i) for i in self._idx] + self._gidx[:1]
        states = p.getJointStates(self.body_id, idx, physicsClientId=self.client_id)
        pos = np.array([s[0] for s in states])
        vel = np.array([s[1] for s in states])
        n = len(self.joint_names)
        g, dg = (pos[n], vel[n]) if self.has_gripper else (0.0, 0.0)
        return pos[:n], vel[:n], float(g), float(dg)

    def _write(self, q_goal: np.ndarray, gripper_goal: float | None) -> None:
        import pybullet as p

        idx = [int(i) for i in self._idx]
        targets = [float(v) for v in q_goal]
        forces = self._forces[:len(idx)]
        if gripper_goal is not None and self._gidx:
            idx += self._gidx
            targets += [float(gripper_goal)] * len(self._gidx)
            forces += [self._forces[-1]] * len(self._gidx)
        p.setJointMotorControlArray(self.body_id, idx, p.POSITION_CONTROL, targetPositions=targets,
                                    forces=forces, positionGains=[self.position_gain] * len(idx),
                                    physicsClientId=self.client_id)
