"""Scene specs: the bundled scenes load, and every bad input is an error naming file and key."""

from __future__ import annotations

import copy
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from safetwin.safety.runio import ConfigError
from safetwin.safety.spec import SpecError
from safetwin.twin.assets.robots import load_robot_data
from safetwin.twin.scene import SCENES_DIR, load_scene

BUNDLED = ("reach_avoid", "tabletop_push")


def _raw(name: str = "tabletop_push") -> dict[str, Any]:
    return yaml.safe_load((SCENES_DIR / f"{name}.yaml").read_text())


def _write(tmp_path: Path, data: dict[str, Any], name: str = "x.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _error(tmp_path: Path, data: dict[str, Any]) -> str:
    path = _write(tmp_path, data)
    with pytest.raises((SpecError, ConfigError)) as info:
        load_scene(path)
    return str(info.value)


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_scene_loads(name: str) -> None:
    scene = load_scene(name)
    assert scene.path == SCENES_DIR / f"{name}.yaml"
    assert scene.robot.name == "vx300s"
    assert scene.robot.joint_names == load_robot_data("vx300s").joint_names
    assert scene.safety.joint_names == scene.robot.joint_names
    assert scene.sha256 == scene.safety.sha256()
    assert scene.safety.ee_speed_max == pytest.approx(0.25)
    assert scene.safety.keepout and scene.safety.cost_limit > 0
    fragile = scene.by_role("fragile")
    assert fragile and {o.name for o in scene.safety.obstacles} == {o.name for o in fragile}
    for target in scene.task.targets:
        text = scene.task.instruction(0, scene.object(target))
        assert scene.object(target).color_name in text and "{" not in text
    for j, limit in zip(scene.robot.joints, scene.safety.joints, strict=True):
        assert j.lower <= limit.lower < limit.upper <= j.upper
        assert limit.lower <= j.home <= limit.upper
    assert load_scene(scene.path).sha256 == scene.sha256


def test_push_scene_has_two_coloured_cubes_and_a_glass_near_the_path() -> None:
    scene = load_scene("tabletop_push")
    cubes = [scene.object(t) for t in scene.task.targets]
    assert {c.color_name for c in cubes} == {"red", "blue"}
    goal = scene.object(scene.task.goal)  # type: ignore[arg-type]
    assert not goal.collides and goal.mass == 0
    glass = scene.by_role("fragile")[0]
    assert glass.shape.kind == "cylinder"
    # distance of the glass axis from the straight red-cube -> goal segment (xy)
    a, b, g = (np.array(o.pose.xyz[:2]) for o in (cubes[0], goal, glass))
    t = np.clip((g - a) @ (b - a) / ((b - a) @ (b - a)), 0, 1)
    clearance = np.linalg.norm(a + t * (b - a) - g) - glass.shape.size[0] - cubes[0].shape.size[0] / 2
    assert clearance < 0.0  # the straight push would hit the glass


def test_reach_avoid_straight_line_is_unsafe() -> None:
    """The quick straight path from the home EE position to the marker crosses the glass."""
    from safetwin.twin.kinematics import Kinematics

    scene = load_scene("reach_avoid")
    kin = Kinematics.for_scene(scene)
    start = kin.ee_pose(scene.robot.home)[0]
    goal = scene.world_to_base(np.array(scene.object(scene.task.targets[0]).pose.xyz))
    obs = scene.safety.obstacles[0]
    points = start + np.linspace(0, 1, 200)[:, None] * (goal - start)
    inside = np.all(np.abs(points - obs.center) <= np.array(obs.half_extents) + 0.01, axis=1)
    assert inside.any()


def test_unknown_bundled_name_lists_the_bundled_scenes() -> None:
    with pytest.raises(FileNotFoundError, match="tabletop_push"):
        load_scene("no_such_scene")


def test_bad_yaml_syntax_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nrobot:\n  urdf: [vx300s\n  base: {}\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml:\d+:\d+: malformed YAML"):
        load_scene(path)


def test_missing_key(tmp_path: Path) -> None:
    data = _raw()
    del data["task"]["time_limit"]
    assert _error(tmp_path, data) == f"{tmp_path / 'x.yaml'}: task.time_limit: required key is missing"


def test_negative_mass(tmp_path: Path) -> None:
    data = _raw()
    data["objects"][3]["mass"] = -0.2
    assert _error(tmp_path, data) == f"{tmp_path / 'x.yaml'}: objects[3].mass: must be > 0, got -0.2"


def test_unknown_key(tmp_path: Path) -> None:
    data = _raw()
    data["objects"][1]["colour"] = "blue"
    assert _error(tmp_path, data).endswith("x.yaml: objects[1]: unknown key(s) ['colour']")


def test_unknown_top_level_key(tmp_path: Path) -> None:
    data = _raw()
    data["safty"] = {}
    assert "<top>: unknown key(s) ['safty']" in _error(tmp_path, data)


def test_empty_workspace_box(tmp_path: Path) -> None:
    data = _raw()
    data["safety"]["workspace"]["hi"][2] = data["safety"]["workspace"]["lo"][2]
    assert "x.yaml: safety.workspace.hi: empty box: hi.z=0 <= lo.z=0" in _error(tmp_path, data)


def test_safety_joints_must_match_robot(tmp_path: Path) -> None:
    data = _raw()
    limits = data["safety"]["joint_limits"]
    data["safety"]["joint_limits"] = {("wrist_twist" if k == "wrist_rotate" else k): v for k, v in limits.items()}
    msg = _error(tmp_path, data)
    assert "x.yaml: safety.joint_limits: joints" in msg and "must match the robot's controlled joints" in msg


def test_safety_limits_must_lie_inside_urdf(tmp_path: Path) -> None:
    data = _raw()
    data["safety"]["joint_limits"]["elbow"]["position"] = [-1.7, 2.5]
    assert "x.yaml: safety.joint_limits.elbow.position: [-1.7, 2.5] exceeds the URDF limits" in _error(tmp_path, data)
    data = _raw()
    data["safety"]["joint_limits"]["waist"]["velocity"] = 9.0
    assert "safety.joint_limits.waist.velocity: 9 exceeds the URDF limit" in _error(tmp_path, data)


def test_urdf_path_must_stay_inside_scene_folder(tmp_path: Path) -> None:
    data = _raw()
    data["robot"]["urdf"] = "../../etc/robot.urdf"
    assert "x.yaml: robot.urdf: must stay inside the scene folder" in _error(tmp_path, data)


def test_custom_urdf_inside_scene_folder(tmp_path: Path) -> None:
    shutil.copy(load_robot_data("vx300s").urdf, tmp_path / "arm.urdf")
    data = _raw()
    data["robot"]["urdf"] = "arm.urdf"
    data["robot"].pop("gripper")
    scene = load_scene(_write(tmp_path, data))
    assert scene.robot.urdf == tmp_path / "arm.urdf" and scene.robot.data is None
    assert scene.robot.gripper is None and scene.robot.joints[4].servo == "XM540-W270"


def test_bundled_robot_defaults(tmp_path: Path) -> None:
    data = _raw()
    data["robot"] = {"urdf": "vx300s"}   # joints, EE link, gripper and wiring from twin/assets/vx300s.yaml
    robot = load_scene(_write(tmp_path, data)).robot
    hw = load_robot_data("vx300s")
    assert robot.joint_names == hw.joint_names and robot.ee_link == "ee_gripper_link"
    assert [(j.servo, j.bus_id, j.home) for j in robot.joints] == [(j.servo, j.bus_id, j.home) for j in hw.joints]
    assert robot.gripper == hw.gripper


def test_mesh_objects_stay_inside_the_scene_folder(tmp_path: Path) -> None:
    (tmp_path / "meshes").mkdir()
    corners = [(x, y, z) for x in (-0.02, 0.02) for y in (-0.03, 0.03) for z in (-0.05, 0.05)]
    (tmp_path / "meshes" / "vase.obj").write_text("".join(f"v {x} {y} {z}\n" for x, y, z in corners))
    data = _raw()
    data["objects"][3]["shape"] = {"type": "mesh", "file": "meshes/vase.obj", "scale": [1.0, 1.0, 2.0]}
    scene = load_scene(_write(tmp_path, data))
    glass = scene.object("glass")
    assert glass.shape.collision == tmp_path / "meshes" / "vase.obj"
    np.testing.assert_allclose(scene.safety.obstacles[0].half_extents, [0.02, 0.03, 0.10], atol=1e-12)
    data["objects"][3]["shape"]["file"] = "../vase.obj"
    assert "objects[3].shape.file: must stay inside the scene folder" in _error(tmp_path, data)
    data["objects"][3]["shape"]["file"] = "meshes/missing.obj"
    assert "objects[3].shape.file: no such file" in _error(tmp_path, data)


def test_unknown_joint_and_home_outside_limits(tmp_path: Path) -> None:
    data = _raw()
    data["robot"]["joints"][2]["name"] = "knee"
    assert "robot.joints[2].name: 'knee' is not a movable joint of vx300s.urdf" in _error(tmp_path, data)
    data = _raw()
    data["robot"]["joints"][1]["home"] = 2.0
    assert "robot.joints[1].home: 2 rad outside the URDF limits" in _error(tmp_path, data)


def test_gripper_positions_within_finger_limits(tmp_path: Path) -> None:
    data = _raw()
    data["robot"]["gripper"]["open"] = 0.08
    assert "robot.gripper.open: 0.08 outside the limits [0.015, 0.037] of left_finger" in _error(tmp_path, data)
    data["robot"]["gripper"] = {"bus_id": 12}      # the rest defaults from twin/assets/vx300s.yaml
    gripper = load_scene(_write(tmp_path, data)).robot.gripper
    assert gripper is not None and (gripper.open, gripper.closed, gripper.bus_id) == (0.037, 0.015, 12)


def test_controlled_joints_must_lie_on_the_ee_chain(tmp_path: Path) -> None:
    data = _raw()
    data["robot"]["joints"][0], data["robot"]["joints"][1] = data["robot"]["joints"][1], data["robot"]["joints"][0]
    assert "robot.joints: ['shoulder', 'waist', " in _error(tmp_path, data)
    data = _raw()
    data["robot"]["ee_link"] = "left_finger_link"
    data["robot"]["joints"].append({"name": "right_finger", "home": 0.02})
    assert "must all lie, in this order, on the chain from 'base_link' to 'left_finger_link'" in _error(tmp_path, data)


def test_pick_place_is_reserved(tmp_path: Path) -> None:
    data = _raw()
    data["task"]["type"] = "pick_place"
    assert "task.type: 'pick_place' is reserved but not implemented" in _error(tmp_path, data)


def test_instruction_placeholders_and_targets(tmp_path: Path) -> None:
    data = _raw()
    data["task"]["instructions"][1] = "push the {colour} {object}"
    assert "task.instructions[1]: unknown placeholder(s) ['colour']" in _error(tmp_path, data)
    data = _raw()
    data["task"]["targets"] = ["glass"]
    assert "task.targets[0]: 'glass' must name an object with role target" in _error(tmp_path, data)


def test_goal_zone_is_visual_only(tmp_path: Path) -> None:
    data = _raw()
    data["objects"][2]["mass"] = 0.5
    assert "objects[2].mass: goal_zone objects are visual-only: mass must be 0" in _error(tmp_path, data)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("mass_scale", [1.2, 0.8], "randomization.mass_scale: lo 1.2 must be <= hi 0.8"),
    ("friction", [-0.1, 0.5], "randomization.friction: must be >= 0, got lo -0.1"),
    ("restitution", [0.0, 1.5], "randomization.restitution: must be <= 1, got hi 1.5"),
    ("action_latency", [0, 1.5], "randomization.action_latency: must be [lo, hi] integers"),
    ("obs_noise_std", [-0.01, 0.0], "randomization.obs_noise_std: must be >= 0"),
])
def test_randomization_ranges_are_checked(tmp_path: Path, key: str, value: list[float], message: str) -> None:
    data = _raw()
    data["randomization"][key] = value
    assert message in _error(tmp_path, data)


