"""Generate ``vx300s.urdf``: a primitive-shape model of the ViperX 300 6DOF (the ALOHA arm).

Written for SafeTwin from the published specifications (Trossen Robotics / Interbotix
"ViperX 300 6DOF" specification page: reach 750 mm, payload 750 g, joint ranges
waist +-180 deg, shoulder -106..72 deg, elbow -101..92 deg, forearm roll +-180 deg,
wrist angle -107..128 deg, wrist rotate +-180 deg, gripper opening 30..74 mm) and the ROBOTIS
servo datasheets (XM540-W270: stall torque 10.6 N m at 12 V, no-load 30 rev/min;
XM430-W350: stall torque 4.1 N m at 12 V, no-load 46 rev/min). Link masses are estimates
that add up to the published arm weight class (~3.7 kg); inertias are computed from those
masses for the collision primitives (uniform density), with the parallel-axis theorem.

Frames: every link frame sits on its parent joint axis. At q = 0 the upper arm points up
(+z) and the forearm and gripper point forward (+x); the fingers open along +-y.
Units: m, kg, rad, N m, rad/s.

Run ``python -m safetwin.twin.assets.gen_vx300s`` to rewrite the bundled URDF (atomically);
``tests/twin/test_kinematics.py`` checks that the bundled file equals :func:`build_urdf`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from safetwin.safety.runio import atomic_write_text

HERE = Path(__file__).resolve().parent
XM540_SPEED = 30.0 * 2.0 * math.pi / 60.0   # rad/s, no-load at 12 V (ROBOTIS e-manual)
XM430_SPEED = 46.0 * 2.0 * math.pi / 60.0   # rad/s, no-load at 12 V (ROBOTIS e-manual)
XM540_TORQUE = 10.6                          # N m, stall at 12 V
XM430_TORQUE = 4.1                           # N m, stall at 12 V


@dataclass(frozen=True)
class Prim:
    """A collision/visual primitive in its link frame.

    kind: ``box`` (size = full edge lengths x, y, z) or ``cylinder`` (size = radius, length;
    axis along the primitive's local z). xyz (m) and rpy (rad) place it in the link frame.
    """

    kind: str
    size: tuple[float, ...]
    xyz: tuple[float, float, float]
    rpy: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class LinkDef:
    name: str
    mass: float                  # kg
    prims: tuple[Prim, ...]
    rgba: str = "0.15 0.15 0.15 1"


@dataclass(frozen=True)
class JointDef:
    name: str
    kind: str                    # revolute | prismatic | fixed
    parent: str
    child: str
    xyz: tuple[float, float, float]
    axis: tuple[float, float, float] = (0.0, 0.0, 1.0)
    lower: float = 0.0
    upper: float = 0.0
    velocity: float = 0.0
    effort: float = 0.0


_Y90 = (0.0, math.pi / 2.0, 0.0)   # turns a cylinder's z axis onto x

LINKS = (
    LinkDef("base_link", 0.97, (Prim("box", (0.16, 0.14, 0.05), (-0.01, 0.0, 0.025)),
                                Prim("cylinder", (0.045, 0.029), (0.0, 0.0, 0.0645)))),
    LinkDef("shoulder_link", 0.80, (Prim("box", (0.07, 0.11, 0.07), (0.0, 0.0, 0.03)),)),
    LinkDef("upper_arm_link", 0.79, (Prim("box", (0.045, 0.05, 0.30), (0.0, 0.0, 0.15)),
                                     Prim("box", (0.07, 0.05, 0.05), (0.035, 0.0, 0.30)))),
    LinkDef("upper_forearm_link", 0.32, (Prim("cylinder", (0.025, 0.20), (0.10, 0.0, 0.0), _Y90),)),
    LinkDef("lower_forearm_link", 0.41, (Prim("box", (0.12, 0.06, 0.05), (0.05, 0.0, 0.0)),)),
    LinkDef("wrist_link", 0.115, (Prim("box", (0.07, 0.04, 0.04), (0.035, 0.0, 0.0)),)),
    LinkDef("gripper_link", 0.25, (Prim("box", (0.04, 0.06, 0.04), (0.02, 0.0, 0.0)),)),
    LinkDef("ee_arm_link", 0.001, ()),
    LinkDef("gripper_bar_link", 0.034, (Prim("box", (0.01, 0.11, 0.02), (0.005, 0.0, 0.0)),)),
    LinkDef("fingers_link", 0.001, ()),
    LinkDef("left_finger_link", 0.016, (Prim("box", (0.05, 0.012, 0.02), (0.01, 0.006, 0.0)),),
            "0.6 0.6 0.6 1"),
    LinkDef("right_finger_link", 0.016, (Prim("box", (0.05, 0.012, 0.02), (0.01, -0.006, 0.0)),),
            "0.6 0.6 0.6 1"),
    LinkDef("ee_gripper_link", 0.001, ()),
)

_PI = math.pi
JOINTS = (
    JointDef("waist", "revolute", "base_link", "shoulder_link", (0.0, 0.0, 0.079), (0, 0, 1),
             -_PI, _PI, XM540_SPEED, XM540_TORQUE),
    JointDef("shoulder", "revolute", "shoulder_link", "upper_arm_link", (0.0, 0.0, 0.04805), (0, 1, 0),
             math.radians(-106), math.radians(72), XM540_SPEED, 2 * XM540_TORQUE),
    JointDef("elbow", "revolute", "upper_arm_link", "upper_forearm_link", (0.05955, 0.0, 0.30), (0, 1, 0),
             math.radians(-101), math.radians(92), XM540_SPEED, 2 * XM540_TORQUE),
    JointDef("forearm_roll", "revolute", "upper_forearm_link", "lower_forearm_link", (0.20, 0.0, 0.0),
             (1, 0, 0), -_PI, _PI, XM540_SPEED, XM540_TORQUE),
    JointDef("wrist_angle", "revolute", "lower_forearm_link", "wrist_link", (0.10, 0.0, 0.0), (0, 1, 0),
             math.radians(-107), math.radians(128), XM540_SPEED, XM540_TORQUE),
    JointDef("wrist_rotate", "revolute", "wrist_link", "gripper_link", (0.069744, 0.0, 0.0), (1, 0, 0),
             -_PI, _PI, XM430_SPEED, XM430_TORQUE),
    JointDef("ee_arm", "fixed", "gripper_link", "ee_arm_link", (0.042825, 0.0, 0.0)),
    JointDef("gripper_bar", "fixed", "ee_arm_link", "gripper_bar_link", (0.0, 0.0, 0.0)),
    JointDef("ee_bar", "fixed", "gripper_bar_link", "fingers_link", (0.023, 0.0, 0.0)),
    # Each finger's inner face sits at y = +-q: q in [0.015, 0.037] m is the 30..74 mm opening.
    JointDef("left_finger", "prismatic", "fingers_link", "left_finger_link", (0.0, 0.0, 0.0), (0, 1, 0),
             0.015, 0.037, 0.1, 10.0),
    JointDef("right_finger", "prismatic", "fingers_link", "right_finger_link", (0.0, 0.0, 0.0), (0, -1, 0),
             0.015, 0.037, 0.1, 10.0),
    JointDef("ee_gripper", "fixed", "fingers_link", "ee_gripper_link", (0.027575, 0.0, 0.0)),
)


def _rpy_matrix(rpy: tuple[float, float, float]) -> np.ndarray:
    r, p, y = rpy
    cr, sr, cp, sp, cy, sy = math.cos(r), math.sin(r), math.cos(p), math.sin(p), math.cos(y), math.sin(y)
    return np.array([[cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
                     [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
                     [-sp, cp * sr, cp * cr]])


def _prim_volume(p: Prim) -> float:
    if p.kind == "box":
        return p.size[0] * p.size[1] * p.size[2]
    return math.pi * p.size[0] ** 2 * p.size[1]


def _prim_inertia(p: Prim, m: float) -> np.ndarray:
    """Inertia (kg m^2) of a uniform primitive of mass ``m`` about its centre, in its own axes."""
    if p.kind == "box":
        a, b, c = p.size
        return np.diag([m * (b * b + c * c), m * (a * a + c * c), m * (a * a + b * b)]) / 12.0
    r, h = p.size
    side = m * (3.0 * r * r + h * h) / 12.0
    return np.diag([side, side, m * r * r / 2.0])


def link_inertia(link: LinkDef) -> tuple[np.ndarray, np.ndarray]:
    """Centre of mass (3,) m and inertia tensor (3,3) kg m^2 about it, link frame axes.

    The mass is spread over the primitives in proportion to their volume; a link without
    primitives is a point-like mass at its origin with a tiny inertia.
    """
    if not link.prims:
        return np.zeros(3), np.eye(3) * 1e-7
    vols = np.array([_prim_volume(p) for p in link.prims])
    masses = link.mass * vols / vols.sum()
    centres = np.array([p.xyz for p in link.prims])
    com = (masses[:, None] * centres).sum(axis=0) / link.mass
    inertia = np.zeros((3, 3))
    for p, m, c in zip(link.prims, masses, centres, strict=True):
        rot = _rpy_matrix(p.rpy)
        d = c - com
        inertia += rot @ _prim_inertia(p, m) @ rot.T + m * (d @ d * np.eye(3) - np.outer(d, d))
    return com, inertia


def _f(v: float) -> str:
    text = f"{v:.6g}"
    return "0" if text == "-0" else text


def _v(values: tuple[float, ...] | np.ndarray) -> str:
    return " ".join(_f(float(x)) for x in values)


def _geometry(p: Prim) -> str:
    if p.kind == "box":
        return f'<box size="{_v(p.size)}"/>'
    return f'<cylinder radius="{_f(p.size[0])}" length="{_f(p.size[1])}"/>'


def _link_xml(link: LinkDef) -> list[str]:
    com, inertia = link_inertia(link)
    i = inertia
    out = [f'  <link name="{link.name}">',
           "    <inertial>",
           f'      <origin xyz="{_v(com)}" rpy="0 0 0"/>',
           f'      <mass value="{_f(link.mass)}"/>',
           f'      <inertia ixx="{i[0, 0]:.6e}" ixy="{i[0, 1]:.6e}" ixz="{i[0, 2]:.6e}" '
           f'iyy="{i[1, 1]:.6e}" iyz="{i[1, 2]:.6e}" izz="{i[2, 2]:.6e}"/>',
           "    </inertial>"]
    for p in link.prims:
        origin = f'<origin xyz="{_v(p.xyz)}" rpy="{_v(p.rpy)}"/>'
        out += ["    <visual>", f"      {origin}", f"      <geometry>{_geometry(p)}</geometry>",
                f'      <material name="{link.name}_mat"><color rgba="{link.rgba}"/></material>',
                "    </visual>",
                "    <collision>", f"      {origin}", f"      <geometry>{_geometry(p)}</geometry>",
                "    </collision>"]
    out.append("  </link>")
    return out


def _joint_xml(j: JointDef) -> list[str]:
    out = [f'  <joint name="{j.name}" type="{j.kind}">',
           f'    <parent link="{j.parent}"/>',
           f'    <child link="{j.child}"/>',
           f'    <origin xyz="{_v(j.xyz)}" rpy="0 0 0"/>']
    if j.kind != "fixed":
        out += [f'    <axis xyz="{_v(j.axis)}"/>',
                f'    <limit lower="{_f(j.lower)}" upper="{_f(j.upper)}" velocity="{_f(j.velocity)}" '
                f'effort="{_f(j.effort)}"/>',
                '    <dynamics damping="0.1" friction="0.0"/>']
    if j.name == "right_finger":
        out.append('    <mimic joint="left_finger" multiplier="1" offset="0"/>')
    out.append("  </joint>")
    return out


def build_urdf() -> str:
    """The URDF text of the bundled vx300s model."""
    lines = ['<?xml version="1.0"?>',
             "<!-- Generated by safetwin.twin.assets.gen_vx300s; edit that module, not this file. -->",
             "<!-- Primitive-shape model of the ViperX 300 6DOF, from published specifications. -->",
             '<robot name="vx300s">']
    for link in LINKS:
        lines += _link_xml(link)
    for joint in JOINTS:
        lines += _joint_xml(joint)
    lines.append("</robot>")
    return "\n".join(lines) + "\n"


def main() -> None:
    atomic_write_text(HERE / "vx300s.urdf", build_urdf())


if __name__ == "__main__":
    main()
