"""The deploy runner: policy thread + fixed-rate control loop + supervisor, on the virtual robot
(``port="sim"``) or a real serial bus, writing ``runs/deploy/<id>/``.

``run_deploy(cfg)`` creates the run directory (``config.yaml``, ``meta.json``), then:

1. loads the scene (robot, safety spec, kinematics) and the policy (a checkpoint through the
   audit gate, or a scripted policy), starts the simulated rig if asked, connects the driver
   (torque stays off), starts the e-stop monitor, builds the safety filter and the supervisor;
2. arms (``auto_arm``) once the e-stop permits, and runs ``n_steps`` control periods on the
   monotonic clock (see :mod:`deploy_loop` for one period); scripted e-stop events and faults
   fire at their times;
3. always ends through the safe-shutdown path (also on Ctrl-C, SIGTERM or any exception, D4):
   Stop 1 (decelerate, hold, torque off) until LATCHED or ``shutdown_timeout_s``, driver
   disconnect (torque off on every motor), threads stopped, ``summary.json`` written with
   status ``completed`` or ``aborted``, the event log closed.

Files: ``telemetry.jsonl`` (one record per control period, written by a background thread so
no file I/O blocks the loop, D1), ``events.jsonl`` (the hash-chained supervisor log; each
transition is fsynced before motion continues), ``summary.json``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from safetwin.safety.events import EventLog
from safetwin.safety.runio import ConfigError, atomic_write_json, new_run_dir, save_config

from .deploy_camera import Observer, build_observer, gripper_opening, policy_image_size, policy_uses_wrist
from .deploy_config import DeployConfig
from .deploy_io import ArmStopActuator, TelemetryWriter
from .deploy_loop import ControlLoop
from .deploy_policy import (
    ChunkMailbox,
    InjectingPolicy,
    PolicyThread,
    ScriptedPolicy,
    StateBoard,
)
from .deploy_probe import self_check
from .deploy_sim import SimRig
from .deploy_summary import build_summary
from .supervisor import Cause, Supervisor, SupervisorState
from .timing_stats import MsHistogram

logger = logging.getLogger(__name__)

__all__ = ["DeployConfig", "run_deploy"]


def _load_scene(cfg: DeployConfig, spec: Any, robot_model: Any) -> tuple[Any, Any, Any]:
    """(scene or None, spec, robot model); the sim camera always needs the scene to render."""
    if spec is not None and robot_model is not None and cfg.camera_mode != "sim":
        return None, spec, robot_model
    try:
        from safetwin.twin.kinematics import Kinematics
        from safetwin.twin.scene import load_scene
    except ImportError as exc:
        raise ConfigError(f"deploy.scene: cannot load scene {cfg.scene!r}: the twin is not available ({exc})") from exc
    scene = load_scene(cfg.scene)
    if spec is not None and robot_model is not None:
        return scene, spec, robot_model
    return scene, scene.safety, Kinematics.for_scene(scene)


def _load_policy(cfg: DeployConfig, scene: Any, policy: Any) -> Callable[[Any], Any]:
    if policy is not None:
        return policy
    if not cfg.checkpoint:
        return ScriptedPolicy(cfg.scripted_policy, chunk_len=4, chunk_dt=cfg.chunk_dt)
    from safetwin.safety.gate import check_deploy_gate
    from safetwin.train.checkpoint import load_policy

    if scene is None:
        raise ConfigError("deploy.checkpoint: a checkpoint needs the scene (spec hash and observation)")
    check_deploy_gate(cfg.checkpoint, scene.safety.sha256(), cfg.port, accept_unaudited=cfg.accept_unaudited)
    vla = load_policy(cfg.checkpoint, scene)
    fn: Callable[[Any], Any] = vla.predict
    screen_file = Path(cfg.checkpoint).parent / "safe_explore.safetensors"
    if cfg.safe_explore == "on" or (cfg.safe_explore == "auto" and screen_file.is_file()):
        from safetwin.train.safe_explore_io import ScreenedPolicy, load_safe_explore

        # defence in depth: the learned critic screens each chunk (recovery policy when none
        # passes), then the QP filter, then the supervisor
        fn = ScreenedPolicy(vla, load_safe_explore(cfg.checkpoint, scene))
        logger.info("safety critic and recovery policy loaded from %s", screen_file)
    # one inference before the policy thread starts: torch's and the language encoder's first call
    # can outlast the heartbeat timeout (D3) and would block arming
    size = cfg.camera_size or vla.cfg.image_size
    black = np.zeros((size, size, 3), np.uint8)
    fn({"image": black, "proprio": np.zeros(vla.cfg.proprio_dim, np.float32), "instruction": cfg.instruction,
        **({"wrist_image": black} if vla.cfg.use_wrist else {})})
    if hasattr(fn, "reset_counters"):
        fn.reset_counters()  # the warm-up call is not a screened decision of the run
    return fn


def _check_startup(cfg: DeployConfig, arm: Any, spec: Any) -> None:
    """Refuse to start when a spec joint is not on the bus (A2) or the step clamp is faster than the
    spec allows (A4); bus joints outside the spec (the gripper) are held still."""
    missing = [j for j in spec.joint_names if j not in tuple(arm.joint_names)]
    if missing:
        raise ConfigError(f"deploy: the safety spec's joints {missing} are not on the bus "
                          f"(driver joints {list(arm.joint_names)})")
    held = [j for j in arm.joint_names if j not in spec.joint_names]
    if held:
        logger.warning("joints %s are outside the safety spec: held at their measured pose", held)
    vmax = min(j.velocity for j in spec.joints)
    if cfg.max_step_rad > vmax * cfg.dt + 1e-12:
        raise ConfigError(f"deploy.max_step_rad: {cfg.max_step_rad} rad per cycle exceeds the slowest joint "
                          f"velocity limit {vmax} rad/s x {cfg.dt} s = {vmax * cfg.dt:.4f} rad")


def _connect_arm(cfg: DeployConfig, sim: SimRig | None, arm: Any) -> Any:
    if arm is not None:
        return arm
    from .driver import ArmConfig, DynamixelArm

    if cfg.port == "sim":
        arm_cfg = sim.arm_config()
    else:
        from .emulator_plant import servo_specs_from_scene

        motors = [{"name": s.joint, "id": s.id, "model": s.model,
                   **({"secondary_id": s.secondary_id} if s.secondary_id is not None else {})}
                  for s in servo_specs_from_scene(cfg.scene)]
        arm_cfg = {"port": cfg.port, "motors": motors}
    # the handshake runs with the patient connect timeout (also pyserial's write timeout, set when
    # the port opens); the control loop then waits at most bus_timeout_s per reply attempt
    arm_cfg = {**arm_cfg, "timeout_s": max(cfg.connect_timeout_s, cfg.bus_timeout_s), "retries": 2}
    driver = DynamixelArm(ArmConfig.from_dict(arm_cfg, "deploy.robot"))
    driver.connect()
    driver.bus.timeout_s, driver.bus.retries = cfg.bus_timeout_s, cfg.bus_retries
    return driver


class _Run:
    """Everything one run holds, so the shutdown path can reach it whatever failed."""

    def __init__(self, cfg: DeployConfig, run_dir: Path) -> None:
        self.cfg, self.dir = cfg, run_dir
        self.log = EventLog(run_dir / "events.jsonl")
        self.telemetry = TelemetryWriter(run_dir / "telemetry.jsonl")
        self.telemetry.start()
        self.sim: SimRig | None = None
        self.scene: Any = None
        self.observer: Observer | None = None
        self.arm: Any = None
        self.monitor: Any = None
        self.spec: Any = None
        self.sup: Supervisor | None = None
        self.loop: ControlLoop | None = None
        self.policy_thread: PolicyThread | None = None
        self.injector: InjectingPolicy | None = None
        self.abort: str | None = None
        self.error: str | None = None
        self.periods_ms = MsHistogram()  # constant memory over long runs (D6)
        self.cycle_ms = MsHistogram()
        self.misses = 0
        self.injected: list[dict[str, Any]] = []
        self.probe: dict[str, Any] | None = None
        self.seq = 0


def _setup(run: _Run, policy: Any, spec: Any, robot_model: Any, arm: Any,
           sim_servos: Sequence[Any] | None, virtual_robot: Any) -> None:
    from safetwin.safety.filter import SafetyFilter

    from .estop import EStopMonitor

    cfg = run.cfg
    scene, spec, model = _load_scene(cfg, spec, robot_model)
    run.spec, run.scene = spec, scene
    policy_fn = _load_policy(cfg, scene, policy)
    if cfg.port == "sim" or cfg.estop_port == "sim":
        run.sim = SimRig(cfg.scene, bus=cfg.port == "sim" and arm is None, estop=cfg.estop_port == "sim",
                         servos=sim_servos, robot=virtual_robot)
    run.arm = _connect_arm(cfg, run.sim, arm)
    _check_startup(cfg, run.arm, spec)
    run.observer = build_observer(cfg, scene, spec.joint_names, run.sim.robot if run.sim else None,
                                  cfg.camera_size or policy_image_size(policy_fn), wrist=policy_uses_wrist(policy_fn))
    if run.sim is not None:
        run.sim.cameras = [c for c in (run.observer.camera, run.observer.wrist_camera) if c is not None]
    safety_filter = SafetyFilter.from_spec(spec, model, cfg.dt)
    estop_port = run.sim.estop.port if cfg.estop_port == "sim" else cfg.estop_port
    run.monitor = EStopMonitor(estop_port, stale_after_s=cfg.estop_stale_s).start()
    if cfg.estop_port == "sim":
        run.sim.estop.send_hello()  # opening the port flushed the boot hello; the box repeats it every 1 s
    actuator = ArmStopActuator(run.arm)
    run.sup = Supervisor(cfg.supervisor, run.log, actuator, estop=run.monitor)
    mailbox, board = ChunkMailbox(), StateBoard()
    run.injector = InjectingPolicy(policy_fn)
    run.loop = ControlLoop(cfg, run.arm, run.sup, safety_filter, spec, mailbox, board, actuator, model)
    run.sup.watch_heartbeat("policy")
    run.policy_thread = PolicyThread(run.injector, cfg.policy_hz, board, mailbox,
                                     lambda: run.sup.heartbeat("policy"), run.observer)
    run.policy_thread.start()


def _fire_scripts(run: _Run, t_rel: float, pending: list[list[Any]]) -> list[str]:
    fired = []
    while pending and pending[0][0] <= t_rel:
        t, what = pending.pop(0)
        if what in ("reset", "arm"):
            ok = run.sup.reset("script") if what == "reset" else run.sup.arm("script")
            what = f"{what}:{'ok' if ok else 'refused'}"
        elif what in ("press", "release"):
            run.sim.estop_event(what)
        else:
            run.sim.inject(what, run.injector)
        run.injected.append({"t_s": t, "what": what, "seq": run.seq})
        run.sup.record("injected", what=what, t_s=t)
        fired.append(what)
    return fired


def _cycle(run: _Run, now: float, period_ms: float, fired: list[str]) -> None:
    t0 = time.monotonic()
    rec = run.loop.step(now)
    run.cycle_ms.add((time.monotonic() - t0) * 1e3)
    if run.telemetry.error and Cause.LOG_FAILURE not in run.sup.active:
        run.sup.trip(Cause.LOG_FAILURE, f"telemetry writer failed: {run.telemetry.error}")
    rec.update({"seq": run.seq, "t_mono": now, "period_ms": period_ms, "injected": fired,
                "cycle_ms": run.cycle_ms.last})
    run.telemetry.queue.put(rec)
    run.seq += 1


def _control(run: _Run, steps: int, until: Callable[[], bool] | None = None) -> None:
    """Run up to ``steps`` periods at ``control_hz`` (monotonic clock); stop early on abort/``until``."""
    cfg = run.cfg
    pending = [list(e) for e in sorted(cfg.estop_script + cfg.fault_script)] if until is None else []
    next_t = start = time.monotonic()
    prev = None
    for _ in range(steps):
        if (until is None and run.abort) or (until is not None and until()):
            return
        delay = next_t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        now = time.monotonic()
        period_ms = cfg.dt * 1e3 if prev is None else (now - prev) * 1e3
        prev = now
        run.periods_ms.add(period_ms)
        _cycle(run, now, period_ms, _fire_scripts(run, now - start, pending))
        missed = time.monotonic() > next_t + cfg.dt
        run.misses += missed
        run.sup.report_loop_overrun(missed)
        next_t += cfg.dt
        if time.monotonic() > next_t:
            next_t = time.monotonic()  # behind schedule: resynchronise, never burst to catch up


def _shutdown(run: _Run, status: str) -> dict[str, Any]:
    """D4: Stop 1 to LATCHED (bounded), torque off, threads stopped, summary written."""
    cfg = run.cfg
    if run.policy_thread is not None:
        run.policy_thread.stop()
    if run.sup is not None and run.loop is not None:
        if run.sup.state in (SupervisorState.ARMED, SupervisorState.DISARMED):
            run.sup.trip(Cause.OPERATOR if run.error is None else Cause.EXCEPTION,
                         run.error or run.abort or "end of run")
        try:
            _control(run, int(cfg.shutdown_timeout_s * cfg.control_hz) + 1,
                     until=lambda: run.sup.state is SupervisorState.LATCHED)
        except Exception as exc:  # noqa: BLE001 - the torque-off below must still run (E6)
            logger.error("stop sequence failed during shutdown: %s", exc)
    energised: list[str] = []
    if run.arm is not None:
        try:
            run.arm.disconnect()
        except Exception as exc:  # noqa: BLE001 - reported; the rest of the shutdown continues
            energised = list(getattr(exc, "possibly_energised", ()) or ["unknown"])
            logger.error("disconnect failed: %s", exc)
    if run.policy_thread is not None:
        run.policy_thread.join(timeout=5.0)
    if run.observer is not None:
        run.observer.close()
    if run.monitor is not None:
        run.monitor.close()
    run.telemetry.finish()
    summary = build_summary(run, status, energised)
    try:
        run.log.close(state=run.sup.state.value if run.sup else "")
    except OSError as exc:
        summary["event_log_error"] = str(exc)
    summary["event_log"] = {"records": run.log.count, "head_sha256": run.log.head_sha256,
                            "failed": run.log.failed}
    summary["events_head_sha256"] = run.log.head_sha256  # the audit's anchor for verify_chain
    summary["camera"] = {"mode": cfg.camera_mode, "frames": run.observer.frames if run.observer else 0}
    if run.sim is not None:
        run.sim.close()
    atomic_write_json(run.dir / "summary.json", summary)
    return summary


def run_deploy(cfg: DeployConfig, *, policy: Any = None, spec: Any = None, robot_model: Any = None,
               arm: Any = None, sim_servos: Sequence[Any] | None = None, virtual_robot: Any = None) -> Path:
    """Run one deploy and return its run directory (see the module docstring).

    The keyword arguments replace what the config would load: ``policy`` (any callable
    ``obs -> (k, d)``), ``spec`` + ``robot_model`` (instead of the scene), ``arm`` (a connected
    object with the driver interface), ``sim_servos`` (a kinematic virtual arm instead of the
    scene's pybullet one), ``virtual_robot`` (a started ``VirtualRobot`` the caller owns, e.g.
    to watch the bytes it receives). Exceptions propagate after the safe-shutdown path has run.
    """
    run_dir = new_run_dir(cfg.run_dir)
    save_config(run_dir, cfg, cfg.seed)
    run = _Run(cfg, run_dir)
    handlers: dict[int, Any] = {}

    def on_signal(signum: int, _frame: Any) -> None:
        run.abort = signal.Signals(signum).name
        logger.warning("%s received: running the safe-shutdown path", run.abort)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            handlers[sig] = signal.signal(sig, on_signal)
    status = "aborted"
    try:
        _setup(run, policy, spec, robot_model, arm, sim_servos, virtual_robot)
        _wait_and_arm(run)
        _control(run, cfg.n_steps)
        status = "aborted" if run.abort else "completed"
    except BaseException as exc:
        run.error = f"{type(exc).__name__}: {exc}"
        logger.error("deploy failed: %s", run.error)
        raise
    finally:
        try:
            _shutdown(run, status)
        finally:
            for sig, old in handlers.items():
                signal.signal(sig, old)
    return run_dir


def _wait_and_arm(run: _Run, timeout_s: float = 2.0) -> None:
    """Wait (bounded) for the e-stop permissive and the first action chunk, then send the arm
    command if ``auto_arm`` and run the startup self-check (A7) before the policy gets control:
    the probe moves the arm only while the supervisor is ARMED (no goal byte leaves an unarmed
    runner), and a failure stops and latches before any policy command."""
    _wait_ready(run, timeout_s)
    if not run.cfg.auto_arm or run.abort:
        return
    if not run.sup.arm("auto_arm"):
        logger.warning("auto-arm refused: %s", run.sup.summary()["persisting"])
        return
    if run.cfg.probe.enabled:
        self_check(run)
        _wait_ready(run, timeout_s)  # the probe took seconds: start from a fresh state and chunk


def _wait_ready(run: _Run, timeout_s: float) -> None:
    """Keep the policy's state fresh until the e-stop permits and a fresh chunk exists (bounded)."""
    from .serial_bus import CommError, DisconnectedError, ServoStatusError

    end = time.monotonic() + timeout_s
    while True:  # a transient read failure is retried
        try:
            obs = run.arm.get_observation()
        except (CommError, ServoStatusError) as exc:
            if isinstance(exc, DisconnectedError) or time.monotonic() > end:
                raise
            logger.warning("state read before arming failed (retrying): %s", exc)
            time.sleep(0.01)
            continue
        _note_gripper(run, obs)
        ctrl = run.loop.ctrl
        run.loop.board.put(obs["t_mono"], np.asarray(obs["position"], dtype=float)[ctrl],
                           np.asarray(obs["velocity"], dtype=float)[ctrl])
        chunk = run.loop.mailbox.latest()
        fresh = chunk is not None and obs["t_mono"] - chunk.t_obs < run.cfg.policy_deadline_s / 2
        if (run.monitor.permits_motion() and fresh) or time.monotonic() > end or run.abort:
            return
        time.sleep(0.01)


def _note_gripper(run: _Run, obs: dict[str, Any]) -> None:
    """Proprio's gripper opening from the measured finger position (m): the runner holds the
    gripper where it is, so the value read before arming stays valid for the run."""
    grip = getattr(getattr(run.scene, "robot", None), "gripper", None)
    names = tuple(run.arm.joint_names)
    if grip is None or "gripper" not in names or run.observer is None:
        return
    position = float(np.asarray(obs["position"], dtype=float)[names.index("gripper")])
    run.observer.set_gripper(gripper_opening(position, grip.open, grip.closed))
