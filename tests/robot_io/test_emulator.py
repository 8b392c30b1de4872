"""Device-side servo semantics of the emulator, packet in / packet out (no pty, manual clock)."""

from __future__ import annotations

import pytest

from safetwin.robot_io import control_table as ct
from safetwin.robot_io import protocol as proto
from safetwin.robot_io.emulator import KinematicPlant, ServoChain
from safetwin.robot_io.emulator_port import ReplyFault, _apply
from safetwin.robot_io.protocol import ErrorCode

T = ct.table_for("XM430-W350")


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def chain(clock):
    plant = KinematicPlant({1: 0.0, 2: 0.4}, time_constant_s=0.02)
    return ServoChain({1: "XM430-W350", 2: "XM540-W270"}, plant, clock=clock)


def send(chain: ServoChain, frame: bytes) -> list[proto.Packet]:
    (packet,) = proto.parse_all(frame)
    return [p for reply in chain.handle(packet) for p in proto.parse_all(reply)]


def write(chain: ServoChain, sid: int, name: str, value: int) -> int:
    reg = T[name]
    (status,) = send(chain, proto.write(sid, reg.address, reg.encode(value)))
    return status.error


def read(chain: ServoChain, sid: int, name: str) -> int:
    reg = T[name]
    (status,) = send(chain, proto.read(sid, reg.address, reg.size))
    assert status.error_code == 0
    return reg.decode(status.params)


def test_ping_reports_model_and_firmware(chain) -> None:
    (status,) = send(chain, proto.ping(2))
    assert status.params == (1120).to_bytes(2, "little") + bytes([45])
    assert [p.servo_id for p in send(chain, proto.ping(proto.BROADCAST_ID))] == [1, 2]
    assert send(chain, proto.ping(7)) == []  # nobody home


def test_eeprom_locked_while_torque_on_and_read_only_refused(chain) -> None:
    assert write(chain, 1, "return_delay_time", 0) == 0
    assert write(chain, 1, "torque_enable", 1) == 0
    assert write(chain, 1, "return_delay_time", 10) == ErrorCode.ACCESS_ERROR
    assert read(chain, 1, "return_delay_time") == 0
    assert write(chain, 1, "present_position", 0) == ErrorCode.ACCESS_ERROR
    assert write(chain, 1, "goal_position", 9999) == ErrorCode.DATA_LIMIT_ERROR
    (status,) = send(chain, proto.encode_packet(1, 0x77, b""))
    assert status.error_code == ErrorCode.INSTRUCTION_ERROR


def test_goal_position_drives_the_plant_at_profile_speed(chain, clock) -> None:
    write(chain, 1, "profile_velocity", 100)  # 100 * 0.229 rpm = 2.398 rad/s
    write(chain, 1, "torque_enable", 1)
    write(chain, 1, "goal_position", ct.rad_to_ticks(1.0))
    for _ in range(10):
        clock.t += 0.01
        chain.tick()
    q = float(ct.ticks_to_rad(read(chain, 1, "present_position")))
    assert q == pytest.approx(0.1 * 100 * ct.RAD_S_PER_VELOCITY_UNIT, abs=2 * ct.RAD_PER_TICK)
    assert read(chain, 1, "moving") == 1 and read(chain, 1, "present_velocity") == 100


def test_C13_bus_watchdog_trips_stops_and_rejects_goals_until_cleared(chain, clock) -> None:
    write(chain, 1, "bus_watchdog", 5)  # 100 ms
    write(chain, 1, "torque_enable", 1)
    write(chain, 1, "goal_position", ct.rad_to_ticks(1.0))
    clock.t += 0.05
    chain.tick()
    clock.t += 0.06  # 110 ms since the last instruction
    chain.tick()
    assert chain.servos[1].get("bus_watchdog") == ct.WATCHDOG_TRIPPED and chain.watchdog_trips == 1
    held = chain.servos[1].get("present_position")
    assert chain.servos[1].get("goal_position") == held
    assert write(chain, 1, "goal_position", 2048) == ErrorCode.DATA_RANGE_ERROR
    assert read(chain, 1, "bus_watchdog") == -1
    assert write(chain, 1, "bus_watchdog", 0) == 0  # the clear
    assert write(chain, 1, "goal_position", 2048) == 0


