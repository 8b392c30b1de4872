"""SafeTwin twin package: scenes, kinematics, the pybullet twin env and real-to-sim capture.

Importing the package registers the gymnasium id ``safetwin/Twin-v0`` (gymnasium 1.x no longer
loads the ``gymnasium.envs`` entry point on its own). Registration imports only gymnasium, not
pybullet or the env module, and is idempotent.
"""

from . import registration as registration  # noqa: F401  (registers safetwin/Twin-v0)
