"""Camera images for the policy during deploy: the :class:`CameraSource` protocol, the twin's
front and wrist cameras for the virtual robot (``port="sim"``), fault injection, and the
observation builder that the policy thread runs.

A camera source returns ``(image, t_mono)``: a uint8 (H, W, 3) RGB frame and the monotonic time
(s) it was captured. The :class:`Observer` runs on the **policy thread** (never on the control
thread, D1): it reads the camera, checks the frame, and builds the observation in the twin env's
layout, ``proprio = [q (rad), dq (rad/s), gripper opening in [0, 1]]`` float32 with the joints in
the scene robot's order, the ``image`` (and ``wrist_image`` for a policy trained with the wrist
camera) and the ``instruction``. It adds ``t_image`` (the frame's capture time, the older one with
two cameras); the policy thread stamps each chunk with the older of the state and frame times,
so the control loop's A6/A9 rules also cover the image: a frame older than the staleness timeout
is treated as missing (:class:`StaleFrameError`, nothing is published: the loop holds, then
stops), and a chunk planned from an old frame is as old as that frame (hold, then stop).

:class:`TwinCamera` renders the scene's front (or wrist) camera with the twin env's own camera and renderer
(:class:`safetwin.twin.env.TwinEnv` with randomisation off: the nominal camera pose, intrinsics,
image size and lighting of training), the scene's table and objects at their nominal poses, and
the arm at the virtual robot's present joint positions (the plant's ground truth, what a real
camera would see). Frames: world (m); joint values rad (finger positions m).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

logger = logging.getLogger(__name__)

CAMERA_MODES = ("auto", "sim", "none")
"""``DeployConfig.camera``: ``sim`` (the twin's front camera, port ``sim`` only), ``none`` (a black
image) or ``auto`` (``sim`` on port ``sim`` with a checkpoint policy, else ``none``)."""


CAMERA_VIEWS = ("front", "wrist")
"""The twin cameras a policy can see: the fixed ``front`` one (``obs["image"]``) and the scene's
``wrist`` one (``obs["wrist_image"]``, for policies trained with ``wrist_camera``)."""


class CameraError(RuntimeError):
    """The camera gave no usable frame (failed read, wrong shape or type, bad timestamp)."""


class StaleFrameError(CameraError):
    """The newest frame is older than the staleness timeout: treated as missing (A6)."""


@runtime_checkable
class CameraSource(Protocol):
    """A camera the policy thread reads (blocking reads are allowed: never the control thread)."""

    def read(self) -> tuple[np.ndarray, float]:
        """The newest frame: ``(image uint8 (H, W, 3) RGB, t_mono capture time s)``."""

    def close(self) -> None:
        """Release the device (idempotent)."""


def check_frame(frame: Any, shape: tuple[int, int, int], now: float, max_age_s: float,
                name: str = "camera") -> tuple[np.ndarray, float]:
    """Validate one ``(image, t_mono)`` frame read at monotonic time ``now`` (s).

    Raises:
        CameraError: not a pair, the image is not uint8 of ``shape``, or the timestamp is not finite
            or lies in the future.
        StaleFrameError: the frame is older than ``max_age_s`` (s).
    """
    try:
        image, t_frame = frame
        t_frame = float(t_frame)
    except (TypeError, ValueError) as exc:
        raise CameraError(f"{name}: read() must return (image, t_mono), got {type(frame).__name__}") from exc
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.shape != tuple(shape):
        raise CameraError(f"{name}: frame is {image.dtype} {image.shape}, the policy needs uint8 {tuple(shape)}")
    if not math.isfinite(t_frame) or t_frame > now + 1e-3:
        raise CameraError(f"{name}: frame timestamp {t_frame!r} is not a past monotonic time (now {now:.3f})")
    age = now - t_frame
    if age > max_age_s:
        raise StaleFrameError(f"{name}: newest frame is {age * 1e3:.0f} ms old "
                              f"(staleness timeout {max_age_s * 1e3:.0f} ms): treated as missing")
    return image, t_frame


def gripper_opening(position_m: float, open_m: float, closed_m: float) -> float:
    """Finger position (m) -> opening in [0, 1] (0 closed, 1 open), as in the twin's proprio."""
    span = open_m - closed_m
    if span == 0 or not math.isfinite(position_m):
        raise ValueError(f"gripper opening: position {position_m!r} m with open {open_m} m, closed {closed_m} m")
    return float(min(max((position_m - closed_m) / span, 0.0), 1.0))


