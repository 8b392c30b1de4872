"""Independent one-step check of the safety filter on the true (nonlinear) kinematics.

:func:`barrier_values` evaluates every barrier of a :class:`SafetySpec` exactly at ``q`` (no
linearisation); :func:`step_violations` integrates one period (``q+ = q + u dt``) and lists every
hard constraint the command breaks beyond ``tol``; :func:`adversarial_run` drives a filter with
random and barrier-seeking nominal commands (scenario B2) and counts violations. Used by the
tests and by ``benchmarks/bench_filter.py``. Imports nothing of SafeTwin's outside safety.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from .filter import FilterState, Nominal, SafetyFilter
from .robot_model import RobotModel
from .spec import SafetySpec

logger = logging.getLogger(__name__)


def _box_sd(p: np.ndarray, center: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Signed distance (m) from points (P, 3) to one axis-aligned box."""
    excess = np.abs(p - center) - half
    outside = np.linalg.norm(np.maximum(excess, 0.0), axis=1)
    return outside + np.minimum(np.max(excess, axis=1), 0.0)


def barrier_values(spec: SafetySpec, model: RobotModel, q: np.ndarray) -> dict[str, np.ndarray]:
    """Every barrier at ``q`` (rad): joint ``[upper-q, q-lower]`` (rad); workspace, keep-out
    (nearest face) and obstacle (signed box distance) clearances (m) of the end effector (radius
    0) and every link sphere, minus ``distance_margin`` for keep-out boxes and obstacles."""
    lower = np.array([j.lower for j in spec.joints])
    upper = np.array([j.upper for j in spec.joints])
    ee, _ = model.ee_pose(q)
    centers, radii, _ = model.spheres(q)
    p = np.vstack([ee, centers])
    r = np.concatenate([[0.0], radii])[:, None]
    lo, hi = np.asarray(spec.workspace.lo), np.asarray(spec.workspace.hi)
    dm = spec.filter.distance_margin
    out = {"joint": np.concatenate([upper - q, q - lower]),
           "workspace": np.concatenate([hi - p - r, p - r - lo], axis=1).ravel()}
    for box in spec.keepout:
        faces = np.concatenate([p - np.asarray(box.hi), np.asarray(box.lo) - p], axis=1)
        out[f"keepout:{box.name}"] = np.max(faces, axis=1) - r[:, 0] - dm
    for obs in spec.obstacles:
        out[f"distance:{obs.name}"] = _box_sd(p, np.asarray(obs.center), np.asarray(obs.half_extents)) - r[:, 0] - dm
    return out


