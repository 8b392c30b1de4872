"""``run_capture`` end to end: the synthetic round trip of tabletop_push (acceptance), the
scene it writes, and bad input leaving nothing behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from safetwin.safety.runio import ConfigError, config_from_dict
from safetwin.twin.capture.formats import CaptureError
from safetwin.twin.capture.pipeline import CaptureConfig, run_capture
from safetwin.twin.scene import load_scene

from .conftest import REDWOOD_INTRINSICS


def test_synthetic_round_trip_meets_the_acceptance_figures(captured):
    report = json.loads((captured / "capture_report.json").read_text())
    s = report["score"]
    assert s["objects_expected"] == s["objects_found"] == s["objects_matched"] == 3
    assert s["centroid_err_m"] <= 0.01
    assert s["extent_err_rel"] <= 0.10
    assert report["registration"]["registered"] and report["registration"]["board_views"] >= 4
    assert report["frames"]["used"] == report["frames"]["total"] > 0
    assert "worst centroid error" in (captured / "capture_report.md").read_text()


def test_captured_scene_loads_like_a_bundled_one(captured):
    """The scene.yaml validates with the twin's parser; poses agree with the template's."""
    template, scene = load_scene("tabletop_push"), load_scene(captured / "scene.yaml")
    assert scene.name == "cap" and scene.task.targets == template.task.targets
    assert scene.safety.joints == template.safety.joints and scene.robot.name == template.robot.name
    for obj in template.objects:
        got = scene.object(obj.name)
        assert got.role == obj.role
        assert np.linalg.norm(np.subtract(got.pose.xyz, obj.pose.xyz)) <= 0.01, obj.name
        if obj.role != "goal_zone":
            assert got.shape.kind == "mesh" and got.shape.collision.is_file()
            assert np.allclose(2 * got.shape.half_extents(), 2 * obj.shape.half_extents(), rtol=0.15, atol=0.004)
            assert got.mass > 0 and (captured / "urdf" / f"{obj.name}.urdf").is_file()
    assert scene.table.shape.size[:2] == pytest.approx(template.table.shape.size[:2], abs=0.03)
    params = json.loads((captured / "physical_params.json").read_text())
    assert params["glass"]["mass"]["source"] == "prior"
    # the fragile glass reaches the safety filter as an obstacle, from the captured geometry
    assert [o.name for o in scene.safety.obstacles] == ["glass"]


def test_twin_env_runs_on_the_captured_scene(captured):
    gym = pytest.importorskip("gymnasium")
    pytest.importorskip("safetwin.twin.world", reason="the twin env (A2) is not installed yet")
    import safetwin.twin.registration  # noqa: F401

    env = gym.make("safetwin/Twin-v0", scene=str(captured / "scene.yaml"), images=False)
    try:
        env.reset(seed=0)
        for _ in range(3):
            _, _, terminated, truncated, info = env.step(env.action_space.sample())
            assert np.isfinite(info["cost"])
    finally:
        env.close()


def _broken_copy(redwood: Path, tmp: Path) -> Path:
    cap = tmp / "rw"
    shutil.copytree(redwood, cap)
    for p in [cap, *cap.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    (cap / "intrinsics.json").write_text(json.dumps({"width": 640, "height": 480, "fx": REDWOOD_INTRINSICS.fx,
                                                     "fy": REDWOOD_INTRINSICS.fy, "cx": REDWOOD_INTRINSICS.cx,
                                                     "cy": REDWOOD_INTRINSICS.cy}))
    return cap


def test_bad_input_names_the_file_and_writes_nothing(tmp_path, redwood):
    cap = _broken_copy(redwood, tmp_path)
    (cap / "depth/00003.png").write_bytes(b"\x89PNG truncated")
    out = tmp_path / "scenes"
    cfg = CaptureConfig(input=str(cap), name="broken", out_dir=str(out), progress=False)
    with pytest.raises(CaptureError, match=r"depth/00003\.png: unreadable depth image"):
        run_capture(cfg)
    assert list(out.iterdir()) == []  # no scene folder, no leftover partial folder


def test_failed_capture_keeps_the_previous_scene(tmp_path, redwood):
    out = tmp_path / "scenes"
    old = out / "kept"
    old.mkdir(parents=True)
    (old / "scene.yaml").write_text("previous\n")
    cap = _broken_copy(redwood, tmp_path)
    (cap / "color/00001.jpg").unlink()
    with pytest.raises(CaptureError, match=r"color/00001\.jpg: colour image is missing"):
        run_capture(CaptureConfig(input=str(cap), name="kept", out_dir=str(out), progress=False))
    assert (old / "scene.yaml").read_text() == "previous\n" and sorted(p.name for p in out.iterdir()) == ["kept"]
    with pytest.raises(CaptureError, match="already exists"):
        run_capture(CaptureConfig(input=str(cap), name="kept", out_dir=str(out), overwrite=False, progress=False))


def test_unregistered_real_capture_without_the_templates_targets_is_refused(tmp_path, redwood):
    """Redwood (a chair, no board) cannot become tabletop_push: the error says why, nothing is written."""
    cap = _broken_copy(redwood, tmp_path)
    out = tmp_path / "scenes"
    with pytest.raises(CaptureError, match=r"task targets \['red_cube', 'blue_cube'\]"):
        run_capture(CaptureConfig(input=str(cap), name="rw", out_dir=str(out), voxel_size=0.01,
                                  depth_max=3.0, progress=False))
    assert list(out.iterdir()) == []


def test_capture_config_is_strict():
    with pytest.raises(ConfigError, match="unknown option"):
        config_from_dict(CaptureConfig, {"scene": "tabletop_push", "voxels": 0.01})
    with pytest.raises(ConfigError, match="method"):
        CaptureConfig(method="lidar")
    with pytest.raises(ConfigError, match="name=role"):
        CaptureConfig(roles=("glass",))
    with pytest.raises(ConfigError, match="plain folder name"):
        CaptureConfig(name="../escape")
    assert CaptureConfig(roles=["glass=obstacle"]).role_overrides() == {"glass": "obstacle"}


@pytest.mark.skipif(shutil.which("ns-train") is not None, reason="nerfstudio is installed here")
def test_nerf_method_stops_at_once_without_nerfstudio(tmp_path, redwood):
    from safetwin.twin.capture.nerf import NerfUnavailable

    out = tmp_path / "scenes"
    with pytest.raises(NerfUnavailable, match=r"not found: install the extra"):
        run_capture(CaptureConfig(input=str(redwood / "color"), method="nerf", out_dir=str(out), progress=False))
    assert not out.exists()
    with pytest.raises(ConfigError, match="needs an input folder"):
        run_capture(CaptureConfig(method="nerf", out_dir=str(out), progress=False))


def test_roles_rename_and_reassign_captured_objects():
    """An object the template does not know can take a template object's identity or a role."""
    from safetwin.twin.capture.objects import ObjectModel
    from safetwin.twin.capture.scene_io import assign_identities, load_template

    template = load_template("tabletop_push")
    far = ObjectModel("o", np.array([-0.2, 0.3, 0.02]), np.full(3, 0.04), 0.0, None, 6e-5, 0.03, 0.5, 0.1,
                      True, 100)
    near_glass = ObjectModel("o", np.array([0.40, -0.035, 0.06]), np.array([0.06, 0.06, 0.12]), 0.0, None,
                             3e-4, 0.1, 0.5, 0.1, True, 100)
    names = assign_identities([far, near_glass], template, {})
    assert [(n["name"], n["role"]) for n in names] == [("object_0", "obstacle"), ("glass", "fragile")]
    names = assign_identities([far, near_glass], template, {"object_0": "red_cube", "glass": "obstacle"})
    assert [(n["name"], n["role"]) for n in names] == [("red_cube", "target"), ("glass", "obstacle")]
    with pytest.raises(CaptureError, match="no captured object named"):
        assign_identities([far], template, {"mug": "target"})
    with pytest.raises(CaptureError, match="neither a role"):
        assign_identities([far], template, {"object_0": "teapot"})


