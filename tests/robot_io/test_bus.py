"""DynamixelBus against the virtual servo chain over a real pseudo-terminal (C1-C9)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safetwin.robot_io import control_table as ct
from safetwin.robot_io.protocol import ErrorCode
from safetwin.robot_io.serial_bus import (
    CommError,
    DisconnectedError,
    DynamixelBus,
    PortBusyError,
    ServoAlertError,
    ServoStatusError,
)
from safetwin.robot_io.virtual_robot import ServoSpec, VirtualRobot

SERVOS = [ServoSpec("waist", 1, "XM540-W270", home_rad=0.5),
          ServoSpec("shoulder", 2, "XM540-W270", secondary_id=3, home_rad=-0.25),
          ServoSpec("wrist", 4, "XM430-W350", home_rad=1.0)]
PRESENT = ct.table_for("XM430-W350")["present_position"]


@pytest.fixture
def vr():
    with VirtualRobot.kinematic(SERVOS) as robot:
        yield robot


@pytest.fixture
def bus(vr):
    with DynamixelBus(vr.port, timeout_s=0.1, retries=2) as b:
        yield b


def position(bus: DynamixelBus, sid: int) -> int:
    return PRESENT.decode(bus.read(sid, PRESENT.address, PRESENT.size))


def test_ping_read_write_round_trip(bus, vr) -> None:
    assert bus.ping(1) == (1120, 45) and bus.ping(4) == (1020, 45)
    assert position(bus, 1) == ct.rad_to_ticks(0.5)
    assert position(bus, 4) == ct.rad_to_ticks(1.0)
    led = ct.table_for("XM430-W350")["led"]
    bus.write(4, led.address, b"\x01")
    assert bus.read(4, led.address, 1) == b"\x01" and vr.servo_register(4, "led") == 1
    assert all(v == 0 for v in bus.fault_counts().values())


def test_sync_read_returns_each_servo_its_own_data(bus) -> None:
    got = bus.sync_read([1, 2, 3, 4], PRESENT.address, PRESENT.size)
    assert {i: PRESENT.decode(d) for i, d in got.items()} == {
        1: ct.rad_to_ticks(0.5), 2: ct.rad_to_ticks(-0.25), 3: ct.rad_to_ticks(-0.25), 4: ct.rad_to_ticks(1.0)}


def test_C1_dropped_reply_is_retried_within_bound(bus, vr) -> None:
    vr.inject("drop", 2)
    assert position(bus, 1) == ct.rad_to_ticks(0.5)
    counts = bus.fault_counts()
    assert counts["timeouts"] == 2 and counts["retries"] == 2


def test_C1_no_reply_gives_comm_error_after_bounded_attempts(bus, vr) -> None:
    vr.inject("drop", 3)
    t0 = time.monotonic()
    with pytest.raises(CommError, match="after 3 attempt") as info:
        position(bus, 4)
    assert info.value.servo_ids == (4,) and info.value.attempts == 3
    assert time.monotonic() - t0 < 5.0  # bounded: never a blocking read (3 x 100 ms nominal)
    assert not isinstance(info.value, DisconnectedError)


def test_C2_truncated_reply_with_late_tail_is_not_glued_to_next_reply(bus, vr) -> None:
    vr.inject("truncate", keep=9, rest_after_s=0.15)
    assert position(bus, 1) == ct.rad_to_ticks(0.5)  # retry answers; the old tail is noise
    time.sleep(0.1)
    assert position(bus, 4) == ct.rad_to_ticks(1.0)
    counts = bus.fault_counts()
    assert counts["timeouts"] >= 1 and counts["garbage_bytes"] + counts["late_bytes"] > 0


def test_C3_corrupted_reply_is_rejected_and_counted(bus, vr) -> None:
    vr.inject("corrupt", bit=8 * 9 + 3)  # inside the position bytes
    assert position(bus, 1) == ct.rad_to_ticks(0.5)
    assert bus.fault_counts()["crc_errors"] == 1


def test_C4_garbage_before_header_is_skipped(bus, vr) -> None:
    vr.inject("garbage", data=bytes.fromhex("FF FF FD FF 00 FF FF FD 00 01"))
    assert position(bus, 4) == ct.rad_to_ticks(1.0)
    assert bus.fault_counts()["retries"] == 0


def test_C5_wrong_id_reply_is_discarded(bus, vr) -> None:
    vr.inject("wrong_id", servo_id=4)
    assert position(bus, 1) == ct.rad_to_ticks(0.5)
    assert bus.fault_counts()["wrong_id"] == 1


def test_C5_late_reply_is_not_taken_for_another_servo(vr) -> None:
    with DynamixelBus(vr.port, timeout_s=0.4, retries=0) as bus:
        vr.inject("delay", delay_s=0.6)  # id 1's reply lands inside the next transaction
        vr.inject("delay", delay_s=0.3)
        with pytest.raises(CommError):
            position(bus, 1)
        assert position(bus, 4) == ct.rad_to_ticks(1.0)
        assert bus.fault_counts()["wrong_id"] == 1


def test_C5_duplicate_in_sync_read_is_discarded(bus, vr) -> None:
    vr.inject("duplicate", 2)
    got = bus.sync_read([1, 4], PRESENT.address, PRESENT.size)
    assert PRESENT.decode(got[1]) == ct.rad_to_ticks(0.5) and PRESENT.decode(got[4]) == ct.rad_to_ticks(1.0)
    assert position(bus, 4) == ct.rad_to_ticks(1.0)
    counts = bus.fault_counts()  # a duplicate is discarded in the transaction or drained before the next
    assert counts["duplicates"] >= 1 and counts["duplicates"] * 15 + counts["late_bytes"] == 2 * 15


def test_C5_missing_servo_in_sync_read_is_re_requested_alone(bus, vr) -> None:
    vr.inject("drop")
    got = bus.sync_read([1, 2, 4], PRESENT.address, PRESENT.size)
    assert PRESENT.decode(got[1]) == ct.rad_to_ticks(0.5) and PRESENT.decode(got[2]) == ct.rad_to_ticks(-0.25)
    assert bus.fault_counts()["retries"] == 1


@pytest.mark.parametrize("path", ["ping", "read", "write", "sync_read"])
def test_C6_alert_bit_detected_on_every_read_path(bus, vr, path) -> None:
    vr.set_alarm("wrist", "overload")
    led = ct.table_for("XM430-W350")["led"]
    calls = {"ping": lambda: bus.ping(4), "read": lambda: position(bus, 4),
             "write": lambda: bus.write(4, led.address, b"\x01"),
             "sync_read": lambda: bus.sync_read([1, 2, 4], PRESENT.address, PRESENT.size)}
    with pytest.raises(ServoAlertError) as info:
        calls[path]()
    assert info.value.alert_ids == (4,)
    if path == "sync_read":  # the other joints' data is still delivered, untouched
        assert PRESENT.decode(info.value.data[1]) == ct.rad_to_ticks(0.5)
    assert bus.fault_counts()["alerts"] == 1


def test_C7_status_errors_are_typed_with_register_and_value(bus) -> None:
    table = ct.table_for("XM430-W350")
    with pytest.raises(ServoStatusError) as info:
        bus.write(4, PRESENT.address, (100).to_bytes(4, "little"))  # read-only
    assert info.value.error_code == ErrorCode.ACCESS_ERROR and info.value.address == PRESENT.address
    assert info.value.value == (100).to_bytes(4, "little") and "servo 4" in str(info.value)
    assert not isinstance(info.value, ConnectionError)
    bus.write(4, table["torque_enable"].address, b"\x01")
    with pytest.raises(ServoStatusError) as eeprom:  # EEPROM is locked while torque is on
        bus.write(4, table["return_delay_time"].address, b"\x00")
    assert eeprom.value.error_code == ErrorCode.ACCESS_ERROR
    goal = table["goal_position"]
    with pytest.raises(ServoStatusError) as limit:
        bus.write(4, goal.address, goal.encode(5000))
    assert limit.value.error_code == ErrorCode.DATA_LIMIT_ERROR
    assert bus.fault_counts()["status_errors"] == 3


def test_C8_unplug_is_a_latched_disconnection(bus, vr) -> None:
    assert position(bus, 1) == ct.rad_to_ticks(0.5)
    vr.disconnect()
    with pytest.raises(DisconnectedError):
        position(bus, 1)
    with pytest.raises(DisconnectedError, match="latched"):
        bus.ping(1)
    assert not bus.is_open and bus.fault_counts()["disconnects"] == 1


def test_C9_second_open_of_the_port_fails_fast(bus, vr) -> None:
    with pytest.raises(PortBusyError):
        DynamixelBus(vr.port).open()
    code = ("import sys; from safetwin.robot_io.serial_bus import DynamixelBus, PortBusyError\n"
            f"try:\n    DynamixelBus({vr.port!r}).open()\nexcept PortBusyError:\n    sys.exit(3)\n")
    result = subprocess.run([sys.executable, "-c", code], timeout=60, capture_output=True)
    assert result.returncode == 3, result.stderr.decode()
    assert position(bus, 1) == ct.rad_to_ticks(0.5)  # the owner is unaffected


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        DynamixelBus("/dev/null", timeout_s=0)
    with pytest.raises(ValueError):
        DynamixelBus("/dev/null", retries=9)
    with pytest.raises(CommError, match="cannot open"):
        DynamixelBus("/nonexistent/tty").open()


FAULTS = st.sampled_from(["drop", "corrupt", "garbage", "wrong_id", "duplicate", "truncate", None])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=st.lists(st.tuples(FAULTS, st.sampled_from([1, 2, 4])), min_size=1, max_size=6))
def test_C1_C5_random_fault_sequences_never_yield_another_servos_data(vr, plan) -> None:
    """Whatever mix of faults hits the replies, a read returns that servo's value or raises CommError."""
    truth = {1: ct.rad_to_ticks(0.5), 2: ct.rad_to_ticks(-0.25), 4: ct.rad_to_ticks(1.0)}
    vr.emulator.clear_faults()
    with DynamixelBus(vr.port, timeout_s=0.03, retries=2) as bus:
        for fault, _ in plan:
            if fault is not None:
                vr.inject(fault, servo_id=2) if fault == "wrong_id" else vr.inject(fault)
        for _, sid in plan:
            try:
                assert position(bus, sid) == truth[sid]
            except CommError:
                pass
        try:
            got = bus.sync_read([1, 2, 4], PRESENT.address, PRESENT.size)
        except CommError:
            got = {}
        assert all(PRESENT.decode(d) == truth[i] for i, d in got.items())
