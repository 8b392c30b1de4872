"""Scene specs: typed, frozen dataclasses read strictly from YAML (schema: ``scenes/README.md``).

``load_scene("tabletop_push")`` finds a bundled scene in the repo's ``scenes/`` folder;
any other argument is a path. Every error names the file and the key path, e.g.
``scenes/x.yaml: objects[2].mass: must be > 0``; unknown keys are errors.

Frames and units: object, table and camera poses in the **world** frame (m, rad; rpy =
URDF fixed-axis roll-pitch-yaw); the robot base pose in the world frame; everything in the
``safety:`` block in the robot **base** frame. Masses kg, times in policy steps unless named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from safetwin.safety.runio import ConfigError, inside, load_yaml
from safetwin.safety.spec import Fields, Obstacle, SafetySpec, SpecError, parse_safety

from .assets.robots import BUNDLED, GripperData, RobotData, load_robot_data
from .assets.scene_blocks import (
    CameraConfig,
    ControlConfig,
    RandomizationConfig,
    SuccessCondition,
    TaskConfig,
    WristCameraConfig,
    parse_camera,
    parse_control,
    parse_randomization,
    parse_task,
    parse_wrist_camera,
)
from .assets.urdf import UrdfError, UrdfModel, parse_urdf, rpy_matrix

SCENES_DIR = Path(__file__).resolve().parent.parent / "scenes"
ROLES = ("target", "fragile", "obstacle", "goal_zone")
SHAPES = ("box", "sphere", "cylinder", "mesh")

__all__ = ["Pose", "JointConfig", "RobotConfig", "Shape", "SceneObject", "SuccessCondition", "TaskConfig",
           "CameraConfig", "WristCameraConfig", "RandomizationConfig", "ControlConfig", "Scene",
           "load_scene", "scene_path", "SCENES_DIR"]


@dataclass(frozen=True)
class Pose:
    """A pose: position ``xyz`` (m) and fixed-axis roll-pitch-yaw ``rpy`` (rad)."""

    xyz: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rpy: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def matrix(self) -> np.ndarray:
        """Homogeneous transform (4, 4) from this pose's frame to its parent frame."""
        out = np.eye(4)
        out[:3, :3] = rpy_matrix(self.rpy)
        out[:3, 3] = self.xyz
        return out


@dataclass(frozen=True)
class JointConfig:
    """One controlled joint: ``home`` (rad), hardware wiring (None on simulation-only robots),
    and the URDF limits: position lower/upper (rad), velocity (rad/s), effort (N m)."""

    name: str
    home: float
    servo: str | None
    bus_id: int | None
    lower: float
    upper: float
    velocity: float
    effort: float


@dataclass(frozen=True)
class RobotConfig:
    """The scene's robot. ``urdf``: resolved file; ``name``: bundled name or the URDF stem;
    ``base``: base pose in the world frame; ``joints``: controlled joints in order;
    ``ee_link``: end-effector link; ``data``: the bundled robot data (proxies, servos) or None."""

    name: str
    urdf: Path
    base: Pose
    joints: tuple[JointConfig, ...]
    gripper: GripperData | None
    ee_link: str
    data: RobotData | None = field(default=None, compare=False, repr=False)

    @property
    def joint_names(self) -> tuple[str, ...]:
        return tuple(j.name for j in self.joints)

    @property
    def home(self) -> np.ndarray:
        """Home joint positions (n,) rad."""
        return np.array([j.home for j in self.joints])

    def model(self) -> UrdfModel:
        return self.data.model() if self.data is not None else parse_urdf(self.urdf)


@dataclass(frozen=True)
class Shape:
    """Object geometry. kind ``box``: size = full edges (x, y, z) m; ``sphere``: (radius,);
    ``cylinder``: (radius, height) along local z; ``mesh``: visual ``mesh`` and ``collision``
    files (.obj), size = scale (x, y, z)."""

    kind: str
    size: tuple[float, ...]
    mesh: Path | None = None
    collision: Path | None = None

    def half_extents(self) -> np.ndarray:
        """Half extents (3,) m of the shape's own bounding box (local frame)."""
        if self.kind == "box":
            return np.array(self.size) / 2.0
        if self.kind == "sphere":
            return np.full(3, self.size[0])
        if self.kind == "cylinder":
            return np.array([self.size[0], self.size[0], self.size[1] / 2.0])
        from .assets.fit_proxies import read_obj_vertices

        verts = read_obj_vertices(self.collision or self.mesh) * np.array(self.size)  # type: ignore[arg-type]
        return np.abs(verts).max(axis=0)


