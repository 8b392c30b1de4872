"""The simulated rig of a deploy run: the virtual robot on a pty, the e-stop emulator, the sim
camera (set by the runner), and the scripted e-stop events and fault injections of
``DeployConfig.estop_script`` / ``fault_script``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from .deploy_camera import InjectingCamera
from .deploy_policy import InjectingPolicy
from .estop import EStopEmulator
from .virtual_robot import ServoSpec, VirtualRobot

logger = logging.getLogger(__name__)


class SimRig:
    """Start what ``port="sim"`` / ``estop_port="sim"`` ask for.

    Args:
        scene: scene name/path for the pybullet-backed virtual arm (``VirtualRobot.from_scene``).
        bus: start the virtual servo bus.
        estop: start the e-stop emulator.
        servos: build a kinematic virtual arm from these instead of the scene (fast tests).
        robot: use this started virtual robot (owned by the caller, not stopped by :meth:`close`).
    """

    def __init__(self, scene: Any, *, bus: bool, estop: bool, servos: Sequence[ServoSpec] | None = None,
                 robot: VirtualRobot | None = None) -> None:
        self.robot: VirtualRobot | None = robot
        self._owns_robot = robot is None
        self.estop: EStopEmulator | None = None
        self.cameras: list[InjectingCamera] = []  # the policy's sim cameras (front, wrist), when the runner made them
        try:
            if bus and robot is None:
                self.robot = (VirtualRobot.kinematic(servos) if servos else VirtualRobot.from_scene(scene)).start()
            if estop:
                self.estop = EStopEmulator()
        except BaseException:
            self.close()
            raise

    def arm_config(self) -> dict[str, Any]:
        if self.robot is None:
            raise RuntimeError("no virtual robot was started")
        return self.robot.arm_config()

    def estop_event(self, action: str) -> None:
        """``press`` / ``release`` on the emulated e-stop button."""
        if self.estop is None:
            raise RuntimeError("estop_script press/release needs the e-stop emulator (estop_port='sim')")
        self.estop.press() if action == "press" else self.estop.release()

    def inject(self, kind: str, policy: InjectingPolicy) -> None:
        """Apply one fault of ``DeployConfig.fault_script`` (see ``deploy_config.FAULT_KINDS``)."""
        logger.warning("injecting fault %s", kind)
        robot, estop = self.robot, self.estop
        if kind in ("nan_action", "stale_action", "policy_freeze"):
            policy.mode = {"nan_action": "nan", "stale_action": "stale", "policy_freeze": "freeze"}[kind]
        elif kind in ("camera_freeze", "camera_fail"):
            if not self.cameras:
                raise RuntimeError(f"fault {kind} needs the sim camera (camera='sim')")
            for camera in self.cameras:  # the camera host hangs or fails: every view it serves
                camera.mode = kind.split("_")[1]
        elif kind == "estop_press":
            estop.press()
        elif kind == "estop_stale":
            estop.stop_heartbeat()
        elif kind == "estop_garbage":
            estop.inject(b"\x00\x17garbage*ZZ\n")
        elif kind == "bus_drop":
            robot.inject("drop", count=60)
        elif kind == "servo_alarm":
            robot.set_alarm(robot.servos[-1].joint, "overload")
        elif kind == "unplug":
            robot.disconnect()
        else:
            raise ValueError(f"unknown fault kind {kind!r}")

    def close(self) -> None:
        if self.estop is not None:
            self.estop.close()
            self.estop = None
        if self.robot is not None and self._owns_robot:
            self.robot.stop()
        self.robot = None
