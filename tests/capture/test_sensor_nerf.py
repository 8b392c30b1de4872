"""The structured-light depth-noise model, and the nerfstudio path (command construction, PLY
ingestion, scale recovery); the GPU run itself is marked slow."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest

from safetwin.twin.capture.formats import CaptureError, Intrinsics
from safetwin.twin.capture.nerf import (
    NerfConfig,
    NerfUnavailable,
    apply_similarity,
    check_available,
    export_command,
    find_trained_config,
    load_exported_ply,
    process_command,
    run_nerfstudio,
    similarity_fit,
    train_command,
)
from safetwin.twin.capture.registration import make_pose
from safetwin.twin.capture.segment import cluster_objects, fit_support_plane
from safetwin.twin.capture.sensor import DepthNoise, apply_noise, edge_mask, grazing_mask

INTR = Intrinsics(200, 150, 150.0, 150.0, 99.5, 74.5)


def test_axial_noise_grows_with_distance_squared():
    noise = DepthNoise(dropout=0.0, quantum=0.0, edge_jump=1.0)
    rng = np.random.default_rng(0)
    stds = []
    for z in (0.5, 1.0, 2.0):
        flat = np.full((150, 200), z, np.float32)
        noisy = apply_noise(flat, INTR, noise, rng)
        stds.append(float((noisy[noisy > 0] - z).std()))
        assert stds[-1] == pytest.approx(float(noise.sigma(np.float64(z))), rel=0.1)
    assert stds[0] < stds[1] < stds[2]


def test_grazing_surfaces_and_edges_lose_pixels():
    # right half: a plane through (0, 0, 1) whose normal is 85 deg from the optical axis
    # (seen almost edge-on); left half: a fronto-parallel plane at 1 m
    v, u = np.mgrid[0:150, 0:200]
    n = np.array([np.sin(np.radians(85)), 0.0, np.cos(np.radians(85))])
    x_n = (u - INTR.cx) / INTR.fx
    depth = np.full((150, 200), 1.0, np.float32)
    depth[:, 100:] = (n[2] / (n[0] * x_n + n[2]))[:, 100:]
    graze = grazing_mask(depth, INTR, 78.0)
    ray = np.stack([x_n, (v - INTR.cy) / INTR.fy, np.ones_like(x_n)], -1)
    angle = np.degrees(np.arccos(np.abs(ray @ n) / np.linalg.norm(ray, axis=-1)))
    inner = np.zeros_like(graze)
    inner[2:-2, 102:-2] = True  # away from the seam and the image border
    assert graze[inner & (angle > 80)].all() and graze[inner & (angle > 80)].size > 100
    assert not graze[inner & (angle < 75)].any()
    assert not graze[2:-2, 2:97].any()
    step = np.where(u < 100, 1.0, 1.5).astype(np.float32)
    edges = edge_mask(step, 0.03)
    assert edges[:, 99:101].all() and not edges[:, :98].any()
    noisy = apply_noise(depth, INTR, DepthNoise(dropout=0.0), np.random.default_rng(1))
    assert (noisy[inner & (angle > 80)] == 0).all() and (noisy[2:-2, 2:97] > 0).mean() > 0.9


def test_noise_config_validates():
    with pytest.raises(ValueError):
        DepthNoise(dropout=1.5)
    with pytest.raises(ValueError):
        DepthNoise(grazing_deg=0)


def test_nerfstudio_commands(tmp_path):
    cfg = NerfConfig(method="splatfacto", max_iterations=500)
    assert process_command(tmp_path / "imgs", tmp_path) == [
        "ns-process-data", "images", "--data", str(tmp_path / "imgs"), "--output-dir", str(tmp_path / "processed")]
    train = train_command(cfg, tmp_path)
    assert train[:4] == ["ns-train", "splatfacto", "--data", str(tmp_path / "processed")]
    assert train[train.index("--max-num-iterations") + 1] == "500"
    run = tmp_path / "outputs/capture/splatfacto/2026-01-01_000000"
    run.mkdir(parents=True)
    (run / "config.yml").write_text("x: 1\n")
    config = find_trained_config(tmp_path)
    assert config == run / "config.yml"
    export = export_command(cfg, config, tmp_path)
    assert export[:4] == ["ns-export", "pointcloud", "--load-config", str(config)]
    assert "--save-world-frame" in export
    tsdf = export_command(NerfConfig(export="tsdf"), config, tmp_path)
    assert tsdf[1] == "tsdf" and "--num-points" not in tsdf
    with pytest.raises(ValueError, match="needs method 'nerfacto'"):
        NerfConfig(method="splatfacto", export="tsdf")
    with pytest.raises(CaptureError, match="wrote no config.yml"):
        find_trained_config(tmp_path / "elsewhere")


@pytest.mark.skipif(shutil.which("ns-train") is not None, reason="nerfstudio is installed here")
def test_nerfstudio_path_stops_at_once_naming_what_is_missing(tmp_path):
    with pytest.raises(NerfUnavailable, match=r"ns-process-data.*safetwin\[nerf\]"):
        check_available()
    with pytest.raises(NerfUnavailable):
        run_nerfstudio(tmp_path, tmp_path / "work", NerfConfig())
    assert not (tmp_path / "work").exists()


def _nerf_like_export(path: Path, scale: float, t_nerf_base: np.ndarray) -> None:
    """A table with a box on it, written as nerfstudio would: in its own frame and scale."""
    xx, yy = np.meshgrid(np.arange(0, 0.6, 0.004), np.arange(-0.3, 0.3, 0.004))
    table = np.stack([xx.ravel(), yy.ravel(), np.zeros(xx.size)], 1)
    box = o3d.geometry.TriangleMesh.create_box(0.05, 0.05, 0.08).translate((0.3, 0.0, 0.0))
    pts = np.vstack([table, np.asarray(box.sample_points_uniformly(4000).points)])
    pts_nerf = (pts @ t_nerf_base[:3, :3].T + t_nerf_base[:3, 3]) / scale
    o3d.io.write_point_cloud(str(path), o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts_nerf)))


def test_exported_ply_is_ingested_scaled_and_segmented(tmp_path):
    """Continue at step 2 from a nerfstudio export: scale from camera centres, then plane + object."""
    scale_true, t_nerf_base = 0.37, make_pose((0.5, -1.0, 2.0), (0.3, -0.2, 0.9))
    ply = tmp_path / "point_cloud.ply"
    _nerf_like_export(ply, 1 / scale_true, t_nerf_base)
    # camera centres known metrically in the base frame (e.g. from the ChArUco board) and in nerf units
    centres_base = np.random.default_rng(0).uniform(-0.5, 0.5, (8, 3)) + [0.3, 0.0, 0.5]
    centres_nerf = (centres_base @ t_nerf_base[:3, :3].T + t_nerf_base[:3, 3]) * scale_true
    scale, rigid = similarity_fit(centres_nerf, centres_base)
    assert scale == pytest.approx(1 / scale_true, rel=1e-6)
    cloud = apply_similarity(load_exported_ply(ply, voxel_size=0.0), scale, rigid)
    plane = fit_support_plane(cloud, distance=0.004)
    assert abs(plane.height) < 1e-3
    (obj,) = cluster_objects(cloud, plane)
    assert np.allclose(obj.points.mean(axis=0)[:2], [0.325, 0.025], atol=0.005)
    with pytest.raises(CaptureError, match="no such file"):
        load_exported_ply(tmp_path / "missing.ply")


@pytest.mark.slow
def test_nerfstudio_gpu_path(tmp_path):
    """Full photos -> nerfacto -> point cloud run; needs the [nerf] extra and a CUDA GPU."""
    try:
        check_available()
    except NerfUnavailable as exc:
        pytest.skip(str(exc))
    images = Path(__file__).resolve().parents[3] / "shared" / "data" / "rgbd_redwood_sample" / "color"
    ply = run_nerfstudio(images, tmp_path / "work", NerfConfig(max_iterations=2000))
    assert len(load_exported_ply(ply).points) > 1000


def test_nerfstudio_frame_is_scaled_into_the_base_frame(tmp_path, synthetic_capture):
    """Poses as COLMAP would give them (unknown scale): the board recovers scale and pose."""
    import json

    from safetwin.twin.capture.formats import read_transforms_json
    from safetwin.twin.capture.nerf import align_to_base
    from safetwin.twin.capture.registration import load_calibration

    doc = json.loads((synthetic_capture / "transforms.json").read_text())
    s_colmap = 3.7
    for frame in doc["frames"]:
        m = np.array(frame["transform_matrix"])
        m[:3, 3] *= s_colmap
        frame["transform_matrix"] = m.tolist()
        frame.pop("depth_file_path")
        frame["file_path"] = str(synthetic_capture / frame["file_path"])
    (tmp_path / "transforms.json").write_text(json.dumps(doc))
    cal = load_calibration(synthetic_capture / "calibration.yaml")
    scale, rigid, views = align_to_base(tmp_path, cal)
    assert views >= 4 and scale == pytest.approx(1 / s_colmap, rel=0.01)
    t_world_base = np.array(json.loads((synthetic_capture / "ground_truth.json").read_text())["T_world_base"])
    cam = read_transforms_json(tmp_path).frames[5].pose
    t_base_world = np.linalg.inv(t_world_base)
    truth = t_base_world[:3, :3] @ (cam[:3, 3] / s_colmap) + t_base_world[:3, 3]  # metric centre, base
    assert np.linalg.norm(rigid[:3, :3] @ (scale * cam[:3, 3]) + rigid[:3, 3] - truth) < 0.01