def test_capture_of_a_bare_wall_finds_no_plane_and_writes_nothing(tmp_path):
    """A camera facing a wall: no horizontal support plane, a clear error, no scene folder."""
    import cv2

    from safetwin.twin.capture.formats import Intrinsics, write_transforms_json

    cap = tmp_path / "wall"
    (cap / "rgb").mkdir(parents=True)
    (cap / "depth").mkdir()
    intr = Intrinsics(80, 60, 60.0, 60.0, 39.5, 29.5)
    look_x = np.array([[0.0, 0.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.5], [0, 0, 0, 1.0]])
    poses = []
    for i in range(3):
        cv2.imwrite(str(cap / f"rgb/{i}.png"), np.full((60, 80, 3), 120, np.uint8))
        cv2.imwrite(str(cap / f"depth/{i}.png"), np.full((60, 80), 1000 - 20 * i, np.uint16))
        pose = look_x.copy()
        pose[0, 3] = 0.02 * i
        poses.append(pose)
    write_transforms_json(cap / "transforms.json", intr, [f"rgb/{i}.png" for i in range(3)],
                          [f"depth/{i}.png" for i in range(3)], poses)
    out = tmp_path / "scenes"
    with pytest.raises(CaptureError, match="no support plane found"):
        run_capture(CaptureConfig(input=str(cap), name="wall", out_dir=str(out), voxel_size=0.01, progress=False))
    assert list(out.iterdir()) == []


def test_cli_capture_reports_bad_input_with_exit_code_2(tmp_path, caplog):
    """``safetwin capture`` builds CaptureConfig from flags and fails cleanly on a missing folder."""
    from safetwin.cli.main import main

    out = tmp_path / "scenes"
    code = main(["capture", "--input", str(tmp_path / "nowhere"), "--name", "x", "--out-dir", str(out),
                 "--progress", "false", "--roles", "object_0=fragile"])
    assert code == 2
    assert "nowhere: capture folder does not exist" in caplog.text
    assert not (out / "x").exists()


def test_captured_objects_rest_on_a_table_in_pybullet(captured):
    """Each exported URDF (V-HACD collision) dropped on a plane settles upright at its height."""
    import pybullet as p

    report = json.loads((captured / "capture_report.json").read_text())
    cid = p.connect(p.DIRECT)
    try:
        p.setGravity(0, 0, -9.81, physicsClientId=cid)
        p.createMultiBody(0, p.createCollisionShape(p.GEOM_PLANE, physicsClientId=cid), physicsClientId=cid)
        for obj in report["objects"]:
            half = obj["extents"][2] / 2
            body = p.loadURDF(str(captured / "urdf" / f"{obj['name']}.urdf"), [0, 0, half + 0.02],
                              physicsClientId=cid)
            for _ in range(480):
                p.stepSimulation(physicsClientId=cid)
            pos, orn = p.getBasePositionAndOrientation(body, physicsClientId=cid)
            assert pos[2] == pytest.approx(half, abs=0.006), obj["name"]
            assert abs(p.getEulerFromQuaternion(orn)[0]) < 0.05 and abs(p.getEulerFromQuaternion(orn)[1]) < 0.05
            p.removeBody(body, physicsClientId=cid)
    finally:
        p.disconnect(cid)
