"""The bridge between captures and twin scenes (schema: ``scenes/README.md``, parser
``safetwin.twin.scene``): the template scene a capture starts from, the synthetic world rendered
from it, and the captured ``scene.yaml`` written in exactly the bundled scenes' schema.

Frames: the reconstruction lives in the robot **base** frame; scene files hold object and table
poses in the **world** frame, related by the template's ``robot.base`` pose.
"""

from __future__ import annotations

import copy
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from safetwin.safety.runio import atomic_write_json, atomic_write_text, load_yaml

from ..scene import Scene, load_scene, scene_path
from .export import export_object
from .formats import CaptureError
from .objects import ObjectModel
from .reconstruct import Reconstruction
from .report import match_objects
from .synthetic import Primitive, SyntheticWorld, place_board

logger = logging.getLogger(__name__)

PHYSICAL = ("target", "fragile", "obstacle")
"""Roles of objects a camera can see (goal zones are visual-only markers)."""

_COLOR_NAMES = {"red": (0.85, 0.1, 0.1), "green": (0.1, 0.75, 0.2), "blue": (0.1, 0.2, 0.85),
                "yellow": (0.9, 0.85, 0.1), "orange": (0.95, 0.5, 0.1), "white": (0.95, 0.95, 0.95),
                "black": (0.05, 0.05, 0.05), "grey": (0.5, 0.5, 0.5), "brown": (0.55, 0.4, 0.25)}


@dataclass
class Template:
    """A template scene: the parsed ``scene``, its raw YAML ``doc`` and ``T_world_base`` (4x4)."""

    scene: Scene
    doc: dict[str, Any]
    T_world_base: np.ndarray

    def to_base(self, xyz: np.ndarray, yaw: float) -> tuple[np.ndarray, float]:
        t = np.linalg.inv(self.T_world_base)
        return t[:3, :3] @ xyz + t[:3, 3], yaw - _yaw_of(self.T_world_base)

    def to_world(self, xyz: np.ndarray, yaw: float) -> tuple[np.ndarray, float]:
        t = self.T_world_base
        return t[:3, :3] @ xyz + t[:3, 3], yaw + _yaw_of(t)


def _yaw_of(t: np.ndarray) -> float:
    return float(np.arctan2(t[1, 0], t[0, 0]))


def load_template(name_or_path: str) -> Template:
    """Parse the template scene (bundled name or path); its robot base must be upright."""
    scene = load_scene(name_or_path)
    doc = load_yaml(scene_path(name_or_path))
    t = scene.robot.base.matrix()
    if abs(t[2, 2] - 1.0) > 1e-6:
        raise CaptureError(f"{scene.path}: robot.base must be upright (roll = pitch = 0) for a capture")
    return Template(scene=scene, doc=doc, T_world_base=t)


def _primitive(obj, template: Template) -> Primitive:
    xyz, yaw = template.to_base(np.array(obj.pose.xyz), obj.pose.rpy[2])
    if abs(obj.pose.rpy[0]) > 1e-6 or abs(obj.pose.rpy[1]) > 1e-6:
        raise CaptureError(f"{template.scene.path}: object {obj.name!r} is not upright; the synthetic "
                           f"capture renders upright objects only")
    kind = obj.shape.kind
    extra = {}
    if kind == "mesh":
        extra = {"mesh": str(obj.shape.mesh), "mesh_extents": tuple(2 * obj.shape.half_extents())}
    rgba = (*obj.rgba[:3], 1.0)
    return Primitive(obj.name, kind, tuple(obj.shape.size), tuple(xyz), yaw, rgba, **extra)


def robot_spheres(template: Template, q: Any = None, grow: float = 0.0) -> list[tuple[tuple[float, ...], float]]:
    """The arm's collision spheres (centre m, radius m; base frame) at joint positions ``q``
    (rad; default: home), radii grown by ``grow`` (m)."""
    from ..kinematics import Kinematics

    kin = Kinematics.for_scene(template.scene)
    q = template.scene.robot.home if q is None or len(q) == 0 else np.asarray(q, float)
    if q.shape != template.scene.robot.home.shape:
        raise CaptureError(f"robot_q must hold {len(template.scene.robot.home)} joint positions "
                           f"{template.scene.robot.joint_names}, got {len(q)}")
    centers, radii, _ = kin.spheres(q)
    return [(tuple(float(v) for v in c), float(r) + grow) for c, r in zip(centers, radii, strict=True)]


