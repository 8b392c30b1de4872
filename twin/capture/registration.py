"""Registration of a capture to the robot base frame with a ChArUco board (cv2.aruco).

``calibration.yaml`` beside the capture::

    board:
      squares: [7, 5]          # squares along the board's x (columns) and y (rows)
      square_length: 0.04      # m
      marker_length: 0.03      # m
      dictionary: DICT_4X4_50
    board_pose:                # pose of the board frame in the robot base frame
      position: [0.3, 0.0, 0.0]  # m
      rpy: [3.14159, 0.0, 0.0]   # rad, extrinsic roll-pitch-yaw (x, then y, then z)

The board frame is OpenCV's: origin at the board image's top-left corner, x along its columns,
y along its rows, z into the board (so a board lying face up has z pointing down: roll = pi).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from safetwin.safety.runio import atomic_write_text, load_yaml
from safetwin.safety.spec import Fields, SpecError

from .formats import CaptureError, Intrinsics

logger = logging.getLogger(__name__)


def rpy_to_matrix(rpy: Sequence[float]) -> np.ndarray:
    """3x3 rotation of extrinsic x-y-z roll/pitch/yaw (rad): R = Rz(yaw) Ry(pitch) Rx(roll)."""
    r, p, y = rpy
    cr, sr, cp, sp, cy, sy = np.cos(r), np.sin(r), np.cos(p), np.sin(p), np.cos(y), np.sin(y)
    rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    return rz @ ry @ rx


def make_pose(position: Sequence[float], rpy: Sequence[float]) -> np.ndarray:
    t = np.eye(4)
    t[:3, :3] = rpy_to_matrix(rpy)
    t[:3, 3] = position
    return t


@dataclass(frozen=True)
class BoardSpec:
    """A ChArUco board: ``squares`` (columns, rows), ``square_length`` and ``marker_length`` (m),
    and the ArUco ``dictionary`` name (a cv2.aruco ``DICT_*`` constant)."""

    squares: tuple[int, int] = (7, 5)
    square_length: float = 0.04
    marker_length: float = 0.03
    dictionary: str = "DICT_4X4_50"

    def __post_init__(self) -> None:
        if min(self.squares) < 2:
            raise CaptureError(f"board: squares must be >= 2 each, got {self.squares}")
        if not 0 < self.marker_length < self.square_length:
            raise CaptureError("board: need 0 < marker_length < square_length")
        if not hasattr(cv2.aruco, self.dictionary):
            raise CaptureError(f"board: unknown ArUco dictionary {self.dictionary!r}")

    @property
    def size(self) -> tuple[float, float]:
        """Board width (x) and height (y) in m."""
        return self.squares[0] * self.square_length, self.squares[1] * self.square_length

    def board(self) -> cv2.aruco.CharucoBoard:
        d = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, self.dictionary))
        return cv2.aruco.CharucoBoard(tuple(self.squares), self.square_length, self.marker_length, d)

    def image(self, px_per_square: int = 80) -> np.ndarray:
        """Grey uint8 image of the board (rows, cols), top-left = board origin."""
        w, h = self.squares[0] * px_per_square, self.squares[1] * px_per_square
        return self.board().generateImage((w, h), marginSize=0)


@dataclass(frozen=True)
class Calibration:
    """The board and its pose ``T_base_board`` (4x4, m) in the robot base frame."""

    board: BoardSpec
    T_base_board: np.ndarray


def load_calibration(path: str | Path) -> Calibration:
    """Parse ``calibration.yaml``; errors name the file and key."""
    path = Path(path)
    where = str(path)
    f = Fields(load_yaml(path), where, "")
    b = f.sub("board")
    squares = b.raw("squares", [7, 5])
    if not (isinstance(squares, list) and len(squares) == 2 and all(isinstance(s, int) for s in squares)):
        raise SpecError(where, "board.squares", f"must be two integers, got {squares!r}")
    spec = BoardSpec(squares=tuple(squares), square_length=b.number("square_length", gt=0),
                     marker_length=b.number("marker_length", gt=0),
                     dictionary=b.string("dictionary", "DICT_4X4_50"))
    b.done()
    p = f.sub("board_pose")
    pose = make_pose(p.vector("position", 3), p.vector("rpy", 3, [0.0, 0.0, 0.0]))
    p.done()
    f.done()
    return Calibration(board=spec, T_base_board=pose)


def write_calibration(path: Path, cal: Calibration) -> None:
    import yaml

    r = cal.T_base_board[:3, :3]
    rpy = [float(np.arctan2(r[2, 1], r[2, 2])), float(np.arcsin(-np.clip(r[2, 0], -1, 1))),
           float(np.arctan2(r[1, 0], r[0, 0]))]
    doc = {"board": {"squares": list(cal.board.squares), "square_length": cal.board.square_length,
                     "marker_length": cal.board.marker_length, "dictionary": cal.board.dictionary},
           "board_pose": {"position": [float(v) for v in cal.T_base_board[:3, 3]], "rpy": rpy}}
    atomic_write_text(path, yaml.safe_dump(doc, sort_keys=False))


def detect_board(image_rgb: np.ndarray, spec: BoardSpec, intr: Intrinsics,
                 min_corners: int = 6, max_reprojection_px: float = 1.5) -> np.ndarray | None:
    """Pose of the board in the camera frame, ``T_cam_board`` (4x4, OpenCV camera, m), from the
    ChArUco corners of one image; None when fewer than ``min_corners`` corners are found or the
    fit's RMS reprojection error exceeds ``max_reprojection_px`` (a partly hidden or misread
    board)."""
    grey = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY)
    board = spec.board()
    corners, ids, _, _ = cv2.aruco.CharucoDetector(board).detectBoard(grey)
    if corners is None or ids is None or len(ids) < min_corners:
        return None
    obj, img = board.matchImagePoints(corners, ids)
    dist = np.asarray(intr.distortion, float) if intr.distortion else np.zeros(5)
    ok, rvec, tvec = cv2.solvePnP(obj, img, intr.matrix, dist, flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        return None
    reproj, _ = cv2.projectPoints(obj, rvec, tvec, intr.matrix, dist)
    if float(np.sqrt(np.mean(np.sum((reproj.reshape(-1, 2) - img.reshape(-1, 2)) ** 2, axis=1)))) > max_reprojection_px:
        return None
    t = np.eye(4)
    t[:3, :3] = cv2.Rodrigues(rvec)[0]
    t[:3, 3] = tvec.ravel()
    return t


def average_poses(poses: Sequence[np.ndarray]) -> np.ndarray:
    """Mean of rigid transforms: chordal L2 mean rotation (SVD projection), mean translation."""
    rs = np.mean([p[:3, :3] for p in poses], axis=0)
    u, _, vt = np.linalg.svd(rs)
    r = u @ np.diag([1, 1, np.linalg.det(u @ vt)]) @ vt
    out = np.eye(4)
    out[:3, :3] = r
    out[:3, 3] = np.mean([p[:3, 3] for p in poses], axis=0)
    return out


def register_to_base(images: Sequence[np.ndarray], poses: Sequence[np.ndarray], intr: Intrinsics,
                     cal: Calibration, min_views: int = 2) -> tuple[np.ndarray, int]:
    """``T_base_world`` mapping the capture's world frame into the robot base frame, and the
    number of views in which the board was found. ``poses`` are camera-to-world (OpenCV).

    Each view gives ``T_world_board = T_world_cam @ T_cam_board``; their mean is combined with
    the calibrated ``T_base_board``. Raises CaptureError when the board is seen in fewer than
    ``min_views`` frames."""
    estimates = []
    for img, pose in zip(images, poses, strict=True):
        t_cam_board = detect_board(img, cal.board, intr)
        if t_cam_board is not None:
            estimates.append(pose @ t_cam_board)
    if len(estimates) < min_views:
        raise CaptureError(f"ChArUco board found in {len(estimates)} of {len(images)} frames; "
                           f"registration needs >= {min_views}")
    estimates = _consistent(estimates)
    if len(estimates) < min_views:
        raise CaptureError(f"ChArUco board poses disagree between frames; {len(estimates)} consistent "
                           f"views, registration needs >= {min_views}")
    t_world_board = average_poses(estimates)
    logger.info("registration: board seen in %d/%d frames", len(estimates), len(images))
    return cal.T_base_board @ np.linalg.inv(t_world_board), len(estimates)


def _consistent(estimates: list[np.ndarray], max_offset: float = 0.01, max_angle_deg: float = 2.0) -> list[np.ndarray]:
    """The board-pose estimates within ``max_offset`` (m) and ``max_angle_deg`` of their median
    (translation) / chordal mean (rotation): one misread view must not tilt the whole scene."""
    if len(estimates) < 3:
        return estimates
    center = np.median([e[:3, 3] for e in estimates], axis=0)
    ref = average_poses(estimates)[:3, :3]
    keep = []
    for e in estimates:
        angle = np.degrees(np.arccos(np.clip((np.trace(ref.T @ e[:3, :3]) - 1) / 2, -1, 1)))
        if np.linalg.norm(e[:3, 3] - center) <= max_offset and angle <= max_angle_deg:
            keep.append(e)
    return keep
