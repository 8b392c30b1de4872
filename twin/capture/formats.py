"""Capture folders: readers for the two RGB-D layouts SafeTwin ingests.

(a) nerfstudio's ``transforms.json``: ``fl_x, fl_y, cx, cy, w, h`` (pixels), optional distortion
    ``k1 k2 k3 k4 p1 p2``, ``frames[].file_path`` (colour), ``frames[].depth_file_path`` and
    ``frames[].transform_matrix``: camera-to-world 4x4 in nerfstudio's **OpenGL** camera
    convention (x right, y up, camera looks along -z). Depth images are uint16 PNGs; a raw depth
    value times ``depth_unit_scale_factor`` is metres (nerfstudio's key; default 1e-3, i.e. the
    PNG holds millimetres). A frame without ``transform_matrix`` has an unknown pose.
(b) Open3D's RGB-D layout: ``color/*.jpg|png``, ``depth/*.png`` (paired by sorted name, or by an
    ``rgbd.match`` file), an optional ``trajectory.log`` of camera-to-world poses (Open3D log
    format) and intrinsics from a JSON file (Open3D's ``PinholeCameraIntrinsic`` JSON or our
    flat ``{"fx", "fy", "cx", "cy", "width", "height"}``) or given by the caller.

Internally every pose is camera-to-world in the **OpenCV** camera convention (x right, y down,
z forward), metres; that is what Open3D's TSDF and odometry expect (as the inverse, the extrinsic).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

logger = logging.getLogger(__name__)

GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])
"""Right-multiply a camera-to-world pose by this to switch between OpenGL and OpenCV cameras."""


class CaptureError(ValueError):
    """A capture folder is malformed; the message names the file, frame or key."""


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics: image ``width``/``height`` (px), focal lengths ``fx``/``fy`` (px),
    principal point ``cx``/``cy`` (px), optional distortion ``k1 k2 p1 p2 k3`` (OpenCV order)."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise CaptureError(f"intrinsics: image size must be positive, got {self.width}x{self.height}")
        for name in ("fx", "fy", "cx", "cy"):
            value = getattr(self, name)
            if not np.isfinite(value) or (name in ("fx", "fy") and value <= 0):
                raise CaptureError(f"intrinsics: {name} must be finite{' and > 0' if name[0] == 'f' else ''}, "
                                   f"got {value}")

    @property
    def matrix(self) -> np.ndarray:
        """3x3 camera matrix K (px)."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])


@dataclass
class CaptureFrame:
    """One RGB-D frame: ``color_path``, ``depth_path`` (None for photo-only captures) and
    ``pose``, camera-to-world 4x4 (OpenCV camera, m), or None when unknown."""

    index: int
    color_path: Path
    depth_path: Path | None
    pose: np.ndarray | None = None


@dataclass
class Capture:
    """A capture: ``intrinsics``, ``frames`` and ``depth_scale`` (metres per raw depth unit).
    ``source`` names the layout it was read from (for errors and reports)."""

    root: Path
    intrinsics: Intrinsics
    frames: list[CaptureFrame]
    depth_scale: float = 1e-3
    source: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def has_poses(self) -> bool:
        return all(f.pose is not None for f in self.frames)

    def poses(self) -> list[np.ndarray]:
        missing = [f.index for f in self.frames if f.pose is None]
        if missing:
            raise CaptureError(f"{self.source}: frames {missing} have no camera pose")
        return [f.pose for f in self.frames]  # type: ignore[misc]


