"""The bundled arm model, the numpy kinematics (checked against pybullet) and TwinRobot."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pybullet as p
import pytest

from safetwin.safety.robot_model import RobotModel
from safetwin.twin.assets import gen_vx300s
from safetwin.twin.assets.robots import load_robot_data
from safetwin.twin.kinematics import Kinematics, pose_error, primitive_spheres
from safetwin.twin.render import rotvec_matrix
from safetwin.twin.robot import DeviceAlreadyConnectedError, DeviceNotConnectedError, TwinRobot
from safetwin.twin.scene import load_scene

GRIPPER_OPEN = {"vx300s": 0.037, "panda": 0.04}


@pytest.fixture()
def client() -> Iterator[int]:
    cid = p.connect(p.DIRECT)
    yield cid
    p.disconnect(cid)


def _load(cid: int, robot: str) -> tuple[int, dict[str, int], dict[str, int]]:
    body = p.loadURDF(str(load_robot_data(robot).urdf), useFixedBase=True, physicsClientId=cid)
    joints, links = {}, {}
    for i in range(p.getNumJoints(body, physicsClientId=cid)):
        info = p.getJointInfo(body, i, physicsClientId=cid)
        joints[info[1].decode()], links[info[12].decode()] = i, i
    return body, joints, links


def _kin(robot: str) -> Kinematics:
    data = load_robot_data(robot)
    fixed = dict.fromkeys(data.gripper.joints, GRIPPER_OPEN[robot])
    return Kinematics(data.model(), data.joint_names, data.ee_link, data.link_primitives, fixed)


def _random_q(robot: str, rng: np.random.Generator) -> np.ndarray:
    model = load_robot_data(robot).model()
    return np.array([rng.uniform(max(model.joints[n].lower, -3.0), min(model.joints[n].upper, 3.0))
                     for n in load_robot_data(robot).joint_names])


def _set(cid: int, body: int, joints: dict[str, int], names: tuple[str, ...], q: np.ndarray, robot: str) -> None:
    for n in load_robot_data(robot).gripper.joints:
        p.resetJointState(body, joints[n], GRIPPER_OPEN[robot], physicsClientId=cid)
    for n, v in zip(names, q, strict=True):
        p.resetJointState(body, joints[n], float(v), physicsClientId=cid)


# ------------------------------------------------------------------ the bundled vx300s model
def test_bundled_urdf_is_the_generator_output() -> None:
    assert load_robot_data("vx300s").urdf.read_text() == gen_vx300s.build_urdf()


def test_vx300s_links_and_hardware_data() -> None:
    data = load_robot_data("vx300s")
    assert data.joint_names == ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")
    assert sum(link.mass for link in gen_vx300s.LINKS) == pytest.approx(3.7, abs=0.3)
    for link in gen_vx300s.LINKS:
        assert np.all(np.linalg.eigvalsh(gen_vx300s.link_inertia(link)[1]) > 0), link.name
    servo = {j.name: j.servo for j in data.joints}
    assert servo == {"waist": "XM540-W270", "shoulder": "XM540-W270", "elbow": "XM540-W270",
                     "forearm_roll": "XM540-W270", "wrist_angle": "XM540-W270", "wrist_rotate": "XM430-W350"}
    assert [j.name for j in data.joints if j.dual] == ["shoulder", "elbow"]
    ids = [j.bus_id for j in data.joints] + [j.shadow_bus_id for j in data.joints if j.dual] + [data.gripper.bus_id]
    assert sorted(ids) == list(range(1, 10))
    assert data.gripper.servo == "XM430-W350"
    for model, info in data.servos.items():
        assert info.datasheet == f"https://emanual.robotis.com/docs/en/dxl/x/{model.lower()}/"
    urdf = data.model()
    assert urdf.joints["shoulder"].effort == pytest.approx(2 * 10.6)
    assert urdf.joints["wrist_rotate"].effort == pytest.approx(4.1)
    assert urdf.joints["right_finger"].mimic == ("left_finger", 1.0, 0.0)


def test_robot_data_errors_name_file_and_key(tmp_path) -> None:
    import shutil

    import yaml

    from safetwin.safety.spec import SpecError
    from safetwin.twin.assets.robots import parse_robot_data

    src = load_robot_data("vx300s")
    shutil.copy(src.urdf, tmp_path / "vx300s.urdf")
    raw = yaml.safe_load((src.urdf.parent / "vx300s.yaml").read_text())
    cases = [(("joints", 2, "servo"), "XM999", "joints[2].servo: unknown servo 'XM999'"),
             (("joints", 1, "dual"), "yes", "joints[1].dual: must be true or false"),
             (("joints", 4, "bus_idd"), 7, "joints[4]: unknown key(s) ['bus_idd']"),
             (("joints", 0, "home"), 4.0, "joints[0].home: 4 outside")]
    for (key, idx, field), value, message in cases:
        data = yaml.safe_load(yaml.safe_dump(raw))
        data[key][idx][field] = value
        (tmp_path / "r.yaml").write_text(yaml.safe_dump(data))
        with pytest.raises(SpecError) as info:
            parse_robot_data(tmp_path / "r.yaml")
        assert f"{tmp_path / 'r.yaml'}: {message}" in str(info.value)


def test_vx300s_reach_is_about_750mm() -> None:
    kin = _kin("vx300s")
    q = np.zeros(6)
    q[2] = -np.arctan2(0.30, 0.05955)  # forearm in line with the upper arm: the arm fully stretched
    p_ee = kin.ee_pose(q)[0]
    shoulder_axis = np.array([0.0, 0.0, 0.079 + 0.04805])
    assert np.linalg.norm(p_ee - shoulder_axis) == pytest.approx(0.75, abs=0.03)


def test_vx300s_axes_move_the_arm_as_named(client: int) -> None:
    body, joints, links = _load(client, "vx300s")
    ee = links["ee_gripper_link"]

    def ee_at(**q: float) -> np.ndarray:
        for name in load_robot_data("vx300s").joint_names:
            p.resetJointState(body, joints[name], q.get(name, 0.0), physicsClientId=client)
        return np.array(p.getLinkState(body, ee, computeForwardKinematics=True, physicsClientId=client)[4])

    zero = ee_at()
    assert zero[0] > 0.4 and abs(zero[1]) < 1e-9                     # arm points forward (+x)
    assert ee_at(waist=0.5)[1] > 0.2                                  # waist turns left (+y)
    assert ee_at(shoulder=0.5)[0] > zero[0] and ee_at(shoulder=0.5)[2] < zero[2] - 0.2  # leans forward
    assert ee_at(elbow=0.5)[2] < zero[2] - 0.1                        # forearm pitches down
    assert ee_at(wrist_angle=0.5)[2] < zero[2] - 0.05                 # gripper pitches down
    roll = ee_at(forearm_roll=0.5, wrist_angle=0.5)
    assert roll[1] > 0.02   # +roll about +x swings the down-bent gripper to +y (right-hand rule)
    assert np.allclose(ee_at(wrist_rotate=1.0), zero, atol=1e-9)      # EE on the wrist-rotate axis


def test_vx300s_home_pose_is_above_the_table(client: int) -> None:
    scene = load_scene("tabletop_push")
    body, joints, links = _load(client, "vx300s")
    _set(client, body, joints, scene.robot.joint_names, scene.robot.home, "vx300s")
    for link in range(p.getNumJoints(body, physicsClientId=client)):
        assert p.getAABB(body, link, physicsClientId=client)[0][2] > 0.05
    ee = p.getLinkState(body, links["ee_gripper_link"], computeForwardKinematics=True, physicsClientId=client)
    rot = np.array(p.getMatrixFromQuaternion(ee[5])).reshape(3, 3)
    assert 0.1 < ee[4][2] < 0.3 and 0.2 < ee[4][0] < 0.4
    assert rot[2, 0] < -0.9  # the gripper (EE x axis) points down at the table


# ------------------------------------------------------------------ kinematics vs pybullet
@pytest.mark.parametrize("robot", ["vx300s", "panda", "vx300s+finger"])
def test_fk_and_jacobian_match_pybullet(client: int, robot: str) -> None:
    """vx300s+finger: a prismatic joint (left_finger) controlled, EE on the finger link."""
    if robot == "vx300s+finger":
        robot = "vx300s"
        data = load_robot_data(robot)
        kin = Kinematics(data.model(), (*data.joint_names, "left_finger"), "left_finger_link",
                         data.link_primitives, {"right_finger": 0.03})
    else:
        kin = _kin(robot)
    assert isinstance(kin, RobotModel)
    body, joints, links = _load(client, robot)
    ee = links[kin.ee_link]
    movable = [i for i in range(p.getNumJoints(body, physicsClientId=client))
               if p.getJointInfo(body, i, physicsClientId=client)[2] != p.JOINT_FIXED]
    cols = [movable.index(joints[n]) for n in kin.joint_names]
    rng = np.random.default_rng(7)
    for _ in range(25):
        q = _random_q(robot, rng)
        if len(kin.joint_names) > len(q):
            q = np.append(q, rng.uniform(0.015, 0.037))
        _set(client, body, joints, kin.joint_names, q, robot)
        if "right_finger" in joints:
            p.resetJointState(body, joints["right_finger"], 0.03, physicsClientId=client)
        state = p.getLinkState(body, ee, computeForwardKinematics=True, physicsClientId=client)
        pos, rot = kin.ee_pose(q)
        np.testing.assert_allclose(pos, state[4], atol=1e-6)
        np.testing.assert_allclose(rot, np.array(p.getMatrixFromQuaternion(state[5])).reshape(3, 3), atol=1e-6)
        all_q = [p.getJointState(body, i, physicsClientId=client)[0] for i in movable]
        zeros = [0.0] * len(all_q)
        # localPosition (0, 0, 0) is the URDF link-frame origin (checked: the finger link's COM is offset)
        lin, ang = p.calculateJacobian(body, ee, [0.0, 0.0, 0.0], all_q, zeros, zeros, physicsClientId=client)
        expected = np.vstack([np.array(lin)[:, cols], np.array(ang)[:, cols]])
        np.testing.assert_allclose(kin.ee_jacobian(q), expected, atol=1e-6)


@pytest.mark.parametrize("robot", ["vx300s", "panda"])
def test_sphere_jacobians_match_finite_differences(robot: str) -> None:
    kin = _kin(robot)
    q = _random_q(robot, np.random.default_rng(3))
    centres, radii, jac = kin.spheres(q)
    assert centres.shape == (len(kin.sphere_names), 3) and jac.shape == (len(radii), 3, len(q))
    assert np.all(radii > 0)
    eps = 1e-6
    for k in range(len(q)):
        dq = np.zeros(len(q))
        dq[k] = eps
        numeric = (kin.spheres(q + dq)[0] - kin.spheres(q - dq)[0]) / (2 * eps)
        np.testing.assert_allclose(jac[:, :, k], numeric, atol=1e-6)


def test_spheres_cover_the_vx300s_collision_boxes(client: int) -> None:
    """Every corner of every moving collision box lies inside one of that link's spheres."""
    kin = _kin("vx300s")
    data = load_robot_data("vx300s")
    body, joints, links = _load(client, "vx300s")
    q = _random_q("vx300s", np.random.default_rng(11))
    _set(client, body, joints, kin.joint_names, q, "vx300s")
    centres, radii, _ = kin.spheres(q)
    checked = 0
    for link, idx in links.items():
        mine = [i for i, n in enumerate(kin.sphere_names) if n.split("/")[0] == link]
        st = p.getLinkState(body, idx, computeForwardKinematics=True, physicsClientId=client)
        rot, org = np.array(p.getMatrixFromQuaternion(st[5])).reshape(3, 3), np.array(st[4])
        prims = data.link_primitives(link) if link != data.base_link else ()
        for geom in prims:
            assert mine, link
            half = np.array(geom.size) / 2 if geom.kind == "box" else None
            if half is None:
                continue
            from safetwin.twin.assets.urdf import rpy_matrix
            for corner in np.array(np.meshgrid(*[[-1, 1]] * 3)).T.reshape(-1, 3) * half:
                world = rot @ (rpy_matrix(geom.rpy) @ corner + geom.xyz) + org
                gap = np.linalg.norm(centres[mine] - world, axis=1) - radii[mine]
                assert gap.min() <= 1e-6, (link, corner)  # pybullet poses are float32
                checked += 1
    assert checked >= 8 * 8


