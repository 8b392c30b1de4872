"""What the safety filter needs to know about a robot, as a ``typing.Protocol``.

The filter never imports pybullet or the twin: any object with these members works. The
twin's kinematics (``safetwin.twin.kinematics``) satisfies it for every bundled robot.

Frames and units: all positions in metres in the robot **base** frame, joint positions in
rad, Jacobians map joint velocities (rad/s) to linear velocities (m/s) and angular
velocities (rad/s).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class RobotModel(Protocol):
    """Kinematics of the controlled (arm) joints of one robot.

    Attributes:
        joint_names: controlled joint names, in order; ``n = len(joint_names)``.
        sphere_names: one name per collision sphere (e.g. ``"upper_arm_link/1"``).
    """

    joint_names: tuple[str, ...]
    sphere_names: tuple[str, ...]

    def ee_pose(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """End-effector position (3,) m and rotation matrix (3, 3), base frame, at ``q`` (n,) rad."""
        ...

    def ee_jacobian(self, q: np.ndarray) -> np.ndarray:
        """Geometric Jacobian (6, n) of the end effector, rows [v (m/s); omega (rad/s)], base frame."""
        ...

    def spheres(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Link collision spheres at ``q``.

        Returns:
            centers (m, 3) m, base frame; radii (m,) m; jacobians (m, 3, n): the linear
            velocity of each centre per joint velocity.
        """
        ...