class TwinCamera:
    """One of the scene's cameras, rendered by the twin env (see the module docstring).

    Args:
        scene: scene name, path or ``Scene``.
        joint_positions: returns the arm's present joint values keyed by URDF joint name (rad; m
            for fingers); called at every :meth:`read`.
        image_size: side of the square image (pixels), as the policy was trained with.
        clock: monotonic clock (s).
        view: ``"front"`` (the scene's fixed camera, the policy's ``image``) or ``"wrist"`` (the
            camera on the scene's wrist link, the policy's ``wrist_image``; it moves with the arm).
            :meth:`view_source` serves the other view from the same twin world.

    Raises:
        KeyError: a joint of ``joint_positions()`` is not in the scene robot's URDF.
        ValueError: ``view`` is unknown, or ``"wrist"`` for a scene without ``cameras.wrist``.
    """

    def __init__(self, scene: Any, joint_positions: Callable[[], Mapping[str, float]], image_size: int = 64,
                 clock: Callable[[], float] = time.monotonic, view: str = "front") -> None:
        import pybullet as p

        from safetwin.twin.env import TwinEnv

        self._p, self.joint_positions, self.clock, self.view = p, joint_positions, clock, view
        self._lock = threading.Lock()
        self.env = TwinEnv(scene, image_size=image_size, randomize=False, render_mode="rgb_array",
                           render_size=image_size)
        try:
            self._check_view(view)
            self.env.reset(seed=0)  # the nominal scene: objects at their scene poses, no jitter
            self._client, self._body = self.env.world.client, self.env.world.robot
            self._index = {p.getJointInfo(self._body, j, physicsClientId=self._client)[1].decode(): j
                           for j in range(p.getNumJoints(self._body, physicsClientId=self._client))}
            missing = sorted(set(joint_positions()) - set(self._index))
            if missing:
                raise KeyError(f"twin camera: joints {missing} are not in the URDF of scene "
                               f"{self.env.scene.name!r} (it has {sorted(self._index)})")
        except BaseException:
            self.env.close()
            raise
        self.shape = (image_size, image_size, 3)
        self.frames = 0

    def _check_view(self, view: str) -> None:
        if view not in CAMERA_VIEWS:
            raise ValueError(f"twin camera: view {view!r} not in {list(CAMERA_VIEWS)}")
        if view == "wrist" and self.env.scene.wrist_camera is None:
            raise ValueError(f"twin camera: scene {self.env.scene.name!r} has no cameras.wrist")

    def view_source(self, view: str) -> CameraSource:
        """A camera source for another ``view`` of this twin world (one world for all views; this
        camera's :meth:`close` releases it)."""
        self._check_view(view)
        return _TwinView(self, view)

    def read(self) -> tuple[np.ndarray, float]:
        """Pose the twin's arm at the present joint values and render this camera's view."""
        return self.read_view(self.view)

    def read_view(self, view: str) -> tuple[np.ndarray, float]:
        """Pose the twin's arm at the present joint values and render ``view``."""
        p = self._p
        with self._lock:
            if self.env is None:
                raise CameraError("twin camera is closed")
            positions = self.joint_positions()
            t_capture = self.clock()
            for name, value in positions.items():
                p.resetJointState(self._body, self._index[name], float(value), 0.0, physicsClientId=self._client)
            image = self.env.render() if view == "front" else self.env.render_wrist()
            self.frames += 1
        return image, t_capture

    def close(self) -> None:
        with self._lock:
            if self.env is not None:
                self.env.close()
                self.env = None


class _TwinView:
    """Another view of a :class:`TwinCamera`'s world (see :meth:`TwinCamera.view_source`)."""

    def __init__(self, camera: TwinCamera, view: str) -> None:
        self.camera, self.view = camera, view

    def read(self) -> tuple[np.ndarray, float]:
        return self.camera.read_view(self.view)

    def close(self) -> None:
        """Nothing to release: the owning camera closes the shared world."""