def synthetic_world(template: Template, with_robot: bool = True) -> SyntheticWorld:
    """The template's table and physical objects in the robot base frame, a board spot, and the
    arm at home as its collision spheres."""
    table = _primitive(template.scene.table, template)
    objects = [_primitive(o, template) for o in template.scene.objects if o.role in PHYSICAL]
    world = SyntheticWorld(table=table, objects=objects, floor_z=table.position[2] - 0.7,
                           robot_spheres=robot_spheres(template) if with_robot else [])
    world.board_xy = place_board(world)
    return world


def _color_name(rgba: tuple[float, ...]) -> str:
    return min(_COLOR_NAMES, key=lambda n: float(np.linalg.norm(np.subtract(_COLOR_NAMES[n], rgba[:3]))))


def assign_identities(objects: list[ObjectModel], template: Template,
                      roles: dict[str, str]) -> list[dict[str, Any]]:
    """Names, roles and labels: objects matched by position to the template's physical objects
    inherit theirs; others become ``object_<i>`` with role obstacle. ``roles`` overrides by name:
    ``<name>=<role>`` sets a role, ``<name>=<template object>`` takes that object's identity."""
    tmpl = [(i, o) for i, o in enumerate(template.doc.get("objects", [])) if o.get("role") in PHYSICAL]
    centers = [template.to_base(np.array(o.get("pose", {}).get("xyz", [0, 0, 0]), float), 0.0)[0]
               for _, o in tmpl]
    pairs = dict(match_objects(np.array([o.center for o in objects]).reshape(-1, 3),
                               np.array(centers).reshape(-1, 3), max_distance=0.1))
    out = []
    for k, obj in enumerate(objects):
        if k in pairs:
            src = copy.deepcopy(tmpl[pairs[k]][1])
        else:
            src = {"name": f"object_{k}", "role": "obstacle", "color_name": _color_name(obj.rgba),
                   "label": "object"}
        out.append(src)
    by_name = {o["name"]: o for _, o in tmpl}
    found = [src["name"] for src in out]
    unknown = sorted(set(roles) - set(found))
    if unknown:
        raise CaptureError(f"roles: no captured object named {unknown}; found {found}")
    for src in out:
        value = roles.get(src["name"])
        if value in PHYSICAL:
            src["role"] = value
        elif value in by_name:
            src.clear()
            src.update(copy.deepcopy(by_name[value]))
        elif value is not None:
            raise CaptureError(f"roles: {src['name']}={value}: {value!r} is neither a role {PHYSICAL} nor an "
                               f"object of {template.scene.path} ({sorted(by_name)})")
    return out


def _object_entry(src: dict[str, Any], obj: ObjectModel, files: dict[str, Any], template: Template) -> dict:
    xyz, yaw = template.to_world(obj.center, obj.yaw)
    static = src.get("mass", None) == 0 and src["role"] == "obstacle"
    entry = {"name": src["name"], "role": src["role"],
             "shape": {"type": "mesh", "file": files["mesh"], "collision": files["collision_mesh"]},
             "pose": {"xyz": [round(float(v), 5) for v in xyz], "rpy": [0.0, 0.0, round(float(yaw), 5)]},
             "mass": 0.0 if static else round(obj.mass, 5), "friction": round(obj.friction, 4),
             "restitution": round(obj.restitution, 4), "rgba": list(obj.rgba)}
    for key in ("color_name", "label"):
        if key in src:
            entry[key] = src[key]
    return entry


def _table_entry(rec: Reconstruction, template: Template) -> dict[str, Any]:
    src = copy.deepcopy(template.doc["table"])
    thickness = float(template.scene.table.shape.half_extents()[2] * 2)
    top = rec.plane.center.copy()
    xyz, yaw = template.to_world(top - np.array([0.0, 0.0, thickness / 2]), rec.plane.yaw)
    src["shape"] = {"type": "box", "size": [round(float(rec.plane.size[0]), 4),
                                            round(float(rec.plane.size[1]), 4), thickness]}
    src["pose"] = {"xyz": [round(float(v), 5) for v in xyz], "rpy": [0.0, 0.0, round(yaw, 5)]}
    return src


