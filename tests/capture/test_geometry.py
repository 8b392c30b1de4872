"""TSDF fusion, support plane, clustering and per-object geometry (steps 1-4 of the pipeline)."""

from __future__ import annotations

import numpy as np
import open3d as o3d
import pytest

from safetwin.twin.capture.formats import Capture, CaptureError, CaptureFrame, Intrinsics, read_open3d_rgbd
from safetwin.twin.capture.fusion import fuse_tsdf
from safetwin.twin.capture.objects import PhysicalPriors, build_object, closed_mesh, upright_box
from safetwin.twin.capture.reconstruct import camera_up
from safetwin.twin.capture.segment import ObjectCluster, cluster_objects, fit_support_plane

from .conftest import REDWOOD_INTRINSICS


def _box_surface(center, extents, yaw, step=0.004, bottom=False):
    """Points on the faces of an upright box (no bottom face unless asked), base frame."""
    ex, ey, ez = extents
    g = lambda a: np.arange(-a / 2, a / 2 + 1e-9, step)  # noqa: E731
    faces = []
    for x in (-ex / 2, ex / 2):
        yy, zz = np.meshgrid(g(ey), g(ez))
        faces.append(np.stack([np.full(yy.size, x), yy.ravel(), zz.ravel()], 1))
    for y in (-ey / 2, ey / 2):
        xx, zz = np.meshgrid(g(ex), g(ez))
        faces.append(np.stack([xx.ravel(), np.full(xx.size, y), zz.ravel()], 1))
    for z in ((-ez / 2, ez / 2) if bottom else (ez / 2,)):
        xx, yy = np.meshgrid(g(ex), g(ey))
        faces.append(np.stack([xx.ravel(), yy.ravel(), np.full(xx.size, z)], 1))
    p = np.vstack(faces)
    c, s = np.cos(yaw), np.sin(yaw)
    return p @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T + center


def _table_scene(rng, objects):
    xx, yy = np.meshgrid(np.arange(0.0, 0.8, 0.005), np.arange(-0.5, 0.5, 0.005))
    table = np.stack([xx.ravel(), yy.ravel(), rng.normal(0, 0.001, xx.size)], 1)
    floor_xx, floor_yy = np.meshgrid(np.arange(-1.0, 1.5, 0.01), np.arange(-1.5, 1.5, 0.01))
    floor = np.stack([floor_xx.ravel(), floor_yy.ravel(), np.full(floor_xx.size, -0.75)], 1)
    pts = [table, floor] + [_box_surface(*o) for o in objects]
    return o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.vstack(pts)))


OBJECTS = [((0.3, 0.2, 0.03), (0.06, 0.04, 0.06), 0.4), ((0.5, -0.2, 0.05), (0.05, 0.05, 0.1), -0.2),
           ((0.6, 0.25, 0.02), (0.1, 0.03, 0.04), 1.0)]


def test_plane_prefers_the_table_over_the_larger_floor_and_clusters_find_each_object():
    cloud = _table_scene(np.random.default_rng(0), OBJECTS)
    plane = fit_support_plane(cloud, distance=0.005)
    assert abs(plane.height) < 0.002 and plane.normal[2] > 0.999
    assert np.allclose(sorted(plane.size), [0.8, 1.0], atol=0.01)
    clusters = cluster_objects(cloud, plane)
    assert len(clusters) == len(OBJECTS)
    expected = sorted(OBJECTS, key=lambda o: (round(o[0][0], 3), round(o[0][1], 3)))
    for cluster, (center, extents, yaw) in zip(clusters, expected, strict=True):
        c, e, y = upright_box(cluster.points, plane)
        assert np.linalg.norm(c - center) < 0.005
        assert np.allclose(sorted(e[:2]), sorted(extents[:2]), rtol=0.1)
        assert e[2] == pytest.approx(extents[2], rel=0.1)
        d = (y - yaw) % (np.pi / 2)
        assert min(d, np.pi / 2 - d) < 0.05


def test_no_plane_is_a_clear_error():
    rng = np.random.default_rng(1)
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(rng.uniform(-1, 1, (3000, 3))))
    with pytest.raises(CaptureError, match="no support plane found"):
        fit_support_plane(cloud, distance=0.002)


