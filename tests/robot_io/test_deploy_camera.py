"""The policy's camera during deploy: frame checks, the observation layout, chunk stamping by the
frame time (A6), and the twin's front camera on the pybullet virtual robot end to end (the image
is the scene, follows the arm, is rendered on the policy thread only (D1), and a frozen or failed
camera leads to hold, then stop (A6/A9)).
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from safetwin.robot_io.deploy import DeployConfig, run_deploy
from safetwin.robot_io.deploy_camera import (
    CameraError,
    InjectingCamera,
    Observer,
    StaleFrameError,
    TwinCamera,
    check_frame,
    gripper_opening,
    policy_image_size,
)
from safetwin.robot_io.deploy_policy import ChunkMailbox, PolicyThread, ScriptedPolicy, StateBoard
from safetwin.safety.runio import ConfigError, config_from_dict, read_jsonl

SHAPE = (8, 8, 3)


class FrameSource:
    """A camera source serving a fixed image stamped ``lag_s`` before each read."""

    def __init__(self, lag_s: float = 0.0, image: np.ndarray | None = None):
        self.lag_s, self.reads, self.closed = lag_s, 0, False
        self.image = np.full(SHAPE, 7, np.uint8) if image is None else image

    def read(self):
        self.reads += 1
        return self.image, time.monotonic() - self.lag_s

    def close(self):
        self.closed = True


def test_check_frame_rejects_bad_frames_and_stale_ones_a6():
    img = np.zeros(SHAPE, np.uint8)
    assert check_frame((img, 9.9), SHAPE, now=10.0, max_age_s=0.5)[1] == 9.9
    with pytest.raises(StaleFrameError, match="600 ms old"):
        check_frame((img, 9.4), SHAPE, now=10.0, max_age_s=0.5)  # A6: older than the timeout = missing
    with pytest.raises(CameraError, match="uint8"):
        check_frame((img.astype(np.float32), 9.9), SHAPE, now=10.0, max_age_s=0.5)
    with pytest.raises(CameraError, match=r"\(8, 8, 3\)"):
        check_frame((np.zeros((8, 9, 3), np.uint8), 9.9), SHAPE, now=10.0, max_age_s=0.5)
    with pytest.raises(CameraError, match="not a past monotonic time"):
        check_frame((img, 11.0), SHAPE, now=10.0, max_age_s=0.5)
    with pytest.raises(CameraError, match="not a past monotonic time"):
        check_frame((img, float("nan")), SHAPE, now=10.0, max_age_s=0.5)
    with pytest.raises(CameraError, match="must return"):
        check_frame(img, SHAPE, now=10.0, max_age_s=0.5)


def test_observer_proprio_layout_and_image():
    """proprio = [q, dq, gripper] in the scene robot's order (float32), the camera's image, and the
    frame time; without a camera the image is black and there is no frame time."""
    cam = FrameSource()
    obs_fn = Observer("push it", cam, SHAPE, max_frame_age_s=0.5, order=[2, 0, 1], opening=0.25)
    state = {"t_mono": time.monotonic(), "q": np.array([0.1, 0.2, 0.3]), "dq": np.array([1.0, 2.0, 3.0])}
    obs = obs_fn(state)
    assert obs["proprio"].dtype == np.float32
    np.testing.assert_allclose(obs["proprio"], [0.3, 0.1, 0.2, 3.0, 1.0, 2.0, 0.25], rtol=1e-6)
    assert obs["image"] is cam.image and obs["instruction"] == "push it"
    assert abs(obs["t_image"] - state["t_mono"]) < 0.1 and obs_fn.frames == 1
    blind = Observer("x", None, SHAPE)(state)
    assert blind["t_image"] is None and blind["image"].shape == SHAPE and not blind["image"].any()
    with pytest.raises(StaleFrameError):
        Observer("x", FrameSource(lag_s=0.8), SHAPE, max_frame_age_s=0.5)(state)
    obs_fn.close()
    assert cam.closed


def test_gripper_opening_and_policy_image_size():
    assert gripper_opening(0.037, open_m=0.037, closed_m=0.015) == 1.0
    assert gripper_opening(0.026, open_m=0.037, closed_m=0.015) == pytest.approx(0.5)
    assert gripper_opening(0.0, open_m=0.037, closed_m=0.015) == 0.0  # clipped
    with pytest.raises(ValueError, match="gripper"):
        gripper_opening(float("nan"), 0.037, 0.015)

    class Net:
        class cfg:  # noqa: N801 - the attribute a VLAPolicy carries
            image_size = 32

        def predict(self, obs):
            return obs

    assert policy_image_size(Net().predict) == 32 and policy_image_size(lambda o: o) == 64


def test_chunk_is_stamped_with_the_older_frame_time_a6():
    """A chunk planned from a 0.2 s old frame is 0.2 s old for the control loop's staleness rules."""
    board, mailbox = StateBoard(), ChunkMailbox()
    observe = Observer("x", FrameSource(lag_s=0.2), SHAPE, max_frame_age_s=0.5)
    thread = PolicyThread(lambda obs: np.zeros((4, 7)), 50.0, board, mailbox, lambda: None, observe)
    t_state = time.monotonic()
    board.put(t_state, np.zeros(3), np.zeros(3))
    thread.start()
    try:
        deadline = time.monotonic() + 5.0
        while mailbox.latest() is None and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        thread.stop()
        thread.join(timeout=2.0)
    chunk = mailbox.latest()
    assert chunk is not None and chunk.t_obs < t_state - 0.1  # the frame's time, not the state's