def test_control_rates_must_divide(tmp_path: Path) -> None:
    data = _raw()
    data["control"]["control_hz"] = 25
    assert "control.control_hz: must be a multiple of policy_hz (10), got 25" in _error(tmp_path, data)


def test_camera_checks(tmp_path: Path) -> None:
    data = _raw()
    data["cameras"]["front"]["far"] = 0.01
    assert "cameras.front.far: must be > near" in _error(tmp_path, data)
    data = _raw()
    data["cameras"]["wrist"]["link"] = "hand"
    assert "cameras.wrist.link: 'hand' is not a robot link" in _error(tmp_path, data)


def test_obstacles_are_in_the_base_frame(tmp_path: Path) -> None:
    data = _raw()
    data["robot"]["base"] = {"xyz": [0.1, 0.2, 0.0], "rpy": [0.0, 0.0, math.pi / 2]}
    scene = load_scene(_write(tmp_path, data))
    glass = scene.object("glass")
    obs = scene.safety.obstacles[0]
    x, y, z = glass.pose.xyz
    # world -> base: translate by -(0.1, 0.2), rotate by -90 deg about z
    np.testing.assert_allclose(obs.center, [y - 0.2, -(x - 0.1), z], atol=1e-12)
    np.testing.assert_allclose(obs.half_extents, [0.03, 0.03, 0.06], atol=1e-12)
    assert obs.radius == pytest.approx(math.hypot(0.03, 0.06))
    assert scene.sha256 != load_scene("tabletop_push").sha256


