"""Export of reconstructed objects: meshes (OBJ), convex decompositions and URDFs.

Each object's frame has its origin at the centre of its upright bounding box and is rotated by
its yaw about the base z axis; meshes are written in that frame (m). URDFs reference meshes
relative to the ``urdf/`` folder (``../meshes/<name>.obj``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import open3d as o3d

from safetwin.safety.runio import atomic_write_text

from .objects import ObjectModel, convex_decomposition

logger = logging.getLogger(__name__)


def to_local(obj: ObjectModel) -> o3d.geometry.TriangleMesh:
    """Copy of the object's mesh in its own frame (centre at origin, yaw removed)."""
    c, s = np.cos(-obj.yaw), np.sin(-obj.yaw)
    rz = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    v = (np.asarray(obj.mesh.vertices) - obj.center) @ rz.T
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(v),
                                     o3d.utility.Vector3iVector(np.asarray(obj.mesh.triangles)))
    mesh.compute_vertex_normals()
    return mesh


def write_obj(path: Path, mesh: o3d.geometry.TriangleMesh) -> None:
    """Wavefront OBJ (vertices and faces, 1-based), written atomically."""
    lines = [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in np.asarray(mesh.vertices)]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in np.asarray(mesh.triangles)]
    atomic_write_text(path, "\n".join(lines) + "\n")


def box_inertia(mass: float, extents: np.ndarray) -> tuple[float, float, float]:
    """Principal moments (kg m^2) of a solid box of ``mass`` (kg) and full ``extents`` (m)."""
    x, y, z = extents
    return (mass * (y * y + z * z) / 12, mass * (x * x + z * z) / 12, mass * (x * x + y * y) / 12)


def urdf_text(name: str, mass: float, inertia: tuple[float, float, float], visual: str,
              collision: list[str], friction: float, restitution: float) -> str:
    """A one-link URDF (mesh paths relative to the URDF file)."""
    ixx, iyy, izz = inertia
    coll = "\n".join(f'    <collision><geometry><mesh filename="{c}"/></geometry></collision>'
                     for c in collision)
    return f"""<?xml version="1.0"?>
<robot name="{name}">
  <link name="{name}">
    <contact>
      <lateral_friction value="{friction:.4f}"/>
      <restitution value="{restitution:.4f}"/>
    </contact>
    <inertial>
      <origin xyz="0 0 0" rpy="0 0 0"/>
      <mass value="{mass:.6f}"/>
      <inertia ixx="{ixx:.8f}" ixy="0" ixz="0" iyy="{iyy:.8f}" iyz="0" izz="{izz:.8f}"/>
    </inertial>
    <visual><geometry><mesh filename="{visual}"/></geometry></visual>
{coll}
  </link>
</robot>
"""


def export_object(obj: ObjectModel, root: Path, vhacd: bool = True) -> dict:
    """Write ``meshes/<name>.obj``, ``meshes/<name>_collision.obj`` (V-HACD convex parts, or the
    closed mesh itself when ``vhacd`` is False) and ``urdf/<name>.urdf`` under ``root``.
    Returns the relative paths and the number of convex parts."""
    mesh_rel = f"meshes/{obj.name}.obj"
    coll_rel = f"meshes/{obj.name}_collision.obj"
    local = to_local(obj)
    write_obj(root / mesh_rel, local)
    parts = 1
    if vhacd:
        parts = convex_decomposition(root / mesh_rel, root / coll_rel)
    else:
        write_obj(root / coll_rel, local)
    urdf_rel = f"urdf/{obj.name}.urdf"
    atomic_write_text(root / urdf_rel, urdf_text(
        obj.name, obj.mass, box_inertia(obj.mass, obj.extents), f"../{mesh_rel}", [f"../{coll_rel}"],
        obj.friction, obj.restitution))
    return {"mesh": mesh_rel, "collision_mesh": coll_rel, "urdf": urdf_rel, "convex_parts": parts}
