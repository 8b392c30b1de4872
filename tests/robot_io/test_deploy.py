"""Deploy runner end to end on the virtual robot (pty bus + e-stop emulator + real QP filter):
E1, E2, E4, A1, A2, A4, A6, A8, A9, C1, C6, C8, D3, D4, F1, F2.

The robot model is a small analytic 3-joint arm written for these tests (the twin's kinematics
is exercised by the twin's own tests); everything else is the production stack.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import pytest

from safetwin.robot_io.deploy import DeployConfig, run_deploy
from safetwin.robot_io.deploy_policy import ScriptedPolicy
from safetwin.robot_io.protocol import Instruction, split_sync_write
from safetwin.robot_io.virtual_robot import ServoSpec, VirtualRobot
from safetwin.safety.events import verify_chain
from safetwin.safety.runio import ConfigError, config_from_dict, read_jsonl
from safetwin.safety.spec import parse_safety

SPECS = [ServoSpec("j1", 1, "XM540-W270"), ServoSpec("j2", 2, "XM430-W350", home_rad=0.3),
         ServoSpec("j3", 3, "XM430-W350", home_rad=-0.2)]
GOAL_ADDRESS = 116
TICK = 2 * np.pi / 4096


class ThreeJointArm:
    """Yaw-pitch-pitch arm, links 0.25 m and 0.2 m from a shoulder 0.1 m above the base (base frame)."""

    joint_names = ("j1", "j2", "j3")
    sphere_names = ("elbow/0",)
    L0, L1, L2 = 0.1, 0.25, 0.2

    def _points(self, q):
        q1, q2, q3 = q
        d1 = np.array([np.cos(q1) * np.sin(q2), np.sin(q1) * np.sin(q2), np.cos(q2)])
        d2 = np.array([np.cos(q1) * np.sin(q2 + q3), np.sin(q1) * np.sin(q2 + q3), np.cos(q2 + q3)])
        elbow = np.array([0.0, 0.0, self.L0]) + self.L1 * d1
        return elbow, elbow + self.L2 * d2

    def _rot(self, q):
        c1, s1, c, s = np.cos(q[0]), np.sin(q[0]), np.cos(q[1] + q[2]), np.sin(q[1] + q[2])
        rz = np.array([[c1, -s1, 0], [s1, c1, 0], [0, 0, 1]])
        ry = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
        return rz @ ry

    def ee_pose(self, q):
        return self._points(np.asarray(q, float))[1], self._rot(np.asarray(q, float))

    def _jac(self, f, q, eps=1e-6):
        q = np.asarray(q, float)
        return np.stack([(f(q + eps * e) - f(q - eps * e)) / (2 * eps) for e in np.eye(3)], axis=-1)

    def ee_jacobian(self, q):
        jv = self._jac(lambda x: self._points(x)[1], q)
        jw = np.array([[0.0, -np.sin(q[0]), -np.sin(q[0])], [0.0, np.cos(q[0]), np.cos(q[0])], [1.0, 0.0, 0.0]])
        return np.vstack([jv, jw])

    def spheres(self, q):
        jac = self._jac(lambda x: self._points(x)[0], q)
        return self._points(np.asarray(q, float))[0][None], np.array([0.04]), jac[None]


SPEC = parse_safety({
    "joint_limits": {n: {"position": [-2.5, 2.5], "velocity": 2.0, "acceleration": 10.0} for n in ("j1", "j2", "j3")},
    "workspace": {"lo": [-1.0, -1.0, -0.5], "hi": [1.0, 1.0, 1.2]},
    "contact_force_max": 30.0, "cost_limit": 5.0,
    "filter": {"time_budget_s": 0.05}}, "test_deploy")


def make_cfg(tmp_path, **kw):
    base = {"run_dir": str(tmp_path / "runs"), "action_space": "joint", "duration_s": 1.2,
            "policy_hz": 20.0, "supervisor": {"hold_s": 0.1}}
    base.update(kw)
    return config_from_dict(DeployConfig, base, "deploy")


class TappedRobot:
    """A kinematic virtual arm whose servos' received goal packets are timestamped."""

    def __init__(self, vr: VirtualRobot | None = None):
        self.vr = (vr or VirtualRobot.kinematic(SPECS)).start()
        self.goals: list[tuple[float, dict[int, bytes]]] = []
        handle = self.vr.chain.handle

        def tap(packet):
            if packet.instruction == Instruction.SYNC_WRITE:
                address, _, records = split_sync_write(packet.params)
                if address == GOAL_ADDRESS:
                    self.goals.append((time.monotonic(), records))
            return handle(packet)

        self.vr.chain.handle = tap


