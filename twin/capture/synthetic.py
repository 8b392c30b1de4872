"""Synthetic RGB-D capture of a twin scene: pybullet's TinyRenderer from a ring of cameras, a
structured-light depth-noise model and a ChArUco board textured on the table.

Output is an ordinary capture folder (``transforms.json``, ``rgb/``, ``depth/`` in mm,
``calibration.yaml``) plus ``ground_truth.json``, so the reconstruction reads it exactly like a
real one. Camera poses are written in a *capture world* frame that is not the robot base frame
(``T_world_base`` below, like a SLAM map anchored at some camera), so the ChArUco registration is
exercised too. All geometry here is in the robot base frame (m, rad) unless named otherwise.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from safetwin.safety.runio import atomic_write_bytes, atomic_write_json

from .formats import Intrinsics, write_transforms_json
from .registration import BoardSpec, Calibration, make_pose, write_calibration
from .sensor import DepthNoise, apply_noise

logger = logging.getLogger(__name__)


@dataclass
class Primitive:
    """A rigid body to render: ``shape`` box|cylinder|sphere|mesh; ``size``: box full extents
    (x,y,z), cylinder (radius, height), sphere (radius,), mesh scale (x,y,z), m; ``position``:
    centre (m, base); ``yaw`` (rad); ``rgba`` colour in [0, 1]; ``mesh``: OBJ file (mesh only)
    with ``mesh_extents`` its scaled bounding-box size (m)."""

    name: str
    shape: str
    size: tuple[float, ...]
    position: tuple[float, float, float]
    yaw: float = 0.0
    rgba: tuple[float, float, float, float] = (0.8, 0.3, 0.2, 1.0)
    mesh: str | None = None
    mesh_extents: tuple[float, float, float] | None = None

    def extents(self) -> np.ndarray:
        """Full extents of the upright bounding box (m)."""
        if self.shape == "box":
            return np.asarray(self.size, float)
        if self.shape == "cylinder":
            return np.array([2 * self.size[0], 2 * self.size[0], self.size[1]])
        if self.shape == "mesh" and self.mesh_extents is not None:
            return np.asarray(self.mesh_extents, float)
        return np.full(3, 2 * self.size[0])


@dataclass
class SyntheticWorld:
    """What the synthetic camera sees: the ``table`` (a box), the ``objects`` on it, a floor at
    ``floor_z`` (m, base) and the ChArUco ``board`` lying on the table at ``board_xy`` (m, base,
    the board's top-left corner) and ``board_yaw`` (rad). ``robot_spheres``: (centre (3,) m,
    radius m) pairs standing in for the robot arm (its collision-sphere model), rendered too."""

    table: Primitive
    objects: list[Primitive]
    floor_z: float = -0.75
    board: BoardSpec = field(default_factory=BoardSpec)
    board_xy: tuple[float, float] = (0.0, 0.0)
    board_yaw: float = 0.0
    robot_spheres: list[tuple[tuple[float, float, float], float]] = field(default_factory=list)

    @property
    def table_top(self) -> float:
        return float(self.table.position[2] + self.table.size[2] / 2)

    def board_pose(self) -> np.ndarray:
        """``T_base_board``: the board face up (board z down) on the table top."""
        return make_pose((*self.board_xy, self.table_top + 0.0005), (np.pi, 0.0, self.board_yaw))


@dataclass(frozen=True)
class CameraRing:
    """Camera poses: ``views`` cameras on a circle of ``radius`` (m) about ``center`` (m, base) at
    ``height`` (m) above it, alternately raised by ``height_jitter`` (m), looking at ``center``.
    ``width``/``height_px`` (px) and vertical field of view ``fov_deg``; near/far clip (m)."""

    views: int = 16
    radius: float = 0.6
    height: float = 0.55
    height_jitter: float = 0.1
    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    width: int = 640
    height_px: int = 480
    fov_deg: float = 60.0
    near: float = 0.05
    far: float = 4.0

    def intrinsics(self) -> Intrinsics:
        fy = self.height_px / 2 / np.tan(np.radians(self.fov_deg) / 2)
        return Intrinsics(self.width, self.height_px, fy, fy, self.width / 2 - 0.5, self.height_px / 2 - 0.5)

    def poses(self) -> list[np.ndarray]:
        """Camera-to-base poses (OpenCV camera: x right, y down, z forward)."""
        c = np.asarray(self.center, float)
        out = []
        for i in range(self.views):
            a = 2 * np.pi * i / self.views
            eye = c + [self.radius * np.cos(a), self.radius * np.sin(a),
                       self.height + (self.height_jitter if i % 2 else 0.0)]
            z = (c - eye) / np.linalg.norm(c - eye)
            x = np.cross(z, [0.0, 0.0, 1.0])
            x /= np.linalg.norm(x)
            t = np.eye(4)
            t[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
            t[:3, 3] = eye
            out.append(t)
        return out


def _quat_yaw(yaw: float) -> tuple[float, float, float, float]:
    return (0.0, 0.0, float(np.sin(yaw / 2)), float(np.cos(yaw / 2)))


def _add_body(p, cid: int, prim: Primitive) -> int:
    kw = {"physicsClientId": cid}
    if prim.shape == "box":
        vis = p.createVisualShape(p.GEOM_BOX, halfExtents=[s / 2 for s in prim.size], rgbaColor=prim.rgba, **kw)
    elif prim.shape == "cylinder":
        vis = p.createVisualShape(p.GEOM_CYLINDER, radius=prim.size[0], length=prim.size[1],
                                  rgbaColor=prim.rgba, **kw)
    elif prim.shape == "sphere":
        vis = p.createVisualShape(p.GEOM_SPHERE, radius=prim.size[0], rgbaColor=prim.rgba, **kw)
    elif prim.shape == "mesh" and prim.mesh:
        vis = p.createVisualShape(p.GEOM_MESH, fileName=prim.mesh, meshScale=list(prim.size),
                                  rgbaColor=prim.rgba, **kw)
    else:
        raise ValueError(f"object {prim.name!r}: unsupported shape {prim.shape!r}")
    return p.createMultiBody(0, -1, vis, basePosition=prim.position,
                             baseOrientation=_quat_yaw(prim.yaw), **kw)


def _add_board(p, cid: int, world: SyntheticWorld, tmp: Path) -> None:
    """A textured quad carrying the board image, in the board frame (face towards board -z)."""
    w, h = world.board.size
    obj = tmp / "board.obj"
    obj.write_text(f"v 0 0 0\nv {w} 0 0\nv {w} {h} 0\nv 0 {h} 0\n"
                   "vt 0 1\nvt 1 1\nvt 1 0\nvt 0 0\nvn 0 0 -1\n"
                   "f 1/1/1 4/4/1 3/3/1\nf 1/1/1 3/3/1 2/2/1\n")
    tex = tmp / "board.png"
    cv2.imwrite(str(tex), cv2.cvtColor(world.board.image(), cv2.COLOR_GRAY2BGR))
    vis = p.createVisualShape(p.GEOM_MESH, fileName=str(obj), physicsClientId=cid)
    pose = world.board_pose()
    quat = _matrix_to_quat(pose[:3, :3])
    body = p.createMultiBody(0, -1, vis, basePosition=pose[:3, 3].tolist(), baseOrientation=quat,
                             physicsClientId=cid)
    p.changeVisualShape(body, -1, textureUniqueId=p.loadTexture(str(tex), physicsClientId=cid),
                        rgbaColor=[1, 1, 1, 1], physicsClientId=cid)


def _matrix_to_quat(r: np.ndarray) -> list[float]:
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(r).as_quat().tolist()  # x, y, z, w (pybullet's order)


def _gl_view_proj(pose_cv: np.ndarray, ring: CameraRing) -> tuple[list[float], list[float]]:
    """pybullet view/projection matrices (column-major) for an OpenCV camera-to-base pose."""
    view = np.linalg.inv(pose_cv @ np.diag([1.0, -1.0, -1.0, 1.0]))  # world -> OpenGL camera
    n, f = ring.near, ring.far
    t = np.tan(np.radians(ring.fov_deg) / 2)
    aspect = ring.width / ring.height_px
    proj = np.array([[1 / (aspect * t), 0, 0, 0], [0, 1 / t, 0, 0],
                     [0, 0, -(f + n) / (f - n), -2 * f * n / (f - n)], [0, 0, -1, 0]])
    return view.T.ravel().tolist(), proj.T.ravel().tolist()


def render_views(world: SyntheticWorld, rings: Sequence[CameraRing], progress: bool = True
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Perfect (colour uint8 RGB, depth m; 0 = background) images from every camera of the
    rings, in order (all rings share one set of intrinsics)."""
    import pybullet as p

    if len({(r.width, r.height_px, r.fov_deg) for r in rings}) != 1:
        raise ValueError("all camera rings of one capture must share width, height_px and fov_deg")
    cid = p.connect(p.DIRECT)
    try:
        floor = Primitive("floor", "box", (8.0, 8.0, 0.02), (0.0, 0.0, world.floor_z - 0.01),
                          rgba=(0.55, 0.55, 0.5, 1))
        arm = [Primitive(f"arm_{i}", "sphere", (r,), tuple(c), rgba=(0.2, 0.2, 0.22, 1))
               for i, (c, r) in enumerate(world.robot_spheres)]
        for prim in [floor, world.table, *world.objects, *arm]:
            _add_body(p, cid, prim)
        with tempfile.TemporaryDirectory() as tmp:
            _add_board(p, cid, world, Path(tmp))
        views = []
        cams = [(ring, pose) for ring in rings for pose in ring.poses()]
        for ring, pose in tqdm(cams, desc="rendering synthetic capture", unit="view", disable=not progress):
            view, proj = _gl_view_proj(pose, ring)
            _, _, rgba, zbuf, _ = p.getCameraImage(ring.width, ring.height_px, view, proj,
                                                   renderer=p.ER_TINY_RENDERER, physicsClientId=cid)
            rgb = np.asarray(rgba, np.uint8).reshape(ring.height_px, ring.width, 4)[..., :3]
            zb = np.asarray(zbuf, np.float64).reshape(ring.height_px, ring.width)
            depth = ring.far * ring.near / (ring.far - (ring.far - ring.near) * zb)
            depth[zb >= 1.0 - 1e-6] = 0.0
            views.append((np.ascontiguousarray(rgb), depth.astype(np.float32)))
        return views
    finally:
        p.disconnect(cid)