def virtual_robot_joints(robot: Any) -> Callable[[], dict[str, float]]:
    """``joint_positions`` for :class:`TwinCamera` from a ``VirtualRobot``: each servo's joint value
    under its URDF joint names (the gripper servo sets both fingers, m)."""
    names = {s.joint: tuple(s.urdf_joints) or (s.joint,) for s in robot.servos}

    def read() -> dict[str, float]:
        present = robot.joint_positions()
        return {urdf: float(present[joint]) for joint, urdfs in names.items() for urdf in urdfs}

    return read


class InjectingCamera:
    """Wraps a camera so faults can be switched on at run time (sim only).

    ``mode``: ``None`` (pass through), ``"freeze"`` (the last frame again, with its old capture
    time, as a hung camera driver returns), ``"fail"`` (every read raises :class:`CameraError`).
    """

    def __init__(self, camera: CameraSource) -> None:
        self.camera = camera
        self.mode: str | None = None
        self._last: tuple[np.ndarray, float] | None = None

    def read(self) -> tuple[np.ndarray, float]:
        if self.mode == "fail":
            raise CameraError("camera read failed (injected)")
        if self.mode == "freeze" and self._last is not None:
            return self._last
        self._last = self.camera.read()
        return self._last

    def close(self) -> None:
        self.camera.close()


class Observer:
    """The policy observation for one measured state (runs on the policy thread).

    Args:
        instruction: the language instruction.
        camera: the camera source, or None for a black image (no camera).
        image_shape: (H, W, 3) the policy expects.
        max_frame_age_s: a frame older than this is missing (s); the runner's staleness timeout.
        order: indices putting the state's joints (safety-spec order) into the scene robot's order
            (None: already in order).
        opening: initial gripper opening in [0, 1] (see :meth:`set_gripper`).
        clock: monotonic clock (s).
        wrist: the policy also sees a wrist camera: the observation gets ``wrist_image`` (of
            ``image_shape``; black without ``wrist_camera``) and ``t_image`` is the older of the
            two frames' times, so either camera going stale stops the chunks (A6).
        wrist_camera: the wrist camera source (implies ``wrist``).
    """

    def __init__(self, instruction: str, camera: CameraSource | None = None,
                 image_shape: tuple[int, int, int] = (64, 64, 3), max_frame_age_s: float = 0.5,
                 order: Sequence[int] | None = None, opening: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, *, wrist: bool = False,
                 wrist_camera: CameraSource | None = None) -> None:
        if len(image_shape) != 3 or image_shape[2] != 3 or min(image_shape) < 1:
            raise ValueError(f"Observer: image_shape must be (H, W, 3), got {image_shape}")
        if not max_frame_age_s > 0:
            raise ValueError(f"Observer: max_frame_age_s must be > 0 s, got {max_frame_age_s}")
        self.instruction, self.camera, self.clock = instruction, camera, clock
        self.wrist_camera, self.wrist = wrist_camera, bool(wrist or wrist_camera is not None)
        self.image_shape, self.max_frame_age_s = tuple(image_shape), float(max_frame_age_s)
        self.order = None if order is None else np.asarray(order, dtype=int)
        self.opening = float(opening)
        self._blank = np.zeros(self.image_shape, dtype=np.uint8)
        self.frames = 0

    def set_gripper(self, opening: float) -> None:
        """Gripper opening in [0, 1] reported in proprio (the runner holds the gripper still)."""
        if not 0.0 <= opening <= 1.0:
            raise ValueError(f"gripper opening must be in [0, 1], got {opening}")
        self.opening = float(opening)

    def close(self) -> None:
        """Close the cameras (after the policy thread has stopped)."""
        for camera in (self.camera, self.wrist_camera):
            if camera is not None:
                camera.close()

    def __call__(self, state: Mapping[str, Any]) -> dict[str, Any]:
        q, dq = np.asarray(state["q"], dtype=float), np.asarray(state["dq"], dtype=float)
        if self.order is not None:
            q, dq = q[self.order], dq[self.order]
        proprio = np.concatenate([q, dq, [self.opening]]).astype(np.float32)
        image, t_image = self._read(self.camera, "camera")
        obs = {**state, "proprio": proprio, "image": image, "instruction": self.instruction, "t_image": t_image}
        if self.wrist:
            obs["wrist_image"], t_wrist = self._read(self.wrist_camera, "wrist camera")
            if t_wrist is not None:
                obs["t_image"] = t_wrist if t_image is None else min(t_image, t_wrist)
        if self.camera is not None or self.wrist_camera is not None:
            self.frames += 1
        return obs

    def _read(self, camera: CameraSource | None, name: str) -> tuple[np.ndarray, float | None]:
        """One checked frame of ``camera`` (black, no time, without one)."""
        if camera is None:
            return self._blank, None
        return check_frame(camera.read(), self.image_shape, self.clock(), self.max_frame_age_s, name)


