"""From a capture to geometry in the robot base frame: poses, registration, TSDF fusion,
support plane, objects. Each step is its own module; this one only chains them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .formats import Capture, read_color
from .fusion import FusionResult, fuse_tsdf
from .objects import ObjectModel, PhysicalPriors, build_object
from .odometry import OdometryConfig, estimate_poses
from .registration import Calibration, register_to_base
from .segment import PlaneFit, cluster_objects, fit_support_plane

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconstructionConfig:
    """Reconstruction settings (lengths in m).

    voxel_size: TSDF voxel edge.
    depth_max: depth readings beyond this are ignored.
    trunc_voxels: TSDF truncation in voxels.
    plane_distance: RANSAC inlier distance of the support plane.
    min_height: points lower than this above the plane belong to the plane, not to objects.
    cluster_eps: DBSCAN neighbourhood radius.
    min_points: smallest cluster (in TSDF surface points) that counts as an object.
    """

    voxel_size: float = 0.004
    depth_max: float = 1.5
    trunc_voxels: float = 2.0
    plane_distance: float = 0.006
    min_height: float = 0.008
    cluster_eps: float = 0.015
    min_points: int = 60

    def __post_init__(self) -> None:
        for name in ("voxel_size", "depth_max", "trunc_voxels", "plane_distance", "min_height", "cluster_eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"reconstruction.{name} must be > 0, got {getattr(self, name)}")
        if self.min_points < 1:
            raise ValueError(f"reconstruction.min_points must be >= 1, got {self.min_points}")


@dataclass
class Reconstruction:
    """Result: fused geometry (base frame when ``registered``, else the capture's world frame
    rotated so the cameras' up is +z), the support plane, the objects, ``T_base_world`` (the
    transform applied to the capture's poses: registration, or that rotation), how the
    camera poses were obtained (``given`` or ``odometry``) and step timings (s)."""

    fusion: FusionResult
    plane: PlaneFit
    objects: list[ObjectModel]
    T_base_world: np.ndarray
    registered: bool
    pose_source: str
    board_views: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def camera_up(poses: list[np.ndarray]) -> np.ndarray:
    """World 'up' guessed from upright hand-held cameras: minus the mean camera y axis."""
    up = -np.mean([p[:3, 1] for p in poses], axis=0)
    return up / np.linalg.norm(up)


def gravity_align(up: np.ndarray) -> np.ndarray:
    """Rotation (4x4) taking the direction ``up`` to +z by the shortest arc."""
    up = np.asarray(up, float) / np.linalg.norm(up)
    z = np.array([0.0, 0.0, 1.0])
    axis = np.cross(up, z)
    s, c = np.linalg.norm(axis), float(up @ z)
    t = np.eye(4)
    if s < 1e-9:
        t[:3, :3] = np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
        return t
    k = axis / s
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    t[:3, :3] = np.eye(3) + s * kx + (1 - c) * kx @ kx
    return t


def resolve_poses(capture: Capture, odometry: OdometryConfig | None, progress: bool
                  ) -> tuple[list[np.ndarray], str]:
    if capture.has_poses:
        return capture.poses(), "given"
    return estimate_poses(capture, odometry, progress=progress), "odometry"


def reconstruct(capture: Capture, cfg: ReconstructionConfig | None = None,
                calibration: Calibration | None = None, priors: PhysicalPriors | None = None,
                odometry: OdometryConfig | None = None, progress: bool = True,
                exclude: Sequence[tuple[Sequence[float], float]] = ()) -> Reconstruction:
    """Run poses -> (registration) -> TSDF -> plane -> objects on ``capture``. ``exclude``:
    spheres (centre m, radius m; base frame) whose points are no object, used only once the
    capture is registered to the base (the robot arm)."""
    cfg = cfg or ReconstructionConfig()
    priors = priors or PhysicalPriors()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    poses, source = resolve_poses(capture, odometry, progress)
    timings["poses_s"] = time.perf_counter() - t0
    t_base_world, views = np.eye(4), 0
    if calibration is not None:
        t0 = time.perf_counter()
        images = [read_color(f.color_path) for f in capture.frames]
        t_base_world, views = register_to_base(images, poses, capture.intrinsics, calibration)
        poses = [t_base_world @ p for p in poses]
        timings["registration_s"] = time.perf_counter() - t0
    else:
        t_base_world = gravity_align(camera_up(poses))
        poses = [t_base_world @ p for p in poses]
        logger.warning("capture not registered to the robot base: using a gravity-aligned capture frame "
                       "(z up, guessed from the cameras)")
    fusion = fuse_tsdf(capture, poses, cfg.voxel_size, cfg.depth_max, cfg.trunc_voxels, progress=progress)
    timings["fusion_s"] = fusion.seconds
    plane, objects = segment(fusion, cfg, priors, np.array([0.0, 0.0, 1.0]), exclude if calibration else ())
    return Reconstruction(fusion=fusion, plane=plane, objects=objects, T_base_world=t_base_world,
                          registered=calibration is not None, pose_source=source, board_views=views,
                          timings=timings)


def segment(fusion: FusionResult, cfg: ReconstructionConfig, priors: PhysicalPriors,
            up: np.ndarray, exclude: Sequence[tuple[Sequence[float], float]] = ()
            ) -> tuple[PlaneFit, list[ObjectModel]]:
    """Support plane and the objects on it of a fused cloud (``exclude``: see reconstruct)."""
    plane = fit_support_plane(fusion.cloud, up=up, distance=cfg.plane_distance)
    clusters = cluster_objects(fusion.cloud, plane, min_height=cfg.min_height, eps=cfg.cluster_eps,
                               min_points=cfg.min_points, exclude=exclude)
    objects = [build_object(c, plane, f"object_{i}", priors) for i, c in enumerate(clusters)]
    return plane, objects

