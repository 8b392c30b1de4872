"""``DeployConfig``: every option of a deploy run, validated, unknown keys rejected.

Build it with ``safetwin.safety.runio.config_from_dict(DeployConfig, data, "deploy")``; the
resolved config is written to ``runs/deploy/<id>/config.yaml``.
Units: s, Hz, rad, m.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import yaml

from safetwin.safety.runio import ConfigError

from .deploy_camera import CAMERA_MODES
from .startup_probe import ProbeConfig
from .supervisor_config import SupervisorConfig

ESTOP_ACTIONS = ("press", "release", "reset", "arm")
FAULT_KINDS = ("estop_press", "estop_stale", "estop_garbage", "bus_drop", "servo_alarm", "unplug",
               "nan_action", "stale_action", "policy_freeze", "camera_freeze", "camera_fail")
"""Faults the runner can inject on the simulated rig (tests, the loop benchmark)."""
ACTION_SPACES = ("auto", "ee_delta", "joint")


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"deploy.{name}: must be a finite number > 0, got {value!r}")


def _script(name: str, entries: Any, allowed: tuple[str, ...]) -> list[tuple[float, str]]:
    """Validate ``[[t_s, what], ...]``; a string (from the command line) is read as YAML/JSON."""
    if isinstance(entries, str):
        try:
            entries = yaml.safe_load(entries) if entries.strip() else []
        except yaml.YAMLError as exc:
            raise ConfigError(f"deploy.{name}: not a YAML/JSON list: {exc}") from exc
    if not isinstance(entries, (list, tuple)):
        raise ConfigError(f"deploy.{name}: must be a list of [t_s, action], got {entries!r}")
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise ConfigError(f"deploy.{name}[{i}]: must be [t_s, action], got {entry!r}")
        t, what = entry
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise ConfigError(f"deploy.{name}[{i}]: time {t!r} must be a finite number >= 0 (s)")
        if what not in allowed:
            raise ConfigError(f"deploy.{name}[{i}]: {what!r} is not one of {list(allowed)}")
        out.append((float(t), str(what)))
    return sorted(out)


@dataclass
class DeployConfig:
    """One deploy run on the virtual (``port="sim"``) or a real serial-bus robot.

    Attributes:
        checkpoint: policy checkpoint (``.safetensors``); ``""`` runs ``scripted_policy`` instead.
        accept_unaudited: skip the audit gate for the checkpoint (virtual robot only, the gate
            refuses it on a real port).
        safe_explore: the training run's safety critic and recovery policy
            (``safe_explore.safetensors`` next to the checkpoint) screen each action chunk before
            the QP filter: ``auto`` (when the file exists), ``on`` (required: refuse without it)
            or ``off``.
        scripted_policy: ``sine`` (slow joint-space sine about the start pose) or ``hold``;
            used only without a checkpoint.
        scene: scene name or path (robot, safety spec).
        port: servo bus serial device, or ``"sim"`` for the virtual robot on a pseudo-terminal.
        estop_port: e-stop box serial device, or ``"sim"`` for the e-stop emulator.
        control_hz: control-loop rate (Hz), fixed, on the monotonic clock.
        policy_hz: policy inference rate (Hz).
        chunk_dt_s: time covered by one row of an action chunk (s); 0 means ``1 / policy_hz``.
        action_space: ``ee_delta`` (normalised EE deltas (k, 7), base frame), ``joint``
            (absolute joint targets (k, n), rad) or ``auto`` (``ee_delta`` with a checkpoint,
            ``joint`` for the scripted policies).
        ee_scale_m: metres per unit of a normalised translation delta, per chunk row.
        ee_scale_rad: radians per unit of a normalised rotation delta, per chunk row.
        max_step_rad: per-cycle clamp on the goal change (rad) (A4); must not exceed
            ``min joint velocity limit / control_hz`` (checked against the spec at start).
        lag_cycles: worst-case missed cycles the measured-pose clamp allows for: the goal never
            leads the measured position by more than ``lag_cycles * max_step_rad`` (A4, C15).
        staleness_timeout_s: an action chunk whose observation is older than this stops the
            robot (A6); it is never replayed.
        policy_deadline_s: a period without a chunk younger than this is a policy deadline miss;
            the loop holds (A9).
        estop_stale_s: e-stop heartbeat timeout (s) (E4).
        ee_speed_monitor_m_s: TCP speed (m/s) the supervisor's speed observer stops at, measured
            from servo positions and velocities independently of the filter (E9); 0 means
            1.2 x the spec's ``ee_speed_max``.
        bus_timeout_s: servo reply timeout per attempt (s); with ``bus_retries`` it bounds a failed
            read to ``(1 + bus_retries) * bus_timeout_s`` inside the control period (C1).
        bus_retries: extra attempts after a reply timeout (C1).
        connect_timeout_s: reply timeout during the connect handshake (s), which is also the serial
            write timeout for the whole run.
        shutdown_timeout_s: longest time the safe-shutdown path waits for Stop 1 (D4).
        run_dir: root of the run directories.
        duration_s: run length (s) when ``steps`` is 0.
        steps: number of control periods (0: use ``duration_s``).
        seed: random seed (recorded; scripted policies are deterministic).
        auto_arm: send the arm command once the e-stop permits at start.
        instruction: language instruction given to a checkpoint policy.
        camera: the policy's camera: ``sim`` (the twin's front camera of ``scene``, and its wrist
            camera for a policy trained with one, with the virtual robot's arm pose; port ``sim``
            only), ``none`` (black images) or ``auto`` (``sim`` on port ``sim`` with a checkpoint,
            else ``none``). A frame older than
            ``staleness_timeout_s`` is missing: the policy publishes nothing (hold, then stop, A6).
        camera_size: image side (pixels); 0 takes the checkpoint's ``image_size`` (64 without one).
        estop_script: ``[[t_s, press|release|reset|arm], ...]`` operator/e-stop events (sim e-stop).
        fault_script: ``[[t_s, kind], ...]`` injected faults (sim only), kinds in ``FAULT_KINDS``.
        supervisor: supervisor thresholds (``dt`` is set from ``control_hz``).
        probe: the startup self-check (A7, see :mod:`startup_probe`), run right after the
            start-up arm command and before the policy gets control; a failure stops and
            latches for the whole run. Needs ``auto_arm``.
    """

    checkpoint: str = ""
    accept_unaudited: bool = False
    safe_explore: str = "auto"
    scripted_policy: str = "sine"
    scene: str = "reach_avoid"
    port: str = "sim"
    estop_port: str = "sim"
    control_hz: float = 100.0
    policy_hz: float = 10.0
    chunk_dt_s: float = 0.0
    action_space: str = "auto"
    ee_scale_m: float = 0.01
    ee_scale_rad: float = 0.05
    max_step_rad: float = 0.01
    lag_cycles: int = 5
    staleness_timeout_s: float = 0.5
    policy_deadline_s: float = 0.3
    estop_stale_s: float = 0.15
    ee_speed_monitor_m_s: float = 0.0
    bus_timeout_s: float = 0.01
    bus_retries: int = 1
    connect_timeout_s: float = 0.05
    shutdown_timeout_s: float = 3.0
    run_dir: str = "runs/deploy"
    duration_s: float = 5.0
    steps: int = 0
    seed: int = 0
    auto_arm: bool = True
    instruction: str = "push the block to the target"
    camera: str = "auto"
    camera_size: int = 0
    estop_script: list = field(default_factory=list)
    fault_script: list = field(default_factory=list)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)

    def __post_init__(self) -> None:
        for name in ("control_hz", "policy_hz", "ee_scale_m", "ee_scale_rad", "max_step_rad",
                     "staleness_timeout_s", "policy_deadline_s", "estop_stale_s", "shutdown_timeout_s",
                     "duration_s", "bus_timeout_s", "connect_timeout_s"):
            _positive(name, getattr(self, name))
        if not 10 <= self.control_hz <= 1000 or self.policy_hz > self.control_hz:
            raise ConfigError(f"deploy.control_hz: need 10..1000 Hz and >= policy_hz, got "
                              f"{self.control_hz} / {self.policy_hz}")
        if not isinstance(self.ee_speed_monitor_m_s, (int, float)) or not self.ee_speed_monitor_m_s >= 0:
            raise ConfigError(f"deploy.ee_speed_monitor_m_s: must be >= 0, got {self.ee_speed_monitor_m_s!r}")
        if not isinstance(self.chunk_dt_s, (int, float)) or self.chunk_dt_s < 0:
            raise ConfigError(f"deploy.chunk_dt_s: must be >= 0, got {self.chunk_dt_s!r}")
        if self.policy_deadline_s >= self.staleness_timeout_s:
            raise ConfigError("deploy.policy_deadline_s must be < staleness_timeout_s (hold before stop)")
        if self.safe_explore not in ("auto", "on", "off"):
            raise ConfigError(f"deploy.safe_explore: {self.safe_explore!r} not auto|on|off")
        if self.action_space not in ACTION_SPACES:
            raise ConfigError(f"deploy.action_space: {self.action_space!r} not in {list(ACTION_SPACES)}")
        if not self.checkpoint and self.scripted_policy not in ("sine", "hold"):
            raise ConfigError(f"deploy.scripted_policy: {self.scripted_policy!r} not sine|hold")
        for name in ("steps", "seed", "lag_cycles", "bus_retries", "camera_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"deploy.{name}: must be an integer >= 0, got {value!r}")
        if self.lag_cycles < 1:
            raise ConfigError("deploy.lag_cycles: must be >= 1")
        self._check_rig()

    def _check_rig(self) -> None:
        """Ports, paths, the scripts and the nested supervisor config."""
        for name in ("port", "estop_port", "scene", "run_dir"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"deploy.{name}: must be a non-empty string")
        self.estop_script = [list(e) for e in _script("estop_script", self.estop_script, ESTOP_ACTIONS)]
        self.fault_script = [list(e) for e in _script("fault_script", self.fault_script, FAULT_KINDS)]
        if self.fault_script and (self.port != "sim" or self.estop_port != "sim"):
            raise ConfigError("deploy.fault_script: fault injection needs port='sim' and estop_port='sim'")
        if self.camera not in CAMERA_MODES:
            raise ConfigError(f"deploy.camera: {self.camera!r} not in {list(CAMERA_MODES)}")
        if self.camera == "sim" and self.port != "sim":
            raise ConfigError(f"deploy.camera: 'sim' renders the twin for the virtual robot; port is {self.port!r}")
        if any(k.startswith("camera_") for _, k in self.fault_script) and self.camera_mode != "sim":
            raise ConfigError("deploy.fault_script: camera faults need the sim camera (camera='sim')")
        if any(a in ("press", "release") for _, a in self.estop_script) and self.estop_port != "sim":
            raise ConfigError("deploy.estop_script: press/release need estop_port='sim' (the emulator)")
        if not isinstance(self.supervisor, SupervisorConfig):
            raise ConfigError("deploy.supervisor: must be a mapping of supervisor options")
        self.supervisor = dataclasses.replace(self.supervisor, dt=1.0 / self.control_hz)
        if not isinstance(self.probe, ProbeConfig):
            raise ConfigError("deploy.probe: must be a mapping of startup-probe options")
        if self.probe.enabled and not self.auto_arm:
            raise ConfigError("deploy.probe: the startup self-check (A7) runs with the start-up arm command; "
                              "with auto_arm false, turn it off explicitly (probe.enabled false)")

    @property
    def dt(self) -> float:
        """Control period (s)."""
        return 1.0 / self.control_hz

    @property
    def space(self) -> str:
        """The resolved action space: ``ee_delta`` or ``joint``."""
        if self.action_space != "auto":
            return self.action_space
        return "ee_delta" if self.checkpoint else "joint"

    @property
    def camera_mode(self) -> str:
        """The resolved camera: ``sim`` or ``none``."""
        if self.camera != "auto":
            return self.camera
        return "sim" if self.port == "sim" and self.checkpoint else "none"

    @property
    def chunk_dt(self) -> float:
        """Time per action-chunk row (s)."""
        return self.chunk_dt_s or 1.0 / self.policy_hz

    @property
    def n_steps(self) -> int:
        """Control periods to run."""
        return self.steps or max(1, int(round(self.duration_s * self.control_hz)))
