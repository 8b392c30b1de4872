"""Capture readers: nerfstudio transforms.json, Open3D RGB-D layout, and bad-input errors."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from safetwin.twin.capture.formats import (
    GL_TO_CV,
    CaptureError,
    Intrinsics,
    check_rigid,
    load_frame,
    read_capture,
    read_intrinsics_json,
    read_open3d_rgbd,
    read_trajectory_log,
    read_transforms_json,
    write_transforms_json,
)

from .conftest import REDWOOD_INTRINSICS


def _tiny_capture(tmp_path, n=2, size=(8, 6)):
    w, h = size
    intr = Intrinsics(w, h, 10.0, 10.0, w / 2, h / 2)
    (tmp_path / "rgb").mkdir()
    (tmp_path / "depth").mkdir()
    colors, depths, poses = [], [], []
    for i in range(n):
        cv2.imwrite(str(tmp_path / f"rgb/{i}.png"), np.full((h, w, 3), 50 * i, np.uint8))
        cv2.imwrite(str(tmp_path / f"depth/{i}.png"), np.full((h, w), 1000 + i, np.uint16))
        colors.append(f"rgb/{i}.png")
        depths.append(f"depth/{i}.png")
        pose = np.eye(4)
        pose[:3, 3] = [0.1 * i, 0.0, 0.5]
        poses.append(pose)
    write_transforms_json(tmp_path / "transforms.json", intr, colors, depths, poses)
    return intr, poses


def test_transforms_json_round_trip_converts_opengl_to_opencv(tmp_path):
    intr, poses = _tiny_capture(tmp_path)
    doc = json.loads((tmp_path / "transforms.json").read_text())
    # nerfstudio stores OpenGL cameras: the y and z axes are flipped relative to ours
    assert np.allclose(np.array(doc["frames"][1]["transform_matrix"]), poses[1] @ GL_TO_CV)
    cap = read_transforms_json(tmp_path)
    assert cap.intrinsics == intr and cap.has_poses
    assert np.allclose(cap.frames[1].pose, poses[1])
    color, depth = load_frame(cap, cap.frames[1])
    assert color.shape == (6, 8, 3) and depth.dtype == np.float32
    assert np.allclose(depth, 1.001)  # 1001 mm with the default depth_unit_scale_factor 1e-3


def test_depth_unit_scale_factor_is_honoured(tmp_path):
    _tiny_capture(tmp_path)
    doc = json.loads((tmp_path / "transforms.json").read_text())
    doc["depth_unit_scale_factor"] = 1e-4
    (tmp_path / "transforms.json").write_text(json.dumps(doc))
    cap = read_transforms_json(tmp_path)
    assert np.allclose(load_frame(cap, cap.frames[0])[1], 0.1)


def test_missing_frame_names_the_file(tmp_path):
    _tiny_capture(tmp_path)
    (tmp_path / "rgb/1.png").unlink()
    cap = read_transforms_json(tmp_path)
    with pytest.raises(CaptureError, match=r"rgb/1\.png: colour image is missing"):
        load_frame(cap, cap.frames[1])


def test_unreadable_image_names_the_file(tmp_path):
    _tiny_capture(tmp_path)
    (tmp_path / "depth/0.png").write_bytes(b"not a png")
    cap = read_transforms_json(tmp_path)
    with pytest.raises(CaptureError, match=r"depth/0\.png: unreadable depth image"):
        load_frame(cap, cap.frames[0])


def test_depth_and_colour_of_different_sizes_name_the_frame(tmp_path):
    _tiny_capture(tmp_path)
    cv2.imwrite(str(tmp_path / "depth/1.png"), np.full((3, 4), 1000, np.uint16))
    cap = read_transforms_json(tmp_path)
    with pytest.raises(CaptureError, match=r"frame 1: colour 1\.png is 8x6 but depth 1\.png is 4x3"):
        load_frame(cap, cap.frames[1])


@pytest.mark.parametrize("matrix, message", [
    ([[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], "not a rigid transform"),
    ([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, 0], [0, 0, 0, 1]], "not a rigid transform"),
    ([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]], "last row"),
    ([[1, 0, 0], [0, 1, 0], [0, 0, 1]], "must be 4x4"),
    ([[float("nan"), 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], "NaN"),
])
def test_non_rigid_poses_are_rejected_with_the_frame_named(tmp_path, matrix, message):
    _tiny_capture(tmp_path)
    doc = json.loads((tmp_path / "transforms.json").read_text())
    doc["frames"][1]["transform_matrix"] = matrix
    (tmp_path / "transforms.json").write_text(json.dumps(doc))
    with pytest.raises(CaptureError, match=rf"frames\[1\]\.transform_matrix: .*{message}"):
        read_transforms_json(tmp_path)


def test_malformed_transforms_json(tmp_path):
    (tmp_path / "transforms.json").write_text('{"fl_x": 1,')
    with pytest.raises(CaptureError, match=r"transforms\.json:1: malformed JSON"):
        read_transforms_json(tmp_path)
    (tmp_path / "transforms.json").write_text(json.dumps({"fl_x": 1, "fl_y": 1, "cx": 1, "cy": 1, "w": 4,
                                                          "frames": []}))
    with pytest.raises(CaptureError, match="required key 'h' is missing"):
        read_transforms_json(tmp_path)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(CaptureError, match="capture folder does not exist"):
        read_capture(tmp_path / "nope")


def test_redwood_open3d_layout_and_trajectory(redwood):
    cap = read_open3d_rgbd(redwood, REDWOOD_INTRINSICS)
    assert len(cap.frames) == 5 and cap.has_poses
    color, depth = load_frame(cap, cap.frames[0])
    assert color.shape == (480, 640, 3) and depth.shape == (480, 640)
    valid = depth[depth > 0]
    assert 0.3 < np.median(valid) < 4.0  # millimetre PNG scaled to metres
    assert np.allclose(cap.frames[2].pose, read_trajectory_log(redwood / "trajectory.log")[2])
    assert not read_open3d_rgbd(redwood, REDWOOD_INTRINSICS, use_trajectory=False).has_poses


def test_open3d_layout_errors(tmp_path, redwood):
    shutil.copytree(redwood, tmp_path / "rw")
    (tmp_path / "rw").chmod(0o755)
    with pytest.raises(CaptureError, match="no intrinsics given"):
        read_open3d_rgbd(tmp_path / "rw")
    (tmp_path / "rw/intrinsics.json").write_text(json.dumps(
        {"width": 640, "height": 480, "intrinsic_matrix": [525, 0, 0, 0, 525, 0, 319.5, 239.5, 1]}))
    cap = read_open3d_rgbd(tmp_path / "rw")
    assert cap.intrinsics.cx == 319.5 and cap.intrinsics.fy == 525
    assert read_intrinsics_json(tmp_path / "rw/intrinsics.json").width == 640
    log = tmp_path / "rw/trajectory.log"
    log.chmod(0o644)
    log.write_text("\n".join(log.read_text().splitlines()[:-3]) + "\n")
    with pytest.raises(CaptureError, match=r"trajectory\.log: 22 non-empty lines"):
        read_open3d_rgbd(tmp_path / "rw")


def test_check_rigid_accepts_a_rotation():
    c, s = np.cos(0.7), np.sin(0.7)
    m = np.array([[c, -s, 0, 1], [s, c, 0, 2], [0, 0, 1, 3], [0, 0, 0, 1]])
    assert np.array_equal(check_rigid(m, "x"), m)


def test_distorted_frames_are_undistorted_with_the_same_camera_matrix(tmp_path):
    """A straight edge imaged through barrel distortion comes back straight."""
    intr = Intrinsics(160, 120, 100.0, 100.0, 79.5, 59.5, (-0.3, 0.08, 0.0, 0.0, 0.0))
    # render a vertical edge at x = 0.4 (normalised) through the distortion model
    v, u = np.mgrid[0:120, 0:160].astype(np.float64)
    und = cv2.undistortPoints(np.stack([u.ravel(), v.ravel()], 1)[:, None, :], intr.matrix,
                              np.array(intr.distortion)).reshape(120, 160, 2)
    img = np.where(und[..., 0] > 0.4, 255, 0).astype(np.uint8)
    (tmp_path / "rgb").mkdir()
    (tmp_path / "depth").mkdir()
    cv2.imwrite(str(tmp_path / "rgb/0.png"), np.stack([img] * 3, -1))
    cv2.imwrite(str(tmp_path / "depth/0.png"), np.full((120, 160), 1000, np.uint16))
    write_transforms_json(tmp_path / "transforms.json", intr, ["rgb/0.png"], ["depth/0.png"], None)
    cap = read_transforms_json(tmp_path)
    assert cap.intrinsics.distortion == intr.distortion
    color, depth = load_frame(cap, cap.frames[0])
    edge_cols = [np.argmax(color[r, :, 0] > 127) for r in (10, 60, 110)]
    expected = intr.cx + 0.4 * intr.fx
    assert all(abs(c - expected) <= 1.5 for c in edge_cols)
    raw_cols = [np.argmax(img[r] > 127) for r in (10, 60, 110)]
    assert max(raw_cols) - min(raw_cols) >= 3  # the input edge really was bent
    assert np.all(depth[depth > 0] == pytest.approx(1.0))
