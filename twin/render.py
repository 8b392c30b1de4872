"""Fast camera images of the twin with pybullet's TinyRenderer.

TinyRenderer rasterises every triangle on the CPU: a 64x64 frame of the Franka Panda's full
visual meshes costs ~18 ms, a scene of primitive shapes under 1 ms. Two paths:

* :class:`DirectRenderer` renders the physics client itself: used when every visual shape
  in the scene is a primitive (the bundled arm).
* :class:`ProxyRenderer` keeps a second, render-only pybullet client holding a primitive
  proxy of every visual shape (a mesh becomes the box of its vertex bounds, in the mesh's own
  frame) and, before each frame, copies the link poses of the physics client into it.

Frames: camera poses are given in the **world** frame (m); the renderer never changes the
physics client's state.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pybullet as p

from safetwin.twin import kinematics_kernels as kk

logger = logging.getLogger(__name__)

_PLANE_HALF_EXTENT = 2.0
"""m: half size of the thin box that stands in for an infinite plane in the proxy client."""


@dataclass(frozen=True)
class Camera:
    """A pinhole camera looking from ``eye`` at ``target`` (m, world frame).

    Attributes:
        eye: camera position (m, world).
        target: point the optical axis passes through (m, world).
        up: approximate up direction (world).
        fov_deg: vertical field of view (degrees).
        near, far: clipping distances (m).
        width, height: image size (pixels).
    """

    eye: tuple[float, float, float]
    target: tuple[float, float, float]
    up: tuple[float, float, float] = (0.0, 0.0, 1.0)
    fov_deg: float = 60.0
    near: float = 0.02
    far: float = 5.0
    width: int = 64
    height: int = 64

    def __post_init__(self) -> None:
        if not (0.0 < self.fov_deg < 180.0):
            raise ValueError(f"Camera.fov_deg must be in (0, 180), got {self.fov_deg}")
        if not (0.0 < self.near < self.far):
            raise ValueError(f"Camera needs 0 < near < far, got near={self.near}, far={self.far}")
        if self.width < 1 or self.height < 1:
            raise ValueError(f"Camera size must be positive, got {self.width}x{self.height}")
        if np.allclose(self.eye, self.target):
            raise ValueError("Camera.eye and Camera.target coincide")

    @functools.cached_property
    def view(self) -> list[float]:
        return p.computeViewMatrix(self.eye, self.target, self.up)

    @functools.cached_property
    def projection(self) -> list[float]:
        return p.computeProjectionMatrixFOV(self.fov_deg, self.width / self.height, self.near, self.far)


@dataclass(frozen=True)
class Lighting:
    """TinyRenderer lighting: direction (world, towards the light), colour (RGB 0..1) and the
    ambient/diffuse/specular coefficients."""

    direction: tuple[float, float, float] = (0.4, -0.3, 1.0)
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    ambient: float = 0.6
    diffuse: float = 0.35
    specular: float = 0.05


def capture(client: int, camera: Camera, lighting: Lighting | None = None) -> np.ndarray:
    """Render ``camera`` in pybullet client ``client``: uint8 array (height, width, 3)."""
    light = lighting or Lighting()
    _, _, rgba, _, _ = p.getCameraImage(
        camera.width, camera.height, camera.view, camera.projection,
        lightDirection=light.direction, lightColor=light.color, lightAmbientCoeff=light.ambient,
        lightDiffuseCoeff=light.diffuse, lightSpecularCoeff=light.specular, shadow=0,
        renderer=p.ER_TINY_RENDERER, flags=p.ER_NO_SEGMENTATION_MASK, physicsClientId=client)
    rgba = np.asarray(rgba, dtype=np.uint8).reshape(camera.height, camera.width, 4)
    return np.ascontiguousarray(rgba[:, :, :3])


def has_meshes(client: int, bodies: Sequence[int]) -> bool:
    """True when any visual shape of ``bodies`` is a triangle mesh (slow in TinyRenderer)."""
    return any(v[2] == p.GEOM_MESH for b in bodies
               for v in p.getVisualShapeData(b, physicsClientId=client))


@functools.lru_cache(maxsize=256)
def mesh_bounds(path: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Axis-aligned bounds (lo, hi) of the vertices of a Wavefront OBJ file, in its own frame.

    Raises:
        ValueError: the file is not an OBJ or holds no vertex.
    """
    if Path(path).suffix.lower() != ".obj":
        raise ValueError(f"{path}: proxy rendering reads OBJ meshes only")
    verts = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith("v "):
                verts.append([float(x) for x in line.split()[1:4]])
    if not verts:
        raise ValueError(f"{path}: no vertices")
    arr = np.asarray(verts)
    return tuple(arr.min(axis=0).tolist()), tuple(arr.max(axis=0).tolist())  # type: ignore[return-value]


