"""A small, strict URDF reader (``xml.etree``): links, joints, limits and collision primitives.

Only what the twin needs: the kinematic tree (joint origins, axes, types, limits, mimic) and
each link's collision geometry (box, cylinder, sphere, or mesh file). Errors name the file
and the element. Frames: URDF conventions (joint origin in the parent link frame, rpy =
fixed-axis roll-pitch-yaw); units m, rad, rad/s, N m.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

JOINT_TYPES = ("revolute", "continuous", "prismatic", "fixed")


class UrdfError(ValueError):
    """The URDF is malformed or uses something this reader does not support."""


def rpy_matrix(rpy: tuple[float, float, float] | np.ndarray) -> np.ndarray:
    """Rotation matrix (3, 3) of URDF roll-pitch-yaw (rad): R = Rz(yaw) Ry(pitch) Rx(roll)."""
    r, p, y = (float(v) for v in rpy)
    cr, sr, cp, sp, cy, sy = math.cos(r), math.sin(r), math.cos(p), math.sin(p), math.cos(y), math.sin(y)
    return np.array([[cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
                     [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
                     [-sp, cp * sr, cp * cr]])


@dataclass(frozen=True)
class Geometry:
    """One collision element of a link, in the link frame.

    kind: ``box`` (size = full edges x, y, z m), ``cylinder`` (size = radius, length m; axis
    local z), ``sphere`` (size = radius,), ``capsule`` (size = radius, cylinder length) or
    ``mesh`` (``mesh`` = the file path as written, ``size`` = scale x, y, z).
    xyz (m) and rpy (rad): the element's origin in the link frame.
    """

    kind: str
    size: tuple[float, ...]
    xyz: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rpy: tuple[float, float, float] = (0.0, 0.0, 0.0)
    mesh: str | None = None


@dataclass(frozen=True)
class UrdfJoint:
    """A URDF joint. origin xyz (m) / rpy (rad) in the parent link frame; axis in the child frame.

    lower/upper: position limits (rad or m; +-inf for continuous/fixed); velocity (rad/s or
    m/s) and effort (N m or N) limits (0 when absent). mimic: (joint, multiplier, offset).
    """

    name: str
    type: str
    parent: str
    child: str
    xyz: tuple[float, float, float]
    rpy: tuple[float, float, float]
    axis: tuple[float, float, float]
    lower: float
    upper: float
    velocity: float
    effort: float
    mimic: tuple[str, float, float] | None = None


@dataclass(frozen=True)
class UrdfModel:
    """The parsed tree: ``root`` link, ``joints`` by name, ``collisions`` per link name."""

    path: Path
    name: str
    root: str
    joints: dict[str, UrdfJoint]
    collisions: dict[str, tuple[Geometry, ...]]

    @property
    def links(self) -> tuple[str, ...]:
        return tuple(self.collisions)

    def parent_joint(self, link: str) -> UrdfJoint | None:
        """The joint whose child is ``link`` (None for the root)."""
        for joint in self.joints.values():
            if joint.child == link:
                return joint
        return None

    def chain(self, tip: str, base: str | None = None) -> list[UrdfJoint]:
        """Joints from ``base`` (default: the root) down to link ``tip``, in order."""
        base = self.root if base is None else base
        if tip not in self.collisions:
            raise UrdfError(f"{self.path}: no link named {tip!r}; links: {sorted(self.collisions)}")
        out: list[UrdfJoint] = []
        link = tip
        while link != base:
            joint = self.parent_joint(link)
            if joint is None:
                raise UrdfError(f"{self.path}: link {tip!r} is not below link {base!r}")
            out.append(joint)
            link = joint.parent
        return out[::-1]


def _floats(text: str | None, n: int, default: tuple[float, ...], where: str) -> tuple[float, ...]:
    if text is None:
        return default
    try:
        values = tuple(float(v) for v in text.split())
    except ValueError as exc:
        raise UrdfError(f"{where}: not numbers: {text!r}") from exc
    if len(values) != n or not all(math.isfinite(v) for v in values):
        raise UrdfError(f"{where}: expected {n} finite numbers, got {text!r}")
    return values


def _origin(elem: ET.Element, where: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    origin = elem.find("origin")
    if origin is None:
        return (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)
    return (_floats(origin.get("xyz"), 3, (0.0, 0.0, 0.0), f"{where} origin xyz"),
            _floats(origin.get("rpy"), 3, (0.0, 0.0, 0.0), f"{where} origin rpy"))


def _geometry(col: ET.Element, where: str) -> Geometry:
    xyz, rpy = _origin(col, where)
    geom = col.find("geometry")
    shape = geom[0] if geom is not None and len(geom) else None
    if shape is None:
        raise UrdfError(f"{where}: collision without geometry")
    if shape.tag == "box":
        size = _floats(shape.get("size"), 3, (), f"{where} box size")
    elif shape.tag == "cylinder":
        size = (_floats(shape.get("radius"), 1, (), f"{where} radius")[0],
                _floats(shape.get("length"), 1, (), f"{where} length")[0])
    elif shape.tag == "sphere":
        size = _floats(shape.get("radius"), 1, (), f"{where} radius")
    elif shape.tag == "mesh":
        return Geometry("mesh", _floats(shape.get("scale"), 3, (1.0, 1.0, 1.0), f"{where} scale"),
                        xyz, rpy, shape.get("filename", ""))  # type: ignore[arg-type]
    else:
        raise UrdfError(f"{where}: unsupported geometry <{shape.tag}>")
    return Geometry(shape.tag, size, xyz, rpy)  # type: ignore[arg-type]


def _joint(elem: ET.Element, where: str) -> UrdfJoint:
    name, jtype = elem.get("name", ""), elem.get("type", "")
    where = f"{where}: joint {name!r}"
    if jtype not in JOINT_TYPES:
        raise UrdfError(f"{where}: unsupported type {jtype!r} (supported {list(JOINT_TYPES)})")
    parent, child = elem.find("parent"), elem.find("child")
    if parent is None or child is None:
        raise UrdfError(f"{where}: needs <parent> and <child>")
    xyz, rpy = _origin(elem, where)
    axis = np.array(_floats(elem.find("axis").get("xyz") if elem.find("axis") is not None else None,
                            3, (1.0, 0.0, 0.0), f"{where} axis"))
    if jtype != "fixed":
        if np.linalg.norm(axis) < 1e-9:
            raise UrdfError(f"{where}: zero axis")
        axis = axis / np.linalg.norm(axis)
    limit = elem.find("limit")
    lower, upper = -math.inf, math.inf
    velocity = effort = 0.0
    if limit is not None:
        velocity = float(limit.get("velocity", 0.0))
        effort = float(limit.get("effort", 0.0))
        if jtype in ("revolute", "prismatic"):
            lower, upper = float(limit.get("lower", 0.0)), float(limit.get("upper", 0.0))
    elif jtype in ("revolute", "prismatic"):
        raise UrdfError(f"{where}: {jtype} joint without <limit>")
    mimic_el = elem.find("mimic")
    mimic = None if mimic_el is None else (mimic_el.get("joint", ""), float(mimic_el.get("multiplier", 1.0)),
                                           float(mimic_el.get("offset", 0.0)))
    return UrdfJoint(name, jtype, parent.get("link", ""), child.get("link", ""), xyz, rpy,  # type: ignore[arg-type]
                     tuple(float(v) for v in axis), lower, upper, velocity, effort, mimic)  # type: ignore[arg-type]


def parse_urdf(path: str | Path) -> UrdfModel:
    """Parse a URDF file; raise :class:`UrdfError` naming the file on anything malformed."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise UrdfError(f"{path}: cannot read URDF: {exc}") from exc
    if root.tag != "robot":
        raise UrdfError(f"{path}: root element must be <robot>, got <{root.tag}>")
    collisions: dict[str, tuple[Geometry, ...]] = {}
    for link in root.findall("link"):
        name = link.get("name", "")
        collisions[name] = tuple(_geometry(c, f"{path}: link {name!r} collision[{i}]")
                                 for i, c in enumerate(link.findall("collision")))
    joints = {j.name: j for j in (_joint(e, str(path)) for e in root.findall("joint"))}
    children = {j.child for j in joints.values()}
    roots = [name for name in collisions if name not in children]
    if len(roots) != 1:
        raise UrdfError(f"{path}: expected exactly one root link, found {roots}")
    for j in joints.values():
        if j.parent not in collisions or j.child not in collisions:
            raise UrdfError(f"{path}: joint {j.name!r} refers to an unknown link")
    return UrdfModel(path, root.get("name", path.stem), roots[0], joints, collisions)
