"""Cross-check with ROBOTIS' official dynamixel-sdk 4.1.0 over the same pseudo-terminal.

The SDK must talk to our emulator (ping, read/write, sync read/write) and see the same values
as our bus/driver. Known divergence: the SDK's Python ``addStuffing`` drops byte stuffing
whenever it would lengthen the packet, so payloads containing ``FF FF FD`` are avoided here
(goal positions 0..4095 never contain it); one test pins the divergence itself.
"""

from __future__ import annotations

import os
import tty

import pytest

sdk = pytest.importorskip("dynamixel_sdk")

from safetwin.robot_io import control_table as ct  # noqa: E402
from safetwin.robot_io import protocol as proto  # noqa: E402
from safetwin.robot_io.serial_bus import DynamixelBus  # noqa: E402
from safetwin.robot_io.virtual_robot import ServoSpec, VirtualRobot  # noqa: E402

SERVOS = [ServoSpec("waist", 1, "XM540-W270", home_rad=0.3),
          ServoSpec("wrist", 4, "XM430-W350", home_rad=-0.7)]
T = ct.table_for("XM430-W350")


@pytest.fixture
def vr():
    with VirtualRobot.kinematic(SERVOS) as robot:
        yield robot


def open_sdk(port: str):
    handler = sdk.PortHandler(port)
    assert handler.openPort() and handler.setBaudRate(1_000_000)
    return handler, sdk.PacketHandler(2.0)


def ours(port: str, fn):
    with DynamixelBus(port, timeout_s=0.2) as bus:
        return fn(bus)


def test_sdk_ping_and_read_match_our_bus(vr) -> None:
    port, ph = open_sdk(vr.port)
    try:
        model, result, error = ph.ping(port, 4)
        assert (model, result, error) == (1020, sdk.COMM_SUCCESS, 0)
        sdk_pos, result, error = ph.read4ByteTxRx(port, 1, T["present_position"].address)
        assert result == sdk.COMM_SUCCESS and error == 0
    finally:
        port.closePort()
    ours_pos = ours(vr.port, lambda b: T["present_position"].decode(b.read(1, T["present_position"].address, 4)))
    assert sdk_pos == ours_pos == ct.rad_to_ticks(0.3)
    assert ours(vr.port, lambda b: b.ping(4)) == (1020, 45)


def test_sdk_writes_are_read_back_by_our_bus(vr) -> None:
    port, ph = open_sdk(vr.port)
    try:
        assert ph.write1ByteTxRx(port, 4, T["led"].address, 1)[0] == sdk.COMM_SUCCESS
        assert ph.write1ByteTxRx(port, 4, T["torque_enable"].address, 1)[0] == sdk.COMM_SUCCESS
        assert ph.write4ByteTxRx(port, 4, T["goal_position"].address, 1500)[0] == sdk.COMM_SUCCESS
        # the emulator answers the SDK with a typed error, as a servo would (EEPROM locked by torque)
        result, error = ph.write1ByteTxRx(port, 4, T["return_delay_time"].address, 0)
        assert result == sdk.COMM_SUCCESS and error == proto.ErrorCode.ACCESS_ERROR
    finally:
        port.closePort()
    block = ours(vr.port, lambda b: b.read(4, T["torque_enable"].address, 2))
    assert block == b"\x01\x01"
    assert ours(vr.port, lambda b: T["goal_position"].decode(b.read(4, T["goal_position"].address, 4))) == 1500


def test_sdk_sync_read_and_sync_write_match_ours(vr) -> None:
    goal = T["goal_position"]
    ours(vr.port, lambda b: b.sync_write(goal.address, 4, {1: goal.encode(1111), 4: goal.encode(3333)}))
    port, ph = open_sdk(vr.port)
    try:
        reader = sdk.GroupSyncRead(port, ph, goal.address, 4)
        assert reader.addParam(1) and reader.addParam(4)
        assert reader.txRxPacket() == sdk.COMM_SUCCESS
        sdk_goals = {i: reader.getData(i, goal.address, 4) for i in (1, 4)}
        writer = sdk.GroupSyncWrite(port, ph, goal.address, 4)
        assert writer.addParam(1, list(goal.encode(2222))) and writer.addParam(4, list(goal.encode(444)))
        assert writer.txPacket() == sdk.COMM_SUCCESS
    finally:
        port.closePort()
    assert sdk_goals == {1: 1111, 4: 3333}
    got = ours(vr.port, lambda b: b.sync_read([1, 4], goal.address, 4))
    assert {i: goal.decode(d) for i, d in got.items()} == {1: 2222, 4: 444}


def test_sdk_unstuffed_packet_differs_from_emanual() -> None:
    """Pins the SDK divergence: its write of data FF FF FD 00 goes out unstuffed (LEN 9), ours
    stuffs it (LEN 10) as the e-manual requires, and our parser rejects the SDK's frame."""
    master, slave = os.openpty()
    tty.setraw(slave)
    port, ph = open_sdk(os.ttyname(slave))
    try:
        port.setPacketTimeoutMillis(1)
        ph.writeTxOnly(port, 1, 116, 4, [0xFF, 0xFF, 0xFD, 0x00])
        sdk_frame = os.read(master, 64)
    finally:
        port.closePort()
        os.close(master)
        os.close(slave)
    ours_frame = proto.write(1, 116, bytes.fromhex("FF FF FD 00"))
    assert sdk_frame[5] == 9 and ours_frame[5] == 10
    parser = proto.PacketParser()
    assert parser.feed(sdk_frame) == [] and parser.stats.bad_stuffing == 1
    assert proto.parse_all(ours_frame)[0].params == bytes.fromhex("74 00 FF FF FD 00")


def test_sdk_and_our_driver_agree_on_joint_state_and_goals(vr) -> None:
    from safetwin.robot_io.driver import ArmConfig, DynamixelArm

    present = T["present_position"]
    port, ph = open_sdk(vr.port)
    try:
        reader = sdk.GroupSyncRead(port, ph, present.address, 4)
        assert reader.addParam(1) and reader.addParam(4) and reader.txRxPacket() == sdk.COMM_SUCCESS
        sdk_ticks = [reader.getData(i, present.address, 4) for i in (1, 4)]
    finally:
        port.closePort()
    with DynamixelArm(ArmConfig.from_dict(vr.arm_config(timeout_s=0.1, bus_watchdog_ms=1000))) as arm:
        obs = arm.get_observation()
        assert obs["position"].tolist() == [float(ct.ticks_to_rad(t)) for t in sdk_ticks]
        arm.enable_torque()
        sent = arm.send_action({"waist": 0.25, "wrist": -0.5})
    port, ph = open_sdk(vr.port)
    try:
        goals = [ph.read4ByteTxRx(port, i, T["goal_position"].address)[0] for i in (1, 4)]
        torque = [ph.read1ByteTxRx(port, i, T["torque_enable"].address)[0] for i in (1, 4)]
    finally:
        port.closePort()
    assert goals == [ct.rad_to_ticks(sent["waist"]), ct.rad_to_ticks(sent["wrist"])]
    assert torque == [0, 0]  # our disconnect switched torque off; the SDK sees it
