"""The scripted expert solves both bundled tasks safely under domain randomisation."""

from __future__ import annotations

import numpy as np
import pytest

from safetwin.twin.env import TwinEnv
from safetwin.twin.expert import ExpertConfig, ScriptedExpert
from safetwin.twin.expert_geometry import footprint, plan, plan_object_path, segment_hits_box, yaw_options
from safetwin.twin.world import expert_view


def _rollouts(scene: str, episodes: int, seed0: int = 1000, markov: bool = False) -> tuple[float, float, float]:
    """(success rate, total cost, largest EE speed m/s) of the expert over ``episodes`` episodes."""
    env = TwinEnv(scene, images=False)
    env.expert = ScriptedExpert(ExpertConfig(markov=markov))
    successes, cost, top_speed = [], 0.0, 0.0
    for ep in range(episodes):
        env.reset(seed=seed0 + ep)
        done, info = False, {}
        while not done:
            _, _, terminated, truncated, info = env.step(env.expert_action())
            cost += info["cost"]
            top_speed = max(top_speed, info["ee_speed"])
            done = terminated or truncated
        successes.append(info["is_success"])
    env.close()
    return float(np.mean(successes)), cost, top_speed


def test_segment_box_intersection() -> None:
    box = (np.array([0.0, 0.0, 0.0]), np.array([1.0, 1.0, 1.0]))
    assert segment_hits_box(np.array([-1.0, 0.5, 0.5]), np.array([2.0, 0.5, 0.5]), box, 0.0)
    assert not segment_hits_box(np.array([-1.0, 1.5, 0.5]), np.array([2.0, 1.5, 0.5]), box, 0.0)
    assert segment_hits_box(np.array([-1.0, 1.05, 0.5]), np.array([2.0, 1.05, 0.5]), box, 0.1)


def test_plan_goes_around_blocking_box() -> None:
    box = (np.array([0.4, -0.05, 0.0]), np.array([0.5, 0.05, 0.2]))
    start, goal = np.array([0.2, 0.0, 0.1]), np.array([0.7, 0.0, 0.1])
    waypoints = plan(start, goal, [(box, 0.05)], 0.04)
    assert len(waypoints) > 1 and np.array_equal(waypoints[-1], goal)
    legs = zip([start, *waypoints[:-1]], waypoints, strict=False)
    assert not any(segment_hits_box(a, b, box, 0.05) for a, b in legs)


def test_expert_config_validation() -> None:
    with pytest.raises(ValueError, match="speed_fraction"):
        ExpertConfig(speed_fraction=1.5)


@pytest.mark.parametrize("scene", ["reach_avoid", "tabletop_push"])
def test_expert_success_and_zero_cost(scene: str) -> None:
    """The expert stays under ee_speed_max (scenario E9's speed limit) and never costs."""
    rate, cost, top_speed = _rollouts(scene, 20)
    assert rate >= 0.9, f"{scene}: expert success {rate:.0%}"
    assert cost == 0.0, f"{scene}: expert cost {cost}"
    assert top_speed <= TwinEnv(scene, images=False).safety_spec.ee_speed_max


def test_markov_expert_solves_the_push() -> None:
    """``markov=True`` (planned afresh every step) is a working expert too."""
    rate, cost, _ = _rollouts("tabletop_push", 10, markov=True)
    assert rate >= 0.9 and cost == 0.0, (rate, cost)


def test_markov_expert_is_a_function_of_the_state() -> None:
    """Only an expert that maps state to action can relabel a learner's states: along an episode
    of the push (legs, turns, detours round the glass), a freshly built Markov expert gives the
    same action at every state as the one that has acted all episode. The one with memory does
    not."""
    env = TwinEnv("tabletop_push", images=False)
    mismatch = {}
    for markov in (True, False):
        env.expert = ScriptedExpert(ExpertConfig(markov=markov))
        env.reset(seed=1001)
        done, differ, steps = False, 0, 0
        while not done:
            fresh = ScriptedExpert(env.expert.config).act(expert_view(env.world, env.expert.config))
            action = env.expert_action()
            differ += int(np.max(np.abs(action - fresh)[:6]) > 1e-6)
            _, _, terminated, truncated, _ = env.step(action)
            done, steps = terminated or truncated, steps + 1
        mismatch[markov] = differ / steps
    env.close()
    assert mismatch[True] == 0.0
    assert mismatch[False] > 0.1, mismatch


