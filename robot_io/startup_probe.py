"""Startup self-check (scenario A7): a small probe motion per joint before the arm is armed.

A units error (degrees for radians, normalised [-100, 100] for raw ticks), a wrong zero offset
or a sign-flipped joint makes the software's picture of the arm wrong while every register
reads plausibly, and the safety filter then guards the wrong geometry. Before the first arm
command the runner checks, joint by joint, with torque on and nothing else moving:

1. the measured pose lies inside the safety spec's joint limits (a units or offset error
   usually puts it far outside);
2. a goal step of ``amplitude_rad`` moves that joint the commanded way by the commanded amount
   (within ``magnitude_tol``), the servo's velocity register agrees with that direction, and no
   other joint moves by more than ``crosstalk_rad`` (swapped or cross-wired IDs, a joint in the
   wrong operating mode, a jammed or unpowered joint);
3. with a gravity model of the twin, the measured holding current agrees in sign with the
   model's gravity torque at the measured pose, and its change over the probe step with the
   model's change, and a joint the model says carries a load does carry one. The encoder cannot see a sign-flipped joint (command and reading are flipped
   together); gravity can. Where the model predicts too little torque to tell (a vertical waist
   axis, a wrist roll), the joint is reported ``unverified`` rather than passed.

Any contradiction fails the check and the runner refuses to arm. Torque is switched off again
at the end whatever happens, and motion stops (torque off) as soon as ``permits_motion``
returns False (the e-stop). Units: rad, rad/s, A, N*m, s (monotonic clock).
Imports nothing of SafeTwin's: the driver and the gravity model come in as objects.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["JointProbe", "ProbeConfig", "ProbeError", "ProbeReport", "run_startup_probe"]


class ProbeError(RuntimeError):
    """The startup self-check found the arm inconsistent with its model: refuse to arm (A7)."""

    def __init__(self, message: str, report: ProbeReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class ProbeConfig:
    """Options of the startup self-check.

    Attributes:
        enabled: run the check before arming (turn off only for a rig checked by other means).
        amplitude_rad: size of each joint's probe step, rad (toward the far side of its limits).
        limit_margin_rad: the probe step keeps at least this far from the joint limits, rad.
        magnitude_tol: accepted relative error of the measured step, |measured/commanded - 1|.
        crosstalk_rad: largest motion of a joint that was not commanded, rad.
        settle_s: longest wait for a step to settle, s (the joint must be within 20% of the step
            of its goal and below ``still_rad_s``).
        still_rad_s: speed under which a joint counts as settled, rad/s.
        gravity_min_nm: model gravity torque (or its change over a step), N*m, above which the
            measured current's sign must agree with it.
        current_min_a: measured current (or change), A, above which its sign counts as evidence.
        min_pose_limits_tol_rad: how far outside the spec's joint limits the start pose may be, rad.
    """

    enabled: bool = True
    amplitude_rad: float = 0.05
    limit_margin_rad: float = 0.02
    magnitude_tol: float = 0.3
    crosstalk_rad: float = 0.01
    settle_s: float = 0.6
    still_rad_s: float = 0.02
    gravity_min_nm: float = 0.3
    current_min_a: float = 0.02
    min_pose_limits_tol_rad: float = 0.05

    def __post_init__(self) -> None:
        positive = ("amplitude_rad", "magnitude_tol", "crosstalk_rad", "settle_s", "still_rad_s",
                    "gravity_min_nm", "current_min_a")
        for name in (*positive, "limit_margin_rad", "min_pose_limits_tol_rad"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0 or (name in positive and value == 0):
                raise ValueError(f"deploy.probe.{name}: must be a finite number {'> 0' if name in positive else '>= 0'},"
                                 f" got {value!r}")
        if not isinstance(self.enabled, bool):
            raise ValueError(f"deploy.probe.enabled: must be true or false, got {self.enabled!r}")
        if self.magnitude_tol >= 1 or self.crosstalk_rad >= self.amplitude_rad:
            raise ValueError("deploy.probe: need magnitude_tol < 1 and crosstalk_rad < amplitude_rad")


@dataclass
class JointProbe:
    """What the check measured on one joint (rad, rad/s, A, N*m)."""

    joint: str
    commanded_rad: float = 0.0
    measured_rad: float = 0.0
    peak_velocity: float = 0.0
    crosstalk_rad: float = 0.0
    gravity_model_nm: float = 0.0
    current_a: float = 0.0
    gravity_change_model_nm: float = 0.0
    current_change_a: float = 0.0
    gravity: str = "no model"
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


@dataclass
class ProbeReport:
    """Outcome of the check: per-joint results; ``passed`` is False on any contradiction."""

    joints: list[JointProbe] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.problems and all(j.passed for j in self.joints)

    @property
    def unverified(self) -> list[str]:
        """Joints whose sign gravity could not confirm (reported, not passed silently)."""
        return [j.joint for j in self.joints if j.gravity != "agrees"]

    def failures(self) -> list[str]:
        return self.problems + [f"{j.joint}: {p}" for j in self.joints for p in j.problems]

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "problems": self.failures(), "unverified": self.unverified,
                "duration_s": self.duration_s,
                "joints": [{**asdict(j), "passed": j.passed} for j in self.joints]}


class _Probe:
    """One run of the check (holds the arm, the joint indices and the start pose)."""

    def __init__(self, arm: Any, names: Sequence[str], lower: np.ndarray, upper: np.ndarray, cfg: ProbeConfig,
                 gravity: Callable[[np.ndarray], np.ndarray] | None, permits_motion: Callable[[], bool]) -> None:
        self.arm, self.cfg, self.gravity, self.permits = arm, cfg, gravity, permits_motion
        all_names = tuple(arm.joint_names)
        self.names = tuple(names)
        self.idx = np.array([all_names.index(n) for n in self.names], dtype=int)
        self.lower, self.upper = np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)

    def read(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(positions of all bus joints, their velocities, their currents)."""
        obs = self.arm.get_observation()
        return (np.asarray(obs["position"], dtype=float), np.asarray(obs["velocity"], dtype=float),
                np.asarray(obs["current"], dtype=float))

    def move(self, goal: np.ndarray, joint: int) -> tuple[np.ndarray, float, np.ndarray]:
        """Write ``goal`` (all bus joints) and wait until bus joint ``joint`` settles there;
        returns (final positions, peak signed velocity of ``joint``, final currents)."""
        self.arm.write_goal(goal)
        start, peak = time.monotonic(), 0.0
        step = max(abs(goal[joint] - self.read()[0][joint]), self.cfg.amplitude_rad)
        while True:
            if not self.permits():
                raise ProbeError("motion no longer permitted (e-stop, a stop or an abort): probe interrupted")
            q, dq, cur = self.read()
            peak = dq[joint] if abs(dq[joint]) > abs(peak) else peak
            settled = abs(q[joint] - goal[joint]) < 0.2 * step and np.all(np.abs(dq) < self.cfg.still_rad_s)
            if settled or time.monotonic() - start > self.cfg.settle_s:
                return q, float(peak), cur
            time.sleep(0.005)

    def torques(self, q_all: np.ndarray) -> np.ndarray | None:
        return None if self.gravity is None else np.asarray(self.gravity(q_all[self.idx]), dtype=float)

    def check_pose(self, q_all: np.ndarray) -> list[str]:
        q, tol = q_all[self.idx], self.cfg.min_pose_limits_tol_rad
        return [f"{n}: start pose {v:.3f} rad outside the spec limits [{lo:.3f}, {hi:.3f}] "
                f"(units, offset or calibration error?)"
                for n, v, lo, hi in zip(self.names, q, self.lower, self.upper, strict=True)
                if not lo - tol <= v <= hi + tol]

    def probe_joint(self, k: int, q0: np.ndarray, cur0: np.ndarray, tau0: np.ndarray | None) -> JointProbe:
        """Step joint ``k`` (spec order) away from its nearer limit, measure, and step back."""
        cfg, i = self.cfg, int(self.idx[k])
        d = 1.0 if q0[i] + cfg.amplitude_rad <= self.upper[k] - cfg.limit_margin_rad else -1.0
        goal = q0.copy()
        goal[i] += d * cfg.amplitude_rad
        q1, peak, cur1 = self.move(goal, i)
        result = JointProbe(self.names[k], d * cfg.amplitude_rad, float(q1[i] - q0[i]), peak)
        others = np.delete(np.abs(q1 - q0), i)
        result.crosstalk_rad = float(others.max()) if others.size else 0.0
        self.judge_motion(result)
        if tau0 is not None:
            tau1 = self.torques(q1)
            result.gravity_model_nm, result.current_a = float(tau0[k]), float(cur0[i])
            result.gravity_change_model_nm, result.current_change_a = float(tau1[k] - tau0[k]), float(cur1[i] - cur0[i])
            self.judge_gravity(result)
        self.move(q0, i)
        return result

    def judge_motion(self, r: JointProbe) -> None:
        cfg = self.cfg
        if r.measured_rad * r.commanded_rad <= 0:
            r.problems.append(f"commanded {r.commanded_rad:+.3f} rad, moved {r.measured_rad:+.4f} rad "
                              f"(wrong direction or no motion)")
        elif abs(r.measured_rad / r.commanded_rad - 1.0) > cfg.magnitude_tol:
            r.problems.append(f"commanded {r.commanded_rad:+.3f} rad, moved {r.measured_rad:+.4f} rad "
                              f"(magnitude off by more than {cfg.magnitude_tol:.0%}: units error?)")
        if r.peak_velocity * r.commanded_rad < 0 and abs(r.peak_velocity) > cfg.still_rad_s:
            r.problems.append(f"velocity register says {r.peak_velocity:+.3f} rad/s against the motion")
        if r.crosstalk_rad > cfg.crosstalk_rad:
            r.problems.append(f"another joint moved {r.crosstalk_rad:.4f} rad (swapped or cross-wired IDs?)")

    def judge_gravity(self, r: JointProbe) -> None:
        """Sign agreement of current and model torque, at rest and over the step."""
        cfg, verdicts = self.cfg, []
        if abs(r.gravity_model_nm) >= cfg.gravity_min_nm and abs(r.current_a) < cfg.current_min_a:
            verdicts.append(False)
            r.problems.append(f"gravity model {r.gravity_model_nm:+.2f} N*m but the joint carries no load "
                              f"({r.current_a:+.3f} A): swapped joints or a wrong pose?")
        for tau, amp, what in ((r.gravity_model_nm, r.current_a, "holding"),
                               (r.gravity_change_model_nm, r.current_change_a, "change over the step")):
            if abs(tau) < cfg.gravity_min_nm or abs(amp) < cfg.current_min_a:
                continue
            ok = tau * amp > 0
            verdicts.append(ok)
            if not ok:
                r.problems.append(f"{what}: gravity model {tau:+.2f} N*m but current {amp:+.3f} A "
                                  f"(sign-flipped joint or wrong offset?)")
        r.gravity = "no evidence" if not verdicts else ("agrees" if all(verdicts) else "contradicts")