@pytest.fixture
def robot():
    r = TappedRobot()
    yield r
    r.vr.stop()


def deploy(cfg, robot=None, policy=None):
    policy = policy or ScriptedPolicy("sine", 4, cfg.chunk_dt, amplitude=0.25, freq_hz=0.5)
    return run_deploy(cfg, policy=policy, spec=SPEC, robot_model=ThreeJointArm(),
                      sim_servos=SPECS, virtual_robot=None if robot is None else robot.vr)


def load(run):
    summary = json.loads((run / "summary.json").read_text())
    tele = list(read_jsonl(run / "telemetry.jsonl"))
    events = list(read_jsonl(run / "events.jsonl"))
    return summary, tele, events


def state_at(events, t):
    state = "DISARMED"
    for e in events:
        if e["kind"] == "transition" and e["t_mono"] <= t:
            state = e["data"]["to"]
    return state


def test_config_strict_and_validated(tmp_path):
    with pytest.raises(ConfigError, match="unknown option"):
        make_cfg(tmp_path, control_hzz=100)
    with pytest.raises(ConfigError, match="policy_deadline_s"):
        make_cfg(tmp_path, policy_deadline_s=1.0, staleness_timeout_s=0.5)
    with pytest.raises(ConfigError, match=r"estop_script\[0\]"):
        make_cfg(tmp_path, estop_script=[[1.0, "smash"]])
    with pytest.raises(ConfigError, match="supervisor"):
        make_cfg(tmp_path, supervisor={"dt": 0})
    cfg = make_cfg(tmp_path, estop_script='[[2.0, "release"], [1.0, "press"]]')  # command-line form
    assert cfg.estop_script == [[1.0, "press"], [2.0, "release"]] and cfg.supervisor.dt == cfg.dt
    with pytest.raises(ConfigError, match="fault_script"):
        make_cfg(tmp_path, port="/dev/ttyUSB0", fault_script=[[1.0, "unplug"]])


def test_estop_press_mid_run_no_goal_bytes_while_latched_e1_e2_a8(tmp_path, robot):
    """A policy runs, the e-stop is pressed mid-run (E1), released (E2: stays latched), reset and
    re-armed; the servos' received bytes show no goal packet while LATCHED or DISARMED."""
    cfg = make_cfg(tmp_path, duration_s=2.4,
                   estop_script=[[0.6, "press"], [1.1, "release"], [1.4, "reset"], [1.6, "arm"]])
    run = deploy(cfg, robot)
    summary, tele, events = load(run)
    assert summary["status"] == "completed"
    assert [s["cause"] for s in summary["stops"]][:1] == ["estop"]
    assert summary["stops"][0]["T_stop_s"] > 0 and summary["stops"][0]["stop_distance_rad"] is not None
    quiet = [(t, state_at(events, t)) for t, _ in robot.goals if state_at(events, t) in ("LATCHED", "DISARMED")]
    assert not quiet, f"goal packets while latched/unarmed: {quiet[:3]}"
    t_arm2 = [e["t_mono"] for e in events if e["kind"] == "transition" and e["data"]["to"] == "ARMED"]
    assert len(t_arm2) == 2 and any(t > t_arm2[1] for t, _ in robot.goals)  # motion resumed after arm
    released = [r for r in tele if "release" in r["injected"]][0]["seq"]
    assert all(r["state"] in ("LATCHED",) for r in tele[released:released + 20])  # E2
    first_after = next(r for r in tele if r["sent"] is not None and r["t_mono"] > t_arm2[1])
    assert np.max(np.abs(np.subtract(first_after["sent"], first_after["q"]))) <= cfg.max_step_rad + TICK  # A8
    assert [r["seq"] for r in tele] == list(range(len(tele)))  # F2: no gaps
    assert summary["telemetry_missing"] == 0 and summary["telemetry_records"] == len(tele)
    assert len(summary["config_sha256"]) == 64 and summary["loop"]["period_ms"]["p99"] is not None
    assert verify_chain(run / "events.jsonl", expected_head=summary["event_log"]["head_sha256"],
                        require_closed=True).ok


