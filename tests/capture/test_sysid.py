"""System identification: hidden friction, mass and joint damping recovered from a recorded push."""

from __future__ import annotations

import numpy as np
import pytest

from safetwin.twin.capture.sysid import PushRig, identify, simulate_push

PRIORS = {"friction": 0.5, "mass": 0.5, "damping": 1.0}


@pytest.mark.parametrize("hidden", [{"friction": 0.3, "mass": 0.2, "damping": 3.0},
                                    {"friction": 0.7, "mass": 0.45, "damping": 0.6}])
def test_hidden_parameters_are_recovered_within_10_percent(hidden):
    rig = PushRig()
    recording = simulate_push(rig, **hidden)
    recording = recording + np.random.default_rng(0).normal(0.0, 0.0005, recording.shape)  # 0.5 mm tracking noise
    result = identify(rig, recording, PRIORS)
    for name, true in hidden.items():
        assert result.values[name] == pytest.approx(true, rel=0.10), name
        assert 0 < result.std[name] < 0.1 * true
        lo, hi = result.randomization_range(name)
        assert lo < result.values[name] < hi and lo <= true <= hi
    assert result.rms < 0.002


def test_recording_depends_on_every_parameter():
    rig = PushRig()
    base = simulate_push(rig, 0.4, 0.3, 1.0)
    for changed in ((0.6, 0.3, 1.0), (0.4, 0.6, 1.0), (0.4, 0.3, 3.0)):
        assert np.abs(simulate_push(rig, *changed) - base).max() > 0.005


def test_bad_recording_is_rejected():
    with pytest.raises(ValueError, match="finite"):
        identify(PushRig(), np.full((10, 2), np.nan), PRIORS)
    with pytest.raises(ValueError, match=r"\(T, 2\)"):
        identify(PushRig(), np.zeros((10, 3)), PRIORS)


def test_identified_parameters_go_into_the_captured_scene(tmp_path, captured):
    """Estimates and uncertainty land in scene.yaml; randomization ranges are centred on them."""
    import json
    import shutil

    from safetwin.twin.capture.scene_io import apply_identification
    from safetwin.twin.scene import load_scene

    folder = tmp_path / "sysid"
    shutil.copytree(captured, folder)
    rig = PushRig()
    hidden = {"friction": 0.45, "mass": 0.12, "damping": 1.5}
    result = identify(rig, simulate_push(rig, **hidden), {**PRIORS, "mass": 0.03})
    apply_identification(folder, "red_cube", result)
    scene = load_scene(folder / "scene.yaml")
    cube = scene.object("red_cube")
    assert cube.mass == pytest.approx(0.12, rel=0.1) and cube.friction == pytest.approx(0.45, rel=0.1)
    r = scene.randomization
    assert r.friction[0] < cube.friction < r.friction[1]
    assert r.friction[0] == pytest.approx(2 * cube.friction - r.friction[1], abs=1e-3)  # centred
    assert r.mass_scale[0] < 1.0 < r.mass_scale[1]
    assert r.joint_damping[0] < 1.5 < r.joint_damping[1]
    params = json.loads((folder / "physical_params.json").read_text())
    assert params["red_cube"]["mass"]["source"] == "identified" and params["red_cube"]["mass"]["std"] > 0
    assert params["blue_cube"]["mass"]["source"] == "prior"
    with pytest.raises(ValueError, match="no object named 'mug'"):
        apply_identification(folder, "mug", result)