def run_startup_probe(arm: Any, names: Sequence[str], lower: Sequence[float], upper: Sequence[float],
                      cfg: ProbeConfig, gravity: Callable[[np.ndarray], np.ndarray] | None = None,
                      permits_motion: Callable[[], bool] = lambda: True) -> ProbeReport:
    """Run the check on a connected, unarmed driver (see the module docstring).

    Args:
        arm: the driver (``joint_names``, ``get_observation``, ``enable_torque``, ``write_goal``
            taking every bus joint, ``disable_torque``).
        names: the joints to probe (the safety spec's joints, a subset of the bus joints).
        lower, upper: their limits, rad.
        cfg: the options.
        gravity: model gravity torques (N*m) of ``names`` at a pose of ``names``, or None.
        permits_motion: False stops the check at once (e.g. the e-stop monitor).

    Returns:
        The report; torque is off again when this returns or raises.

    Raises:
        ProbeError: ``permits_motion`` turned False (e-stop, stop, abort) during the check. Bus faults propagate (after torque off).
    """
    t0, report = time.monotonic(), ProbeReport()
    probe = _Probe(arm, names, np.asarray(lower, float), np.asarray(upper, float), cfg, gravity, permits_motion)
    q0, _, _ = probe.read()
    report.problems = probe.check_pose(q0)
    if report.problems:  # no motion on an arm whose pose the software cannot even place
        report.duration_s = time.monotonic() - t0
        return report
    arm.enable_torque()
    try:
        q0, _, cur0 = probe.move(q0.copy(), int(probe.idx[0]))
        tau0 = probe.torques(q0)
        for k in range(len(probe.names)):
            report.joints.append(probe.probe_joint(k, q0, cur0, tau0))
    finally:
        arm.disable_torque(raise_errors=False)
    report.duration_s = time.monotonic() - t0
    logger.info("startup probe %s in %.2f s; unverified by gravity: %s",
                "passed" if report.passed else "FAILED", report.duration_s, report.unverified)
    return report