def test_wall_is_not_taken_for_a_table():
    yy, zz = np.meshgrid(np.arange(-1, 1, 0.01), np.arange(0, 1, 0.01))
    wall = np.stack([np.zeros(yy.size), yy.ravel(), zz.ravel()], 1)
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(wall))
    with pytest.raises(CaptureError, match="within 20.0 deg of up"):
        fit_support_plane(cloud)


def test_closed_mesh_volume_and_prior_mass():
    cloud = _table_scene(np.random.default_rng(2), OBJECTS[:1])
    plane = fit_support_plane(cloud, distance=0.005)
    (cluster,) = cluster_objects(cloud, plane)
    mesh = closed_mesh(cluster.points, plane)
    assert mesh.is_watertight()
    priors = PhysicalPriors(density=500.0, friction=0.4, restitution=0.2)
    obj = build_object(cluster, plane, "box", priors)
    true_volume = 0.06 * 0.04 * 0.06
    assert obj.watertight and obj.volume == pytest.approx(true_volume, rel=0.1)
    assert obj.mass == pytest.approx(obj.volume * 500.0)
    assert obj.sources == {"mass": "prior", "friction": "prior", "restitution": "prior"}


def test_physical_priors_validate():
    with pytest.raises(ValueError):
        PhysicalPriors(density=-1)
    with pytest.raises(ValueError):
        PhysicalPriors(restitution=1.5)


def test_redwood_fuses_into_a_mesh_and_its_floor_is_found(redwood):
    cap = read_open3d_rgbd(redwood, REDWOOD_INTRINSICS)
    result = fuse_tsdf(cap, cap.poses(), voxel_size=0.01, depth_max=3.0, progress=False)
    assert len(result.mesh.triangles) > 50_000 and len(result.cloud.points) > 20_000
    up = camera_up(cap.poses())
    plane = fit_support_plane(result.cloud, up=up, distance=0.02)
    # the floor: a large horizontal plane below the cameras, facing them
    assert plane.normal @ up > np.cos(np.radians(10))
    assert len(plane.inliers) > 0.15 * len(result.cloud.points)
    cam_heights = [plane.signed_distance(p[:3, 3]) for p in cap.poses()]
    assert all(0.3 < h < 2.0 for h in cam_heights)


def test_empty_reconstruction_is_a_clear_error(tmp_path):
    import cv2

    intr = Intrinsics(16, 12, 10.0, 10.0, 8.0, 6.0)
    cv2.imwrite(str(tmp_path / "c.png"), np.zeros((12, 16, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "d.png"), np.zeros((12, 16), np.uint16))
    cap = Capture(tmp_path, intr, [CaptureFrame(0, tmp_path / "c.png", tmp_path / "d.png", np.eye(4))],
                  source="empty")
    with pytest.raises(CaptureError, match="empty reconstruction"):
        fuse_tsdf(cap, cap.poses(), progress=False)


def test_clusters_ignore_points_off_the_table():
    cloud = _table_scene(np.random.default_rng(3), OBJECTS[:1])
    stray = _box_surface((1.2, 0.0, 0.03), (0.05, 0.05, 0.05), 0.0)  # beside the table
    cloud.points.extend(stray)
    plane = fit_support_plane(cloud, distance=0.005)
    clusters = cluster_objects(cloud, plane)
    assert len(clusters) == 1 and isinstance(clusters[0], ObjectCluster)
    assert np.all(clusters[0].points[:, 0] < 0.8)


def test_excluded_spheres_hide_the_robot_arm():
    """Points inside the arm's collision spheres are not clustered as an object."""
    cloud = _table_scene(np.random.default_rng(4), OBJECTS[:2])
    arm = _box_surface((0.1, -0.3, 0.15), (0.04, 0.04, 0.2), 0.0)  # a forearm reaching down
    cloud.points.extend(arm)
    plane = fit_support_plane(cloud, distance=0.005)
    assert len(cluster_objects(cloud, plane)) == 3
    spheres = [((0.1, -0.3, z), 0.045) for z in np.arange(0.05, 0.26, 0.03)]
    clusters = cluster_objects(cloud, plane, exclude=spheres)
    assert len(clusters) == 2 and all(np.linalg.norm(c.points.mean(axis=0)[:2] - (0.1, -0.3)) > 0.1 for c in clusters)