@dataclass(frozen=True)
class SceneObject:
    """A body of the scene. pose: world frame (shape centre); mass kg (0 = static);
    friction (lateral, >= 0); restitution [0, 1]; rgba in [0, 1]; role one of ROLES
    (``table`` for the table); color_name/label fill an instruction's {color}/{object}."""

    name: str
    role: str
    shape: Shape
    pose: Pose
    mass: float
    friction: float
    restitution: float
    rgba: tuple[float, float, float, float]
    color_name: str
    label: str

    @property
    def collides(self) -> bool:
        """goal_zone objects are visual-only markers: no collision shape."""
        return self.role != "goal_zone"


@dataclass(frozen=True)
class Scene:
    """A parsed scene. ``safety.obstacles`` hold the fragile/obstacle objects (base frame);
    ``sha256`` is ``safety.sha256()``."""

    name: str
    path: Path
    robot: RobotConfig
    table: SceneObject
    objects: tuple[SceneObject, ...]
    task: TaskConfig
    front_camera: CameraConfig
    wrist_camera: WristCameraConfig | None
    safety: SafetySpec
    randomization: RandomizationConfig
    control: ControlConfig
    sha256: str

    def object(self, name: str) -> SceneObject:
        for obj in self.objects:
            if obj.name == name:
                return obj
        raise KeyError(f"{self.path}: no object named {name!r}")

    def by_role(self, role: str) -> tuple[SceneObject, ...]:
        return tuple(o for o in self.objects if o.role == role)

    def world_to_base(self, p_world: np.ndarray) -> np.ndarray:
        """Point (3,) m from the world frame into the robot base frame."""
        t = self.robot.base.matrix()
        return t[:3, :3].T @ (np.asarray(p_world, float) - t[:3, 3])