def policy_image_size(policy: Any, default: int = 64) -> int:
    """The image side a policy was trained on: ``policy.cfg.image_size`` of a VLA (or of the object
    a bound ``predict`` belongs to), else ``default``."""
    size = getattr(_policy_cfg(policy), "image_size", None)
    return int(size) if isinstance(size, int) and size > 0 else default


def policy_uses_wrist(policy: Any) -> bool:
    """Whether a policy was trained with the wrist camera (``cfg.use_wrist`` of a VLA, or of the
    object a bound ``predict`` belongs to): its observation needs ``wrist_image``."""
    return getattr(_policy_cfg(policy), "use_wrist", False) is True


def _policy_cfg(policy: Any) -> Any:
    return getattr(getattr(policy, "__self__", policy), "cfg", None)


def build_observer(cfg: Any, scene: Any, joint_names: Sequence[str], robot: Any, image_size: int,
                   wrist: bool = False) -> Observer:
    """The deploy runner's observer for ``cfg`` (a ``DeployConfig``).

    Args:
        cfg: the run's config (``camera_mode``, ``instruction``, ``staleness_timeout_s``).
        scene: the loaded scene (robot joint order, the twin to render) or None.
        joint_names: the state's joints (the safety spec's order).
        robot: the started ``VirtualRobot`` (its plant poses the rendered arm) or None.
        image_size: image side (pixels).
        wrist: the policy also sees the wrist camera (rendered from the scene's ``cameras.wrist``
            with the sim camera; black with ``camera: none``).

    Raises:
        ConfigError: the sim camera without a scene or a virtual robot, a wrist policy on a scene
            without a wrist camera, or the scene robot's joints differ from ``joint_names`` (the
            proprio layout would be wrong).
    """
    from safetwin.safety.runio import ConfigError

    order = None
    if scene is not None:
        robot_names = tuple(scene.robot.joint_names)
        if sorted(robot_names) != sorted(joint_names):
            raise ConfigError(f"deploy.scene: {scene.path}: robot joints {list(robot_names)} differ from the "
                              f"controlled joints {list(joint_names)}; the policy's proprio would be wrong")
        order = [list(joint_names).index(n) for n in robot_names]
    front: CameraSource | None = None
    wrist_camera: CameraSource | None = None
    if cfg.camera_mode == "sim":
        if scene is None or robot is None or not hasattr(robot, "joint_positions"):
            raise ConfigError("deploy.camera: 'sim' needs the scene and the pybullet virtual robot (port 'sim')")
        twin = None
        try:
            twin = TwinCamera(scene, virtual_robot_joints(robot), image_size)
            wrist_camera = InjectingCamera(twin.view_source("wrist")) if wrist else None
        except (ImportError, KeyError, ValueError) as exc:
            if twin is not None:
                twin.close()
            raise ConfigError(f"deploy.camera: cannot render scene {cfg.scene!r}: {exc}") from exc
        front = InjectingCamera(twin)
    elif cfg.checkpoint:
        logger.warning("deploy.camera is 'none': the checkpoint policy sees black images")
    return Observer(cfg.instruction, front, (image_size, image_size, 3), cfg.staleness_timeout_s, order,
                    wrist=wrist, wrist_camera=wrist_camera)
