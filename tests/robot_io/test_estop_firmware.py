"""The e-stop box firmware compiles for the ATmega328P, fits, and speaks the host's protocol (E4)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from safetwin.robot_io.estop import HELLO_PREFIX, PROTOCOL_VERSION, encode_line

FIRMWARE = Path(__file__).resolve().parents[2] / "robot_io" / "firmware" / "estop_box"
FLASH_BYTES = 32 * 1024 - 512  # ATmega328P flash minus the Optiboot bootloader
RAM_BYTES = 2048

pytestmark = pytest.mark.skipif(
    shutil.which("avr-gcc") is None or shutil.which("avr-size") is None,
    reason="avr-gcc/avr-size not installed (run `make -C robot_io/firmware/estop_box testdeps`)")


@pytest.fixture(scope="module")
def elf(tmp_path_factory):
    build = tmp_path_factory.mktemp("estop_build")
    proc = subprocess.run(["make", "-C", str(FIRMWARE), f"BUILD={build}", str(build / "estop.hex")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # -Wall -Wextra -Werror
    assert (build / "estop.hex").stat().st_size > 0
    return build / "estop.elf"


def test_firmware_fits_atmega328p(elf):
    out = subprocess.run(["avr-size", "-A", str(elf)], capture_output=True, text=True, check=True).stdout
    sizes = {m.group(1): int(m.group(2)) for m in re.finditer(r"^\.(\w+)\s+(\d+)", out, re.M)}
    flash = sizes.get("text", 0) + sizes.get("data", 0)
    ram = sizes.get("data", 0) + sizes.get("bss", 0)
    assert 200 < flash < FLASH_BYTES, out
    assert ram < RAM_BYTES // 4, out  # leave the stack most of the 2 KiB


def test_firmware_strings_match_host_protocol(elf):
    data = elf.read_bytes()
    assert f"{HELLO_PREFIX} {PROTOCOL_VERSION}".encode() + b"\x00" in data
    for payload in ("ESTOP", "RELEASE"):
        assert payload.encode() + b"\x00" in data
        assert encode_line(payload).endswith(b"\n")