def test_stale_camera_publishes_nothing_a6():
    """A frame older than the staleness timeout: no chunk, no heartbeat, the error is counted."""
    board, mailbox, beats = StateBoard(), ChunkMailbox(), []
    observe = Observer("x", FrameSource(lag_s=1.0), SHAPE, max_frame_age_s=0.5)
    thread = PolicyThread(lambda obs: np.zeros((4, 7)), 50.0, board, mailbox, lambda: beats.append(1), observe)
    board.put(time.monotonic(), np.zeros(3), np.zeros(3))
    thread.start()
    time.sleep(0.2)
    thread.stop()
    thread.join(timeout=2.0)
    assert thread.errors >= 3 and "StaleFrameError" in thread.last_error
    assert mailbox.latest() is None and not beats


def test_injecting_camera_freeze_and_fail():
    cam = InjectingCamera(FrameSource())
    _, t1 = cam.read()
    cam.mode = "freeze"
    time.sleep(0.01)
    assert cam.read()[1] == t1  # the hung driver's last frame, with its old capture time
    cam.mode = "fail"
    with pytest.raises(CameraError, match="injected"):
        cam.read()


def test_camera_config_validated(tmp_path):
    def make(**kw):
        return config_from_dict(DeployConfig, {"run_dir": str(tmp_path), **kw}, "deploy")

    with pytest.raises(ConfigError, match="deploy.camera"):
        make(camera="webcam")
    with pytest.raises(ConfigError, match="deploy.camera"):
        make(camera="sim", port="/dev/ttyUSB0", estop_port="/dev/ttyUSB1")
    with pytest.raises(ConfigError, match="camera faults"):
        make(fault_script=[[0.5, "camera_freeze"]])  # auto, no checkpoint: no camera
    with pytest.raises(ConfigError, match="camera_size"):
        make(camera_size=-1)
    assert make().camera_mode == "none" and make(camera="sim").camera_mode == "sim"
    assert make(checkpoint="x.safetensors").camera_mode == "sim"
    assert make(checkpoint="x.safetensors", port="/dev/ttyUSB0", estop_port="/dev/ttyUSB1").camera_mode == "none"


# ---------------------------------------------------------------------------------------- the twin
@pytest.fixture
def twin_env():
    return pytest.importorskip("safetwin.twin.env", reason="the twin env renders the sim camera")


def _load(run):
    summary = json.loads((run / "summary.json").read_text())
    return summary, list(read_jsonl(run / "telemetry.jsonl"))


class Recorder:
    """A joint-space sine policy that keeps what it was shown, and on which thread."""

    def __init__(self, chunk_dt: float):
        self.sine = ScriptedPolicy("sine", 4, chunk_dt, amplitude=0.4, freq_hz=0.5)
        self.seen: list[dict] = []
        self.threads: set[str] = set()

    def __call__(self, obs):
        self.threads.add(threading.current_thread().name)
        self.seen.append({"image": obs["image"].copy(), "proprio": obs["proprio"].copy(), "q": obs["q"].copy(),
                          "instruction": obs["instruction"]})
        return self.sine(obs)


@pytest.fixture
def read_threads(monkeypatch):
    """Names of the threads that ran ``TwinCamera.read`` (instrumented, the real render runs)."""
    names: list[str] = []
    original = TwinCamera.read

    def read(self):
        names.append(threading.current_thread().name)
        return original(self)

    monkeypatch.setattr(TwinCamera, "read", read)
    return names


def _sim_cfg(tmp_path, **kw):
    base = {"run_dir": str(tmp_path / "runs"), "scene": "tabletop_push", "camera": "sim", "duration_s": 2.0,
            "instruction": "push the red cube into the green zone"}
    return config_from_dict(DeployConfig, {**base, **kw}, "deploy")


