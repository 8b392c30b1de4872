"""Segmentation of a fused reconstruction: the support plane (table) and the objects on it.

All geometry is in the reconstruction's world frame (the robot base frame once registered), m.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import open3d as o3d

from .formats import CaptureError

logger = logging.getLogger(__name__)


@dataclass
class PlaneFit:
    """Support plane ``normal . x + offset = 0`` (unit ``normal`` pointing up, towards the
    objects), its inlier points (N, 3) and the table-top rectangle they span: ``center`` (m),
    ``size`` (2,) along ``axes`` (2 x 3 unit vectors in the plane) and ``yaw`` (rad) of axes[0]
    about world z, axes[0] being the rectangle side nearest world x (yaw in [-pi/4, pi/4])."""

    normal: np.ndarray
    offset: float
    inliers: np.ndarray
    center: np.ndarray
    size: np.ndarray
    axes: np.ndarray
    yaw: float

    @property
    def height(self) -> float:
        """Height of the plane along world z at its centre (m)."""
        return float(self.center[2])

    def signed_distance(self, points: np.ndarray) -> np.ndarray:
        return points @ self.normal + self.offset


def fit_support_plane(cloud: o3d.geometry.PointCloud, up: np.ndarray | None = (0.0, 0.0, 1.0),
                      distance: float = 0.01, max_tilt_deg: float = 20.0, attempts: int = 5,
                      min_inliers: int = 500, min_fraction: float = 0.2, seed: int = 0) -> PlaneFit:
    """RANSAC (``segment_plane``) for the largest plane whose normal is within ``max_tilt_deg``
    of ``up`` (any plane when ``up`` is None); planes that are not (walls) are removed and the
    search repeats up to ``attempts`` times. Among horizontal planes the highest one that has
    at least ``min_fraction`` of the inliers of the largest wins, so a table beats a larger
    floor below it while the top of an object does not.
    Raises CaptureError when none is found."""
    o3d.utility.random.seed(seed)
    pts = np.asarray(cloud.points)
    remaining = np.arange(len(pts))
    candidates: list[tuple[np.ndarray, float, np.ndarray]] = []
    for _ in range(attempts):
        if len(remaining) < max(min_inliers, 3):
            break
        sub = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts[remaining]))
        model, idx = sub.segment_plane(distance, 3, 1000)
        idx = np.asarray(idx)
        if len(idx) < min_inliers:
            break
        normal, offset = np.asarray(model[:3], float), float(model[3])
        norm = np.linalg.norm(normal)
        normal, offset = normal / norm, offset / norm
        if up is None:
            candidates.append((normal, offset, remaining[idx]))
            break
        upv = np.asarray(up, float) / np.linalg.norm(up)
        if normal @ upv < 0:
            normal, offset = -normal, -offset
        if np.degrees(np.arccos(np.clip(normal @ upv, -1, 1))) <= max_tilt_deg:
            candidates.append((normal, offset, remaining[idx]))
        remaining = np.delete(remaining, idx)
    if not candidates:
        raise CaptureError(f"no support plane found: no plane with >= {min_inliers} inliers within "
                           f"{max_tilt_deg} deg of up={None if up is None else list(up)}")
    largest = max(len(c[2]) for c in candidates)
    big = [c for c in candidates if len(c[2]) >= min_fraction * largest]
    normal, offset, idx = max(big, key=lambda c: -c[1]) if up is not None else big[0]
    return _table_rectangle(normal, offset, _largest_component(pts[idx], 4 * distance))


def _largest_component(points: np.ndarray, eps: float) -> np.ndarray:
    """Keep the largest DBSCAN component of the plane inliers (drops distant coplanar bits)."""
    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points)).voxel_down_sample(eps / 2)
    labels = np.asarray(pc.cluster_dbscan(eps=eps, min_points=4))
    if labels.max() < 0:
        return points
    best = np.bincount(labels[labels >= 0]).argmax()
    kept = np.asarray(pc.points)[labels == best]
    lo, hi = kept.min(axis=0) - eps, kept.max(axis=0) + eps
    return points[np.all((points >= lo) & (points <= hi), axis=1)]


def _table_rectangle(normal: np.ndarray, offset: float, inliers: np.ndarray) -> PlaneFit:
    ref = np.array([1.0, 0, 0]) if abs(normal[0]) < 0.9 else np.array([0, 1.0, 0])
    e1 = ref - (ref @ normal) * normal
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(normal, e1)
    uv = np.stack([inliers @ e1, inliers @ e2], axis=1).astype(np.float32)
    (cu, cv), (w, h), angle = cv2.minAreaRect(uv)
    a = np.radians(angle)
    ax1 = np.cos(a) * e1 + np.sin(a) * e2
    size = np.array([w, h])
    if abs(ax1[0]) < abs(ax1[1]):  # keep axes[0] nearest world x: yaw in [-45, 45] deg
        ax1, size = np.cross(normal, ax1), size[::-1].copy()
    ax1 = ax1 if ax1[0] >= 0 else -ax1
    ax2 = np.cross(normal, ax1)
    center = cu * e1 + cv * e2 - offset * normal
    yaw = float(np.arctan2(ax1[1], ax1[0]))
    return PlaneFit(normal=normal, offset=offset, inliers=inliers, center=center,
                    size=size, axes=np.stack([ax1, ax2]), yaw=yaw)


@dataclass
class ObjectCluster:
    """Points of one object above the plane (N, 3), world frame (m), and their RGB colours
    (N, 3) in [0, 1] when the cloud has colours."""

    points: np.ndarray
    colors: np.ndarray | None = None


def cluster_objects(cloud: o3d.geometry.PointCloud, plane: PlaneFit, min_height: float = 0.008,
                    max_height: float = 0.5, eps: float = 0.02, min_points: int = 30,
                    margin: float = 0.0, exclude: Sequence[tuple[Sequence[float], float]] = ()
                    ) -> list[ObjectCluster]:
    """Objects on the table: points between ``min_height`` and ``max_height`` (m) above the
    plane and over its rectangle (grown by ``margin``), outside the ``exclude`` spheres
    ((centre, radius) in m, e.g. the robot arm), statistical outlier removal, then DBSCAN
    (``eps`` m); clusters with fewer than ``min_points`` points are dropped. Sorted by x, y."""
    pts = np.asarray(cloud.points)
    d = plane.signed_distance(pts)
    rel = pts - plane.center
    inside = np.all(np.abs(rel @ plane.axes.T) <= plane.size / 2 + margin, axis=1)
    keep = (d > min_height) & (d < max_height) & inside
    for center, radius in exclude:
        keep &= np.linalg.norm(pts - np.asarray(center), axis=1) > radius
    if int(keep.sum()) < min_points:
        return []
    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts[keep]))
    if cloud.has_colors():
        pc.colors = o3d.utility.Vector3dVector(np.asarray(cloud.colors)[keep])
    pc, _ = pc.remove_statistical_outlier(nb_neighbors=16, std_ratio=2.5)
    labels = np.asarray(pc.cluster_dbscan(eps=eps, min_points=8))
    pts_f = np.asarray(pc.points)
    cols = np.asarray(pc.colors) if pc.has_colors() else None
    clusters = [ObjectCluster(pts_f[labels == k], None if cols is None else cols[labels == k])
                for k in range(labels.max() + 1) if int(np.sum(labels == k)) >= min_points]
    clusters.sort(key=lambda c: tuple(np.round(c.points.mean(axis=0)[:2], 3)))
    logger.info("clustering: %d points above the plane -> %d objects", int(keep.sum()), len(clusters))
    return clusters
