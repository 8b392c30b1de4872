"""Gymnasium registration of the SafeTwin environments.

``import safetwin.twin.registration`` registers ``safetwin/Twin-v0`` (entry point
:class:`safetwin.twin.env.TwinEnv`); :func:`register_envs` is idempotent and is also the
``gymnasium.envs`` entry point declared in pyproject.toml. This module imports neither
pybullet nor the env, so importing it is cheap.

Usage::

    import gymnasium as gym
    import safetwin.twin.registration  # noqa: F401
    env = gym.make("safetwin/Twin-v0", scene="tabletop_push")
"""

from __future__ import annotations

import gymnasium as gym

TWIN_ENV_ID = "safetwin/Twin-v0"
"""Id of the pybullet digital-twin environment."""


def register_envs() -> None:
    """Register every SafeTwin env id that is not registered yet (safe to call repeatedly).

    The env enforces the scene's time limit itself (``truncated``), so no TimeLimit wrapper
    is added; the env checker stays on (gymnasium's passive checker).
    """
    if TWIN_ENV_ID not in gym.registry:
        gym.register(id=TWIN_ENV_ID, entry_point="safetwin.twin.env:TwinEnv",
                     disable_env_checker=False)


register_envs()