def test_sim_deploy_policy_sees_the_scene_and_the_arm_move_d1(tmp_path, twin_env, read_threads):
    """The policy's image in a sim deploy is the twin's front view (not blank; at the home pose it
    matches the training env's nominal observation), it changes as the arm moves, and every frame is
    rendered on the policy thread, never on the control thread (D1)."""
    cfg = _sim_cfg(tmp_path)
    rec = Recorder(cfg.chunk_dt)
    summary, tele = _load(run_deploy(cfg, policy=rec))
    assert summary["status"] == "completed" and summary["camera"] == {"mode": "sim", "frames": len(rec.seen)}
    assert len(rec.seen) >= 10 and rec.threads == {"policy"} and set(read_threads) == {"policy"}
    env = twin_env.TwinEnv("tabletop_push", randomize=False)
    try:
        reference = env.reset(seed=0)[0]["image"].astype(int)
        n_joints = len(env.scene.robot.joint_names)
    finally:
        env.close()
    first = rec.seen[0]
    assert first["image"].shape == reference.shape and first["image"].std() > 10  # not blank
    assert len({tuple(px) for px in first["image"].reshape(-1, 3)}) > 20  # table, cubes, glass, arm
    assert np.abs(first["image"].astype(int) - reference).mean() < 3.0  # same camera, scene and pose
    moved = [s for s in rec.seen if np.max(np.abs(s["q"] - first["q"])) > 0.25]
    assert moved, "the arm never moved"
    assert np.abs(moved[-1]["image"].astype(int) - first["image"].astype(int)).mean() > 1.0
    assert any(r["sent"] is not None for r in tele)
    for s in rec.seen:  # proprio in the env's layout: q, dq (spec order = robot order here), gripper
        assert s["proprio"].shape == (2 * n_joints + 1,) and s["proprio"].dtype == np.float32
        np.testing.assert_allclose(s["proprio"][:n_joints], s["q"], atol=1e-6)
        assert s["proprio"][-1] == pytest.approx(0.0, abs=0.05)  # closed, as the twin resets it
    assert {s["instruction"] for s in rec.seen} == {cfg.instruction}


@pytest.mark.parametrize("fault", ["camera_freeze", "camera_fail"])
def test_frozen_or_failed_camera_holds_then_stops_a6(tmp_path, twin_env, fault):
    """A hung camera (the same frame with its old time) or a failing one: the policy's chunks age
    with the frame, so the loop holds (deadline misses, nothing written) and then stops (A6/A9)."""
    cfg = _sim_cfg(tmp_path, duration_s=1.8, fault_script=[[0.8, fault]])
    summary, tele = _load(run_deploy(cfg, policy=Recorder(cfg.chunk_dt)))
    assert summary["stops"][0]["cause"] in ("policy_deadline", "stale_action"), summary["stops"]
    inj = next(r["seq"] for r in tele if r["injected"])
    assert any(r["sent"] is not None for r in tele[:inj])  # it was moving before
    held = next(r["seq"] for r in tele if r["seq"] > inj and "deadline_miss" in r["faults"])
    stop = next(r["seq"] for r in tele if r["seq"] > inj and r["stop_cmd"])
    assert held < stop <= inj + 60  # hold first, then Stop 1 within the deadline + miss limit
    assert all(r["sent"] is None for r in tele[held:])
    if fault == "camera_fail":
        assert summary["policy"]["errors"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("use_wrist", [False, True])
def test_checkpoint_policy_gets_the_sim_camera_by_default(tmp_path, twin_env, monkeypatch, use_wrist):
    """A saved (untrained) CompactVLA deployed from its checkpoint on port 'sim' with the default
    ``camera: auto``: the VLA receives the twin's rendered front view (not black; with
    ``use_wrist`` also the wrist view) and the proprio of the env's layout, and its chunks drive
    the loop."""
    from safetwin.train.checkpoint import save_policy
    from safetwin.train.language import LanguageEncoder
    from safetwin.train.policy import CompactVLA, PolicyConfig
    from safetwin.twin.scene import load_scene

    scene = load_scene("tabletop_push")
    n = len(scene.robot.joint_names)
    policy = CompactVLA(PolicyConfig(proprio_dim=2 * n + 1, chunk_len=4, use_wrist=use_wrist), LanguageEncoder())
    path = save_policy(tmp_path / "policy.safetensors", policy, safety_spec_sha256=scene.safety.sha256(),
                       scene={"name": scene.name}, step=0, lam=0.0, config={})
    seen = []
    original = CompactVLA.predict

    def predict(self, obs):
        seen.append((obs["image"].copy(), obs["proprio"].copy(), obs.get("wrist_image")))
        return original(self, obs)

    monkeypatch.setattr(CompactVLA, "predict", predict)
    cfg = config_from_dict(DeployConfig, {"run_dir": str(tmp_path / "runs"), "scene": "tabletop_push",
                                          "checkpoint": str(path), "accept_unaudited": True,
                                          "duration_s": 2.0, "bus_timeout_s": 0.05}, "deploy")
    assert cfg.camera_mode == "sim"
    summary, tele = _load(run_deploy(cfg))
    assert not seen[0][0].any()  # the runner's warm-up inference before the policy thread starts
    seen = seen[1:]
    assert summary["camera"]["mode"] == "sim" and summary["camera"]["frames"] >= len(seen) >= 5
    assert summary["policy"]["errors"] == 0 and summary["policy"]["chunks"] >= 5
    assert all(img.shape == (64, 64, 3) and img.std() > 10 for img, _, _ in seen)
    assert all(pro.shape == (2 * n + 1,) for _, pro, _ in seen)
    assert all((wrist is not None and wrist.std() > 10) if use_wrist else wrist is None for _, _, wrist in seen)
    assert sum(r["filter"] is not None for r in tele) > 50