@pytest.mark.parametrize(("fault", "cause", "within"), [
    ("nan_action", "nonfinite_action", 60),   # A1: K rejections in a row
    ("stale_action", "stale_action", 30),     # A6
    ("policy_freeze", "policy_deadline", 80),  # A9 (D3 heartbeat loss would follow)
    ("bus_drop", "bus_fault", 10),            # C1
    ("servo_alarm", "servo_alarm", 4),        # C6
    ("unplug", "bus_lost", 3),                # C8
    ("estop_stale", "estop_permissive", 25),  # E4
    ("estop_garbage", "estop_permissive", 4),  # E4
])
def test_injected_fault_stops_with_logged_cause(tmp_path, fault, cause, within):
    cfg = make_cfg(tmp_path, fault_script=[[0.5, fault]], duration_s=1.3)
    summary, tele, events = load(deploy(cfg))
    assert summary["stops"][0]["cause"] == cause, summary["stops"]
    inj = next(r["seq"] for r in tele if r["injected"])
    stop = next(r["seq"] for r in tele if r["seq"] >= inj and r["stop_cmd"])
    assert stop - inj <= within
    assert all(r["sent"] is None for r in tele if r["state"] in ("LATCHED", "DISARMED"))
    assert any(e["kind"] == "transition" and e["cause"] == cause for e in events)


def test_wrong_shape_actions_rejected_a2(tmp_path, robot):
    cfg = make_cfg(tmp_path, duration_s=0.8)
    summary, tele, events = load(deploy(cfg, robot, policy=lambda obs: np.zeros((4, 5))))
    assert summary["stops"][0]["cause"] == "nonfinite_action" and "shape" in summary["stops"][0]["detail"]
    assert all(r["sent"] is None for r in tele)
    assert summary["startup_probe"]["passed"]
    # after the startup probe (A7) the servos only got the present pose: the driver's hold at
    # torque enable, then Stop-1 holds
    probed = next(e["t_mono"] for e in events if e["kind"] == "startup_probe")
    after = [g for t, g in robot.goals if t > probed]
    assert after and len({tuple(sorted(g.items())) for g in after}) == 1


def test_teleport_target_is_step_clamped_a4(tmp_path):
    cfg = make_cfg(tmp_path, duration_s=0.8)
    far = lambda obs: np.tile(np.asarray(obs["q"]) + np.array([1.5, 0.0, 0.0]), (4, 1))  # noqa: E731
    summary, tele, _ = load(deploy(cfg, policy=far))
    sent = np.array([r["sent"] for r in tele if r["sent"] is not None])
    assert len(sent) > 20 and np.max(np.abs(np.diff(sent, axis=0))) <= cfg.max_step_rad + TICK
    assert summary["faults_by_type"].get("clamp", 0) > 0


def test_sigterm_runs_safe_shutdown_d4(tmp_path):
    cfg = make_cfg(tmp_path, duration_s=5.0)
    sine = ScriptedPolicy("sine", 4, cfg.chunk_dt, amplitude=0.25, freq_hz=0.5)
    start = []

    def policy(obs):  # SIGTERM arrives from another thread once the policy has moved the arm a while
        q = np.asarray(obs["q"], dtype=float)
        if not start:
            start.append(q)
        if np.max(np.abs(q - start[0])) > 0.1 and len(start) == 1:  # beyond the startup probe's 0.05 rad
            start.append(q)
            threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGTERM)).start()
        return sine(obs)

    summary, tele, events = load(deploy(cfg, policy=policy))
    assert summary["cycles"] < cfg.n_steps  # the run ended early, through the shutdown path
    assert summary["status"] == "aborted" and summary["abort_signal"] == "SIGTERM"
    assert summary["stops"][-1]["cause"] == "operator" and summary["stops"][-1]["category"] == 1
    assert summary["supervisor"]["state"] == "LATCHED" and tele[-1]["state"] == "LATCHED"
    assert summary["stops"][-1]["T_zero_velocity_s"] is not None and len(tele) > 30
    assert events[-1]["kind"] == "log_close"


