"""Domain randomisation: reproducible from the seed, and really applied to pybullet."""

from __future__ import annotations

import numpy as np
import pybullet as p
import pytest

from safetwin.twin.env import TwinEnv
from safetwin.twin.randomization import sample
from safetwin.twin.scene import load_scene


@pytest.fixture(scope="module")
def push() -> TwinEnv:
    env = TwinEnv("tabletop_push", images=False)
    yield env
    env.close()


def test_same_seed_same_parameters() -> None:
    cfg = load_scene("tabletop_push").randomization
    a = sample(cfg, np.random.default_rng(4), ["red_cube", "glass"], 6)
    b = sample(cfg, np.random.default_rng(4), ["red_cube", "glass"], 6)
    c = sample(cfg, np.random.default_rng(5), ["red_cube", "glass"], 6)
    assert a.to_dict() == b.to_dict()
    assert a.to_dict() != c.to_dict()
    lo, hi = cfg.mass_scale
    assert all(lo <= v <= hi for v in a.mass_scale.values())
    assert cfg.action_latency[0] <= a.action_latency <= cfg.action_latency[1]


def test_disabled_gives_nominal_midpoints() -> None:
    cfg = load_scene("tabletop_push").randomization
    out = sample(cfg, np.random.default_rng(0), ["red_cube"], 6, enabled=False)
    assert out.object_offset["red_cube"] == [0.0, 0.0, 0.0]
    assert out.action_latency == 0 and out.action_noise_std == 0.0 and out.obs_noise_std == 0.0
    assert out.mass_scale["red_cube"] == pytest.approx(sum(cfg.mass_scale) / 2)


def test_dynamics_read_back_from_pybullet(push: TwinEnv) -> None:
    seen = []
    for seed in (1, 2):
        _, info = push.reset(seed=seed)
        prm = info["randomization"]
        w = push.world
        for name in ("red_cube", "glass"):
            mass, friction = p.getDynamicsInfo(w.body[name], -1, physicsClientId=w.client)[:2]
            restitution = p.getDynamicsInfo(w.body[name], -1, physicsClientId=w.client)[5]
            nominal = push.scene.object(name).mass
            assert mass == pytest.approx(nominal * prm["mass_scale"][name])
            assert friction == pytest.approx(prm["friction"][name])
            assert restitution == pytest.approx(prm["restitution"][name])
            seen.append(mass)
        pos = w.object_pose("red_cube")[0]
        nominal_xy = np.asarray(push.scene.object("red_cube").pose.xyz[:2])
        assert pos[:2] == pytest.approx(nominal_xy + prm["object_offset"]["red_cube"][:2], abs=1e-3)
    assert seen[0] != seen[2]  # the cube's mass changed between episodes


def test_joint_damping_changes_motion() -> None:
    """Joint damping from the randomisation slows a freely swinging joint."""
    env = TwinEnv("reach_avoid", images=False, randomize=False)
    w = env.world
    speeds = []
    for damping in (0.0, 2.0):
        env.reset(seed=0)
        env.params.joint_damping = [damping] * w.n_joints
        for jid in w.joint_ids:
            p.changeDynamics(w.robot, jid, jointDamping=damping, physicsClientId=w.client)
        p.setJointMotorControlArray(w.robot, w.joint_ids, p.VELOCITY_CONTROL, forces=[0.0] * w.n_joints,
                                    physicsClientId=w.client)
        p.resetJointState(w.robot, w.joint_ids[0], 0.0, 2.0, physicsClientId=w.client)
        for _ in range(60):
            w.step_physics()
        speeds.append(abs(w.joint_state()[1][0]))
    env.close()
    assert speeds[1] < 0.8 * speeds[0]


def test_colour_and_camera_jitter_change_the_image() -> None:
    env = TwinEnv("tabletop_push")
    a, _ = env.reset(seed=1)
    b, _ = env.reset(seed=2)
    env.close()
    assert np.abs(a["image"].astype(int) - b["image"].astype(int)).mean() > 0.5


def test_action_latency_delays_motion() -> None:
    """With k control steps of latency, part of the first policy step still runs the old (zero) action."""
    moved = []
    for latency in (0, 4):
        env = TwinEnv("reach_avoid", images=False, randomize=False)
        env.reset(seed=0)
        env.params.action_latency = latency
        env._increments.clear()
        env._increments.extend(np.zeros(6) for _ in range(latency))
        ee0 = env.world.ee_pose()[0]
        env.step(np.array([0.5, 0, 0, 0, 0, 0, -1], np.float32))
        moved.append(env.world.ee_pose()[0][0] - ee0[0])
        env.close()
    assert moved[1] < 0.7 * moved[0]
