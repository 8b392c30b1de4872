"""Read-only checks on a real Dynamixel arm (marker ``hardware``, deselected by default).

Run with ``SAFETWIN_DXL_PORT=/dev/ttyUSB0 SAFETWIN_DXL_MOTORS='[{"name": "waist", "id": 1,
"model": "XM540-W270"}, ...]' pytest -m hardware tests/robot_io/test_driver_hardware.py``.
Torque is never enabled here.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from safetwin.robot_io.driver import ArmConfig, DynamixelArm

pytestmark = pytest.mark.hardware


@pytest.fixture
def config() -> ArmConfig:
    port, motors = os.environ.get("SAFETWIN_DXL_PORT"), os.environ.get("SAFETWIN_DXL_MOTORS")
    if not port or not motors:
        pytest.skip("set SAFETWIN_DXL_PORT and SAFETWIN_DXL_MOTORS to run against a real arm")
    return ArmConfig.from_dict({"port": port, "motors": json.loads(motors), "latency_timer_policy": "warn"})


def test_C10_C11_handshake_and_state_on_real_servos(config: ArmConfig) -> None:
    with DynamixelArm(config) as arm:
        info = arm.describe()
        obs = arm.get_observation(health=True)
        assert np.all(np.isfinite(obs["position"])) and not obs["torque_enabled"].any()
        assert all(m["firmware"] is not None for m in info["motors"])
        assert np.all(arm.joint_limits[:, 0] < arm.joint_limits[:, 1])
    assert not arm.is_connected