def test_startup_refused_is_reported_d4(tmp_path):
    cfg = make_cfg(tmp_path, max_step_rad=0.05)  # faster than 2 rad/s x 10 ms
    with pytest.raises(ConfigError, match="max_step_rad"):
        deploy(cfg)
    (run,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "aborted" and "max_step_rad" in summary["error"]
    assert (run / "config.yaml").is_file() and verify_chain(run / "events.jsonl", require_closed=True).ok


def test_ee_delta_policy_moves_through_filter_within_speed_limit(tmp_path):
    """EE deltas (normalised, base frame) become a twist nominal for the QP filter: the arm moves
    the EE along +x and the EE speed stays under the spec's limit (A4, E9 speed observer input)."""
    cfg = make_cfg(tmp_path, action_space="ee_delta", duration_s=1.5, ee_scale_m=0.02)
    push_x = lambda obs: np.tile([1.0, 0, 0, 0, 0, 0, 0], (4, 1))  # noqa: E731 - saturating +x request
    summary, tele, _ = load(deploy(cfg, policy=push_x))
    model = ThreeJointArm()
    sent = [r for r in tele if r["sent"] is not None]
    assert len(sent) > 50
    ee = np.array([model.ee_pose(np.array(r["sent"]))[0] for r in sent])
    assert ee[-1, 0] - ee[0, 0] > 0.05  # it went where it was asked
    speed = np.linalg.norm(np.diff(ee, axis=0), axis=1) / cfg.dt
    assert speed.max() <= SPEC.ee_speed_max + 0.02  # + goal quantisation (1 tick x 0.45 m reach / 10 ms ~ 0.07)
    assert summary["interventions"]["filter"] > 0  # 0.2 m/s per unit asked, the limit bites
    assert summary["stops"][0]["cause"] == "operator"


def test_estop_engaged_at_start_never_arms_e7(tmp_path, robot):
    """E7: the e-stop is already pressed while connecting: no arm, no torque, no goal bytes."""
    from safetwin.robot_io.estop import EStopEmulator

    with EStopEmulator() as box:
        box.press()
        cfg = make_cfg(tmp_path, estop_port=box.port, duration_s=0.5)
        summary, tele, events = load(deploy(cfg, robot))
    assert not robot.goals
    assert all(robot.vr.servo_register(s.id, "torque_enable") == 0 for s in SPECS)
    assert any(e["kind"] == "arm_refused" for e in events)
    assert summary["stops"][0]["cause"] == "estop" and summary["stops"][0]["state_before"] == "DISARMED"
    assert {r["state"] for r in tele} == {"LATCHED"}


def test_log_disk_full_stops_motion_d7(tmp_path, robot):
    """D7: the run's log files start failing with ENOSPC mid-run: motion stops, the summary says so."""
    cfg = make_cfg(tmp_path, duration_s=2.0)
    sine = ScriptedPolicy("sine", 4, cfg.chunk_dt, amplitude=0.25, freq_hz=0.5)
    failed_at = []

    def policy(obs):
        if not failed_at and len(robot.goals) > 30:
            full = os.open("/dev/full", os.O_WRONLY)
            for fd in os.listdir("/proc/self/fd"):
                target = os.path.realpath(f"/proc/self/fd/{fd}")
                if target.startswith(str(tmp_path)) and target.endswith(".jsonl"):
                    os.dup2(full, int(fd))  # the disk is now full for the event log and the telemetry
            os.close(full)
            failed_at.append(time.monotonic())
        return sine(obs)

    run = deploy(cfg, robot, policy=policy)
    summary = json.loads((run / "summary.json").read_text())
    assert failed_at and summary["stops"][0]["cause"] == "log_failure"
    assert summary["telemetry_error"] and "No space left" in summary["telemetry_error"]
    after = [t for t, _ in robot.goals if t > failed_at[0]]
    assert len(after) <= 40  # a few periods to notice, then the braking/hold goals of Stop 1 only
    assert all(robot.vr.servo_register(s.id, "torque_enable") == 0 for s in SPECS)


def test_tcp_speed_observer_stops_commanded_overspeed_e9(tmp_path):
    """E9: the speed observer (measured positions and velocities, independent of the filter) stops
    a commanded over-speed; here the monitored limit is set below what the policy commands."""
    cfg = make_cfg(tmp_path, action_space="ee_delta", duration_s=1.5, ee_scale_m=0.02,
                   ee_speed_monitor_m_s=0.08)
    push_x = lambda obs: np.tile([1.0, 0, 0, 0, 0, 0, 0], (4, 1))  # noqa: E731
    summary, tele, _ = load(deploy(cfg, policy=push_x))
    assert summary["stops"][0]["cause"] == "ee_overspeed"
    fast = [r["seq"] for r in tele if r["ee_speed"] is not None and r["ee_speed"] > 0.08]
    stop = next(r["seq"] for r in tele if r["state"] == "STOPPING")
    assert fast and stop - fast[0] <= 3 + 1  # overspeed_cycles in a row, then Stop 1


def test_default_scene_on_pybullet_virtual_robot_e1_e2(tmp_path):
    """The production path: scene -> twin kinematics -> pybullet-backed virtual robot (the gripper
    servo held still), scripted policy, e-stop pressed mid-run and released; no goal packet reaches
    the servos while latched. Skips when the twin's scene loader and kinematics are absent."""
    pytest.importorskip("safetwin.twin.scene")
    pytest.importorskip("safetwin.twin.kinematics")
    robot = TappedRobot(VirtualRobot.from_scene("reach_avoid"))
    try:
        cfg = config_from_dict(DeployConfig, {"run_dir": str(tmp_path / "runs"), "duration_s": 2.0,
                                              "estop_script": [[1.0, "press"], [1.4, "release"]]}, "deploy")
        summary, tele, events = load(run_deploy(cfg, virtual_robot=robot.vr))
    finally:
        robot.vr.stop()
    assert summary["status"] == "completed" and summary["stops"][0]["cause"] == "estop"
    assert any(r["sent"] is not None for r in tele) and robot.goals
    assert not [t for t, _ in robot.goals if state_at(events, t) in ("LATCHED", "DISARMED")]
    gripper = [g[max(g)] for _, g in robot.goals]  # the highest id is the gripper servo
    assert len(set(gripper)) == 1  # never moved


@pytest.mark.slow
def test_saved_vla_checkpoint_drives_the_loop(tmp_path):
    """A real (untrained) CompactVLA saved as safetensors and loaded back produces (k, 7) EE-delta
    chunks from the runner's observations; every chunk passes validation and reaches the filter."""
    from safetwin.train.checkpoint import load_policy, save_policy
    from safetwin.train.language import LanguageEncoder
    from safetwin.train.policy import CompactVLA, PolicyConfig

    policy = CompactVLA(PolicyConfig(proprio_dim=2 * len(SPECS) + 1, chunk_len=4), LanguageEncoder())
    path = save_policy(tmp_path / "policy.safetensors", policy, safety_spec_sha256=SPEC.sha256(),
                       scene={"name": "test"}, step=0, lam=0.0, config={})
    loaded = load_policy(path)
    loaded.predict({"image": np.zeros((64, 64, 3), np.uint8), "proprio": np.zeros(7, np.float32),
                    "instruction": "push the block to the target"})  # warm-up outside the loop
    # torch holds the GIL in bursts; pyserial's write timeout can then fire spuriously (see report)
    cfg = make_cfg(tmp_path, action_space="ee_delta", policy_hz=10.0, duration_s=2.0, bus_timeout_s=0.05)
    summary, tele, _ = load(deploy(cfg, policy=loaded.predict))
    assert summary["policy"]["chunks"] >= 10 and summary["policy"]["errors"] == 0
    assert summary["faults_by_type"].get("action_rejected", 0) == 0
    assert sum(r["filter"] is not None for r in tele) > 100
