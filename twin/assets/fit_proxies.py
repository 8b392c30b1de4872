"""Fit one enclosing capsule per link to a URDF's collision meshes (``.obj``).

Used once to produce the ``proxies:`` block of ``panda.yaml`` from pybullet_data's Franka
Panda collision meshes, so the twin can render and check collisions with primitives instead
of meshes. Run ``python -m safetwin.twin.assets.fit_proxies <urdf>`` to print the block.

The capsule axis is the principal axis of the mesh vertices (PCA); the radius is the largest
distance of a vertex from that axis, and the segment ends are chosen so every vertex lies
inside the capsule. Frames: link frame, metres, rad.
"""

from __future__ import annotations

import logging
import math
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def read_obj_vertices(path: Path) -> np.ndarray:
    """Vertex positions (k, 3) of a Wavefront ``.obj`` file (``v x y z`` lines)."""
    rows = [line.split()[1:4] for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
            if line.startswith("v ")]
    if not rows:
        raise ValueError(f"{path}: no vertices")
    return np.asarray(rows, dtype=float)


def _rpy_matrix(r: float, p: float, y: float) -> np.ndarray:
    cr, sr, cp, sp, cy, sy = math.cos(r), math.sin(r), math.cos(p), math.sin(p), math.cos(y), math.sin(y)
    return np.array([[cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
                     [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
                     [-sp, cp * sr, cp * cr]])


def _matrix_rpy(rot: np.ndarray) -> tuple[float, float, float]:
    pitch = math.asin(max(-1.0, min(1.0, -rot[2, 0])))
    roll = math.atan2(rot[2, 1], rot[2, 2])
    yaw = math.atan2(rot[1, 0], rot[0, 0])
    return roll, pitch, yaw


def fit_capsule(points: np.ndarray) -> dict[str, object]:
    """Enclosing capsule of ``points`` (k, 3): ``{kind, size: [radius, length], xyz, rpy}``.

    The capsule's local z axis is its axis; ``length`` is the cylinder part (m).
    """
    centre = points.mean(axis=0)
    _, _, vt = np.linalg.svd(points - centre, full_matrices=False)
    axis = vt[0] / np.linalg.norm(vt[0])
    rel = points - centre
    t = rel @ axis
    d = np.linalg.norm(rel - np.outer(t, axis), axis=1)
    radius = float(d.max())
    slack = np.sqrt(np.maximum(radius ** 2 - d ** 2, 0.0))
    lo, hi = float((t + slack).min()), float((t - slack).max())
    if lo > hi:
        lo = hi = 0.5 * (lo + hi)
    mid = centre + axis * 0.5 * (lo + hi)
    z = axis
    x = np.cross([0.0, 0.0, 1.0] if abs(z[2]) < 0.9 else [1.0, 0.0, 0.0], z)
    x /= np.linalg.norm(x)
    rot = np.column_stack([x, np.cross(z, x), z])
    return {"kind": "capsule", "size": [round(radius, 4), round(hi - lo, 4)],
            "xyz": [round(float(v), 4) for v in mid], "rpy": [round(v, 4) for v in _matrix_rpy(rot)]}


def split_two(points: np.ndarray, iterations: int = 20) -> list[np.ndarray]:
    """Split ``points`` into two clusters (2-means seeded at the extremes of the main axis)."""
    centre = points.mean(axis=0)
    _, _, vt = np.linalg.svd(points - centre, full_matrices=False)
    t = (points - centre) @ vt[0]
    seeds = np.stack([points[t.argmin()], points[t.argmax()]])
    labels = np.zeros(len(points), dtype=int)
    for _ in range(iterations):
        labels = np.linalg.norm(points[:, None, :] - seeds[None], axis=2).argmin(axis=1)
        if labels.min() == labels.max():
            return [points]
        seeds = np.stack([points[labels == k].mean(axis=0) for k in (0, 1)])
    return [points[labels == 0], points[labels == 1]]


def fit_urdf(urdf: Path, parts: int = 2) -> dict[str, list[dict[str, object]]]:
    """``parts`` (1 or 2) capsules per link with mesh collision geometry, in each link's frame."""
    out: dict[str, list[dict[str, object]]] = {}
    for link in ET.parse(urdf).getroot().findall("link"):
        pts = []
        for col in link.findall("collision"):
            mesh = col.find("geometry/mesh")
            if mesh is None:
                continue
            rel = mesh.get("filename", "").replace("package://", "")
            verts = read_obj_vertices(urdf.parent / rel)
            origin = col.find("origin")
            xyz = np.array((origin.get("xyz", "0 0 0") if origin is not None else "0 0 0").split(), float)
            rpy = (origin.get("rpy", "0 0 0") if origin is not None else "0 0 0").split()
            pts.append(verts @ _rpy_matrix(*map(float, rpy)).T + xyz)
        if pts:
            allpts = np.vstack(pts)
            groups = split_two(allpts) if parts == 2 else [allpts]
            out[link.get("name", "")] = [fit_capsule(g) for g in groups]
    return out


def main(argv: list[str] | None = None) -> None:
    import yaml

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m safetwin.twin.assets.fit_proxies <urdf>")
    sys.stdout.write(yaml.safe_dump({"proxies": fit_urdf(Path(args[0]))}, default_flow_style=None))


if __name__ == "__main__":
    main()
