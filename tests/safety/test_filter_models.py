"""The analytic robot models of tests/safety/filter_models.py implement RobotModel correctly."""

from __future__ import annotations

import numpy as np
import pytest
from filter_models import PlanarArm, Slider, SpatialArm, numeric_jacobian  # noqa: F401

from safetwin.safety.robot_model import RobotModel


@pytest.mark.parametrize("model", [Slider(), PlanarArm(), SpatialArm()], ids=["slider", "planar", "spatial"])
def test_models_implement_protocol_with_correct_jacobians(model: RobotModel) -> None:
    """The test models' analytic Jacobians equal finite differences of their kinematics."""
    assert isinstance(model, RobotModel)
    rng = np.random.default_rng(3)
    for _ in range(5):
        q = rng.uniform(-2.0, 2.0, len(model.joint_names))
        jac6 = model.ee_jacobian(q)
        num = numeric_jacobian(lambda x: model.ee_pose(x)[0], q)
        np.testing.assert_allclose(jac6[:3], num, atol=1e-7)
        centers, radii, sjac = model.spheres(q)
        num_s = numeric_jacobian(lambda x: model.spheres(x)[0], q)
        np.testing.assert_allclose(sjac, num_s, atol=1e-7)
        assert radii.shape == (len(model.sphere_names),)
