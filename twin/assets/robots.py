"""Bundled robot data: URDF location, controlled joints, hardware facts and render proxies.

Each bundled robot has ``<name>.yaml`` next to this file (``vx300s``, ``panda``), read with the
strict :class:`safetwin.safety.spec.Fields` reader, so a typo is an error naming the file and
key. Hardware facts (servo model, bus id, drive direction, datasheet URL) are data there, not
code. Units: rad, m, N m; proxies are in their link frame.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetwin.safety.runio import load_yaml
from safetwin.safety.spec import Fields, SpecError

from .urdf import Geometry, UrdfModel, parse_urdf

HERE = Path(__file__).resolve().parent
BUNDLED = ("vx300s", "panda")
PRIMITIVE_KINDS = ("box", "cylinder", "sphere", "capsule")
_SIZE_LEN = {"box": 3, "cylinder": 2, "sphere": 1, "capsule": 2}


@dataclass(frozen=True)
class ServoInfo:
    """Datasheet facts of one servo model (torque N m and speed rev/min at ``nominal_voltage_v``)."""

    model: str
    datasheet: str
    stall_torque_nm: float
    no_load_speed_rpm: float
    nominal_voltage_v: float
    resolution_ticks: int


@dataclass(frozen=True)
class JointHardware:
    """One controlled joint: home (rad) and, on real hardware, its servo wiring.

    servo/bus_id are None on simulation-only robots. gear_ratio: joint turns per servo turn;
    direction: +1/-1 servo sense; zero_ticks: servo position at joint zero; dual: a shadow
    servo (``shadow_bus_id``) drives the same joint with ``shadow_direction``.
    """

    name: str
    home: float
    servo: str | None = None
    bus_id: int | None = None
    dual: bool = False
    shadow_bus_id: int | None = None
    shadow_direction: int = -1
    gear_ratio: float = 1.0
    direction: int = 1
    zero_ticks: int = 2048


@dataclass(frozen=True)
class GripperData:
    """Gripper: finger joints (the first is the driven one), open/closed finger positions (m)."""

    joints: tuple[str, ...]
    open: float
    closed: float
    servo: str | None = None
    bus_id: int | None = None


@dataclass(frozen=True)
class RobotData:
    """Everything bundled about one robot. ``proxies`` maps link name -> primitives (link frame)."""

    name: str
    urdf: Path
    simulation_only: bool
    base_link: str
    ee_link: str
    reach_m: float
    payload_kg: float
    references: dict[str, str]
    servos: dict[str, ServoInfo]
    joints: tuple[JointHardware, ...]
    gripper: GripperData
    proxies: dict[str, tuple[Geometry, ...]]

    @property
    def joint_names(self) -> tuple[str, ...]:
        return tuple(j.name for j in self.joints)

    def model(self) -> UrdfModel:
        return _parse_cached(self.urdf)

    def link_primitives(self, link: str) -> tuple[Geometry, ...]:
        """Primitive shapes of ``link`` (link frame): the proxies if listed, else the URDF's
        primitive collision shapes. Mesh-only links without proxies give ``()``."""
        if link in self.proxies:
            return self.proxies[link]
        return tuple(g for g in self.model().collisions.get(link, ()) if g.kind != "mesh")


@functools.lru_cache(maxsize=16)
def _parse_cached(path: Path) -> UrdfModel:
    return parse_urdf(path)


def resolve_urdf(spec: str, relative_to: Path) -> Path:
    """``pybullet_data:<rel>`` -> a file in pybullet_data; otherwise ``relative_to / spec``."""
    if spec.startswith("pybullet_data:"):
        import pybullet_data

        return Path(pybullet_data.getDataPath()) / spec.split(":", 1)[1]
    return relative_to / spec


def parse_primitive(data: Any, where: str, path: str) -> Geometry:
    """One ``{kind, size, xyz, rpy}`` primitive (see :class:`Geometry` for sizes)."""
    f = Fields(data, where, path)
    kind = f.string("kind", choices=PRIMITIVE_KINDS)
    size = f.vector("size", _SIZE_LEN[kind])
    if min(size) < 0 or (kind != "capsule" and min(size) <= 0) or size[0] <= 0:
        raise f.error("size", f"must be > 0 (capsule length >= 0), got {list(size)}")
    geom = Geometry(kind, size, f.vector("xyz", 3, (0.0, 0.0, 0.0)),  # type: ignore[arg-type]
                    f.vector("rpy", 3, (0.0, 0.0, 0.0)))  # type: ignore[arg-type]
    f.done()
    return geom


def _bool(f: Fields, name: str, default: bool) -> bool:
    value = f.raw(name, default)
    if not isinstance(value, bool):
        raise f.error(name, f"must be true or false, got {value!r}")
    return value


def _optional_int(f: Fields, name: str) -> int | None:
    return None if f.raw(name, None) is None else f.integer(name, ge=0)


def _joint(data: Any, where: str, path: str) -> JointHardware:
    f = Fields(data, where, path)
    servo = None if f.raw("servo", None) is None else f.string("servo")
    joint = JointHardware(
        name=f.string("name"), home=f.number("home"), servo=servo, bus_id=_optional_int(f, "bus_id"),
        dual=_bool(f, "dual", False), shadow_bus_id=_optional_int(f, "shadow_bus_id"),
        shadow_direction=int(f.number("shadow_direction", -1)), gear_ratio=f.number("gear_ratio", 1.0, gt=0),
        direction=int(f.number("direction", 1)), zero_ticks=f.integer("zero_ticks", 2048, ge=0))
    if joint.direction not in (-1, 1) or joint.shadow_direction not in (-1, 1):
        raise f.error("direction", "direction and shadow_direction must be +1 or -1")
    if joint.dual and joint.shadow_bus_id is None:
        raise f.error("shadow_bus_id", "required when dual is true")
    f.done()
    return joint


def _gripper(f: Fields) -> GripperData:
    names = f.raw("joints")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise f.error("joints", f"must be a non-empty list of joint names, got {names!r}")
    servo = None if f.raw("servo", None) is None else f.string("servo")
    g = GripperData(tuple(names), f.number("open"), f.number("closed"), servo, _optional_int(f, "bus_id"))
    f.done()
    return g


def _servo(model: str, data: Any, where: str, path: str) -> ServoInfo:
    f = Fields(data, where, path)
    s = ServoInfo(model, f.string("datasheet"), f.number("stall_torque_nm", gt=0),
                  f.number("no_load_speed_rpm", gt=0), f.number("nominal_voltage_v", gt=0),
                  f.integer("resolution_ticks", ge=2))
    f.done()
    return s


def parse_robot_data(path: Path) -> RobotData:
    """Read one robot data YAML and check it against its URDF (joints and links exist)."""
    where = str(path)
    f = Fields(load_yaml(path), where, "")
    servos_f = f.sub("servos", {})
    servos = {str(k): _servo(str(k), servos_f.raw(str(k)), where, servos_f.key(str(k))) for k in servos_f.data}
    servos_f.done()
    proxies_f = f.sub("proxies", {})
    proxies = {str(link): tuple(parse_primitive(v, where, p) for p, v in proxies_f.items(str(link)))
               for link in list(proxies_f.data)}
    proxies_f.done()
    refs_f = f.sub("references", {})
    refs = {str(k): refs_f.string(str(k)) for k in list(refs_f.data)}
    refs_f.done()
    data = RobotData(
        name=f.string("name"), urdf=resolve_urdf(f.string("urdf"), path.parent),
        simulation_only=_bool(f, "simulation_only", False), base_link=f.string("base_link"),
        ee_link=f.string("ee_link"), reach_m=f.number("reach_m", gt=0), payload_kg=f.number("payload_kg", ge=0),
        references=refs, servos=servos,
        joints=tuple(_joint(v, where, p) for p, v in f.items("joints")), gripper=_gripper(f.sub("gripper")),
        proxies=proxies)
    f.done()
    _check_against_urdf(data, where)
    return data


def _check_against_urdf(data: RobotData, where: str) -> None:
    model = data.model()
    for i, j in enumerate(data.joints):
        uj = model.joints.get(j.name)
        if uj is None or uj.type == "fixed":
            raise SpecError(where, f"joints[{i}].name", f"{j.name!r} is not a movable joint of {model.path}")
        if not uj.lower <= j.home <= uj.upper:
            raise SpecError(where, f"joints[{i}].home", f"{j.home:g} outside [{uj.lower:g}, {uj.upper:g}]")
        if j.servo is not None and j.servo not in data.servos:
            raise SpecError(where, f"joints[{i}].servo", f"unknown servo {j.servo!r}; listed: {sorted(data.servos)}")
    for name in (*data.gripper.joints, ):
        if name not in model.joints:
            raise SpecError(where, "gripper.joints", f"{name!r} is not a joint of {model.path}")
    for link in (*data.proxies, data.ee_link, data.base_link):
        if link not in model.collisions:
            raise SpecError(where, "ee_link/base_link/proxies", f"{link!r} is not a link of {model.path}")


@functools.lru_cache(maxsize=8)
def load_robot_data(name: str) -> RobotData:
    """The bundled robot ``name`` (one of :data:`BUNDLED`)."""
    if name not in BUNDLED:
        raise ValueError(f"unknown bundled robot {name!r}; bundled: {list(BUNDLED)}")
    return parse_robot_data(HERE / f"{name}.yaml")
