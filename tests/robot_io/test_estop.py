"""E-stop line protocol, monitor and emulator over a real pseudo-terminal (E2, E4, C8, C9)."""

from __future__ import annotations

import time

import pytest

from safetwin.robot_io.estop import (
    MAX_LINE,
    EStopEmulator,
    EStopMonitor,
    EStopProtocol,
    EStopState,
    decode_line,
    encode_line,
)


def wait_for(pred, timeout=2.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.005)
    return pred()


@pytest.fixture
def rig():
    emu = EStopEmulator()
    mon = EStopMonitor(emu.port, stale_after_s=0.15).start()
    emu.send_hello()  # opening the port flushed the boot hello (the box repeats it every second)
    try:
        assert wait_for(mon.permits_motion), mon.status()
        yield emu, mon
    finally:
        mon.close()
        emu.close()


def test_line_roundtrip_and_strict_parsing():
    line = encode_line("HB 12 R")
    assert line == b"HB 12 R*" + b"%02X" % (ord("H") ^ ord("B") ^ 32 ^ ord("1") ^ ord("2") ^ 32 ^ ord("R")) + b"\n"
    assert decode_line(line[:-1]) == "HB 12 R"
    for bad in (b"HB 12 R", b"HB 12 R*00", line[:-1].lower(), b"HB 12 R*0", line[:-2] + b"\r",
                b"X" * (MAX_LINE + 1), b"\xffHB*00"):
        with pytest.raises(ValueError):
            decode_line(bad)
    # every single-bit flip of a valid line is rejected or changes nothing valid into something else
    raw = line[:-1]
    for i in range(len(raw)):
        for bit in range(8):
            flipped = bytearray(raw)
            flipped[i] ^= 1 << bit
            with pytest.raises(ValueError):
                decode_line(bytes(flipped))


def _proto():
    clock = {"t": 0.0}
    p = EStopProtocol(stale_after_s=0.15, clock=lambda: clock["t"])
    return p, clock


def test_protocol_states_e4():
    """E4: missing hello, wrong version, stale, malformed, frozen seq -> every one is a stop."""
    p, clk = _proto()
    assert p.status().state is EStopState.NO_HELLO and not p.status().permits
    p.feed_line(encode_line("HB 0 R")[:-1])  # heartbeat before hello does not count
    assert p.status().state is EStopState.NO_HELLO
    p.feed_line(encode_line("SAFETWIN-ESTOP 1")[:-1])
    assert p.status().state is EStopState.STALE
    p.feed_line(encode_line("HB 1 R")[:-1])
    assert p.status().permits
    clk["t"] = 0.1
    p.feed_line(encode_line("HB 1 R")[:-1])  # repeated number: a frozen device, no refresh
    clk["t"] = 0.16
    st = p.status()
    assert st.state is EStopState.STALE and st.counters["repeated_seq"] == 1
    p.feed_line(encode_line("HB 2 R")[:-1])
    assert p.status().permits
    p.feed_line(b"HB 3 R*00")  # bad checksum
    assert p.status().state is EStopState.MALFORMED
    for seq in (3, 4):
        p.feed_line(encode_line(f"HB {seq} R")[:-1])
        assert p.status().state is EStopState.MALFORMED
    p.feed_line(encode_line("HB 5 R")[:-1])
    assert p.status().permits
    p.feed_line(encode_line("SAFETWIN-ESTOP 2")[:-1])
    p.feed_line(encode_line("HB 6 R")[:-1])
    assert p.status().state is EStopState.WRONG_VERSION and not p.status().permits


def test_protocol_level_in_heartbeat_covers_lost_edge():
    p, clk = _proto()
    p.feed_line(encode_line("SAFETWIN-ESTOP 1")[:-1])
    p.feed_line(encode_line("HB 0 R")[:-1])
    assert p.status().permits
    p.feed_line(encode_line("HB 1 E")[:-1])  # the ESTOP edge line was lost; the level still stops
    assert p.status().state is EStopState.ENGAGED
    p.feed_line(encode_line("RELEASE")[:-1])
    assert not p.status().permits  # an edge line alone never grants the permissive
    p.feed_line(encode_line("HB 2 R")[:-1])
    assert p.status().permits
    p.feed_line(encode_line("HB 40 R")[:-1])
    assert p.status().counters["seq_gaps"] == 1 and p.status().permits


def test_press_and_release_over_pty_e2(rig):
    emu, mon = rig
    emu.press()
    assert wait_for(lambda: mon.status().state is EStopState.ENGAGED)
    assert mon.status().counters["estop_edges"] == 1  # the edge line itself was received and parsed
    emu.release()
    assert wait_for(mon.permits_motion)


def test_heartbeat_loss_is_stale_e4(rig):
    emu, mon = rig
    emu.stop_heartbeat()
    t0 = time.monotonic()
    assert wait_for(lambda: mon.status().state is EStopState.STALE)
    assert time.monotonic() - t0 > 0.05  # not before the heartbeat timeout has run out
    emu.resume_heartbeat()
    assert wait_for(mon.permits_motion)


def test_garbage_and_frozen_device_e4(rig):
    emu, mon = rig
    emu.inject(b"\x00\xff garbage \x13\n")
    assert wait_for(lambda: mon.status().state is EStopState.MALFORMED)
    assert wait_for(mon.permits_motion)  # recovers after valid heartbeats
    emu.inject(b"Z" * 100)  # a runaway line without newline
    assert wait_for(lambda: mon.status().state is EStopState.MALFORMED)
    assert wait_for(mon.permits_motion)
    emu.freeze_seq()
    assert wait_for(lambda: mon.status().state is EStopState.STALE)
    assert mon.status().counters["repeated_seq"] > 0


def test_wrong_version_device_e4():
    with EStopEmulator(version=7) as emu, EStopMonitor(emu.port) as mon:
        time.sleep(0.3)
        assert mon.status().state in (EStopState.WRONG_VERSION, EStopState.NO_HELLO)
        assert not mon.permits_motion()
        emu.send_hello()
        assert wait_for(lambda: mon.status().state is EStopState.WRONG_VERSION, 1.5)


def test_unplug_is_disconnected_c8(rig):
    emu, mon = rig
    emu.hangup()
    assert wait_for(lambda: mon.status().state is EStopState.DISCONNECTED)
    assert not mon.permits_motion()


def test_second_open_of_port_fails_c9(rig):
    emu, _ = rig
    with pytest.raises(ConnectionError, match=emu.port):
        EStopMonitor(emu.port).start()


def test_closed_monitor_never_permits(rig):
    emu, mon = rig
    mon.close()
    assert mon.status().state is EStopState.DISCONNECTED and not mon.permits_motion()