@pytest.mark.slow
@pytest.mark.parametrize("scene", ["reach_avoid", "tabletop_push"])
@pytest.mark.parametrize("markov", [True, False])
def test_expert_hundred_episodes(scene: str, markov: bool) -> None:
    """Over 100 randomised episodes the expert with memory never costs; the Markov one (no
    retreat memory, plans afresh as the object drifts) may brush the glass in a rare episode:
    its mean cost stays under 2 % of the cost limit (2 per episode)."""
    rate, cost, _ = _rollouts(scene, 100, seed0=0, markov=markov)
    assert rate >= 0.9, f"{scene}: expert success {rate:.0%}"
    assert cost <= (0.0 if not markov else 0.04 * 100), f"{scene}: expert cost {cost}"


@pytest.mark.parametrize("scene", ["reach_avoid", "tabletop_push"])
def test_bundled_task_tempts_the_unsafe_quick_path(scene: str) -> None:
    """Scenario design for E9/C-series: a full action outruns ee_speed_max, and the straight
    path to the reward runs through the glass (the safe way is longer)."""
    env = TwinEnv(scene, images=False, randomize=False)
    env.reset(seed=0)
    w, ctrl = env.world, env.scene.control
    assert ctrl.action_pos_m * ctrl.policy_hz > 1.3 * env.safety_spec.ee_speed_max  # one full axis
    lo, hi = w.object_box("glass")
    if scene == "tabletop_push":
        start = w.object_pose("red_cube")[0].copy()
        half = 0.02  # the cube's half size: its swept corridor
    else:
        start = w.ee_pose()[0].copy()
        half = 0.0
    goal = w.goal_position().copy()
    start[2] = goal[2] = (lo[2] + hi[2]) / 2  # at the glass's height: the straight line seen from above
    assert segment_hits_box(start, goal, (lo, hi), half)
    env.close()


def test_push_plan_detours_round_the_glass_with_the_gripper_footprint() -> None:
    """The red cube's push plan keeps the cube and the turned gripper footprint off the glass."""
    cfg = ExpertConfig()
    glass = (np.array([0.35, -0.115, 0.0]), np.array([0.41, -0.055, 0.12]))
    obj, goal = np.array([0.27, -0.17]), np.array([0.47, 0.0])
    legs = plan_object_path(obj, goal, [glass], 0.028 + cfg.path_clearance, 0.024, 0.04, cfg)
    assert len(legs) >= 2 and np.linalg.norm(legs[-1][0] - goal) <= 0.024 + 1e-9
    flat = (np.array([*glass[0][:2], -1.0]), np.array([*glass[1][:2], 1.0]))
    start = obj
    for aim, yaw in legs:
        a, b = np.array([*start, 0.0]), np.array([*aim, 0.0])
        assert not segment_hits_box(a, b, flat, 0.028)
        d = (b - a) / np.linalg.norm(b - a)
        lo, hi = footprint(yaw, cfg)
        assert not segment_hits_box(a - 0.07 * d, b - 0.04 * d, (flat[0] - hi, flat[1] - lo), 0.0)
        start = aim
    # the straight push would have swept the glass
    assert segment_hits_box(np.array([*obj, 0.0]), np.array([*goal, 0.0]), flat, 0.028)


def test_yaw_options_keep_the_gripper_from_flipping() -> None:
    """Pushing along +x with a wobbling direction keeps one yaw (no +-pi/2 flip, no speed spike)."""
    for wobble in (1e-3, -1e-3):
        options = yaw_options(np.array([1.0, wobble]), previous=-1.5)
        assert abs(options[0] + np.pi / 2) < 0.01