def ground_truth(world: SyntheticWorld) -> dict:
    """What the reconstruction should find (base frame, m)."""
    return {"table_top_z": world.table_top,
            "table_size_xy": list(world.table.size[:2]),
            "objects": [{"name": o.name, "shape": o.shape, "center": list(o.position),
                         "extents": o.extents().tolist(), "yaw": o.yaw} for o in world.objects]}


def write_synthetic_capture(out: Path, world: SyntheticWorld, rings: Sequence[CameraRing] | None = None,
                            noise: DepthNoise | None = None, seed: int = 0,
                            T_world_base: np.ndarray | None = None, progress: bool = True) -> Path:
    """Render ``world`` and write a capture folder at ``out`` (see the module docstring).

    rings: camera rings (default: one ring about the table centre).
    T_world_base: pose of the robot base in the capture-world frame the camera poses are written
    in (default: a 0.4 rad yaw and an offset, so registration matters). Returns ``out``.
    """
    rings = rings or [CameraRing(center=(world.table.position[0], world.table.position[1], world.table_top))]
    noise = noise or DepthNoise()
    t_wb = make_pose((0.2, -0.1, 0.05), (0.0, 0.0, 0.4)) if T_world_base is None else T_world_base
    rng = np.random.default_rng(seed)
    intr = rings[0].intrinsics()
    colors, depths, poses = [], [], []
    all_poses = [pose for ring in rings for pose in ring.poses()]
    for i, ((rgb, depth), pose) in enumerate(zip(render_views(world, rings, progress), all_poses, strict=True)):
        noisy = apply_noise(depth, intr, noise, rng)
        mm = np.clip(np.round(noisy * 1000.0), 0, 65535).astype(np.uint16)
        c_rel, d_rel = f"rgb/frame_{i:05d}.png", f"depth/frame_{i:05d}.png"
        atomic_write_bytes(out / c_rel, cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes())
        atomic_write_bytes(out / d_rel, cv2.imencode(".png", mm)[1].tobytes())
        colors.append(c_rel)
        depths.append(d_rel)
        poses.append(t_wb @ pose)
    write_transforms_json(out / "transforms.json", intr, colors, depths, poses, 1e-3)
    write_calibration(out / "calibration.yaml", Calibration(world.board, world.board_pose()))
    gt = ground_truth(world)
    gt["T_world_base"] = t_wb.tolist()
    atomic_write_json(out / "ground_truth.json", gt)
    logger.info("synthetic capture: %d views of %d objects -> %s", len(poses), len(world.objects), out)
    return out


