"""X-series control table data and unit conversions (values from the ROBOTIS e-manual)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from safetwin.robot_io import control_table as ct

# (address, size, writable, eeprom) as printed in the XM430-W350 / XM540-W270 control tables.
EMANUAL = {
    "model_number": (0, 2, False, True), "firmware_version": (6, 1, False, True), "id": (7, 1, True, True),
    "baud_rate": (8, 1, True, True), "return_delay_time": (9, 1, True, True), "drive_mode": (10, 1, True, True),
    "operating_mode": (11, 1, True, True), "homing_offset": (20, 4, True, True),
    "temperature_limit": (31, 1, True, True), "max_voltage_limit": (32, 2, True, True),
    "min_voltage_limit": (34, 2, True, True), "pwm_limit": (36, 2, True, True),
    "current_limit": (38, 2, True, True), "acceleration_limit": (40, 4, True, True),
    "velocity_limit": (44, 4, True, True), "max_position_limit": (48, 4, True, True),
    "min_position_limit": (52, 4, True, True), "shutdown": (63, 1, True, True),
    "torque_enable": (64, 1, True, False), "led": (65, 1, True, False),
    "status_return_level": (68, 1, True, False), "hardware_error_status": (70, 1, False, False),
    "bus_watchdog": (98, 1, True, False), "goal_pwm": (100, 2, True, False),
    "goal_current": (102, 2, True, False), "goal_velocity": (104, 4, True, False),
    "profile_acceleration": (108, 4, True, False), "profile_velocity": (112, 4, True, False),
    "goal_position": (116, 4, True, False), "moving": (122, 1, False, False),
    "present_pwm": (124, 2, False, False), "present_current": (126, 2, False, False),
    "present_velocity": (128, 4, False, False), "present_position": (132, 4, False, False),
    "present_input_voltage": (144, 2, False, False), "present_temperature": (146, 1, False, False),
}


@pytest.mark.parametrize("model, number, current_limit", [("XM430-W350", 1020, 1193), ("XM540-W270", 1120, 2047)])
def test_tables_match_the_emanual(model: str, number: int, current_limit: int) -> None:
    table = ct.table_for(model)
    assert table is ct.table_for(number) and table.model_number == number
    assert table["model_number"].initial == number and table["current_limit"].initial == current_limit
    for name, (address, size, writable, eeprom) in EMANUAL.items():
        reg = table[name]
        assert (reg.address, reg.size, reg.writable, reg.eeprom) == (address, size, writable, eeprom), name
    assert table.current_unit_a == pytest.approx(2.69e-3)
    assert table.describe_hardware_error(0b100101) == ["input_voltage", "overheating", "overload"]
    assert table.span("present_pwm", "present_temperature") == (124, 23)


def test_unknown_model_and_register_are_named() -> None:
    with pytest.raises(ct.ControlTableError, match="AX-12"):
        ct.table_for("AX-12")
    with pytest.raises(ct.ControlTableError, match="no register 'goal_speed'"):
        ct.table_for(1020)["goal_speed"]


def test_every_tick_round_trips_through_radians() -> None:
    assert all(ct.rad_to_ticks(float(ct.ticks_to_rad(t))) == t for t in range(-4096, 8192))
    assert ct.ticks_to_rad(2048) == 0.0 and ct.ticks_to_rad(3072) == pytest.approx(math.pi / 2)
    assert ct.rad_to_ticks(-math.pi) == 0


@given(st.floats(-20.0, 20.0))
def test_radians_round_trip_within_half_a_tick(q: float) -> None:
    assert abs(float(ct.ticks_to_rad(ct.rad_to_ticks(q))) - q) <= ct.RAD_PER_TICK / 2 + 1e-12


def test_velocity_and_current_units() -> None:
    assert ct.velocity_to_rad_s(1) == pytest.approx(0.229 * 2 * math.pi / 60)  # 0.02398 rad/s
    assert ct.rad_s_to_velocity(float(ct.velocity_to_rad_s(200))) == 200
    table = ct.table_for("XM540-W270")
    assert ct.current_to_amp(1000, table) == pytest.approx(2.69)
    assert ct.amp_to_current(2.69, table) == 1000


@pytest.mark.parametrize("fn", [ct.rad_to_ticks, ct.rad_s_to_velocity])
def test_non_finite_inputs_are_refused(fn) -> None:
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="non-finite"):
            fn(bad)


@given(st.integers(-(2**31), 2**31 - 1))
def test_signed_register_round_trip(value: int) -> None:
    reg = ct.table_for(1020)["goal_position"]
    assert reg.decode(reg.encode(value)) == value


def test_register_range_checks() -> None:
    table = ct.table_for(1020)
    assert table["bus_watchdog"].decode(b"\xff") == ct.WATCHDOG_TRIPPED
    with pytest.raises(ValueError, match="torque_enable"):
        table["torque_enable"].encode(256)
    with pytest.raises(ValueError, match="present_current"):
        table["present_current"].encode(40000)
    with pytest.raises(ValueError, match="expected 4"):
        table["goal_position"].decode(b"\x00\x00")
