"""The scripted expert solves both bundled tasks safely under domain randomisation."""

from __future__ import annotations

import numpy as np
import pytest

from safetwin.twin.env import TwinEnv
from safetwin.twin.expert import ExpertConfig, plan, segment_hits_box


def _rollouts(scene: str, episodes: int, seed0: int = 1000) -> tuple[float, float, float]:
    """(success rate, total cost, largest EE speed m/s) of the expert over ``episodes`` episodes."""
    env = TwinEnv(scene, images=False)
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


@pytest.mark.slow
@pytest.mark.parametrize("scene", ["reach_avoid", "tabletop_push"])
def test_expert_hundred_episodes(scene: str) -> None:
    rate, cost, _ = _rollouts(scene, 100, seed0=0)
    assert rate >= 0.9, f"{scene}: expert success {rate:.0%}"
    assert cost == 0.0, f"{scene}: expert cost {cost}"
