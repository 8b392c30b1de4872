"""TwinEnv on real pybullet: API conformance, determinism, costs, command filter, vector envs."""

from __future__ import annotations

import logging
from pathlib import Path

import gymnasium as gym
import numpy as np
import pybullet as p
import pytest
from gymnasium.utils.env_checker import check_env

import safetwin.twin.registration  # noqa: F401
from safetwin.twin.env import TwinEnv
from safetwin.twin.wrappers import SafetyGymWrapper


@pytest.fixture(scope="module")
def reach() -> TwinEnv:
    env = TwinEnv("reach_avoid", randomize=False)
    yield env
    env.close()


def _drive_to(env: TwinEnv, goal: np.ndarray, steps: int, gain: float = 1.0) -> list[dict]:
    """Proportional EE servo toward ``goal`` (m, base); returns the infos."""
    infos = []
    for _ in range(steps):
        ee = env.world.ee_pose()[0]
        act = np.zeros(7, np.float32)
        act[:3] = np.clip(gain * (goal - ee) / env.scene.control.action_pos_m, -1, 1)
        infos.append(env.step(act)[4])
    return infos


@pytest.mark.parametrize("scene", ["reach_avoid", "tabletop_push"])
def test_check_env(scene: str) -> None:
    env = gym.make("safetwin/Twin-v0", scene=scene)
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


def test_make_and_spaces() -> None:
    env = gym.make("safetwin/Twin-v0", scene="tabletop_push")
    obs, info = env.reset(seed=3)
    assert obs["image"].shape == (64, 64, 3) and obs["image"].dtype == np.uint8
    assert obs["image"].std() > 5.0  # a real rendered scene, not a blank frame
    assert obs["proprio"].dtype == np.float32 and obs["proprio"].shape == (13,)
    assert "cube" in obs["instruction"] and env.observation_space.contains(obs)
    assert set(info["costs"]) == {"collision", "keepout", "ee_speed", "joint_limit", "force"}
    assert info["privileged"].dtype == np.float32 and "randomization" in info
    env.close()


def test_same_seed_same_rollout() -> None:
    runs = []
    for _ in range(2):
        env = TwinEnv("tabletop_push")
        obs, info = env.reset(seed=11)
        rng = np.random.default_rng(0)
        trace = [obs["image"].copy(), obs["proprio"].copy(), obs["instruction"]]
        for _ in range(6):
            obs, r, *_, info = env.step(rng.uniform(-1, 1, 7).astype(np.float32))
            trace += [obs["image"].copy(), obs["proprio"].copy(), r, info["privileged"].copy(), info["cost"]]
        runs.append(trace)
        env.close()
    for a, b in zip(*runs, strict=False):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    other = TwinEnv("tabletop_push")
    obs, _ = other.reset(seed=12)
    assert not np.array_equal(obs["proprio"], runs[0][1]) or obs["instruction"] != runs[0][2]
    other.close()


def test_reset_after_an_episode_matches_a_fresh_env() -> None:
    """A reset restores the simulation from its snapshot instead of rebuilding it: an env that
    has already pushed objects around must replay a seed bit for bit like a fresh one."""
    def rollout(env: TwinEnv) -> list:
        obs, _ = env.reset(seed=21)
        rng, trace = np.random.default_rng(3), [obs["image"].copy(), obs["proprio"].copy()]
        for _ in range(8):
            obs, r, *_, info = env.step(rng.uniform(-1, 1, 7).astype(np.float32))
            trace += [obs["image"].copy(), obs["proprio"].copy(), r, info["privileged"].copy(), info["cost"]]
        return trace

    used = TwinEnv("tabletop_push")
    used.reset(seed=4)
    pressed = 0.0
    for _ in range(25):  # drive down onto the table so the solver holds contacts when it resets
        info = used.step(np.array([0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0], np.float32))[-1]
        pressed = max(pressed, info["max_contact_force"])
    assert pressed > 10.0
    fresh = TwinEnv("tabletop_push")
    try:
        for a, b in zip(rollout(fresh), rollout(used), strict=True):
            assert np.array_equal(np.asarray(a), np.asarray(b))
    finally:
        fresh.close()
        used.close()


def test_reset_rebuilds_when_bodies_were_added_from_outside(caplog: pytest.LogCaptureFixture) -> None:
    """The snapshot no longer fits once a body is added: reset warns, rebuilds the scene (the
    stray body gone) and starts the episode exactly like a fresh env."""
    env, fresh = TwinEnv("tabletop_push"), TwinEnv("tabletop_push")
    try:
        env.reset(seed=2)
        c = env.world.client
        shape = p.createCollisionShape(p.GEOM_SPHERE, radius=0.05, physicsClientId=c)
        p.createMultiBody(baseMass=1.0, baseCollisionShapeIndex=shape, basePosition=[0, 0, 2], physicsClientId=c)
        with caplog.at_level(logging.WARNING, logger="safetwin.twin.world"):
            obs, _ = env.reset(seed=9)
        assert "rebuilding" in caplog.text
        assert p.getNumBodies(physicsClientId=c) == len(env.world.bodies())
        want, _ = fresh.reset(seed=9)
        assert np.array_equal(obs["image"], want["image"]) and np.array_equal(obs["proprio"], want["proprio"])
    finally:
        env.close()
        fresh.close()


