"""TSDF fusion of posed RGB-D frames with Open3D's tensor ``VoxelBlockGrid``.

(The legacy ``ScalableTSDFVolume`` returns empty meshes in open3d 0.20, so it is not used.)
Poses are camera-to-world (OpenCV camera, m); the world frame of the result is theirs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import open3d as o3d
from tqdm import tqdm

from .formats import Capture, CaptureError, load_frame

logger = logging.getLogger(__name__)


@dataclass
class FusionResult:
    """``mesh`` and ``cloud`` (legacy Open3D geometry, world frame, m), the number of frames
    integrated and the wall time of integration (s)."""

    mesh: o3d.geometry.TriangleMesh
    cloud: o3d.geometry.PointCloud
    frames: int
    seconds: float

    @property
    def ms_per_frame(self) -> float:
        return 1000.0 * self.seconds / max(self.frames, 1)


def fuse_tsdf(capture: Capture, poses: Sequence[np.ndarray], voxel_size: float = 0.01,
              depth_max: float = 3.0, trunc_voxels: float = 3.0, block_count: int = 10000,
              progress: bool = True) -> FusionResult:
    """Integrate every frame of ``capture`` at ``poses`` (camera-to-world, OpenCV camera, m).

    voxel_size: TSDF voxel edge (m).
    depth_max: readings beyond this distance (m) are ignored.
    trunc_voxels: SDF truncation in voxels. Open3D's default (8) rounds off convex edges seen
        from opposite sides (a 5 cm cube grows by ~1.5 cm at 4 mm voxels); 2-3 keeps them sharp.
    block_count: initial hash-map capacity in 16^3-voxel blocks (grows when needed).
    Raises CaptureError when the result is empty (no valid depth reached the volume).
    """
    if len(poses) != len(capture.frames):
        raise CaptureError(f"{capture.source}: {len(poses)} poses for {len(capture.frames)} frames")
    device = o3d.core.Device("CPU:0")
    vbg = o3d.t.geometry.VoxelBlockGrid(
        attr_names=("tsdf", "weight", "color"),
        attr_dtypes=(o3d.core.float32, o3d.core.float32, o3d.core.float32),
        attr_channels=((1), (1), (3)), voxel_size=voxel_size, block_resolution=16,
        block_count=block_count, device=device)
    intrinsic = o3d.core.Tensor(capture.intrinsics.matrix, o3d.core.float64)
    elapsed, used = 0.0, 0
    frames = tqdm(list(zip(capture.frames, poses, strict=True)), desc="TSDF fusion", unit="frame",
                  disable=not progress)
    for frame, pose in frames:
        color, depth = load_frame(capture, frame)
        if not np.any((depth > 0) & (depth < depth_max)):
            logger.warning("frame %d (%s): no depth reading within %.2f m, skipped", frame.index,
                           frame.depth_path, depth_max)
            continue
        t0 = time.perf_counter()
        _integrate(vbg, color, depth, intrinsic, pose, float(depth_max), float(trunc_voxels))
        used += 1
        elapsed += time.perf_counter() - t0
    if used == 0:
        raise CaptureError(f"{capture.source}: empty reconstruction: no frame has a depth reading "
                           f"within {depth_max} m ({len(capture.frames)} frames)")
    t0 = time.perf_counter()
    threshold = min(3.0, used - 0.5)  # voxels need weight > threshold: Open3D's 3.0, fewer for short captures
    mesh = vbg.extract_triangle_mesh(weight_threshold=threshold).to_legacy()
    cloud = vbg.extract_point_cloud(weight_threshold=threshold).to_legacy()
    elapsed += time.perf_counter() - t0
    if len(mesh.triangles) == 0 or len(cloud.points) == 0:
        raise CaptureError(f"{capture.source}: empty reconstruction: no valid depth within "
                           f"{depth_max} m reached the TSDF volume ({len(capture.frames)} frames)")
    logger.info("TSDF: %d/%d frames, %d triangles, %d points, %.1f ms/frame", used, len(capture.frames),
                len(mesh.triangles), len(cloud.points), 1000 * elapsed / used)
    return FusionResult(mesh=mesh, cloud=cloud, frames=used, seconds=elapsed)


def _integrate(vbg, color: np.ndarray, depth: np.ndarray, intrinsic, pose: np.ndarray, depth_max: float,
               trunc_voxels: float) -> None:
    """Integrate one frame (colour uint8 RGB, depth m) seen from ``pose`` (camera-to-world)."""
    extrinsic = o3d.core.Tensor(np.linalg.inv(pose), o3d.core.float64)
    depth_img = o3d.t.geometry.Image(o3d.core.Tensor(np.ascontiguousarray(depth)))
    color_img = o3d.t.geometry.Image(o3d.core.Tensor(np.ascontiguousarray(color.astype(np.float32) / 255.0)))
    coords = vbg.compute_unique_block_coordinates(depth_img, intrinsic, extrinsic, 1.0, depth_max, trunc_voxels)
    vbg.integrate(coords, depth_img, color_img, intrinsic, extrinsic, 1.0, depth_max, trunc_voxels)