def test_watchdog_is_idle_while_torque_off(chain, clock) -> None:
    write(chain, 2, "bus_watchdog", 1)
    clock.t += 1.0
    chain.tick()
    assert chain.servos[2].get("bus_watchdog") == 1


def test_C6_alarm_sets_alert_on_every_status_and_shuts_down(chain) -> None:
    write(chain, 1, "torque_enable", 1)
    chain.set_hardware_error(1, "overload")
    assert chain.servos[1].get("torque_enable") == 0
    assert all(p.alert for p in send(chain, proto.sync_read([1, 2], 132, 4)) if p.servo_id == 1)
    assert not [p for p in send(chain, proto.sync_read([1, 2], 132, 4)) if p.servo_id == 2 and p.alert]
    assert write(chain, 1, "torque_enable", 1) == proto.ALERT_BIT | ErrorCode.RESULT_FAIL
    assert read(chain, 2, "hardware_error_status") == 0
    (status,) = send(chain, proto.read(1, 70, 1))
    assert status.alert and status.params == bytes([1 << 5])


def test_C12_reboot_and_brownout_reset_ram_not_eeprom(chain) -> None:
    write(chain, 1, "return_delay_time", 0)
    write(chain, 1, "led", 1)
    write(chain, 1, "torque_enable", 1)
    chain.set_hardware_error(1, "input_voltage")  # not a shutdown bit by default
    (status,) = send(chain, proto.reboot(1))
    assert status.alert  # the status goes out before the reboot
    assert (read(chain, 1, "torque_enable"), read(chain, 1, "led"), read(chain, 1, "hardware_error_status")) == (0, 0, 0)
    assert read(chain, 1, "return_delay_time") == 0
    write(chain, 2, "torque_enable", 1)
    chain.brownout(2)
    assert read(chain, 2, "torque_enable") == 0


def test_status_return_level(chain) -> None:
    level = T["status_return_level"]
    assert send(chain, proto.write(1, level.address, b"\x01")) == []  # already applies to its own reply
    assert send(chain, proto.write(1, T["led"].address, b"\x01")) == []
    assert read(chain, 1, "led") == 1
    assert len(send(chain, proto.ping(1))) == 1


def test_sync_read_only_present_ids_reply_in_order(chain) -> None:
    replies = send(chain, proto.sync_read([2, 9, 1], T["present_position"].address, 4))
    assert [p.servo_id for p in replies] == [2, 1]
    assert T["present_position"].decode(replies[0].params) == ct.rad_to_ticks(0.4)


def test_sync_write_applies_silently(chain) -> None:
    goal = T["goal_position"]
    assert send(chain, proto.sync_write(goal.address, 4, {1: goal.encode(100), 2: goal.encode(200)})) == []
    assert (chain.servos[1].get("goal_position"), chain.servos[2].get("goal_position")) == (100, 200)


@pytest.mark.parametrize("fault, check", [
    (ReplyFault("drop"), lambda out, f: out == []),
    (ReplyFault("delay", delay_s=0.5), lambda out, f: out == [(10.5, f)]),
    (ReplyFault("truncate", keep=4, rest_after_s=0.1), lambda out, f: out == [(10.0, f[:4]), (10.1, f[4:])]),
    (ReplyFault("corrupt", bit=3), lambda out, f: out[0][1][0] == f[0] ^ 8 and out[0][1][1:] == f[1:]),
    (ReplyFault("garbage", data=b"\x01\x02"), lambda out, f: out == [(10.0, b"\x01\x02" + f)]),
    (ReplyFault("wrong_id", servo_id=7), lambda out, f: proto.parse_all(out[0][1])[0].servo_id == 7),
    (ReplyFault("duplicate"), lambda out, f: out == [(10.0, f), (10.0, f)]),
])
def test_reply_fault_shapes(fault, check) -> None:
    frame = proto.encode_status(1, 0, b"\x10\x20")
    assert check(_apply(fault, frame, 10.0), frame)


def test_unknown_fault_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown reply fault"):
        ReplyFault("explode")


def test_broadcast_write_is_applied_without_replies(chain) -> None:
    assert send(chain, proto.write(proto.BROADCAST_ID, T["led"].address, b"\x01")) == []
    assert read(chain, 1, "led") == 1 and read(chain, 2, "led") == 1
