"""DynamixelArm against the virtual servo chain on a real pseudo-terminal (A1-A4, C6-C14, D5)."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from safetwin.robot_io import control_table as ct
from safetwin.robot_io import serial_bus
from safetwin.robot_io.driver import (
    ArmConfig,
    DynamixelArm,
    HandshakeError,
    HardwareAlertError,
    LatencyTimerError,
    NotArmedError,
    ServoRebootedError,
    WatchdogTrippedError,
)
from safetwin.robot_io.protocol import ErrorCode
from safetwin.robot_io.serial_bus import CommError, DisconnectedError, DynamixelBus, ServoStatusError
from safetwin.robot_io.virtual_robot import ServoSpec, VirtualRobot

SERVOS = [ServoSpec("waist", 1, "XM540-W270", home_rad=0.5),
          ServoSpec("shoulder", 2, "XM540-W270", secondary_id=3, home_rad=-0.25),
          ServoSpec("wrist", 4, "XM430-W350", home_rad=1.0)]
GOAL = ct.table_for("XM430-W350")["goal_position"]


@pytest.fixture
def vr():
    with VirtualRobot.kinematic(SERVOS) as robot:
        yield robot


def make_arm(vr: VirtualRobot, **overrides) -> DynamixelArm:
    """Generous timeouts and a 1 s bus watchdog so a loaded CI machine cannot trip them by accident."""
    options = {"timeout_s": 0.1, "bus_watchdog_ms": 1000, **overrides}
    return DynamixelArm(ArmConfig.from_dict(vr.arm_config(**options)))


@pytest.fixture
def arm(vr):
    a = make_arm(vr)
    a.connect()
    yield a
    a.disconnect()


def torques(vr: VirtualRobot) -> list[int]:
    return [vr.servo_register(i, "torque_enable") for i in (1, 2, 3, 4)]


def test_connect_configures_servos_and_leaves_torque_off(arm, vr) -> None:
    assert arm.is_connected and not arm.is_armed
    assert torques(vr) == [0, 0, 0, 0]
    assert [vr.servo_register(i, "return_delay_time") for i in (1, 2, 3, 4)] == [0] * 4
    assert [vr.servo_register(i, "bus_watchdog") for i in (1, 2, 3, 4)] == [50] * 4  # 1000 ms / 20 ms
    assert arm.joint_limits[0, 0] == pytest.approx(-np.pi) and arm.joint_limits[0, 1] < np.pi
    info = arm.describe()
    assert [m["firmware"] for m in info["motors"]] == [45, 45, 45] and info["latency_timer_ms"] is None


def test_observation_and_tracking(arm, vr) -> None:
    obs = arm.get_observation()
    assert obs["joint_names"] == ("waist", "shoulder", "wrist")
    np.testing.assert_allclose(obs["position"], [0.5, -0.25, 1.0], atol=2e-3)
    assert obs["voltage"].tolist() == [12.0] * 3 and obs["torque_enabled"].tolist() == [False] * 3
    arm.enable_torque()
    assert torques(vr) == [1, 1, 1, 1]
    target = {"waist": 0.2, "shoulder": 0.1, "wrist": 0.8}
    for _ in range(80):
        obs = arm.get_observation()
        sent = arm.send_action(target)
        time.sleep(0.005)
    assert sent == pytest.approx(target, abs=ct.RAD_PER_TICK)
    np.testing.assert_allclose(obs["position"], [0.2, 0.1, 0.8], atol=0.01)
    assert vr.servo_register(3, "goal_position") == vr.servo_register(2, "goal_position")


def test_A8_arming_holds_the_present_pose(arm, vr) -> None:
    arm.enable_torque()
    assert [vr.servo_register(i, "goal_position") for i in (1, 4)] == [ct.rad_to_ticks(0.5), ct.rad_to_ticks(1.0)]


def test_sign_and_offset_calibration(vr) -> None:
    cfg = vr.arm_config(timeout_s=0.1, bus_watchdog_ms=1000)
    cfg["motors"][2].update(sign=-1, offset_rad=0.1)
    with DynamixelArm(ArmConfig.from_dict(cfg)) as arm:
        assert arm.get_observation()["position"][2] == pytest.approx(-1.0 + 0.1, abs=2e-3)
        arm.enable_torque()
        arm.send_action({"waist": 0.5, "shoulder": -0.25, "wrist": -0.4})
        time.sleep(0.02)
        assert vr.servo_register(4, "goal_position") == ct.rad_to_ticks(0.5)  # servo angle -(q - 0.1)


@pytest.mark.parametrize("action, match", [
    ({"waist": float("nan"), "shoulder": 0.0, "wrist": 0.0}, "non-finite"),
    ({"waist": float("inf"), "shoulder": 0.0, "wrist": 0.0}, "non-finite"),
    ({"waist": 0.0, "shoulder": 0.0}, "do not match"),
    ({"waist": "up", "shoulder": 0.0, "wrist": 0.0}, "must be numbers"),
    ({"waist": 0.0, "shoulder": 0.0, "wrist": 0.0, "elbow": 0.0}, "do not match"),
])
def test_A1_A2_bad_actions_send_nothing(arm, vr, action, match) -> None:
    arm.enable_torque()
    before = [vr.servo_register(i, "goal_position") for i in (1, 2, 4)]
    sent_before = vr.emulator.instructions_seen
    with pytest.raises(ValueError, match=match):
        arm.send_action(action)
    time.sleep(0.01)
    assert vr.emulator.instructions_seen == sent_before
    assert [vr.servo_register(i, "goal_position") for i in (1, 2, 4)] == before


def test_A3_goal_clamped_to_limits_read_from_servos(vr, caplog) -> None:
    with vr.emulator.lock:
        vr.chain.servos[4].set("max_position_limit", ct.rad_to_ticks(1.2))
    with make_arm(vr) as arm:
        arm.enable_torque()
        with caplog.at_level(logging.WARNING):
            sent = arm.send_action({"waist": 0.5, "shoulder": -0.25, "wrist": 2.5})
        assert sent["wrist"] == pytest.approx(1.2, abs=ct.RAD_PER_TICK)
        assert "wrist: goal 2.5000 rad clamped to 1.19" in caplog.text


def test_A4_max_step_clamp(vr) -> None:
    with make_arm(vr, max_step_rad=0.05) as arm:
        arm.enable_torque()
        arm.get_observation()
        sent = arm.send_action({"waist": 1.5, "shoulder": -0.25, "wrist": 1.0})
        assert sent["waist"] == pytest.approx(0.55, abs=2e-3)


def test_not_armed_refuses_motion(arm) -> None:
    with pytest.raises(NotArmedError):
        arm.send_action({"waist": 0.0, "shoulder": 0.0, "wrist": 0.0})
    with pytest.raises(NotArmedError):
        arm.write_goal(np.zeros(3))


def test_C10_latency_timer_16ms_refused_or_warned(vr, tmp_path, monkeypatch, caplog) -> None:
    name = vr.port.rsplit("/", 1)[-1]
    (tmp_path / name).mkdir()
    (tmp_path / name / "latency_timer").write_text("16\n")
    monkeypatch.setattr(serial_bus, "USB_SERIAL_SYSFS", str(tmp_path))
    arm = make_arm(vr)
    with pytest.raises(LatencyTimerError, match="16 ms"):
        arm.connect()
    assert not arm.bus.holds_port
    with caplog.at_level(logging.WARNING), make_arm(vr, latency_timer_policy="warn") as warned:
        assert warned.is_connected and warned.describe()["latency_timer_ms"] == 16
    assert "latency timer is 16 ms" in caplog.text


def assert_rolled_back(arm: DynamixelArm, vr: VirtualRobot) -> None:
    assert not arm.is_connected and not arm.bus.holds_port
    assert torques(vr) == [0, 0, 0, 0]
    with DynamixelBus(vr.port) as other:  # the port was really released
        assert other.ping(1)[0] == 1120
    arm.disconnect()  # D5: disconnect after a failed connect is a no-op


def test_C11_missing_motor_rolls_back(vr) -> None:
    with vr.emulator.lock:
        vr.chain.servos[1].set("torque_enable", 1)  # left energised by an earlier session
    cfg = vr.arm_config(timeout_s=0.05)
    cfg["motors"].append({"name": "gripper", "id": 9, "model": "XM430-W350"})
    arm = DynamixelArm(ArmConfig.from_dict(cfg))
    with pytest.raises(HandshakeError, match="gripper: id 9 does not answer"):
        arm.connect()
    assert_rolled_back(arm, vr)


def test_C11_wrong_model_rolls_back(vr) -> None:
    cfg = vr.arm_config(timeout_s=0.1)
    cfg["motors"][2]["model"] = "XM540-W270"
    arm = DynamixelArm(ArmConfig.from_dict(cfg))
    with pytest.raises(HandshakeError, match="id 4 is model 1020, expected 1120"):
        arm.connect()
    assert_rolled_back(arm, vr)


def test_C11_duplicate_id_on_bus_rolls_back(vr) -> None:
    vr.inject("duplicate")  # two servos answer the first ping
    arm = make_arm(vr)
    with pytest.raises(HandshakeError, match="duplicate"):
        arm.connect()
    assert_rolled_back(arm, vr)


def test_C6_alarm_on_any_joint_raises_with_other_joints_state(arm, vr) -> None:
    arm.enable_torque()
    vr.set_alarm("shoulder", "overheating")
    with pytest.raises(HardwareAlertError) as info:
        arm.get_observation()
    assert info.value.hardware_errors == {"shoulder": ["overheating"]}
    assert isinstance(info.value, RuntimeError) and not isinstance(info.value, ConnectionError)
    obs = info.value.observation
    assert obs["position"][0] == pytest.approx(0.5, abs=2e-3) and obs["position"][2] == pytest.approx(1.0, abs=2e-3)
    assert vr.servo_register(2, "torque_enable") == 0  # overheating is a shutdown bit


def test_C6_alarm_on_secondary_servo_is_seen(arm, vr) -> None:
    with vr.emulator.lock:
        vr.chain.set_hardware_error(3, "overload")
    with pytest.raises(HardwareAlertError) as info:
        arm.get_observation()
    assert info.value.hardware_errors == {"shoulder(secondary)": ["overload"]}


def test_C13_bus_watchdog_trip_is_a_servo_side_stop(vr) -> None:
    arm = make_arm(vr, bus_watchdog_ms=100)
    arm.connect()
    arm.enable_torque()
    arm.send_action({"waist": 1.5, "shoulder": -0.25, "wrist": 1.0})
    time.sleep(0.25)  # silence > 100 ms with torque on
    with pytest.raises(WatchdogTrippedError) as info:
        arm.get_observation()
    assert set(info.value.joints) == {"waist", "shoulder", "shoulder(secondary)", "wrist"}
    assert vr.chain.watchdog_trips == 4
    with pytest.raises(ServoStatusError) as rejected:  # goal writes refused with a Range Error
        arm.bus.write(1, GOAL.address, GOAL.encode(2048))
    assert rejected.value.error_code == ErrorCode.DATA_RANGE_ERROR
    stopped = vr.joint_positions()["waist"]
    time.sleep(0.05)
    assert vr.joint_positions()["waist"] == pytest.approx(stopped, abs=ct.RAD_PER_TICK)  # holding, not moving
    arm.clear_watchdog()  # reset procedure
    assert arm.get_observation()["torque_enabled"].all()
    arm.disconnect()


def test_C12_brownout_detected_by_torque_readback(arm, vr) -> None:
    arm.enable_torque()
    vr.brownout("wrist")
    with pytest.raises(ServoRebootedError, match="wrist"):
        arm.get_observation()
    assert not arm.is_armed
    with pytest.raises(NotArmedError):  # no re-enable without an explicit operator step
        arm.send_action({"waist": 0.5, "shoulder": -0.25, "wrist": 1.0})


def test_C14_disconnect_with_failing_motor_still_turns_off_the_rest(arm, vr) -> None:
    arm.enable_torque()
    vr.inject("drop", 3)  # the torque-off of the first motor (waist) gets no reply, 3 tries
    with pytest.raises(CommError) as info:
        arm.disconnect()
    assert info.value.possibly_energised == ("waist",) and arm.possibly_energised == ("waist",)
    assert [vr.servo_register(i, "torque_enable") for i in (2, 3, 4)] == [0, 0, 0]
    assert not arm.bus.holds_port and not arm.is_connected
    arm.disconnect()  # D5: idempotent


def test_C8_unplug_mid_run(arm, vr) -> None:
    arm.enable_torque()
    arm.get_observation()
    vr.disconnect()
    with pytest.raises(DisconnectedError):
        arm.get_observation()
    assert not arm.is_connected and not arm.is_armed
    arm.disconnect()
    assert arm.possibly_energised == ("waist", "shoulder", "wrist") and not arm.bus.holds_port


def test_reboot_clears_alarm_after_operator_reset(arm, vr) -> None:
    vr.set_alarm("wrist", "overload")
    arm.reboot(["wrist"])
    assert arm.get_observation()["hardware_error"].tolist() == [0, 0, 0]


@pytest.mark.parametrize("patch, match", [
    ({"colour": "red"}, "unknown option"),
    ({"bus_watchdog_ms": 30}, "multiple of 20"),
    ({"latency_timer_policy": "maybe"}, "refuse"),
])
def test_config_is_strict(vr, patch, match) -> None:
    with pytest.raises(ValueError, match=match):
        ArmConfig.from_dict({**vr.arm_config(), **patch})


def test_config_rejects_duplicate_ids_and_unknown_models(vr) -> None:
    cfg = vr.arm_config()
    cfg["motors"][2]["id"] = 3
    with pytest.raises(ValueError, match="duplicate"):
        ArmConfig.from_dict(cfg)
    cfg = vr.arm_config()
    cfg["motors"][0]["model"] = "AX-12"
    with pytest.raises(ValueError, match="unknown Dynamixel model"):
        ArmConfig.from_dict(cfg)
    cfg["motors"][0] = {"name": "w", "id": 1, "model": "XM430-W350", "gear": 2}
    with pytest.raises(ValueError, match=r"motors\[0\].*unknown option"):
        ArmConfig.from_dict(cfg)


def test_C6_alarm_present_at_connect_blocks_arming_until_reboot(vr) -> None:
    vr.set_alarm("wrist", "overload")
    with make_arm(vr) as arm:  # the handshake itself succeeds so the operator can reset
        assert arm.servo_faults == {"wrist": ["overload"]}
        with pytest.raises(HardwareAlertError):
            arm.enable_torque()
        assert torques(vr) == [0, 0, 0, 0]
        arm.reboot(["wrist"])
        arm.enable_torque()
        assert torques(vr) == [1, 1, 1, 1]


def test_C13_tripped_watchdog_at_connect_is_kept_until_reset(vr) -> None:
    with vr.emulator.lock:
        vr.chain.servos[1].set("bus_watchdog", -1)
    with make_arm(vr) as arm:
        assert arm.servo_faults == {"waist": ["bus_watchdog_tripped"]}
        assert vr.servo_register(1, "bus_watchdog") == -1  # connect did not clear it
        with pytest.raises(WatchdogTrippedError, match="waist"):
            arm.enable_torque()
        arm.clear_watchdog()
        arm.enable_torque()
        assert vr.servo_register(1, "bus_watchdog") == 50


def test_twin_style_keys_are_accepted_and_returned(arm) -> None:
    """Same keys as twin.robot.Robot: observations carry '<joint>.pos/.vel', actions may use '.pos'."""
    arm.enable_torque()
    obs = arm.get_observation()
    assert obs["waist.pos"] == pytest.approx(0.5, abs=2e-3) and "wrist.vel" in obs
    assert set(arm.observation_features) <= set(obs) and list(arm.action_features)[0] == "waist.pos"
    sent = arm.send_action({"waist.pos": 0.4, "shoulder.pos": -0.25, "wrist.pos": 1.0})
    assert set(sent) == {"waist.pos", "shoulder.pos", "wrist.pos"}
    with pytest.raises(ValueError, match="do not match"):
        arm.send_action({"waist.pos": 0.4, "shoulder": -0.25, "wrist.pos": 1.0})


def test_C7_refused_register_write_names_joint_register_and_value(arm, vr) -> None:
    arm.enable_torque()  # EEPROM is now locked
    with pytest.raises(ServoStatusError, match=r"wrist: register return_delay_time := 3") as info:
        arm.write_register("wrist", "return_delay_time", 3)
    assert info.value.error_code == ErrorCode.ACCESS_ERROR and info.value.register == "return_delay_time"
    arm.write_register("shoulder", "profile_velocity", 50)
    assert vr.servo_register(3, "profile_velocity") == 50 and arm.read_register("shoulder", "profile_velocity") == 50


def test_C1_failed_cycle_then_reconnect_starts_disarmed(vr) -> None:
    """After bus failures the driver never resumes by itself; a new connect() starts torque-off."""
    arm = make_arm(vr)
    arm.connect()
    arm.enable_torque()
    vr.inject("drop", 12)  # 3 sync-read attempts x 4 servos
    with pytest.raises(CommError):
        arm.get_observation()
    assert arm.is_armed  # a failed cycle is the supervisor's call (C1), not a silent disarm
    arm.disconnect()
    arm.connect()
    assert arm.is_connected and not arm.is_armed and torques(vr) == [0, 0, 0, 0]
    arm.disconnect()