def test_full_speed_action_exceeds_ee_speed_limit(reach: TwinEnv) -> None:
    """Scenario A4 (teleport-like full action): the twin's cost flags the over-speed."""
    reach.reset(seed=0)
    infos = [reach.step(np.array([1, 1, 1, 0, 0, 0, -1], np.float32))[4] for _ in range(3)]
    assert max(i["ee_speed"] for i in infos) > reach.safety_spec.ee_speed_max
    assert any(i["costs"]["ee_speed"] == 1.0 for i in infos)


def test_slow_motion_has_no_speed_cost(reach: TwinEnv) -> None:
    reach.reset(seed=0)
    infos = [reach.step(np.array([0.3, 0, 0, 0, 0, 0, -1], np.float32))[4] for _ in range(5)]
    assert all(i["costs"]["ee_speed"] == 0.0 for i in infos)
    assert all(i["cost"] == 0.0 for i in infos)


def test_cost_monitor_ee_speed_equals_pybullet_link_velocity(reach: TwinEnv) -> None:
    """The EE point and speed the costs check (kinematics of the measured joint state, |J_v dq|)
    are pybullet's own EE link position and linear velocity."""
    reach.reset(seed=0)
    w, rng = reach.world, np.random.default_rng(1)
    for _ in range(15):
        reach.step(rng.uniform(-1, 1, 7).astype(np.float32))
        q, dq = w.joint_state()
        k = reach.kin.observe_track(q, dq, *reach.kin.ee_pose(q), np.zeros(6), 0.05)
        ee, speed, ee_rot = k.ee_pos, k.speed, k.ee_rot
        st = p.getLinkState(w.robot, w.ee_index, computeLinkVelocity=1, computeForwardKinematics=1,
                            physicsClientId=w.client)
        rot, origin = w.base_T[:3, :3], w.base_T[:3, 3]
        np.testing.assert_allclose(ee, rot.T @ (np.asarray(st[4]) - origin), atol=1e-6)  # float32 inside
        link_rot = np.asarray(p.getMatrixFromQuaternion(st[5])).reshape(3, 3)
        np.testing.assert_allclose(ee_rot, rot.T @ link_rot, atol=1e-6)
        np.testing.assert_allclose(ee_rot, reach.kin.ee_pose(q)[1], atol=1e-12)
        assert speed == pytest.approx(float(np.linalg.norm(st[6])), rel=1e-9, abs=1e-12)


def test_non_finite_ik_command_brakes(reach: TwinEnv) -> None:
    """Fail closed in the twin's controller: a non-finite IK command is never applied."""
    reach.reset(seed=0)
    dq = np.full(reach.world.n_joints, 0.5)
    applied = reach._filtered(np.zeros_like(dq), dq, np.full_like(dq, np.nan), 0.01)
    np.testing.assert_array_equal(applied, reach.brake(dq, 0.01))


def test_collision_cost_when_driving_into_glass(reach: TwinEnv) -> None:
    reach.reset(seed=0)
    glass = reach.world.object_pose("glass")[0]
    infos = _drive_to(reach, glass, 30, gain=0.5)
    assert any(i["costs"]["collision"] == 1.0 for i in infos)
    assert min(i["min_fragile_distance"] for i in infos) <= 0.0


def test_keepout_cost(reach: TwinEnv) -> None:
    reach.reset(seed=0)
    box = reach.safety_spec.keepout[0]
    centre = (np.asarray(box.lo) + np.asarray(box.hi)) / 2
    infos = _drive_to(reach, np.array([centre[0], centre[1], 0.22]), 40, gain=0.5)
    assert any(i["costs"]["keepout"] == 1.0 for i in infos)
    assert all(i["costs"]["collision"] == 0.0 for i in infos)


def test_force_cost_pressing_on_table(reach: TwinEnv) -> None:
    reach.reset(seed=0)
    ee = reach.world.ee_pose()[0]
    infos = _drive_to(reach, np.array([ee[0], ee[1] - 0.12, -0.2]), 30, gain=0.5)
    assert max(i["max_contact_force"] for i in infos) > reach.safety_spec.contact_force_max
    assert any(i["costs"]["force"] == 1.0 for i in infos)


