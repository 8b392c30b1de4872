"""Scenario A7: a units error or a sign-flipped joint is caught by the startup self-check
(a small probe motion, measured direction and magnitude, holding current against the twin's
gravity model) and the runner refuses to arm. Real bytes: the project's driver talks to the
virtual robot (pybullet plant) on a pseudo-terminal; the fault is a mismatch between the
hardware (the emulator's servo mounting) and the driver's configuration, as on a real rig."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from safetwin.robot_io.driver import ArmConfig, DynamixelArm
from safetwin.robot_io.emulator_plant import PybulletPlant, servo_specs_from_scene
from safetwin.robot_io.startup_probe import ProbeConfig, run_startup_probe
from safetwin.robot_io.virtual_robot import VirtualRobot, motors_for
from safetwin.twin.dynamics import GravityModel
from safetwin.twin.scene import load_scene

SCENE = load_scene("reach_avoid")
SPECS = servo_specs_from_scene(SCENE)
LOWER = [j.lower for j in SCENE.safety.joints]
UPPER = [j.upper for j in SCENE.safety.joints]


@pytest.fixture(scope="module")
def gravity():
    model = GravityModel.for_scene(SCENE)
    yield model
    model.close()


def probe_rig(gravity, hardware=SPECS, motors=None):
    """Run the probe on a virtual arm built from ``hardware`` with a driver configured by ``motors``
    (default: the scene's, i.e. what the software believes); returns (report, torque left on?)."""
    with VirtualRobot(hardware, PybulletPlant.from_scene(SCENE, hardware)) as vr:
        cfg = {**vr.arm_config(), "motors": motors or motors_for(SPECS), "latency_timer_policy": "ignore"}
        with DynamixelArm(ArmConfig.from_dict(cfg)) as arm:
            start = arm.get_observation()["position"].copy()
            report = run_startup_probe(arm, SCENE.safety.joint_names, LOWER, UPPER, ProbeConfig(),
                                       gravity=gravity.torques)
            end = arm.get_observation()["position"]
            torque = [vr.servo_register(s.id, "torque_enable") for s in hardware]
    return report, start, end, torque


def flipped(joint):
    return [dataclasses.replace(s, scale=-s.scale) if s.joint == joint else s for s in SPECS]


def test_A7_probe_passes_on_a_correct_arm_and_gravity_confirms_the_loaded_joints(gravity):
    report, start, end, torque = probe_rig(gravity)
    assert report.passed, report.failures()
    by_joint = {j.joint: j for j in report.joints}
    assert [j.joint for j in report.joints] == list(SCENE.safety.joint_names)
    for j in report.joints:  # each joint moved the commanded way by about the commanded amount
        assert j.measured_rad * j.commanded_rad > 0
        assert abs(j.measured_rad / j.commanded_rad - 1.0) < 0.3 and j.crosstalk_rad < 0.01
    assert by_joint["shoulder"].gravity == by_joint["elbow"].gravity == "agrees"
    # a vertical waist axis carries no gravity torque: reported unverified, never claimed as checked
    assert "waist" in report.unverified and "shoulder" not in report.unverified
    assert not any(torque), "torque must be off again after the probe"
    assert np.max(np.abs(end - start)) < 0.01  # back where it started


@pytest.mark.parametrize("joint", ["shoulder", "elbow"])
def test_A7_sign_flipped_joint_is_refused(gravity, joint):
    report, _, _, torque = probe_rig(gravity, hardware=flipped(joint))
    assert not report.passed
    assert any(f.startswith(f"{joint}:") and "sign-flipped" in f for f in report.failures()), report.failures()
    # the encoder alone would not have seen it: the flipped joint still moved as commanded
    moved = next(j for j in report.joints if j.joint == joint)
    assert moved.measured_rad * moved.commanded_rad > 0
    assert not any(torque)


def test_A7_units_error_is_refused_before_any_motion(gravity):
    """The elbow configured as if its servo reported degrees: the software's pose is far outside
    the joint limits, so the probe refuses without enabling torque."""
    motors = motors_for(SPECS)
    elbow = next(m for m in motors if m["name"] == "elbow")
    elbow["scale"] = 180.0 / math.pi
    report, start, end, torque = probe_rig(gravity, motors=motors)
    assert not report.passed and not report.joints
    assert any("elbow" in p and "units" in p for p in report.failures()), report.failures()
    assert not any(torque) and np.allclose(start, end, atol=1e-3)


def test_A7_swapped_bus_ids_are_refused(gravity):
    """Waist and shoulder wired to each other's IDs: each moves as commanded on its own encoder,
    but the joint the software calls the shoulder carries no gravity load."""
    motors = motors_for(SPECS)
    waist = next(m for m in motors if m["name"] == "waist")
    shoulder = next(m for m in motors if m["name"] == "shoulder")
    waist["id"], shoulder["id"] = shoulder["id"], waist["id"]
    waist["secondary_id"], shoulder["secondary_id"] = shoulder.get("secondary_id"), None
    waist = {k: v for k, v in waist.items() if v is not None}
    motors = [waist if m["name"] == "waist" else {k: v for k, v in m.items() if v is not None} for m in motors]
    report, *_ = probe_rig(gravity, motors=motors)
    assert not report.passed
    assert any(f.startswith("shoulder:") for f in report.failures()), report.failures()


def test_A7_probe_config_is_validated():
    with pytest.raises(ValueError, match="amplitude_rad"):
        ProbeConfig(amplitude_rad=0.0)
    with pytest.raises(ValueError, match="crosstalk_rad < amplitude_rad"):
        ProbeConfig(amplitude_rad=0.01, crosstalk_rad=0.02)
    with pytest.raises(ValueError, match="enabled"):
        ProbeConfig(enabled="yes")


def test_A7_deploy_refuses_to_arm_a_sign_flipped_arm_and_latches(tmp_path):
    """The runner on the scene's pybullet virtual robot with the elbow mounted reversed: the
    self-check fails right after the start-up arm command, the supervisor stops and latches with
    cause ``self_check`` before the control loop runs, and the run ends through the safe shutdown."""
    import json

    from safetwin.robot_io.deploy import run_deploy
    from safetwin.robot_io.deploy_config import DeployConfig
    from safetwin.robot_io.startup_probe import ProbeError
    from safetwin.safety.runio import config_from_dict

    hardware = flipped("elbow")
    cfg = config_from_dict(DeployConfig, {"run_dir": str(tmp_path / "runs"), "duration_s": 1.0}, "deploy")
    with VirtualRobot(hardware, PybulletPlant.from_scene(SCENE, hardware)) as vr:
        arm_cfg = {**vr.arm_config(), "motors": motors_for(SPECS), "latency_timer_policy": "ignore"}
        arm = DynamixelArm(ArmConfig.from_dict(arm_cfg))
        arm.connect()
        with pytest.raises(ProbeError, match="elbow"):
            run_deploy(cfg, arm=arm)
        assert not any(vr.servo_register(s.id, "torque_enable") for s in hardware)
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "aborted" and "self-check" in summary["error"]
    assert summary["cycles"] == 0 and summary["startup_probe"]["passed"] is False
    assert summary["supervisor"]["state"] == "LATCHED"
    assert [s["cause"] for s in summary["stops"]] == ["self_check"]
    assert "self_check" in summary["supervisor"]["persisting"]