def test_panda_scene(tmp_path: Path) -> None:
    data = copy.deepcopy(_raw())
    panda = load_robot_data("panda")
    model = panda.model()
    data["robot"] = {"urdf": "panda", "base": {"xyz": [-0.2, 0.0, 0.0]}}
    data["cameras"].pop("wrist")
    data["safety"]["joint_limits"] = {
        j.name: {"position": [model.joints[j.name].lower, model.joints[j.name].upper],
                 "velocity": model.joints[j.name].velocity, "acceleration": 10.0} for j in panda.joints}
    scene = load_scene(_write(tmp_path, data))
    assert scene.robot.ee_link == "panda_grasptarget"
    assert scene.robot.joint_names == tuple(f"panda_joint{i}" for i in range(1, 8))
    assert all(j.servo is None and j.bus_id is None for j in scene.robot.joints)
    assert scene.robot.gripper is not None and scene.robot.gripper.open == 0.04
    glass_x = next(o for o in data["objects"] if o["name"] == "glass")["pose"]["xyz"][0]
    assert scene.safety.obstacles[0].center[0] == pytest.approx(glass_x + 0.2)  # base frame: base at x=-0.2
    for link in model.links:
        if any(g.kind == "mesh" for g in model.collisions[link]):
            prims = panda.link_primitives(link)
            assert prims and all(p.kind == "capsule" for p in prims), link
