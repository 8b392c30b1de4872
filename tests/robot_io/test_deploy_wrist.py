"""The wrist camera during deploy: a policy trained with ``wrist_camera`` gets ``wrist_image`` from
the twin's wrist camera on the virtual robot (rendered on the policy thread, moving with the arm),
the chunk is as old as the older of its two frames, and a stale or failed wrist camera stops the
chunks like a stale front camera (A6/A9).
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from safetwin.robot_io.deploy import DeployConfig, run_deploy
from safetwin.robot_io.deploy_camera import (
    CameraError,
    Observer,
    StaleFrameError,
    TwinCamera,
    policy_uses_wrist,
)
from safetwin.robot_io.deploy_policy import ScriptedPolicy
from safetwin.safety.runio import config_from_dict, read_jsonl

SHAPE = (8, 8, 3)


class FrameSource:
    """A camera source serving a constant image stamped ``lag_s`` before each read."""

    def __init__(self, value: int, lag_s: float = 0.0):
        self.image, self.lag_s, self.closed = np.full(SHAPE, value, np.uint8), lag_s, False

    def read(self):
        return self.image, time.monotonic() - self.lag_s

    def close(self):
        self.closed = True


STATE = {"q": np.zeros(3), "dq": np.zeros(3)}


def test_observer_adds_the_wrist_image_and_takes_the_older_frame_time_a6():
    front, wrist = FrameSource(7, lag_s=0.05), FrameSource(9, lag_s=0.2)
    observe = Observer("x", front, SHAPE, max_frame_age_s=0.5, wrist_camera=wrist)
    t0 = time.monotonic()
    obs = observe(dict(STATE))
    assert obs["image"] is front.image and obs["wrist_image"] is wrist.image
    assert t0 - 0.3 < obs["t_image"] < t0 - 0.15  # the wrist frame is the older one
    assert observe.frames == 1
    observe.close()
    assert front.closed and wrist.closed


def test_stale_wrist_frame_is_missing_a6():
    """A fresh front frame does not hide a stale wrist frame: the observation fails, so the policy
    thread publishes nothing (hold, then stop)."""
    observe = Observer("x", FrameSource(7), SHAPE, max_frame_age_s=0.5, wrist_camera=FrameSource(9, lag_s=0.8))
    with pytest.raises(StaleFrameError, match="wrist camera"):
        observe(dict(STATE))


def test_wrist_policy_without_a_camera_sees_black_images():
    obs = Observer("x", None, SHAPE, wrist=True)(dict(STATE))
    assert obs["t_image"] is None and obs["wrist_image"].shape == SHAPE and not obs["wrist_image"].any()
    assert "wrist_image" not in Observer("x", None, SHAPE)(dict(STATE))


def test_policy_uses_wrist_reads_the_policy_config():
    class Net:
        class cfg:  # noqa: N801 - the attribute a VLAPolicy carries
            use_wrist = True

        def predict(self, obs):
            return obs

    assert policy_uses_wrist(Net().predict) and policy_uses_wrist(Net())
    assert not policy_uses_wrist(lambda obs: obs)


# ---------------------------------------------------------------------------------------- the twin
@pytest.fixture
def twin_env():
    return pytest.importorskip("safetwin.twin.env", reason="the twin env renders the sim cameras")


def test_twin_wrist_camera_matches_the_training_env_and_follows_the_arm(twin_env):
    """At the home pose the deploy wrist view is the training env's nominal ``wrist_image``; it
    differs from the front view, and it changes when the wrist turns."""
    env = twin_env.TwinEnv("tabletop_push", wrist_camera=True, randomize=False)
    try:
        reference = env.reset(seed=0)[0]["wrist_image"].astype(int)
        home = dict(zip(env.scene.robot.joint_names, env.scene.robot.home, strict=True))
    finally:
        env.close()
    pose = dict(home)
    alone = TwinCamera("tabletop_push", lambda: pose, 64, view="wrist")
    front = TwinCamera("tabletop_push", lambda: pose, 64)
    wrist = front.view_source("wrist")  # the deploy runner's: one twin world for both views
    try:
        at_home, front_home = wrist.read()[0].astype(int), front.read()[0].astype(int)
        np.testing.assert_array_equal(alone.read()[0], at_home)
        pose["wrist_angle"] = home["wrist_angle"] - 0.6
        turned = wrist.read()[0].astype(int)
    finally:
        alone.close()
        front.close()
    with pytest.raises(CameraError, match="closed"):
        wrist.read()
    assert np.abs(at_home - reference).mean() < 3.0
    assert np.abs(at_home - front_home).mean() > 10.0
    assert np.abs(turned - at_home).mean() > 1.0


def test_twin_camera_refuses_an_unknown_view(twin_env):
    with pytest.raises(ValueError, match="view 'top'"):
        TwinCamera("tabletop_push", dict, 64, view="top")
    camera = TwinCamera("tabletop_push", dict, 64)
    try:
        with pytest.raises(ValueError, match="view 'top'"):
            camera.view_source("top")
    finally:
        camera.close()


class WristRecorder:
    """A joint-space sine policy trained (as its config says) with the wrist camera."""

    class cfg:  # noqa: N801 - what the runner reads from a VLA
        use_wrist = True
        image_size = 64

    def __init__(self, chunk_dt: float):
        self.sine = ScriptedPolicy("sine", 4, chunk_dt, amplitude=0.4, freq_hz=0.5)
        self.seen: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def __call__(self, obs):
        self.seen.append((obs["image"].copy(), obs["wrist_image"].copy(), obs["q"].copy()))
        return self.sine(obs)


def _sim_cfg(tmp_path, **kw):
    base = {"run_dir": str(tmp_path / "runs"), "scene": "tabletop_push", "camera": "sim", "duration_s": 2.0,
            "instruction": "push the red cube into the green zone"}
    return config_from_dict(DeployConfig, {**base, **kw}, "deploy")


def _load(run):
    return json.loads((run / "summary.json").read_text()), list(read_jsonl(run / "telemetry.jsonl"))


def test_sim_deploy_feeds_the_wrist_view_to_a_wrist_policy(tmp_path, twin_env):
    cfg = _sim_cfg(tmp_path)
    rec = WristRecorder(cfg.chunk_dt)
    summary, tele = _load(run_deploy(cfg, policy=rec))
    assert summary["status"] == "completed" and summary["policy"]["errors"] == 0
    assert summary["camera"]["frames"] == len(rec.seen) >= 10
    image, wrist, q0 = rec.seen[0]
    assert wrist.shape == (64, 64, 3) and wrist.std() > 10  # rendered, not the black placeholder
    assert np.abs(wrist.astype(int) - image.astype(int)).mean() > 10.0  # another camera than the front
    moved = [w for _, w, q in rec.seen if np.max(np.abs(q - q0)) > 0.25]
    assert moved and np.abs(moved[-1].astype(int) - wrist.astype(int)).mean() > 1.0
    assert any(r["sent"] is not None for r in tele)


def test_frozen_camera_host_stops_a_wrist_policy_a6(tmp_path, twin_env):
    """``camera_freeze`` with a wrist policy (the fault hangs every view of the camera host): the
    chunks age with the frames, so the loop holds, then stops (A6/A9)."""
    cfg = _sim_cfg(tmp_path, duration_s=1.8, fault_script=[[0.8, "camera_freeze"]])
    summary, tele = _load(run_deploy(cfg, policy=WristRecorder(cfg.chunk_dt)))
    assert summary["stops"][0]["cause"] in ("policy_deadline", "stale_action"), summary["stops"]
    inj = next(r["seq"] for r in tele if r["injected"])
    stop = next(r["seq"] for r in tele if r["seq"] > inj and r["stop_cmd"])
    assert stop <= inj + 60 and all(r["sent"] is None for r in tele[stop:])
