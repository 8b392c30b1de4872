"""The virtual robot: the bundled arm's servo chain on a pseudo-terminal, backed by a plant.

``with VirtualRobot.from_scene("reach_avoid") as vr:`` starts a :class:`BusEmulator` whose
servos (IDs and models from the scene's robot description) are driven by a pybullet twin of
the arm (:class:`PybulletPlant`); ``vr.port`` is the pty slave path that the serial driver
opens exactly like a USB adapter. :meth:`VirtualRobot.kinematic` builds the same bus on a
dependency-free :class:`~emulator.KinematicPlant` for fast tests.

The deploy runner cannot tell this from the real robot except by the port name.
Angles: rad; the plant works in the servo frame (0 rad = tick 2048) and the joint frame of
the twin is the same (sign +1, offset 0) for the bundled arm.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import control_table as ct
from .emulator import KinematicPlant, Plant, ServoChain
from .emulator_port import BusEmulator

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServoSpec:
    """One joint of the virtual arm.

    Attributes:
        joint: joint name.
        id: primary bus ID.
        model: servo model (``control_tables.yaml``).
        secondary_id: second servo of a dual-servo joint, or None.
        home_rad: initial joint value (rad; m for a gripper).
        lower, upper: joint limits in joint units, written to the servo's Min/Max Position
            Limit (EEPROM) at power-on; None keeps the factory limits (full turn).
        scale, offset: joint value = scale * servo angle (rad, 0 at tick 2048) + offset
            (scale = 1, offset = 0 for a revolute joint; m/rad and m for a gripper). A negative
            scale mounts the servo reversed: a hardware fault that the driver's configuration
            does not know about (the startup self-check's scenario A7).
        urdf_joints: the URDF joints this servo moves (default: ``(joint,)``; both fingers for
            a gripper).
    """

    joint: str
    id: int
    model: str
    secondary_id: int | None = None
    home_rad: float = 0.0
    lower: float | None = None
    upper: float | None = None
    scale: float = 1.0
    offset: float = 0.0
    urdf_joints: tuple[str, ...] = ()

    @property
    def ids(self) -> list[int]:
        return [self.id] + ([self.secondary_id] if self.secondary_id is not None else [])

    def to_servo(self, q: float) -> float:
        """Joint value -> servo angle, rad."""
        return (q - self.offset) / self.scale

    def to_joint(self, servo_rad: float) -> float:
        return self.scale * servo_rad + self.offset


def motors_for(servos: Sequence[ServoSpec]) -> list[dict[str, Any]]:
    """``ArmConfig.motors`` entries for a servo chain (names, ids, models, shadow ids and the
    gripper's m-per-rad scale); use it for the real arm too: ``motors_for(servo_specs_from_scene(s))``."""
    return [{"name": s.joint, "id": s.id, "model": s.model,
             **({"secondary_id": s.secondary_id} if s.secondary_id is not None else {}),
             **({"scale": s.scale, "offset_rad": s.offset} if (s.scale, s.offset) != (1.0, 0.0) else {})}
            for s in servos]


class VirtualRobot:
    """A servo chain on a pty, with the emulator's fault-injection API.

    Args:
        servos: the joints.
        plant: physics keyed by servo id (secondaries included).
        period_s: longest emulator sleep between plant steps, s.
    """

    def __init__(self, servos: Sequence[ServoSpec], plant: Plant, period_s: float = 0.002) -> None:
        self.servos = tuple(servos)
        models = {s.id: s.model for s in self.servos}
        models.update({s.secondary_id: s.model for s in self.servos if s.secondary_id is not None})
        self.chain = ServoChain(models, plant)
        self.plant = plant
        for spec in self.servos:
            if spec.lower is not None and spec.upper is not None:
                ticks = sorted(ct.rad_to_ticks(spec.to_servo(v)) for v in (spec.lower, spec.upper))
                for sid in spec.ids:
                    self.chain.servos[sid].set("min_position_limit", ticks[0])
                    self.chain.servos[sid].set("max_position_limit", ticks[1])
        self.emulator = BusEmulator(self.chain, period_s=period_s)

    @classmethod
    def kinematic(cls, servos: Sequence[ServoSpec], **plant_options: Any) -> VirtualRobot:
        """A virtual arm on :class:`KinematicPlant` (no pybullet, no twin)."""
        initial = {s.id: s.to_servo(s.home_rad) for s in servos}
        couple = {s.secondary_id: s.id for s in servos if s.secondary_id is not None}
        initial.update(dict.fromkeys(couple, 0.0))
        return cls(servos, KinematicPlant(initial, couple=couple, **plant_options))

    @classmethod
    def from_scene(cls, scene: Any = "reach_avoid", realtime: bool = True) -> VirtualRobot:
        """The bundled arm of a scene (name, path or ``Scene``) on a pybullet plant."""
        from .emulator_plant import PybulletPlant, servo_specs_from_scene

        specs = servo_specs_from_scene(scene)
        return cls(specs, PybulletPlant.from_scene(scene, specs, realtime=realtime))

    # ------------------------------------------------------------------ lifecycle
    @property
    def port(self) -> str:
        """The pty slave path to give the driver (valid while started)."""
        return self.emulator.port

    def start(self) -> VirtualRobot:
        self.emulator.start()
        return self

    def stop(self) -> None:
        self.emulator.stop()
        close = getattr(self.plant, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> VirtualRobot:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ helpers
    def arm_config(self, **overrides: Any) -> dict[str, Any]:
        """A plain ``ArmConfig`` mapping for this arm (port, motors), with ``overrides`` applied."""
        return {"port": self.port, "motors": motors_for(self.servos), **overrides}

    def ids_of(self, joint: str) -> list[int]:
        for s in self.servos:
            if s.joint == joint:
                return s.ids
        raise KeyError(f"no joint {joint!r}; joints: {[s.joint for s in self.servos]}")

    # ------------------------------------------------------------------ fault injection
    def inject(self, kind: str, count: int = 1, **options: Any) -> None:
        """Fault on the next ``count`` replies: drop, delay, truncate, corrupt, garbage, wrong_id, duplicate."""
        self.emulator.inject(kind, count, **options)

    def set_alarm(self, joint: str, *errors: str) -> None:
        """Hardware alarm (``overload``, ``overheating``, ``input_voltage``, ``electrical_shock``, ...) (C6)."""
        with self.emulator.lock:
            self.chain.set_hardware_error(self.ids_of(joint)[0], *errors)

    def brownout(self, *joints: str) -> None:
        """Servo power dip: the joints' servos (all when none given) reboot (C12)."""
        ids = [i for j in joints for i in self.ids_of(j)]
        with self.emulator.lock:
            self.chain.brownout(*ids)

    def disconnect(self) -> None:
        """Unplug the adapter (C8)."""
        self.emulator.disconnect()

    def servo_register(self, servo_id: int, name: str) -> int:
        """Device-side value of a register (for tests and the deploy audit)."""
        with self.emulator.lock:
            return self.chain.servos[servo_id].get(name)

    def joint_positions(self) -> Mapping[str, float]:
        """The plant's joint values, rad (m for a gripper) (ground truth, not read over the bus)."""
        with self.emulator.lock:
            return {s.joint: s.to_joint(self.plant.state(s.id)[0]) for s in self.servos}