class DirectRenderer:
    """Render the physics client as it is (for scenes made of primitive shapes)."""

    def __init__(self, client: int) -> None:
        self.client = client

    def sync_colors(self) -> None:
        """Nothing to do: the physics client's own colours are rendered."""

    def render(self, camera: Camera, lighting: Lighting | None = None) -> np.ndarray:
        return capture(self.client, camera, lighting)

    def close(self) -> None:
        """The physics client belongs to the env; nothing to release."""


@dataclass
class _ProxyPart:
    body: int  # source body id (physics client)
    link: int  # source link index, -1 = base
    local_pos: tuple[float, float, float]  # visual frame in the link frame (m)
    local_orn: tuple[float, float, float, float]
    proxy: int  # body id in the render client
    shape_index: int = field(default=0)


class ProxyRenderer:
    """Render a primitive proxy of the physics client's bodies from a render-only client.

    Args:
        client: the physics client to mirror.
        bodies: the body ids to mirror (robot, table, objects, ...).
    """

    def __init__(self, client: int, bodies: Sequence[int]) -> None:
        self.source = client
        self.client = p.connect(p.DIRECT)
        self.parts: list[_ProxyPart] = []
        try:
            for body in bodies:
                for index, vis in enumerate(p.getVisualShapeData(body, physicsClientId=client)):
                    part = self._make_part(body, vis)
                    if part is not None:
                        part.shape_index = index
                        self.parts.append(part)
        except Exception:
            p.disconnect(self.client)
            raise
        logger.debug("proxy renderer: %d primitive parts for %d bodies", len(self.parts), len(bodies))

    def _make_part(self, body: int, vis: tuple) -> _ProxyPart | None:
        link, geom, dims, fname = vis[1], vis[2], vis[3], vis[4]
        local_pos, local_orn, rgba = tuple(vis[5]), tuple(vis[6]), list(vis[7])
        kwargs: dict = {"rgbaColor": rgba, "physicsClientId": self.client}
        offset = (0.0, 0.0, 0.0)
        if geom == p.GEOM_BOX:
            kwargs.update(shapeType=p.GEOM_BOX, halfExtents=[d / 2 for d in dims])
        elif geom == p.GEOM_SPHERE:
            kwargs.update(shapeType=p.GEOM_SPHERE, radius=dims[0])
        elif geom in (p.GEOM_CYLINDER, p.GEOM_CAPSULE):
            kwargs.update(shapeType=geom, length=dims[0], radius=dims[1])
        elif geom == p.GEOM_PLANE:
            kwargs.update(shapeType=p.GEOM_BOX, halfExtents=[_PLANE_HALF_EXTENT, _PLANE_HALF_EXTENT, 0.001])
            offset = (0.0, 0.0, -0.001)
        elif geom == p.GEOM_MESH:
            lo, hi = mesh_bounds(fname.decode() if isinstance(fname, bytes) else str(fname))
            scale = np.asarray(dims[:3])
            lo_s, hi_s = np.minimum(np.multiply(lo, scale), np.multiply(hi, scale)), \
                np.maximum(np.multiply(lo, scale), np.multiply(hi, scale))
            half = np.maximum((hi_s - lo_s) / 2, 1e-3)
            kwargs.update(shapeType=p.GEOM_BOX, halfExtents=half.tolist())
            offset = tuple(((hi_s + lo_s) / 2).tolist())
        else:
            logger.warning("proxy renderer: body %d link %d has unsupported geometry %d; skipped",
                           body, link, geom)
            return None
        shape = p.createVisualShape(visualFramePosition=offset, **kwargs)
        proxy = p.createMultiBody(baseMass=0.0, baseCollisionShapeIndex=-1, baseVisualShapeIndex=shape,
                                  physicsClientId=self.client)
        return _ProxyPart(body, link, local_pos, local_orn, proxy)  # type: ignore[arg-type]

    def _link_frames(self) -> dict[tuple[int, int], tuple]:
        frames: dict[tuple[int, int], tuple] = {}
        for body in {part.body for part in self.parts}:
            frames[(body, -1)] = p.getBasePositionAndOrientation(body, physicsClientId=self.source)
            links = sorted({pt.link for pt in self.parts if pt.body == body and pt.link >= 0})
            if links:
                states = p.getLinkStates(body, links, computeForwardKinematics=1,
                                         physicsClientId=self.source)
                for link, st in zip(links, states, strict=False):
                    frames[(body, link)] = (st[4], st[5])
        return frames

    def sync(self) -> None:
        """Copy every mirrored link pose (world frame) from the physics client."""
        frames = self._link_frames()
        for part in self.parts:
            pos, orn = frames[(part.body, part.link)]
            if part.link == -1:
                # the base's visual frame is relative to its inertial frame in pybullet
                com = p.getDynamicsInfo(part.body, -1, physicsClientId=self.source)
                inv_pos, inv_orn = p.invertTransform(com[3], com[4])
                pos, orn = p.multiplyTransforms(pos, orn, inv_pos, inv_orn)
            wpos, worn = p.multiplyTransforms(pos, orn, part.local_pos, part.local_orn)
            p.resetBasePositionAndOrientation(part.proxy, wpos, worn, physicsClientId=self.client)

    def sync_colors(self) -> None:
        """Copy the current colours (e.g. after colour randomisation) into the proxies."""
        cache: dict[int, list] = {}
        for part in self.parts:
            if part.body not in cache:
                cache[part.body] = p.getVisualShapeData(part.body, physicsClientId=self.source)
            rgba = cache[part.body][part.shape_index][7]
            p.changeVisualShape(part.proxy, -1, rgbaColor=list(rgba), physicsClientId=self.client)

    def render(self, camera: Camera, lighting: Lighting | None = None) -> np.ndarray:
        self.sync()
        return capture(self.client, camera, lighting)

    def close(self) -> None:
        if p.isConnected(self.client):
            p.disconnect(self.client)