def write_scene(folder: Path, cfg: Any, template: Template, rec: Reconstruction) -> dict[str, Any]:
    """Write meshes/, urdf/, scene.yaml and physical_params.json into ``folder`` and validate the
    scene with the twin's own parser. Returns the report's table/objects sections."""
    sources = assign_identities(rec.objects, template, cfg.role_overrides())
    doc = copy.deepcopy(template.doc)
    doc["name"] = cfg.name
    _copy_robot(doc, template, folder)
    doc["table"] = _table_entry(rec, template)
    entries, report_objects, params = [], [], {}
    for src, obj in zip(sources, rec.objects, strict=True):
        obj.name = src["name"]
        files = export_object(obj, folder)
        entries.append(_object_entry(src, obj, files, template))
        report_objects.append({"name": obj.name, "role": src["role"], "center": obj.center.tolist(),
                               "extents": obj.extents.tolist(), "yaw": obj.yaw, "volume_m3": obj.volume,
                               "mass": obj.mass, "watertight": obj.watertight, "points": obj.n_points,
                               "convex_parts": files["convex_parts"], "sources": dict(obj.sources)})
        params[obj.name] = {k: {"value": getattr(obj, k), "source": obj.sources[k]}
                            for k in ("mass", "friction", "restitution")}
    entries += [copy.deepcopy(o) for o in template.doc.get("objects", []) if o.get("role") == "goal_zone"]
    doc["objects"] = entries
    _check_task(doc, template)
    write_scene_yaml(folder / "scene.yaml", doc)
    atomic_write_json(folder / "physical_params.json", params)
    return {"table": {"top_z": float(rec.plane.height), "size": rec.plane.size.tolist(), "yaw": rec.plane.yaw},
            "objects": report_objects}


def write_scene_yaml(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` and check it with ``load_scene``; a scene the twin rejects is an error."""
    header = ("# Captured by safetwin capture (twin/capture). Object masses, friction and restitution are\n"
              "# priors until system identification replaces them: see physical_params.json.\n")
    atomic_write_text(path, header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=110))
    try:
        load_scene(path)
    except (ValueError, FileNotFoundError) as exc:
        raise CaptureError(f"{path}: the captured scene does not validate: {exc}") from exc


def _copy_robot(doc: dict[str, Any], template: Template, folder: Path) -> None:
    """A robot given by URDF path (not bundled) is copied into ``urdf/`` so paths stay inside."""
    urdf = str(doc["robot"]["urdf"])
    if template.scene.robot.data is None:
        dst = folder / "urdf" / Path(urdf).name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template.scene.robot.urdf, dst)
        doc["robot"]["urdf"] = f"urdf/{dst.name}"


def _check_task(doc: dict[str, Any], template: Template) -> None:
    names = {o["name"] for o in doc["objects"]}
    missing = [t for t in doc.get("task", {}).get("targets", []) if t not in names]
    if missing:
        raise CaptureError(f"task targets {missing} of template {template.scene.path} were not found in the "
                           f"capture (objects found: {sorted(names)}); name them with roles, e.g. "
                           f"--roles object_0=target, or fix the template")


def apply_identification(scene_dir: Path, object_name: str, result: Any, sigmas: float = 2.0) -> None:
    """Write identified parameters into a captured scene.

    ``result`` is a :class:`safetwin.twin.capture.sysid.Identified`. The object's ``mass`` (kg)
    and ``friction`` take the estimates; the ``randomization`` ranges of friction, mass_scale
    (relative to the new nominal mass) and joint_damping are centred on the estimates with a
    half width of ``sigmas`` standard deviations (at least 5 %); ``physical_params.json`` records
    value, std and source ``identified``. The scene is re-validated before anything is replaced.
    """
    path = scene_dir / "scene.yaml"
    doc = load_yaml(path)
    entry = next((o for o in doc.get("objects", []) if o.get("name") == object_name), None)
    if entry is None:
        raise CaptureError(f"{path}: no object named {object_name!r}")
    v = result.values
    entry["mass"], entry["friction"] = round(v["mass"], 5), round(v["friction"], 4)
    rnd = doc.setdefault("randomization", {})
    lo, hi = result.randomization_range("friction", sigmas)
    rnd["friction"] = [round(lo, 4), round(hi, 4)]
    lo, hi = result.randomization_range("mass", sigmas)
    rnd["mass_scale"] = [round(max(lo, 1e-3) / v["mass"], 4), round(hi / v["mass"], 4)]
    lo, hi = result.randomization_range("damping", sigmas)
    rnd["joint_damping"] = [round(lo, 4), round(hi, 4)]
    params_path = scene_dir / "physical_params.json"
    params = load_yaml(params_path) if params_path.is_file() else {}
    obj_params = params.setdefault(object_name, {})
    for key, name in (("mass", "mass"), ("friction", "friction")):
        obj_params[key] = {"value": v[name], "std": result.std[name], "source": "identified"}
    params["joint_damping"] = {"value": v["damping"], "std": result.std["damping"], "source": "identified"}
    write_scene_yaml(path, doc)
    atomic_write_json(params_path, params)
    logger.info("%s: %s identified (%s)", path, object_name, {k: round(x, 4) for k, x in v.items()})
