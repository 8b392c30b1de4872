"""System identification: friction, mass and joint damping from a recorded push, by matching
a pybullet rollout to the recording with ``scipy.optimize.least_squares``.

The experiment (:class:`PushRig`): a torque-driven prismatic pusher joint (the robot's joint,
with viscous damping ``b`` in N s/m) starts ``gap`` m behind a box on the table and follows a
force profile: it accelerates alone (damping shows), pushes the box (the box's mass shows), then
retracts so the box slides free and stops (its friction coefficient shows). Observed are the
joint position (m) and the box's x position (m, base frame) over time. A recording may come from
hardware or from the twin run with hidden parameters.

The estimate's uncertainty is the Gauss-Newton covariance ``s^2 (J^T J)^-1`` at the optimum
(``s^2`` the residual variance), propagated from log-parameters to parameters.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

logger = logging.getLogger(__name__)

PARAMS = ("friction", "mass", "damping")
"""Identified parameters: friction (-), object mass (kg), joint damping (N s/m)."""


@dataclass(frozen=True)
class PushRig:
    """The identification experiment (m, kg, s, N).

    object_size: full extents of the pushed box; pusher_mass: mass of the moving link;
    gap: initial distance pusher face to box; dt: physics step; duration: recording length;
    push_force / push_until: force during the push phase and when it ends; retract_force:
    force pulling the pusher back afterwards; record_every: record one sample per this many steps.
    """

    object_size: tuple[float, float, float] = (0.06, 0.06, 0.06)
    pusher_mass: float = 0.5
    gap: float = 0.03
    dt: float = 1.0 / 240.0
    duration: float = 1.2
    push_force: float = 4.0
    push_until: float = 0.45
    retract_force: float = -3.0
    record_every: int = 4

    def forces(self) -> np.ndarray:
        """The joint force command per physics step (N)."""
        t = np.arange(int(round(self.duration / self.dt))) * self.dt
        return np.where(t < self.push_until, self.push_force, self.retract_force)


def _build(p, cid: int, rig: PushRig, params: dict[str, float]) -> tuple[int, int]:
    kw = {"physicsClientId": cid}
    p.setGravity(0, 0, -9.81, **kw)
    p.setTimeStep(rig.dt, **kw)
    table = p.createMultiBody(0, p.createCollisionShape(p.GEOM_BOX, halfExtents=[1.0, 1.0, 0.025], **kw),
                              basePosition=[0, 0, -0.025], **kw)
    p.changeDynamics(table, -1, lateralFriction=1.0, restitution=0.0, **kw)  # product = object's mu
    hx, hy, hz = (s / 2 for s in rig.object_size)
    box = p.createMultiBody(params["mass"], p.createCollisionShape(p.GEOM_BOX, halfExtents=[hx, hy, hz], **kw),
                            basePosition=[rig.gap + hx, 0.0, hz], **kw)
    p.changeDynamics(box, -1, lateralFriction=params["friction"], restitution=0.0, **kw)
    paddle = p.createCollisionShape(p.GEOM_BOX, halfExtents=[0.005, 0.04, 0.02], **kw)
    pusher = p.createMultiBody(0, -1, basePosition=[-0.005, 0, hz], linkMasses=[rig.pusher_mass],
                               linkCollisionShapeIndices=[paddle], linkVisualShapeIndices=[-1],
                               linkPositions=[[0, 0, 0]], linkOrientations=[[0, 0, 0, 1]],
                               linkInertialFramePositions=[[0, 0, 0]],
                               linkInertialFrameOrientations=[[0, 0, 0, 1]], linkParentIndices=[0],
                               linkJointTypes=[p.JOINT_PRISMATIC], linkJointAxis=[[1, 0, 0]], **kw)
    p.changeDynamics(pusher, 0, lateralFriction=0.0, linearDamping=0.0, angularDamping=0.0,
                     jointDamping=0.0, **kw)
    p.changeDynamics(box, -1, linearDamping=0.0, angularDamping=0.0, **kw)
    p.setJointMotorControl2(pusher, 0, p.VELOCITY_CONTROL, force=0.0, **kw)
    return pusher, box


def simulate_push(rig: PushRig, friction: float, mass: float, damping: float) -> np.ndarray:
    """Recorded (joint position, box x) samples, shape (T, 2) in m, of one pybullet rollout.

    The damping force ``-damping * qdot`` is applied explicitly with the command each step."""
    import pybullet as p

    cid = p.connect(p.DIRECT)
    try:
        pusher, box = _build(p, cid, rig, {"friction": friction, "mass": mass})
        out = []
        for k, force in enumerate(rig.forces()):
            q, qd = p.getJointState(pusher, 0, physicsClientId=cid)[:2]
            p.setJointMotorControl2(pusher, 0, p.TORQUE_CONTROL, force=float(force - damping * qd),
                                    physicsClientId=cid)
            p.stepSimulation(physicsClientId=cid)
            if k % rig.record_every == 0:
                out.append((q, p.getBasePositionAndOrientation(box, physicsClientId=cid)[0][0]))
        return np.asarray(out)
    finally:
        p.disconnect(cid)


@dataclass
class Identified:
    """Estimates and 1-sigma uncertainties of ``PARAMS``, the residual RMS (m) and the number
    of rollouts the optimiser used."""

    values: dict[str, float]
    std: dict[str, float]
    rms: float
    evaluations: int

    def randomization_range(self, name: str, sigmas: float = 2.0, floor: float = 0.05) -> tuple[float, float]:
        """A range centred on the estimate: +-max(``sigmas`` x std, ``floor`` x value), >= 0."""
        v = self.values[name]
        half = max(sigmas * self.std[name], floor * v)
        return max(v - half, 0.0), v + half


def identify(rig: PushRig, recording: np.ndarray, initial: dict[str, float],
             bounds: dict[str, tuple[float, float]] | None = None) -> Identified:
    """Fit ``PARAMS`` so the rollout reproduces ``recording`` (T, 2) (least squares in
    log-parameters, starting from ``initial``, e.g. the capture's priors)."""
    bounds = bounds or {"friction": (0.02, 2.0), "mass": (0.01, 10.0), "damping": (0.01, 50.0)}
    recording = np.asarray(recording, float)
    if recording.ndim != 2 or recording.shape[1] != 2 or not np.all(np.isfinite(recording)):
        raise ValueError(f"recording must be a finite (T, 2) array, got shape {recording.shape}")
    lo = np.log([bounds[n][0] for n in PARAMS])
    hi = np.log([bounds[n][1] for n in PARAMS])
    x0 = np.clip(np.log([initial[n] for n in PARAMS]), lo + 1e-6, hi - 1e-6)

    def residual(x: np.ndarray) -> np.ndarray:
        sim = simulate_push(rig, *np.exp(x))
        n = min(len(sim), len(recording))
        return (sim[:n] - recording[:n]).ravel()

    sol = least_squares(residual, x0, bounds=(lo, hi), diff_step=1e-3, x_scale=1.0, max_nfev=200)
    values = dict(zip(PARAMS, np.exp(sol.x), strict=True))
    dof = max(sol.fun.size - len(PARAMS), 1)
    s2 = float(sol.fun @ sol.fun) / dof
    try:
        cov = s2 * np.linalg.inv(sol.jac.T @ sol.jac)
        std_log = np.sqrt(np.clip(np.diag(cov), 0, None))
    except np.linalg.LinAlgError:
        std_log = np.full(len(PARAMS), np.inf)
    std = {n: float(values[n] * s) for n, s in zip(PARAMS, std_log, strict=True)}
    rms = float(np.sqrt(np.mean(sol.fun ** 2)))
    logger.info("system identification: %s (std %s), rms %.2e m after %d rollouts",
                {k: round(v, 4) for k, v in values.items()}, {k: round(v, 4) for k, v in std.items()},
                rms, sol.nfev)
    return Identified(values={k: float(v) for k, v in values.items()}, std=std, rms=rms, evaluations=sol.nfev)