def rotvec_matrix(rotvec: np.ndarray) -> np.ndarray:
    """Rotation matrix (3, 3) of an axis-angle vector (rad), Rodrigues' formula."""
    x, y, z = (float(c) for c in rotvec)
    return kk.rotvec_matrix(x, y, z)


def quat_from_matrix(rot: np.ndarray) -> np.ndarray:
    """Quaternion (x, y, z, w) of a rotation matrix (3, 3)."""
    w = np.sqrt(max(0.0, 1.0 + rot[0, 0] + rot[1, 1] + rot[2, 2])) / 2.0
    x = np.copysign(np.sqrt(max(0.0, 1.0 + rot[0, 0] - rot[1, 1] - rot[2, 2])) / 2.0, rot[2, 1] - rot[1, 2])
    y = np.copysign(np.sqrt(max(0.0, 1.0 - rot[0, 0] + rot[1, 1] - rot[2, 2])) / 2.0, rot[0, 2] - rot[2, 0])
    z = np.copysign(np.sqrt(max(0.0, 1.0 - rot[0, 0] - rot[1, 1] + rot[2, 2])) / 2.0, rot[1, 0] - rot[0, 1])
    return np.array([x, y, z, w])


def link_camera(client: int, body: int, link: int, cfg: Any, size: int) -> Camera:
    """A camera fixed to ``link`` of ``body`` at ``cfg.xyz``/``cfg.rpy`` (link frame), looking
    along its local +z with local -y up; optics from ``cfg`` (fov_deg, near, far), square ``size``."""
    state = p.getLinkState(body, link, computeForwardKinematics=1, physicsClientId=client)
    pos, orn = p.multiplyTransforms(state[4], state[5], cfg.xyz, p.getQuaternionFromEuler(cfg.rpy))
    rot = np.array(p.getMatrixFromQuaternion(orn)).reshape(3, 3)
    eye = np.asarray(pos)
    return Camera(tuple(eye), tuple(eye + rot[:, 2]), tuple(-rot[:, 1]), cfg.fov_deg, cfg.near, cfg.far, size, size)