def test_joint_limit_cost_and_filter_output_applied_exactly(reach: TwinEnv) -> None:
    """Scenario B1 (applied == filter output bit for bit) and the joint_limit cost."""
    reach.reset(seed=0)
    seen = []

    def over_speed(q, dq, qd, dt):  # noqa: ANN001, ANN202
        out = np.zeros_like(qd)
        out[0] = 1.2 * reach.safety_spec.joints[0].velocity + 1e-3 * np.sin(len(seen))
        seen.append(out.copy())
        return out

    reach.command_filter = over_speed
    try:
        info = reach.step(np.zeros(7, np.float32))[4]
    finally:
        reach.command_filter = None
    assert info["costs"]["joint_limit"] == 1.0
    applied = reach.last_command["applied"]
    assert applied.tobytes() == seen[-1].tobytes()
    assert len(seen) == reach.world.control_steps


def test_filter_fault_brakes(reach: TwinEnv) -> None:
    """Scenario B5: a filter that throws or returns NaN brakes the arm; the nominal never passes."""
    for bad in (lambda *a: 1 / 0, lambda q, dq, qd, dt: np.full_like(qd, np.nan), lambda *a: np.zeros(2)):
        reach.reset(seed=0)
        q0 = reach.world.joint_state()[0]
        reach.command_filter = bad
        try:
            info = reach.step(np.array([1, 0, 0, 0, 0, 0, -1], np.float32))[4]
        finally:
            reach.command_filter = None
        assert info["filter_faults"] == reach.world.control_steps
        cmd = reach.last_command
        assert np.linalg.norm(cmd["nominal"]) > 0.1 and not np.allclose(cmd["applied"], cmd["nominal"])
        assert np.all(np.abs(cmd["applied"]) <= np.abs(cmd["dq"]))
        assert np.linalg.norm(reach.world.joint_state()[0] - q0) < 0.02


def test_filter_fault_mid_motion_decelerates_within_limits(reach: TwinEnv) -> None:
    """Scenario B5 while moving: the brake ramps the joint velocity down at the spec's
    acceleration limit (no instant zero, no nominal pass-through)."""
    reach.reset(seed=0)
    for _ in range(3):
        reach.step(np.array([0, 1, 0, 0, 0, 0, -1], np.float32))
    dq = reach.world.joint_state()[1]
    assert np.max(np.abs(dq)) > 0.3
    a_max = np.array([j.acceleration for j in reach.safety_spec.joints])
    dt = reach.world.control_dt
    applied = []

    def broken(q, dq, qd, dt):  # noqa: ANN001, ANN202
        raise RuntimeError("solver crashed")

    reach.command_filter = broken
    original = reach._filtered

    def spy(q, dq, nominal, dt):  # noqa: ANN001, ANN202
        out = original(q, dq, nominal, dt)
        applied.append((dq.copy(), out.copy()))
        return out

    reach._filtered = spy
    try:
        reach.step(np.array([0, 1, 0, 0, 0, 0, -1], np.float32))
    finally:
        reach.command_filter = None
        del reach._filtered
    dq_first, cmd_first = applied[0]
    expected = dq_first - np.clip(dq_first, -a_max * dt, a_max * dt)
    assert np.allclose(cmd_first, expected) and np.linalg.norm(cmd_first) > 0.0
    assert np.all(np.abs(cmd_first) <= np.abs(dq_first))
    assert np.all(np.abs(dq_first - cmd_first) <= a_max * dt + 1e-12)
    assert np.all(np.sign(cmd_first[np.abs(cmd_first) > 0]) == np.sign(dq_first[np.abs(cmd_first) > 0]))


def test_nan_action_holds(reach: TwinEnv) -> None:
    """Scenario A1: a non-finite action is replaced by hold."""
    reach.reset(seed=0)
    ee0 = reach.world.ee_pose()[0]
    *_, info = reach.step(np.array([np.nan, 1, 1, 0, 0, 0, 0], np.float32))
    assert info["action_fault"] is True
    assert np.linalg.norm(reach.world.ee_pose()[0] - ee0) < 0.005
    with pytest.raises(ValueError, match="shape"):
        reach.step(np.zeros(5, np.float32))


def test_safety_gym_wrapper_six_tuple() -> None:
    env = SafetyGymWrapper(TwinEnv("reach_avoid", images=False))
    env.reset(seed=1)
    obs, reward, cost, terminated, truncated, info = env.step(np.ones(7, np.float32))
    assert "image" not in obs and cost == info["cost"] and isinstance(cost, float)
    env.close()


