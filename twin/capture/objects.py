"""Per-object geometry and physical priors for the clusters found on the support plane.

Frames: world (the robot base frame once registered), m; yaw in rad about world z.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import open3d as o3d

from .segment import ObjectCluster, PlaneFit

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PhysicalPriors:
    """Priors for parameters the camera cannot see, all marked ``prior`` in the scene until
    system identification replaces them.

    density: kg/m^3 (default 400, between wood and cardboard-packed goods).
    friction: Coulomb sliding friction coefficient against the table (-).
    restitution: coefficient of restitution (-).
    """

    density: float = 400.0
    friction: float = 0.5
    restitution: float = 0.1

    def __post_init__(self) -> None:
        if not self.density > 0 or not self.friction >= 0 or not 0 <= self.restitution <= 1:
            raise ValueError(f"physical priors out of range: {self}")


@dataclass
class ObjectModel:
    """One reconstructed object.

    center: centre of its upright bounding box (m, world); extents: box size along its own
    x, y (yaw-rotated) and world z (m); yaw: rad about z; mesh: closed visual mesh (world frame);
    volume: of the closed mesh (m^3); mass: kg (= volume x density prior); friction/restitution:
    priors; watertight: whether ``mesh`` is closed; n_points: cluster size; rgba: median colour
    of its points (grey when the capture has no colour).
    """

    name: str
    center: np.ndarray
    extents: np.ndarray
    yaw: float
    mesh: o3d.geometry.TriangleMesh
    volume: float
    mass: float
    friction: float
    restitution: float
    watertight: bool
    n_points: int
    rgba: tuple[float, float, float, float] = (0.5, 0.5, 0.5, 1.0)
    sources: dict = field(default_factory=lambda: {"mass": "prior", "friction": "prior",
                                                   "restitution": "prior"})


def upright_box(points: np.ndarray, plane: PlaneFit, skirt: float = 0.3, trim: float = 1.0
                ) -> tuple[np.ndarray, np.ndarray, float]:
    """Upright oriented box of ``points`` resting on ``plane``: (center (3,), extents (3,), yaw).

    The footprint is the minimum-area rectangle on world xy of the points higher than ``skirt``
    times the object's height (TSDF fusion blends an object's foot into the table, a fillet that
    would inflate the footprint); the box spans from the plane up to the highest point. Extents
    are ``trim``..(100 - ``trim``) percentiles along the box axes (robust to stray points)."""
    d = plane.signed_distance(points)
    upper = points[d >= skirt * d.max()]
    xy = (upper if len(upper) >= 3 else points)[:, :2]
    yaw = float(np.radians(cv2.minAreaRect(xy.astype(np.float32))[2]))
    rot = np.array([[np.cos(yaw), np.sin(yaw)], [-np.sin(yaw), np.cos(yaw)]])  # base -> box xy
    lo, hi = np.percentile(xy @ rot.T, [trim, 100 - trim], axis=0)
    w, h = hi - lo
    cx, cy = rot.T @ ((lo + hi) / 2)
    if w < h:  # keep the long side on the box's x axis
        w, h, yaw = h, w, yaw + np.pi / 2
    yaw = float((yaw + np.pi / 2) % np.pi - np.pi / 2)
    base = -(plane.normal[0] * cx + plane.normal[1] * cy + plane.offset) / plane.normal[2]
    top = float(np.percentile(points[:, 2], 100 - trim))
    center = np.array([cx, cy, (base + top) / 2])
    return center, np.array([w, h, top - base]), yaw


def closed_mesh(points: np.ndarray, plane: PlaneFit) -> o3d.geometry.TriangleMesh:
    """Closed (watertight) mesh of an object seen from above: the convex hull of its points and
    their projection onto the support plane (cameras never see an object's underside)."""
    d = plane.signed_distance(points)
    foot = points - d[:, None] * plane.normal[None, :]
    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.vstack([points, foot])))
    hull, _ = pc.compute_convex_hull()
    hull.compute_vertex_normals()
    return hull


def build_object(cluster: ObjectCluster, plane: PlaneFit, name: str,
                 priors: PhysicalPriors) -> ObjectModel:
    """Box, closed mesh, volume and prior mass/friction/restitution of one cluster."""
    center, extents, yaw = upright_box(cluster.points, plane)
    mesh = closed_mesh(cluster.points, plane)
    watertight = bool(mesh.is_watertight())
    volume = float(mesh.get_volume()) if watertight else float(np.prod(extents))
    return ObjectModel(name=name, center=center, extents=extents, yaw=yaw, mesh=mesh, volume=volume,
                       mass=volume * priors.density, friction=priors.friction,
                       restitution=priors.restitution, watertight=watertight,
                       n_points=len(cluster.points), rgba=_median_rgba(cluster.colors))


def _median_rgba(colors: np.ndarray | None) -> tuple[float, float, float, float]:
    if colors is None or len(colors) == 0:
        return (0.5, 0.5, 0.5, 1.0)
    r, g, b = (float(v) for v in np.clip(np.median(colors, axis=0), 0.0, 1.0))
    return (round(r, 3), round(g, 3), round(b, 3), 1.0)


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence C-level writes to stdout (V-HACD prints its parameters and progress there)."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def convex_decomposition(mesh_obj: Path, out_obj: Path, resolution: int = 20000) -> int:
    """V-HACD (``pybullet.vhacd``) of ``mesh_obj`` into ``out_obj`` (a multi-part OBJ).
    Returns the number of convex parts; raises RuntimeError naming the file on failure."""
    import pybullet as p

    with tempfile.TemporaryDirectory() as tmp, _quiet_stdout():
        log = os.path.join(tmp, "vhacd.log")
        cid = p.connect(p.DIRECT)
        try:
            p.vhacd(str(mesh_obj), str(out_obj), log, resolution=resolution, maxNumVerticesPerCH=32,
                    physicsClientId=cid)
        finally:
            p.disconnect(cid)
    if not out_obj.is_file() or out_obj.stat().st_size == 0:
        raise RuntimeError(f"{mesh_obj}: convex decomposition produced no output")
    parts = sum(1 for line in out_obj.read_text().splitlines() if line.startswith("o "))
    return max(parts, 1)
