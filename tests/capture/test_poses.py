"""Camera poses: RGB-D odometry + pose graph on real data, and ChArUco registration to the base."""

from __future__ import annotations

import json

import numpy as np
import pytest

from safetwin.twin.capture.formats import CaptureError, read_capture, read_color, read_open3d_rgbd
from safetwin.twin.capture.odometry import estimate_poses, relative_pose_errors, rigid_fit
from safetwin.twin.capture.registration import (
    BoardSpec,
    average_poses,
    detect_board,
    load_calibration,
    make_pose,
    register_to_base,
    rpy_to_matrix,
)

from .conftest import REDWOOD_INTRINSICS


def test_redwood_poses_from_odometry_match_its_trajectory(redwood):
    """Poses estimated while ignoring trajectory.log agree with it within 2 cm and 2 deg."""
    reference = read_open3d_rgbd(redwood, REDWOOD_INTRINSICS).poses()
    capture = read_open3d_rgbd(redwood, REDWOOD_INTRINSICS, use_trajectory=False)
    assert not capture.has_poses
    estimated = estimate_poses(capture, progress=False)
    trans, rot = relative_pose_errors(estimated, reference)
    assert trans.max() < 0.02 and rot.max() < 2.0
    # and it is not trivially right: the camera moved several cm over the sequence
    moved = np.linalg.norm(np.linalg.inv(reference[0])[:3, :3] @ (reference[-1][:3, 3] - reference[0][:3, 3]))
    assert moved > 0.05


def test_rigid_fit_recovers_a_transform():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(50, 3))
    t = make_pose((0.1, -0.2, 0.3), (0.2, -0.4, 1.1))
    assert np.allclose(rigid_fit(src, src @ t[:3, :3].T + t[:3, 3]), t, atol=1e-9)


def test_average_poses_of_perturbed_copies():
    t = make_pose((0.3, 0.1, 0.0), (np.pi, 0.0, 0.5))
    perturbed = [make_pose((0.3 + d, 0.1, 0.0), (np.pi + d, 0.0, 0.5 - d)) for d in (-0.01, 0.01)]
    assert np.allclose(average_poses(perturbed), t, atol=1e-4)


def test_rpy_matches_scipy():
    from scipy.spatial.transform import Rotation

    rpy = (0.3, -0.2, 1.4)
    assert np.allclose(rpy_to_matrix(rpy), Rotation.from_euler("xyz", rpy).as_matrix())


def test_charuco_registration_recovers_the_base_frame(synthetic_capture):
    """The synthetic capture's poses are in a SLAM-like world frame; the board maps them to base."""
    cap = read_capture(synthetic_capture)
    cal = load_calibration(synthetic_capture / "calibration.yaml")
    images = [read_color(f.color_path) for f in cap.frames]
    t_base_world, views = register_to_base(images, cap.poses(), cap.intrinsics, cal)
    t_world_base = np.array(json.loads((synthetic_capture / "ground_truth.json").read_text())["T_world_base"])
    err = t_base_world @ t_world_base
    assert views >= 4
    assert np.linalg.norm(err[:3, 3]) < 0.005
    assert np.degrees(np.arccos(np.clip((np.trace(err[:3, :3]) - 1) / 2, -1, 1))) < 0.5


def test_registration_without_the_board_fails_clearly(synthetic_capture):
    cap = read_capture(synthetic_capture)
    cal = load_calibration(synthetic_capture / "calibration.yaml")
    blank = [np.zeros_like(read_color(f.color_path)) for f in cap.frames[:3]]
    with pytest.raises(CaptureError, match="board found in 0 of 3 frames"):
        register_to_base(blank, cap.poses()[:3], cap.intrinsics, cal)
    assert detect_board(blank[0], cal.board, cap.intrinsics) is None


def test_calibration_yaml_errors_name_the_key(tmp_path):
    path = tmp_path / "calibration.yaml"
    path.write_text("board: {squares: [5, 4], square_length: 0.04, marker_length: 0.03}\n"
                    "board_pose: {position: [0, 0], rpy: [0, 0, 0]}\n")
    with pytest.raises(ValueError, match=r"calibration\.yaml: board_pose\.position: must be a list of 3"):
        load_calibration(path)
    path.write_text("board: {squares: [5, 4], square_length: 0.04, marker_length: 0.03, colour: red}\n"
                    "board_pose: {position: [0, 0, 0]}\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['colour'\]"):
        load_calibration(path)
    with pytest.raises(CaptureError, match="unknown ArUco dictionary"):
        BoardSpec(dictionary="DICT_NOPE")


def test_one_misregistered_view_does_not_tilt_the_scene(synthetic_capture):
    """A frame whose camera pose is off by 5 cm and 5 deg is voted out of the board average."""
    cap = read_capture(synthetic_capture)
    cal = load_calibration(synthetic_capture / "calibration.yaml")
    images = [read_color(f.color_path) for f in cap.frames]
    poses = cap.poses()
    seen = [i for i, img in enumerate(images) if detect_board(img, cal.board, cap.intrinsics) is not None]
    _, all_views = register_to_base(images, poses, cap.intrinsics, cal)
    poses[seen[0]] = poses[seen[0]] @ make_pose((0.05, 0.0, 0.0), (0.0, np.radians(5), 0.0))
    t_base_world, views = register_to_base(images, poses, cap.intrinsics, cal)
    assert views == all_views - 1 == len(seen) - 1
    t_world_base = np.array(json.loads((synthetic_capture / "ground_truth.json").read_text())["T_world_base"])
    err = t_base_world @ t_world_base
    assert np.linalg.norm(err[:3, 3]) < 0.005
    assert np.degrees(np.arccos(np.clip((np.trace(err[:3, :3]) - 1) / 2, -1, 1))) < 0.5