def test_primitive_spheres_cover_a_capsule() -> None:
    from safetwin.twin.assets.urdf import Geometry

    spheres = primitive_spheres(Geometry("capsule", (0.05, 0.2), (0.0, 0.0, 0.1), (0.0, 0.0, 0.0)))
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(500, 3))
    pts = pts / np.linalg.norm(pts, axis=1)[:, None] * 0.05
    pts[:, 2] += rng.uniform(-0.1, 0.1, size=500) + 0.1       # points on the capsule's cylinder surface
    c = np.array([s[0] for s in spheres])
    r = np.array([s[1] for s in spheres])
    assert np.all((np.linalg.norm(pts[:, None] - c[None], axis=2) - r[None]).min(axis=1) <= 1e-9)


def test_panda_proxies_enclose_the_collision_meshes() -> None:
    """Every collision-mesh vertex of every Panda link lies inside that link's capsule proxies."""
    from safetwin.twin.assets.fit_proxies import read_obj_vertices
    from safetwin.twin.assets.urdf import rpy_matrix

    data = load_robot_data("panda")
    model = data.model()
    for link, geoms in model.collisions.items():
        for geom in geoms:
            rel = geom.mesh.replace("package://", "")  # type: ignore[union-attr]
            pts = read_obj_vertices(model.path.parent / rel) @ rpy_matrix(geom.rpy).T + geom.xyz
            dist = np.full(len(pts), np.inf)
            for cap in data.link_primitives(link):
                local = (pts - cap.xyz) @ rpy_matrix(cap.rpy)     # into the capsule frame
                half = cap.size[1] / 2
                nearest = np.stack([np.zeros(len(pts)), np.zeros(len(pts)), np.clip(local[:, 2], -half, half)], 1)
                dist = np.minimum(dist, np.linalg.norm(local - nearest, axis=1) - cap.size[0])
            assert dist.max() < 2e-3, link


