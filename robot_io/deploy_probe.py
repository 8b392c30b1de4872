"""The deploy runner's startup self-check (scenario A7): :func:`self_check` runs
:func:`~.startup_probe.run_startup_probe` on the connected driver right after the start-up arm
command, with the twin's gravity model of the scene's arm, and latches ``SELF_CHECK`` on failure.

``run`` is the runner's ``deploy._Run`` (``cfg``, ``arm``, ``sup``, ``monitor``, ``spec``,
``scene``, ``abort``, ``probe``). Units: rad, N*m, A.
"""

from __future__ import annotations

import logging
from typing import Any

from .startup_probe import ProbeError, run_startup_probe
from .supervisor import Cause

logger = logging.getLogger(__name__)

__all__ = ["self_check"]


def self_check(run: Any) -> None:
    """The startup probe (A7) right after the first arm command, before the control loop runs;
    a failure stops and latches SELF_CHECK for the run (reset and re-arming are refused) and
    raises, so the run ends through the safe-shutdown path."""
    spec, report = run.spec, None

    def permits() -> bool:
        return run.abort is None and run.monitor.permits_motion() and run.sup.may_command()

    if not permits():
        detail = "not run: the e-stop does not permit motion (release it and start again)"
    else:
        gravity = _gravity_model(run)
        try:
            report = run_startup_probe(run.arm, spec.joint_names, [j.lower for j in spec.joints],
                                       [j.upper for j in spec.joints], run.cfg.probe,
                                       None if gravity is None else gravity.torques, permits)
        except ProbeError as exc:
            detail = str(exc)
        else:
            detail = "; ".join(report.failures())
        finally:
            if gravity is not None:
                gravity.close()
    if run.abort:
        logger.warning("startup probe interrupted by %s", run.abort)
        return
    run.probe = None if report is None else report.as_dict()
    run.sup.record("startup_probe", **(run.probe or {"passed": False, "problems": [detail]}))
    if report is None or not report.passed:
        run.sup.trip(Cause.SELF_CHECK, detail)
        raise ProbeError(f"refusing to arm: the startup self-check failed (A7): {detail}", report)
    if report.unverified:
        logger.warning("startup probe: joint direction not confirmed by gravity for %s", report.unverified)


def _gravity_model(run: Any) -> Any:
    """The twin's gravity torques for the spec's joints, or None without a scene URDF."""
    robot = getattr(run.scene, "robot", None)
    if robot is None:
        return None
    from safetwin.twin.dynamics import GravityModel

    fixed = {name: robot.gripper.open for name in robot.gripper.joints} if robot.gripper else {}
    return GravityModel(robot.urdf, run.spec.joint_names, fixed)