@pytest.mark.parametrize("vector", ["async", "sync"])
def test_vector_env_instructions_intact(vector: str) -> None:
    fns = [lambda: gym.make("safetwin/Twin-v0", scene="tabletop_push") for _ in range(2)]
    venv = (gym.vector.AsyncVectorEnv(fns, shared_memory=False) if vector == "async"
            else gym.vector.SyncVectorEnv(fns))
    try:
        obs, _ = venv.reset(seed=[5, 6])
        single = [TwinEnv("tabletop_push"), TwinEnv("tabletop_push")]
        expected = [e.reset(seed=s)[0]["instruction"] for e, s in zip(single, (5, 6), strict=False)]
        for e in single:
            e.close()
        assert list(obs["instruction"]) == expected
        assert all(len(text) > 10 for text in obs["instruction"])
        obs, *_ = venv.step(np.zeros((2, 7), np.float32))
        assert obs["image"].shape == (2, 64, 64, 3) and list(obs["instruction"]) == expected
    finally:
        venv.close()


def test_wrist_camera_image() -> None:
    env = TwinEnv("reach_avoid", wrist_camera=True, randomize=False)
    obs, _ = env.reset(seed=0)
    assert obs["wrist_image"].shape == (64, 64, 3) and env.observation_space.contains(obs)
    before = obs["wrist_image"].copy()
    obs, *_ = env.step(np.array([0, 0, 0, 0, 0, 1, -1], np.float32))
    assert np.abs(obs["wrist_image"].astype(int) - before).mean() > 0.5  # the camera turned with the wrist
    env.close()


def test_panda_proxy_render_matches_full_meshes() -> None:
    """The primitive proxy shows the Panda where the full meshes are, and follows its motion."""
    scene = str(Path(__file__).resolve().parents[2] / "scenes" / "panda_reach.yaml")
    images = {}
    for renderer in ("proxy", "direct"):
        env = TwinEnv(scene, renderer=renderer, randomize=False)
        obs, _ = env.reset(seed=0)
        images[renderer] = obs["image"].astype(int)
        if renderer == "proxy":
            for _ in range(6):
                moved, *_ = env.step(np.array([0, 1, 0, 0, 0, 0, -1], np.float32))
            assert np.abs(moved["image"].astype(int) - images["proxy"]).mean() > 0.3
        env.close()
    diff = np.abs(images["proxy"] - images["direct"]).mean()
    moved_diff = np.abs(moved["image"].astype(int) - images["direct"]).mean()
    assert diff < moved_diff, f"proxy/full-mesh difference {diff:.2f} vs moved arm {moved_diff:.2f}"


def test_importing_the_package_registers_the_env() -> None:
    """gymnasium 1.x does not load entry points: ``import safetwin.twin`` must register (idempotently)."""
    import safetwin.twin
    from safetwin.twin.registration import TWIN_ENV_ID, register_envs

    assert TWIN_ENV_ID in gym.registry
    register_envs()  # a second registration is a no-op, not an error or a duplicate warning
    assert gym.registry[TWIN_ENV_ID].entry_point == "safetwin.twin.env:TwinEnv"
    assert safetwin.twin.registration.TWIN_ENV_ID == TWIN_ENV_ID


def test_goal_distance_is_the_push_progress_and_decides_success() -> None:
    """``info["goal_distance"]``: the target cube's distance to the goal centre in the table plane
    (m), at reset and every step; success holds exactly when it is under ``success.distance``."""
    env = TwinEnv("tabletop_push", images=False)
    try:
        _, info = env.reset(seed=4)
        w = env.world

        def planar() -> float:
            cube, goal = w.object_pose(w.target)[0], w.goal_position()
            return float(np.hypot(cube[0] - goal[0], cube[1] - goal[1]))

        assert info["goal_distance"] == pytest.approx(planar())
        start, infos, done = info["goal_distance"], [], False
        while not done:
            _, _, term, trunc, info = env.step(env.expert_action())
            assert info["goal_distance"] == pytest.approx(planar())
            infos.append(info)
            done = term or trunc
        limit = env.scene.task.success.distance
        assert all(i["is_success"] == (i["goal_distance"] < limit) for i in infos)
        assert infos[-1]["is_success"] and infos[-1]["goal_distance"] < limit < start
    finally:
        env.close()


def test_info_names_the_target_the_instruction_asks_for() -> None:
    """``info["target"]``: the episode's drawn target object, at reset and every step; the
    instruction names its colour, and over a few seeds both cubes of tabletop_push are drawn."""
    env = TwinEnv("tabletop_push", images=False)
    try:
        drawn = set()
        for seed in range(8):
            obs, info = env.reset(seed=seed)
            target = env.world.target
            assert info["target"] == target and target in env.scene.task.targets
            assert env.scene.object(target).color_name in obs["instruction"]
            _, _, _, _, info = env.step(np.zeros(7, np.float32))
            assert info["target"] == target
            drawn.add(target)
        assert drawn == {"red_cube", "blue_cube"}
    finally:
        env.close()