def place_board(world: SyntheticWorld, margin: float = 0.03, step: float = 0.02) -> tuple[float, float]:
    """A free spot for the board (yaw 0) on the table: its top-left corner (m, base) such that
    the board, grown by ``margin``, overlaps no object footprint and no footprint of the robot
    arm's spheres (the arm would hide it), and stays on the table; the candidate nearest the
    objects' centroid wins. Raises ValueError when none fits."""
    w, h = world.board.size
    t = world.table
    lo = np.array(t.position[:2]) - np.array(t.size[:2]) / 2 + margin
    hi = np.array(t.position[:2]) + np.array(t.size[:2]) / 2 - margin
    centroid = np.mean([o.position[:2] for o in world.objects], axis=0) if world.objects else (lo + hi) / 2
    best, best_d = None, np.inf
    for x in np.arange(lo[0], hi[0] - w + 1e-9, step):
        for y in np.arange(lo[1] + h, hi[1] + 1e-9, step):
            blo, bhi = np.array([x, y - h]) - margin, np.array([x + w, y]) + margin
            clear = all(np.any(bhi < np.array(o.position[:2]) - o.extents()[:2] / 2 * 1.42)
                        or np.any(blo > np.array(o.position[:2]) + o.extents()[:2] / 2 * 1.42)
                        for o in world.objects)
            clear = clear and all(np.any(bhi < np.array(c[:2]) - r) or np.any(blo > np.array(c[:2]) + r)
                                  for c, r in world.robot_spheres)
            d = float(np.linalg.norm(np.array([x + w / 2, y - h / 2]) - centroid))
            if clear and d < best_d:
                best, best_d = (float(x), float(y)), d
    if best is None:
        raise ValueError("no free spot for the calibration board on the table")
    return best