def check_rigid(matrix: object, where: str, tol: float = 1e-3) -> np.ndarray:
    """Return ``matrix`` as a float 4x4 rigid transform or raise CaptureError naming ``where``.

    Rigid: finite, last row (0, 0, 0, 1), rotation block orthonormal (|R^T R - I| <= tol) with
    determinant +1.
    """
    try:
        m = np.asarray(matrix, dtype=float)
    except (TypeError, ValueError) as exc:
        raise CaptureError(f"{where}: pose is not a numeric 4x4 matrix") from exc
    if m.shape != (4, 4):
        raise CaptureError(f"{where}: pose must be 4x4, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise CaptureError(f"{where}: pose contains NaN or Inf")
    if not np.allclose(m[3], [0, 0, 0, 1], atol=tol):
        raise CaptureError(f"{where}: pose last row must be [0, 0, 0, 1], got {m[3].tolist()}")
    r = m[:3, :3]
    err = float(np.abs(r.T @ r - np.eye(3)).max())
    if err > tol or abs(np.linalg.det(r) - 1.0) > tol:
        raise CaptureError(f"{where}: pose is not a rigid transform (rotation not orthonormal: "
                           f"|R^T R - I| = {err:.3g}, det = {np.linalg.det(r):.4f})")
    return m


# ------------------------------------------------------------------------- image loading
def read_color(path: Path) -> np.ndarray:
    """Colour image as uint8 RGB (H, W, 3); CaptureError naming the file when unreadable."""
    if not path.is_file():
        raise CaptureError(f"{path}: colour image is missing")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise CaptureError(f"{path}: unreadable colour image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_depth(path: Path, depth_scale: float) -> np.ndarray:
    """Depth image in metres (float32, H x W); 0 = no reading. PNG/TIFF raw units times
    ``depth_scale``; ``.npy`` files hold metres already."""
    if not path.is_file():
        raise CaptureError(f"{path}: depth image is missing")
    if path.suffix == ".npy":
        try:
            raw = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise CaptureError(f"{path}: unreadable depth array ({exc})") from exc
        scale = 1.0
    else:
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        scale = depth_scale
        if raw is None:
            raise CaptureError(f"{path}: unreadable depth image")
    if raw.ndim != 2:
        raise CaptureError(f"{path}: depth must be single-channel, got shape {raw.shape}")
    depth = raw.astype(np.float32) * np.float32(scale)
    depth[~np.isfinite(depth)] = 0.0
    return depth


def load_frame(capture: Capture, frame: CaptureFrame) -> tuple[np.ndarray, np.ndarray]:
    """(colour uint8 RGB (H,W,3), depth float32 m (H,W)) of one frame, checked against the
    intrinsics' image size; errors name the frame and the file."""
    color = read_color(frame.color_path)
    if frame.depth_path is None:
        raise CaptureError(f"{capture.source}: frame {frame.index} has no depth image")
    depth = read_depth(frame.depth_path, capture.depth_scale)
    if color.shape[:2] != depth.shape:
        raise CaptureError(f"frame {frame.index}: colour {frame.color_path.name} is "
                           f"{color.shape[1]}x{color.shape[0]} but depth {frame.depth_path.name} is "
                           f"{depth.shape[1]}x{depth.shape[0]}")
    size = (capture.intrinsics.height, capture.intrinsics.width)
    if depth.shape != size:
        raise CaptureError(f"frame {frame.index}: image is {depth.shape[1]}x{depth.shape[0]} but the "
                           f"intrinsics say {size[1]}x{size[0]}")
    if capture.intrinsics.distortion:
        color, depth = undistort(color, depth, capture.intrinsics)
    return color, depth


def undistort(color: np.ndarray, depth: np.ndarray, intr: Intrinsics) -> tuple[np.ndarray, np.ndarray]:
    """Remove lens distortion, keeping the camera matrix K: colour bilinear, depth nearest
    (interpolating depth across edges would invent surfaces)."""
    k, dist = intr.matrix, np.asarray(intr.distortion, float)
    map1, map2 = cv2.initUndistortRectifyMap(k, dist, None, k, (intr.width, intr.height), cv2.CV_32FC1)
    return (cv2.remap(color, map1, map2, cv2.INTER_LINEAR),
            cv2.remap(depth, map1, map2, cv2.INTER_NEAREST))


# ------------------------------------------------------------------ (a) transforms.json
def _number(data: dict, key: str, where: str) -> float:
    if key not in data:
        raise CaptureError(f"{where}: required key {key!r} is missing")
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise CaptureError(f"{where}: {key} must be a finite number, got {value!r}")
    return float(value)


def _read_intrinsics(data: dict, where: str) -> Intrinsics:
    dist = tuple(float(data.get(k, 0.0)) for k in ("k1", "k2", "p1", "p2", "k3"))
    return Intrinsics(width=int(_number(data, "w", where)), height=int(_number(data, "h", where)),
                      fx=_number(data, "fl_x", where), fy=_number(data, "fl_y", where),
                      cx=_number(data, "cx", where), cy=_number(data, "cy", where),
                      distortion=dist if any(dist) else ())


def _read_frames(data: dict, root: Path, where: str) -> list[CaptureFrame]:
    frames_data = data.get("frames")
    if not isinstance(frames_data, list) or not frames_data:
        raise CaptureError(f"{where}: 'frames' must be a non-empty list")
    frames = []
    for i, fd in enumerate(frames_data):
        key = f"{where}: frames[{i}]"
        if not isinstance(fd, dict) or not isinstance(fd.get("file_path"), str):
            raise CaptureError(f"{key}: 'file_path' (string) is required")
        depth = fd.get("depth_file_path")
        pose = None
        if "transform_matrix" in fd:
            pose = check_rigid(fd["transform_matrix"], f"{key}.transform_matrix") @ GL_TO_CV
        frames.append(CaptureFrame(index=i, color_path=root / fd["file_path"],
                                   depth_path=root / depth if isinstance(depth, str) else None,
                                   pose=pose))
    return frames


def read_transforms_json(folder: str | Path) -> Capture:
    """Read a nerfstudio-style capture folder (``folder/transforms.json``)."""
    root = Path(folder)
    path = root / "transforms.json"
    if not path.is_file():
        raise CaptureError(f"{path}: no such file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CaptureError(f"{path}:{exc.lineno}: malformed JSON: {exc.msg}") from exc
    if not isinstance(data, dict):
        raise CaptureError(f"{path}: top level must be an object")
    scale = float(data.get("depth_unit_scale_factor", 1e-3))
    if not scale > 0:
        raise CaptureError(f"{path}: depth_unit_scale_factor must be > 0, got {scale}")
    return Capture(root=root, intrinsics=_read_intrinsics(data, str(path)),
                   frames=_read_frames(data, root, str(path)), depth_scale=scale, source=str(path))


# ------------------------------------------------------------------ (b) Open3D layout
def read_trajectory_log(path: str | Path) -> list[np.ndarray]:
    """Poses of an Open3D ``.log`` file: per frame a line ``i j n`` then 4 rows of a 4x4
    camera-to-world matrix (OpenCV camera, m). Errors name the file and line."""
    path = Path(path)
    lines = [ln.split() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if len(lines) % 5:
        raise CaptureError(f"{path}: {len(lines)} non-empty lines is not a multiple of 5")
    poses = []
    for k in range(0, len(lines), 5):
        try:
            rows = [[float(v) for v in ln] for ln in lines[k + 1:k + 5]]
        except ValueError as exc:
            raise CaptureError(f"{path}: line {k + 2}: not a number ({exc})") from exc
        if any(len(r) != 4 for r in rows):
            raise CaptureError(f"{path}: lines {k + 2}-{k + 5}: each row must hold 4 numbers")
        poses.append(check_rigid(rows, f"{path}: frame {k // 5}"))
    return poses


def read_intrinsics_json(path: str | Path) -> Intrinsics:
    """Open3D ``PinholeCameraIntrinsic`` JSON (``width``, ``height``, column-major
    ``intrinsic_matrix``) or a flat ``{"width", "height", "fx", "fy", "cx", "cy"}``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CaptureError(f"{path}: unreadable intrinsics JSON ({exc})") from exc
    where = str(path)
    if "intrinsic_matrix" in data:
        k = np.asarray(data["intrinsic_matrix"], dtype=float).reshape(3, 3).T
        return Intrinsics(int(_number(data, "width", where)), int(_number(data, "height", where)),
                          k[0, 0], k[1, 1], k[0, 2], k[1, 2])
    return Intrinsics(int(_number(data, "width", where)), int(_number(data, "height", where)),
                      _number(data, "fx", where), _number(data, "fy", where),
                      _number(data, "cx", where), _number(data, "cy", where))


def _pairs(root: Path) -> list[tuple[Path, Path]]:
    match = root / "rgbd.match"
    if match.is_file():
        pairs = []
        for lineno, line in enumerate(match.read_text(encoding="utf-8").splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise CaptureError(f"{match}:{lineno}: expected 'depth/<file> color/<file>'")
            pairs.append((root / parts[1], root / parts[0]))
        return pairs
    exts = (".jpg", ".jpeg", ".png")
    colors = sorted(p for p in (root / "color").glob("*") if p.suffix.lower() in exts)
    depths = sorted(p for p in (root / "depth").glob("*") if p.suffix.lower() in (".png", ".npy"))
    if len(colors) != len(depths):
        raise CaptureError(f"{root}: {len(colors)} colour images in color/ but {len(depths)} depth "
                           f"images in depth/")
    return list(zip(colors, depths, strict=True))


def read_open3d_rgbd(folder: str | Path, intrinsics: Intrinsics | None = None,
                     depth_scale: float = 1e-3, use_trajectory: bool = True) -> Capture:
    """Read Open3D's RGB-D layout. Intrinsics: the argument, else ``intrinsics.json`` /
    ``camera_intrinsic.json`` in the folder. ``use_trajectory=False`` ignores ``trajectory.log``
    (poses are then estimated by odometry)."""
    root = Path(folder)
    if not (root / "color").is_dir() or not (root / "depth").is_dir():
        raise CaptureError(f"{root}: an Open3D RGB-D capture needs color/ and depth/ folders")
    if intrinsics is None:
        for name in ("intrinsics.json", "camera_intrinsic.json"):
            if (root / name).is_file():
                intrinsics = read_intrinsics_json(root / name)
                break
        else:
            raise CaptureError(f"{root}: no intrinsics given and no intrinsics.json in the folder")
    pairs = _pairs(root)
    if not pairs:
        raise CaptureError(f"{root}: no frames in color/ and depth/")
    frames = [CaptureFrame(i, c, d) for i, (c, d) in enumerate(pairs)]
    traj = root / "trajectory.log"
    if use_trajectory and traj.is_file():
        poses = read_trajectory_log(traj)
        if len(poses) != len(frames):
            raise CaptureError(f"{traj}: {len(poses)} poses for {len(frames)} frames")
        for f, pose in zip(frames, poses, strict=True):
            f.pose = pose
    return Capture(root=root, intrinsics=intrinsics, frames=frames, depth_scale=depth_scale,
                   source=str(root))


def read_capture(folder: str | Path, intrinsics: Intrinsics | None = None,
                 use_poses: bool = True) -> Capture:
    """Read either layout: ``transforms.json`` if present, else Open3D's."""
    root = Path(folder)
    if not root.is_dir():
        raise CaptureError(f"{root}: capture folder does not exist")
    if (root / "transforms.json").is_file():
        cap = read_transforms_json(root)
        if not use_poses:
            for f in cap.frames:
                f.pose = None
        return cap
    return read_open3d_rgbd(root, intrinsics, use_trajectory=use_poses)


def write_transforms_json(path: Path, intrinsics: Intrinsics, color_paths: Sequence[str],
                          depth_paths: Sequence[str], poses_cv: Sequence[np.ndarray] | None,
                          depth_unit_scale_factor: float = 1e-3) -> dict:
    """The transforms.json document for frames whose poses are camera-to-world in OpenCV
    convention (converted to nerfstudio's OpenGL convention here). Returns the dict written."""
    from safetwin.safety.runio import atomic_write_json

    doc: dict = {"fl_x": intrinsics.fx, "fl_y": intrinsics.fy, "cx": intrinsics.cx,
                 "cy": intrinsics.cy, "w": intrinsics.width, "h": intrinsics.height,
                 "depth_unit_scale_factor": depth_unit_scale_factor, "frames": []}
    doc.update(dict(zip(("k1", "k2", "p1", "p2", "k3"), intrinsics.distortion, strict=False)))
    for i, (c, d) in enumerate(zip(color_paths, depth_paths, strict=True)):
        fd: dict = {"file_path": c, "depth_file_path": d}
        if poses_cv is not None:
            fd["transform_matrix"] = (np.asarray(poses_cv[i]) @ GL_TO_CV).tolist()
        doc["frames"].append(fd)
    atomic_write_json(path, doc)
    return doc