def test_ee_jacobian_matches_finite_differences_of_the_pose() -> None:
    kin = _kin("vx300s")
    q = _random_q("vx300s", np.random.default_rng(5))
    p0, r0 = kin.ee_pose(q)
    eps = 1e-6
    for k in range(6):
        dq = np.zeros(6)
        dq[k] = eps
        p1, r1 = kin.ee_pose(q + dq)
        np.testing.assert_allclose(pose_error(p0, r0, p1, r1) / eps, kin.ee_jacobian(q)[:, k], atol=1e-5)


@pytest.mark.parametrize("robot", ["vx300s", "panda"])
def test_ik_step_converges_to_a_reachable_pose(robot: str) -> None:
    kin = _kin(robot)
    home = np.array([j.home for j in load_robot_data(robot).joints])
    goal_p, goal_r = kin.ee_pose(home + 0.25)
    q = home.copy()
    for _ in range(200):
        q = q + kin.ik_step(q, pose_error(*kin.ee_pose(q), goal_p, goal_r), 0.02)
    err = pose_error(*kin.ee_pose(q), goal_p, goal_r)
    assert np.linalg.norm(err[:3]) < 1e-5 and np.linalg.norm(err[3:]) < 1e-4
    q2 = home.copy()  # the goal-pose form gives the same steps
    for _ in range(200):
        q2 = q2 + kin.ik_step(q2, goal_p, goal_r, damping=0.02)
    np.testing.assert_allclose(q2, q, atol=1e-9)