def scene_path(name_or_path: str | Path) -> Path:
    """Resolve a bundled scene name (``scenes/<name>.yaml`` or ``scenes/<name>/scene.yaml``) or a path."""
    text = str(name_or_path)
    if "/" not in text and not text.endswith((".yaml", ".yml")):
        for cand in (SCENES_DIR / f"{text}.yaml", SCENES_DIR / text / "scene.yaml"):
            if cand.is_file():
                return cand
        bundled = sorted(p.stem for p in SCENES_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no bundled scene {text!r} in {SCENES_DIR}; bundled: {bundled}")
    return Path(text)


def _inside(scene_dir: Path, rel: str, where: str, key: str) -> Path:
    try:
        return inside(scene_dir, rel, key)
    except ConfigError as exc:
        raise SpecError(where, key, f"must stay inside the scene folder: {exc}") from exc


def _pose(f: Fields, name: str) -> Pose:
    p = f.sub(name, {})
    pose = Pose(p.vector("xyz", 3, (0.0, 0.0, 0.0)), p.vector("rpy", 3, (0.0, 0.0, 0.0)))  # type: ignore[arg-type]
    p.done()
    return pose


def _shape(f: Fields, scene_dir: Path) -> Shape:
    kind = f.string("type", choices=SHAPES)
    if kind == "box":
        size = f.vector("size", 3)
        for i, v in enumerate(size):
            if v <= 0:
                raise f.error(f"size[{i}]", f"must be > 0, got {v:g}")
        shape = Shape(kind, size)
    elif kind == "sphere":
        shape = Shape(kind, (f.number("radius", gt=0),))
    elif kind == "cylinder":
        shape = Shape(kind, (f.number("radius", gt=0), f.number("height", gt=0)))
    else:
        mesh = _inside(scene_dir, f.string("file"), f.where, f.key("file"))
        col = _inside(scene_dir, f.string("collision", f.data.get("file")), f.where, f.key("collision"))
        for key, p in (("file", mesh), ("collision", col)):
            if not p.is_file():
                raise f.error(key, f"no such file {p}")
        shape = Shape(kind, f.vector("scale", 3, (1.0, 1.0, 1.0)), mesh, col)
    f.done()
    return shape


def _rgba(f: Fields) -> tuple[float, float, float, float]:
    rgba = f.vector("rgba", 4, (0.5, 0.5, 0.5, 1.0))
    if not all(0.0 <= v <= 1.0 for v in rgba):
        raise f.error("rgba", f"components must lie in [0, 1], got {list(rgba)}")
    return rgba  # type: ignore[return-value]


def _object(data: Any, where: str, path: str, scene_dir: Path, role: str | None = None) -> SceneObject:
    f = Fields(data, where, path)
    name = f.string("name", "table" if role == "table" else ...)
    role = role or f.string("role", choices=ROLES)
    if role in ("target", "fragile"):
        mass = f.number("mass", gt=0.0)
    else:
        mass = f.number("mass", 0.0, ge=0.0)
    if role == "goal_zone" and mass != 0:
        raise f.error("mass", "goal_zone objects are visual-only: mass must be 0")
    if role == "table" and mass != 0:
        raise f.error("mass", "the table is static: mass must be 0")
    obj = SceneObject(
        name=name, role=role, shape=_shape(f.sub("shape"), scene_dir), pose=_pose(f, "pose"), mass=mass,
        friction=f.number("friction", 0.5, ge=0.0), restitution=f.number("restitution", 0.0, ge=0.0, le=1.0),
        rgba=_rgba(f), color_name=f.string("color_name", "grey"), label=f.string("label", name.replace("_", " ")))
    f.done()
    return obj


def _joint(data: Any, f_where: str, path: str, model: UrdfModel, defaults: dict[str, Any]) -> JointConfig:
    f = Fields(data, f_where, path)
    name = f.string("name")
    uj = model.joints.get(name)
    if uj is None or uj.type == "fixed":
        raise f.error("name", f"{name!r} is not a movable joint of {model.path.name}")
    hw = defaults.get(name)
    home = f.number("home", hw.home if hw else ...)
    if not uj.lower <= home <= uj.upper:
        raise f.error("home", f"{home:g} rad outside the URDF limits [{uj.lower:g}, {uj.upper:g}]")
    d_servo, d_bus = (hw.servo, hw.bus_id) if hw else (None, None)
    servo = None if f.raw("servo", d_servo) is None else f.string("servo", d_servo)
    bus_id = None if f.raw("bus_id", d_bus) is None else f.integer("bus_id", d_bus, ge=0)
    f.done()
    return JointConfig(name, home, servo, bus_id, uj.lower, uj.upper, uj.velocity, uj.effort)


def _robot(f: Fields, scene_dir: Path) -> RobotConfig:
    urdf_spec = f.string("urdf")
    data = load_robot_data(urdf_spec) if urdf_spec in BUNDLED else None
    urdf = data.urdf if data else _inside(scene_dir, urdf_spec, f.where, f.key("urdf"))
    try:
        model = data.model() if data else parse_urdf(urdf)
    except UrdfError as exc:
        raise f.error("urdf", str(exc)) from exc
    defaults = {j.name: j for j in data.joints} if data else {}
    if f.has("joints") or not data:
        items = f.items("joints")
    else:
        items = [(f"{f.key('joints')}[{i}]", {"name": n}) for i, n in enumerate(defaults)]
    joints = tuple(_joint(v, f.where, p, model, defaults) for p, v in items)
    names = [j.name for j in joints]
    if not joints or len(set(names)) != len(names):
        raise f.error("joints", f"must list distinct joints, got {names}")
    ee_link = f.string("ee_link", data.ee_link if data else ...)
    if ee_link not in model.collisions:
        raise f.error("ee_link", f"{ee_link!r} is not a link of {model.path.name}")
    chain = [j.name for j in model.chain(ee_link) if j.name in names]
    if chain != names:
        raise f.error("joints", f"{names} must all lie, in this order, on the chain from {model.root!r} to "
                                f"{ee_link!r} (found {chain})")
    gripper = _gripper(f, model, data)
    robot = RobotConfig(data.name if data else urdf.stem, urdf, _pose(f, "base"), joints, gripper, ee_link, data)
    f.done()
    return robot


def _gripper(f: Fields, model: UrdfModel, data: RobotData | None) -> GripperData | None:
    default = data.gripper if data else None
    if not f.has("gripper"):
        f.raw("gripper", None)
        return default
    g = f.sub("gripper")
    joints = g.raw("joints", list(default.joints) if default else ...)
    if not isinstance(joints, list) or not joints or any(j not in model.joints for j in joints):
        raise g.error("joints", f"must list joints of {model.path.name}, got {joints!r}")
    first = model.joints[joints[0]]
    pos = {}
    for key in ("open", "closed"):
        value = pos[key] = g.number(key, getattr(default, key) if default else ...)
        if not first.lower - 1e-9 <= value <= first.upper + 1e-9:
            raise g.error(key, f"{value:g} outside the limits [{first.lower:g}, {first.upper:g}] of {first.name}")
    d_servo, d_bus = (default.servo, default.bus_id) if default else (None, None)
    servo = None if g.raw("servo", d_servo) is None else g.string("servo", d_servo)
    bus_id = None if g.raw("bus_id", d_bus) is None else g.integer("bus_id", d_bus, ge=0)
    out = GripperData(tuple(joints), pos["open"], pos["closed"], servo, bus_id)
    g.done()
    return out


def obstacle_of(obj: SceneObject, world_to_base: np.ndarray) -> Obstacle:
    """The object's AABB (centre, half extents) and bounding sphere in the base frame."""
    t = world_to_base @ obj.pose.matrix()
    local = obj.shape.half_extents()
    half = np.abs(t[:3, :3]) @ local
    return Obstacle(name=obj.name, role=obj.role, center=tuple(float(v) for v in t[:3, 3]),  # type: ignore[arg-type]
                    half_extents=tuple(float(v) for v in half),  # type: ignore[arg-type]
                    radius=float(np.linalg.norm(local)) if obj.shape.kind in ("box", "mesh")
                    else float(np.sqrt(local[0] ** 2 + (local[2] ** 2 if obj.shape.kind == "cylinder" else 0))))


def _check_limits(spec: SafetySpec, robot: RobotConfig, where: str) -> None:
    for j, limit in zip(robot.joints, spec.joints, strict=True):
        key = f"safety.joint_limits.{j.name}"
        tol = 1e-9
        if limit.lower < j.lower - tol or limit.upper > j.upper + tol:
            raise SpecError(where, f"{key}.position", f"[{limit.lower:g}, {limit.upper:g}] exceeds the URDF "
                                                      f"limits [{j.lower:g}, {j.upper:g}]")
        if j.velocity > 0 and limit.velocity > j.velocity + tol:
            raise SpecError(where, f"{key}.velocity", f"{limit.velocity:g} exceeds the URDF limit {j.velocity:g}")
        if not limit.lower <= j.home <= limit.upper:
            raise SpecError(where, f"robot.joints.{j.name}.home", f"home {j.home:g} outside the safety limits")


def load_scene(name_or_path: str | Path) -> Scene:
    """Load and validate a scene: a bundled name (``reach_avoid``, ``tabletop_push``) or a path."""
    path = scene_path(name_or_path)
    where, scene_dir = str(path), path.resolve().parent
    f = Fields(load_yaml(path), where, "")
    name = f.string("name", path.stem if path.name != "scene.yaml" else path.parent.name)
    robot = _robot(f.sub("robot"), scene_dir)
    table = _object(f.raw("table"), where, "table", scene_dir, role="table")
    objs = tuple(_object(v, where, p, scene_dir) for p, v in f.items("objects"))
    by_name: dict[str, SceneObject] = {}
    for i, obj in enumerate(objs):
        if obj.name in by_name or obj.name == table.name:
            raise SpecError(where, f"objects[{i}].name", f"duplicate object name {obj.name!r}")
        by_name[obj.name] = obj
    task = parse_task(f.sub("task"), by_name)
    cams = f.sub("cameras")
    front = parse_camera(cams.sub("front"))
    wrist = parse_wrist_camera(cams.sub("wrist"), robot.model().links) if cams.has("wrist") else None
    cams.done()
    spec = parse_safety(f.raw("safety"), where, "safety", joint_order=robot.joint_names)
    _check_limits(spec, robot, where)
    base_inv = np.linalg.inv(robot.base.matrix())
    spec = spec.with_obstacles([obstacle_of(o, base_inv) for o in objs if o.role in ("fragile", "obstacle")])
    scene = Scene(name=name, path=path, robot=robot, table=table, objects=objs, task=task, front_camera=front,
                  wrist_camera=wrist, safety=spec, randomization=parse_randomization(f.sub("randomization", {})),
                  control=parse_control(f.sub("control", {})), sha256=spec.sha256())
    f.done()
    return scene
