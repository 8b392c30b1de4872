"""RealSense recording: the writer (no hardware) and a real recording (marked hardware)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from safetwin.twin.capture.formats import CaptureError, Intrinsics, load_frame, read_capture
from safetwin.twin.capture.realsense import CaptureWriter, record

INTR = Intrinsics(32, 24, 30.0, 30.0, 15.5, 11.5, (0.1, -0.02, 0.0, 0.0, 0.0))


def test_writer_output_reads_back_as_a_capture(tmp_path):
    writer = CaptureWriter(tmp_path / "rs", INTR, depth_scale=0.00025)
    for i in range(3):
        writer.add(np.full((24, 32, 3), 40 * i, np.uint8), np.full((24, 32), 4000 + i, np.uint16))
    cap = read_capture(writer.close())
    assert len(cap.frames) == 3 and not cap.has_poses and cap.intrinsics == INTR
    color, depth = load_frame(cap, cap.frames[2])
    assert color[12, 16, 0] == 80 and np.allclose(depth[12, 16], 4002 * 0.00025)  # centre: undistortion leaves it


def test_writer_rejects_wrong_frames(tmp_path):
    writer = CaptureWriter(tmp_path / "rs", INTR, depth_scale=0.001)
    with pytest.raises(CaptureError, match="frame 0: depth must be uint16 32x24"):
        writer.add(np.zeros((24, 32, 3), np.uint8), np.zeros((24, 32), np.float32))
    with pytest.raises(CaptureError, match="no frames recorded"):
        writer.close()


@pytest.mark.skipif(importlib.util.find_spec("pyrealsense2") is not None, reason="pyrealsense2 installed")
def test_record_without_the_extra_names_it(tmp_path):
    with pytest.raises(RuntimeError, match=r"safetwin\[realsense\]"):
        record(tmp_path / "rs", frames=1)


@pytest.mark.hardware
def test_record_from_a_connected_realsense(tmp_path):
    cap = read_capture(record(tmp_path / "rs", frames=5, warmup=10, every=1))
    color, depth = load_frame(cap, cap.frames[0])
    assert (depth > 0).mean() > 0.3