@pytest.mark.parametrize("robot", ["vx300s", "panda"])
def test_controller_kernels_equal_the_general_kinematics(robot: str) -> None:
    """The env's one-pass kernels (``track_here``, ``observe_track``) give the numbers of the
    general API: ``ee_pose``, ``spheres``, ``|J_v dq|`` and ``ik_step`` toward the moved goal."""
    kin, rng = _kin(robot), np.random.default_rng(5)
    home = np.array([j.home for j in load_robot_data(robot).joints])
    for _ in range(20):
        q, dq = home + rng.uniform(-0.5, 0.5, home.size), rng.uniform(-1.0, 1.0, home.size)
        inc = rng.uniform(-0.01, 0.01, 6)
        ee_p, ee_r = kin.ee_pose(q)
        goal_p, goal_r = ee_p + inc[:3], rotvec_matrix(inc[3:]) @ ee_r
        for got, want in zip(kin.track_here(q, inc, 0.05), (goal_p, goal_r, kin.ik_step(q, goal_p, goal_r, 0.05)),
                             strict=True):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
        p_des, r_des = kin.ee_pose(home)
        goal_p, goal_r = p_des + inc[:3], rotvec_matrix(inc[3:]) @ r_des
        k = kin.observe_track(q, dq, p_des, r_des, inc, 0.05)
        want = (ee_p, kin.spheres(q)[0], float(np.linalg.norm(kin.ee_jacobian(q)[:3] @ dq)), ee_r, goal_p, goal_r,
                kin.ik_step(q, goal_p, goal_r, 0.05))
        for got, ref in zip(k, want, strict=True):
            np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)


