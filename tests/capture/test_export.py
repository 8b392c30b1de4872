"""Object export: local-frame meshes, V-HACD collision parts, URDFs that pybullet loads."""

from __future__ import annotations

import numpy as np
import pybullet as p
import pytest

from safetwin.twin.capture.export import box_inertia, export_object, to_local
from safetwin.twin.capture.objects import PhysicalPriors, build_object
from safetwin.twin.capture.segment import ObjectCluster, PlaneFit


def _cube_object(center=(0.4, 0.1), size=0.05, yaw=0.5):
    g = np.linspace(-size / 2, size / 2, 12)
    xx, yy, zz = np.meshgrid(g, g, g + size / 2)
    pts = np.stack([xx.ravel(), yy.ravel(), zz.ravel()], 1)
    c, s = np.cos(yaw), np.sin(yaw)
    pts = pts @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T + [*center, 0.0]
    plane = PlaneFit(normal=np.array([0.0, 0, 1]), offset=0.0, inliers=np.zeros((0, 3)),
                     center=np.zeros(3), size=np.array([1.0, 1.0]), axes=np.eye(3)[:2], yaw=0.0)
    return build_object(ObjectCluster(pts), plane, "cube", PhysicalPriors(density=1000.0, friction=0.6))


def test_local_mesh_is_centred_and_unrotated():
    obj = _cube_object()
    local = np.asarray(to_local(obj).vertices)
    assert np.allclose(local.mean(axis=0), 0.0, atol=0.003)
    assert np.allclose(local.max(axis=0) - local.min(axis=0), 0.05, atol=1e-3)


def test_exported_urdf_loads_in_pybullet_with_mass_and_friction(tmp_path):
    obj = _cube_object()
    paths = export_object(obj, tmp_path, vhacd=True)
    assert paths["convex_parts"] >= 1
    assert (tmp_path / paths["collision_mesh"]).stat().st_size > 0
    cid = p.connect(p.DIRECT)
    try:
        body = p.loadURDF(str(tmp_path / paths["urdf"]), physicsClientId=cid)
        info = p.getDynamicsInfo(body, -1, physicsClientId=cid)
        assert info[0] == pytest.approx(obj.mass, rel=1e-4)
        assert obj.mass == pytest.approx(1000.0 * 0.05 ** 3, rel=0.1)
        assert info[1] == pytest.approx(0.6)
        lo, hi = p.getAABB(body, -1, physicsClientId=cid)
        assert np.allclose(np.subtract(hi, lo)[2], 0.05, atol=0.01)
    finally:
        p.disconnect(cid)


def test_box_inertia():
    assert box_inertia(12.0, np.array([1.0, 2.0, 3.0])) == pytest.approx((13.0, 10.0, 5.0))