def step_violations(spec: SafetySpec, model: RobotModel, q: np.ndarray, dq: np.ndarray,
                    u: np.ndarray, dt: float, tol: float = 1e-6,
                    before: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """Constraints that command ``u`` (rad/s) breaks over one step, ``{name: amount}``.

    Checks ``h(q+) >= (1 - gamma) h(q) - tol`` for every barrier with ``h(q) >= 0``, and
    ``h(q+) >= h(q) - tol`` (never deeper, bounded-speed recovery: scenario B6) for a barrier
    already violated; ``|u| <= v_max``, ``|u - dq| <= a_max dt`` and
    ``|J_v(q) u| <= ee_speed_max`` (each with ``tol``).
    """
    gamma = spec.filter.gamma
    vel = np.array([j.velocity for j in spec.joints])
    acc = np.array([j.acceleration for j in spec.joints])
    h0 = before if before is not None else barrier_values(spec, model, q)
    h1 = barrier_values(spec, model, q + u * dt)
    found: dict[str, float] = {}
    for name, values in h0.items():
        required = np.where(values >= 0.0, (1.0 - gamma) * values, values)
        gap = float(np.max(required - h1[name]))
        if gap > tol:
            found[name] = gap
    checks = {"velocity": float(np.max(np.abs(u) - vel)),
              "acceleration": float(np.max(np.abs(u - dq) - acc * dt)),
              "ee_speed": float(np.linalg.norm(np.asarray(model.ee_jacobian(q))[:3] @ u)) - spec.ee_speed_max}
    found.update({k: v for k, v in checks.items() if v > tol})
    return found


def deeper_than_nominal(spec: SafetySpec, model: RobotModel, q: np.ndarray, u: np.ndarray,
                        nominal: np.ndarray, dt: float, tol: float = 1e-6) -> list[str]:
    """Barriers that ``u`` leaves violated *and* worse than the nominal would have (B2)."""
    h0 = barrier_values(spec, model, q)
    hu = barrier_values(spec, model, q + u * dt)
    hn = barrier_values(spec, model, q + nominal * dt)
    gamma = spec.filter.gamma
    required = {name: np.where(v >= 0.0, (1 - gamma) * v, v) for name, v in h0.items()}
    return [name for name in h0
            if np.any((hu[name] < required[name] - tol) & (hu[name] < hn[name] - tol))]


@dataclass
class AdversarialStats:
    """Counts from :func:`adversarial_run`: trials, feasible solves, brakes by reason, feasible
    steps that broke a constraint (``violations``), and brakes deeper than the nominal."""

    trials: int = 0
    feasible: int = 0
    violations: int = 0
    deeper: int = 0
    brakes: dict[str, int] = field(default_factory=dict)
    examples: list[dict[str, object]] = field(default_factory=list)


def _seeking_nominal(spec: SafetySpec, model: RobotModel, q: np.ndarray, rng: np.random.Generator,
                     vel: np.ndarray) -> np.ndarray:
    """A joint-velocity nominal that drives hard into the closest barrier (or random)."""
    mode = rng.integers(0, 3)
    if mode == 0:
        return rng.uniform(-2.0, 2.0, len(vel)) * vel
    h = barrier_values(spec, model, q)
    eps = 1e-5
    flat0 = np.concatenate(list(h.values()))
    worst = int(np.argmin(flat0)) if mode == 1 else int(rng.integers(0, len(flat0)))
    grad = np.zeros(len(q))
    for i in range(len(q)):
        dq = np.zeros(len(q))
        dq[i] = eps
        grad[i] = (np.concatenate(list(barrier_values(spec, model, q + dq).values()))[worst] - flat0[worst]) / eps
    norm = np.max(np.abs(grad) / vel)
    return -grad / norm * rng.uniform(0.5, 2.0) if norm > 0 else rng.uniform(-1, 1, len(q)) * vel


def random_safe_state(spec: SafetySpec, model: RobotModel, rng: np.random.Generator,
                      max_tries: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """``(q, dq)`` with every barrier >= 0, joint speeds within limits and EE speed within limit."""
    lower = np.array([j.lower for j in spec.joints])
    upper = np.array([j.upper for j in spec.joints])
    vel = np.array([j.velocity for j in spec.joints])
    for _ in range(max_tries):
        q = rng.uniform(lower, upper)
        if min(float(np.min(v)) for v in barrier_values(spec, model, q).values()) < 0.0:
            continue
        dq = rng.uniform(-1.0, 1.0, len(q)) * vel * rng.uniform(0.0, 0.5)
        speed = float(np.linalg.norm(np.asarray(model.ee_jacobian(q))[:3] @ dq))
        if speed > 0.9 * spec.ee_speed_max:
            dq *= 0.9 * spec.ee_speed_max / speed
        return q, dq
    raise RuntimeError("no safe state found: is the spec's safe set empty for this robot?")


def adversarial_run(filt: SafetyFilter, steps: int, seed: int = 0, horizon: int = 50,
                    progress: bool = False) -> AdversarialStats:
    """B2: ``steps`` certify calls in rollouts of ``horizon`` steps from random safe states,
    nominals random or barrier-seeking; every feasible output is checked one step ahead."""
    spec, model, dt = filt.spec, filt.robot, filt.dt
    rng = np.random.default_rng(seed)
    vel = np.array([j.velocity for j in spec.joints])
    stats = AdversarialStats()
    q, dq = random_safe_state(spec, model, rng)
    for k in tqdm(range(steps), disable=not progress, desc="adversarial B2", unit="step"):
        if k % horizon == 0:
            q, dq = random_safe_state(spec, model, rng)
        nominal = _seeking_nominal(spec, model, q, rng, vel)
        u, rep = filt.certify(FilterState(q, dq), Nominal.joint(nominal))
        stats.trials += 1
        if rep.feasible:
            stats.feasible += 1
            bad = step_violations(spec, model, q, dq, u, dt)
            if bad:
                stats.violations += 1
                if len(stats.examples) < 5:
                    stats.examples.append({"q": q.tolist(), "dq": dq.tolist(), "u": u.tolist(), "bad": bad})
        else:
            stats.brakes[rep.reason] = stats.brakes.get(rep.reason, 0) + 1
            stats.deeper += bool(deeper_than_nominal(spec, model, q, u, nominal, dt))
        q, dq = q + u * dt, u
    return stats