def test_ik_step_rejects_non_finite_input() -> None:
    """A1: a NaN target never turns into a joint step."""
    kin = _kin("vx300s")
    with pytest.raises(ValueError, match="finite"):
        kin.ik_step(np.zeros(6), np.array([np.nan, 0, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="finite"):
        kin.ik_step(np.zeros(6), np.zeros(3), np.full((3, 3), np.inf))
    with pytest.raises(ValueError, match="damping"):
        kin.ik_step(np.zeros(6), np.zeros(6), damping=0.0)
    with pytest.raises(ValueError, match="shape"):
        kin.ee_pose(np.zeros(5))


def test_mesh_only_links_need_proxies(tmp_path) -> None:
    """Fail closed: a moving link whose collision is a mesh without proxies has no spheres -> error."""
    from safetwin.twin.assets.urdf import parse_urdf

    text = load_robot_data("vx300s").urdf.read_text()
    text = text.replace('<geometry><box size="0.07 0.04 0.04"/></geometry>\n    </collision>',
                        '<geometry><mesh filename="wrist.obj"/></geometry>\n    </collision>')
    path = tmp_path / "arm.urdf"
    path.write_text(text)
    model = parse_urdf(path)
    assert model.collisions["wrist_link"][0].kind == "mesh"

    def prims(link: str):
        return tuple(g for g in model.collisions[link] if g.kind != "mesh")

    with pytest.raises(ValueError, match="moving link 'wrist_link' has only mesh collision geometry"):
        Kinematics(model, load_robot_data("vx300s").joint_names, "ee_gripper_link", prims)


def test_for_scene_uses_the_scene_robot() -> None:
    scene = load_scene("reach_avoid")
    kin = Kinematics.for_scene(scene)
    assert kin.joint_names == scene.robot.joint_names and kin.ee_link == "ee_gripper_link"
    centres, radii, _ = kin.spheres(scene.robot.home)
    ws = scene.safety.workspace
    assert np.all(centres - radii[:, None] >= np.array(ws.lo) - 1e-9)
    assert np.all(centres + radii[:, None] <= np.array(ws.hi) + 1e-9)


# ------------------------------------------------------------------ the Robot interface
@pytest.fixture()
def twin(client: int) -> Iterator[TwinRobot]:
    scene = load_scene("tabletop_push")
    body, joints, _ = _load(client, "vx300s")
    _set(client, body, joints, scene.robot.joint_names, scene.robot.home, "vx300s")
    yield TwinRobot.from_scene(scene, client, body)


def _step(robot: TwinRobot, n: int = 480) -> None:
    for _ in range(n):
        p.stepSimulation(physicsClientId=robot.client_id)


def test_twin_robot_needs_connect(twin: TwinRobot) -> None:
    assert set(twin.action_features) == {f"{j}.pos" for j in twin.joint_names} | {"gripper.pos"}
    assert len(twin.observation_features) == 2 * 7
    with pytest.raises(DeviceNotConnectedError):
        twin.get_observation()
    twin.connect()
    with pytest.raises(DeviceAlreadyConnectedError):
        twin.connect()
    twin.disconnect()
    twin.disconnect()  # D5: idempotent
    assert not twin.is_connected


def test_twin_robot_clamps_and_returns_what_was_sent(twin: TwinRobot, caplog: pytest.LogCaptureFixture) -> None:
    """A3: an out-of-limit goal is clamped to the safety limit, logged, and the clamp returned."""
    with twin:
        goal = {k: 0.0 for k in twin.action_features}
        goal.update({"shoulder.pos": 3.0, "wrist_angle.pos": -2.5, "gripper.pos": 0.5, "elbow.pos": 0.3})
        with caplog.at_level(logging.WARNING):
            sent = twin.send_action(goal)
        assert sent["shoulder.pos"] == 1.2566 and sent["wrist_angle.pos"] == -1.8675
        assert sent["gripper.pos"] == 0.037 and sent["elbow.pos"] == 0.3
        assert "shoulder.pos goal 3 clamped to 1.2566" in caplog.text
        _step(twin)
        obs = twin.get_observation()
        for key, value in sent.items():
            assert obs[key] == pytest.approx(value, abs=2e-3), key


def test_twin_robot_rejects_bad_actions_and_sends_nothing(twin: TwinRobot) -> None:
    """A1 (NaN) and A2 (missing/extra keys): rejected, the previous goal stays in force."""
    with twin:
        first = twin.send_action({k: 0.1 for k in twin.action_features} | {"gripper.pos": 0.02})
        bad = dict(first)
        bad["elbow.pos"] = float("nan")
        with pytest.raises(ValueError, match="not finite"):
            twin.send_action(bad)
        with pytest.raises(ValueError, match="missing \\['gripper.pos'\\]"):
            twin.send_action({k: v for k, v in first.items() if k != "gripper.pos"})
        with pytest.raises(ValueError, match="extra \\['knee.pos'\\]"):
            twin.send_action(first | {"knee.pos": 0.0})
        _step(twin)
        obs = twin.get_observation()
        for key, value in first.items():
            assert obs[key] == pytest.approx(value, abs=2e-3), key


def test_twin_robot_max_relative_target(client: int) -> None:
    """A4: a teleport goal is cut to max_relative_target from the present position."""
    scene = load_scene("tabletop_push")
    body, joints, _ = _load(client, "vx300s")
    _set(client, body, joints, scene.robot.joint_names, scene.robot.home, "vx300s")
    with TwinRobot.from_scene(scene, client, body, max_relative_target=0.1) as robot:
        goal = {f"{n}.pos": float(h) for n, h in zip(scene.robot.joint_names, scene.robot.home, strict=True)}
        goal["gripper.pos"] = 0.037
        goal["waist.pos"] = 1.5
        sent = robot.send_action(goal)
        assert sent["waist.pos"] == pytest.approx(0.1, abs=1e-6)
