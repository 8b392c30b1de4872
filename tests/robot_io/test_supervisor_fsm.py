"""E8: random interleavings of {estop, release, reset, arm, fault, heartbeat-loss, command}.

Hypothesis drives the supervisor wired to the real driver and the virtual servo bus on a pty.
Invariants, after every step:
  (i)   no goal packet (Sync Write to Goal Position) reaches the servos during a step that begins
        and ends in LATCHED or DISARMED, checked on the bytes the emulator received (the braking
        profile of a stop is checked in test_supervisor.py, E1);
  (ii)  every latch has a logged cause (and the hash chain is intact);
  (iii) ARMED implies the last reset happened after the last stop.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from safetwin.robot_io.supervisor import SupervisorState
from safetwin.safety.events import verify_chain

_spec = importlib.util.spec_from_file_location("_supervisor_rig", Path(__file__).with_name("test_supervisor.py"))
_rig_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_rig_module)
Rig = _rig_module.Rig

S = SupervisorState
QUIET = (S.LATCHED, S.DISARMED)
FAULTS = ("nonfinite", "infeasible", "deadline", "bus", "stale", "servo_alarm", "tracking")


class SupervisorMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = None
        self.rig: Rig | None = None

    @initialize()
    def setup(self) -> None:
        import tempfile

        self.tmp = tempfile.TemporaryDirectory()
        self.rig = Rig(Path(self.tmp.name), dt=0.01, hold_s=0.03, nonfinite_limit=2, infeasible_limit=2,
                       deadline_miss_limit=2, bus_fault_limit=2, tracking_cycles=2, heartbeat_timeout_s=0.1)
        self.seen_goals = self.rig.barrier()
        self.step_start = self.rig.sup.state
        self.last_brake_step: np.ndarray | None = None

    def teardown(self) -> None:
        if self.rig is not None:
            self.rig.close()
        if self.tmp is not None:
            self.tmp.cleanup()

    # ------------------------------------------------------------------ rules
    def _begin(self) -> None:
        self.step_start = self.rig.sup.state

    @rule()
    def estop(self) -> None:
        self._begin()
        self.rig.press()
        self.rig.cycle()

    @rule()
    def release(self) -> None:
        self._begin()
        self.rig.release()
        self.rig.cycle()

    @rule()
    def reset(self) -> None:
        self._begin()
        if self.rig.sup.state is S.LATCHED and self.rig.vr.servo_register(1, "bus_watchdog") == -1:
            self.rig.arm.clear_watchdog()  # the reset procedure clears a servo-side stop (C13)
        self.rig.sup.reset()

    @rule()
    def arm(self) -> None:
        self._begin()
        if self.rig.sup.arm():
            self.rig.arm.enable_torque()

    @rule(kind=st.sampled_from(FAULTS))
    def fault(self, kind: str) -> None:
        self._begin()
        sup, rig = self.rig.sup, self.rig
        for _ in range(2):
            {"nonfinite": lambda: sup.report_action(False),
             "infeasible": lambda: sup.report_filter(False, "injected"),
             "deadline": lambda: sup.report_policy_deadline(True),
             "bus": lambda: sup.report_bus(False, "injected timeout"),
             "stale": lambda: sup.report_stale_action(1.0),
             "servo_alarm": lambda: sup.report_servo_errors({"j2": 4}),
             "tracking": lambda: sup.report_tracking(np.ones(3) * 3.0, np.zeros(3))}[kind]()
        rig.cycle()  # the next read reports the alarm as cleared again (the emulator has none)

    @rule()
    def heartbeat_loss(self) -> None:
        self._begin()
        self.rig.policy_alive = False
        for _ in range(12):
            self.rig.cycle()
        self.rig.policy_alive = True

    @rule(delta=st.floats(-0.05, 0.05), n=st.integers(1, 4))
    def command(self, delta: float, n: int) -> None:
        self._begin()
        for _ in range(n):
            q = None if self.rig.obs is None else self.rig.obs["position"] + delta
            self.rig.cycle(q)

    # ------------------------------------------------------------------ invariants
    @invariant()
    def no_goal_bytes_while_latched_or_unarmed(self) -> None:
        if self.rig is None:
            return
        total = self.rig.barrier()
        new = self.rig.goals[self.seen_goals:total]
        end = self.rig.sup.state
        if self.step_start in QUIET and end in QUIET:
            assert not new, f"{len(new)} goal packet(s) sent in a {self.step_start}->{end} step"
        self.seen_goals = total

    @invariant()
    def every_latch_has_a_logged_cause(self) -> None:
        if self.rig is None:
            return
        events = self.rig.events()
        latches = [e for e in events if e["kind"] == "transition" and e["data"].get("to") == "LATCHED"]
        assert all(e["cause"] for e in latches)
        stops = [e for e in events if e["kind"] == "transition" and e["data"].get("to") == "STOPPING"]
        assert all(e["cause"] for e in stops)
        done = [s for s in self.rig.sup.stops if s.t_torque_off is not None]
        assert len(latches) == len(done)
        if self.rig.sup.state is S.LATCHED:
            assert latches and latches[-1]["cause"] == self.rig.sup.stops[-1].cause
        assert verify_chain(self.rig.log.path).ok

    @invariant()
    def armed_implies_reset_after_last_stop(self) -> None:
        if self.rig is None or self.rig.sup.state is not S.ARMED:
            return
        sup = self.rig.sup
        assert sup.last_stop_index is None or (sup.last_reset_index or -1) > sup.last_stop_index


SupervisorMachine.TestCase.settings = settings(
    max_examples=20, stateful_step_count=20, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
test_supervisor_state_machine_e8 = SupervisorMachine.TestCase
