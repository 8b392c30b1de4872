"""Rigid-body statics of the twin's arm: the joint torques that hold a pose against gravity.

The deploy runner's startup self-check (scenario A7) compares the sign of each servo's
measured holding current with these torques: an encoder cannot see a sign-flipped joint or a
wrong zero offset (its command and its reading are flipped together), gravity can.

Units: rad (m for prismatic joints), N*m (N); gravity along the world -z axis; the robot's
base is fixed as in the twin.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pybullet
from pybullet_utils.bullet_client import BulletClient

from .scene import Scene

__all__ = ["GravityModel"]


class GravityModel:
    """Gravity torques ``tau_g(q)`` of a URDF arm (pybullet inverse dynamics at rest).

    Args:
        urdf: the arm's URDF.
        joint_names: the joints whose torques are returned (and set from ``q``), in order.
        fixed: other movable joints held at these values (rad or m), e.g. the gripper; the
            rest stay at 0.
        gravity: magnitude of gravity, m/s^2.

    Raises:
        FileNotFoundError: the URDF is missing; KeyError: a joint is not in the URDF.
    """

    def __init__(self, urdf: str | Path, joint_names: Sequence[str], fixed: Mapping[str, float] | None = None,
                 gravity: float = 9.81) -> None:
        if not Path(urdf).is_file():
            raise FileNotFoundError(f"gravity model: URDF not found: {urdf}")
        self._client = BulletClient(connection_mode=pybullet.DIRECT)
        self._client.setGravity(0.0, 0.0, -gravity)
        self._body = self._client.loadURDF(str(urdf), useFixedBase=True)
        movable = [j for j in range(self._client.getNumJoints(self._body))
                   if self._client.getJointInfo(self._body, j)[2] != pybullet.JOINT_FIXED]
        names = [self._client.getJointInfo(self._body, j)[1].decode() for j in movable]
        missing = [n for n in joint_names if n not in names]
        if missing:
            raise KeyError(f"gravity model: joints {missing} not in {urdf}; it has {names}")
        self.joint_names = tuple(joint_names)
        self._index = np.array([names.index(n) for n in self.joint_names], dtype=int)
        self._q = np.zeros(len(names))
        for name, value in (fixed or {}).items():
            if name in names:
                self._q[names.index(name)] = float(value)

    @classmethod
    def for_scene(cls, scene: Scene) -> GravityModel:
        """The model of ``scene.robot`` for its controlled joints (gripper held open)."""
        robot = scene.robot
        fixed = {name: robot.gripper.open for name in robot.gripper.joints} if robot.gripper else {}
        return cls(robot.urdf, robot.joint_names, fixed)

    def torques(self, q: np.ndarray) -> np.ndarray:
        """Joint torques (N*m) that hold pose ``q`` (rad, :attr:`joint_names` order) at rest.

        Raises:
            ValueError: wrong shape or a non-finite value.
        """
        q = np.asarray(q, dtype=float)
        if q.shape != self._index.shape or not np.all(np.isfinite(q)):
            raise ValueError(f"gravity model: q must be {len(self._index)} finite values, got {q!r}")
        full = self._q.copy()
        full[self._index] = q
        zeros = [0.0] * len(full)
        tau = self._client.calculateInverseDynamics(self._body, full.tolist(), zeros, zeros)
        return np.asarray(tau, dtype=float)[self._index]

    def close(self) -> None:
        """Release the physics client (idempotent)."""
        try:
            self._client.disconnect()
        except pybullet.error:
            pass
