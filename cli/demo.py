"""``safetwin demo``: every stage on the embedded default, end to end, on a 2-core CPU.

1. capture: a synthetic RGB-D capture of the bundled scene -> a reconstructed twin scene;
2. train: scripted-expert demonstrations -> behaviour cloning -> a short PPO-Lagrangian run;
3. audit: the checkpoint evaluated in the twin, raw and behind the QP filter -> report;
4. deploy: the checkpoint on the virtual robot (a servo-bus emulator on a pseudo-terminal)
   with an e-stop press, release, reset and re-arm mid-run;
5. the deploy audit (telemetry, hash-chained event log).

Each stage is the same function the stage's own subcommand runs, so `make capture`,
`make train`, `make audit` and `make deploy` reproduce any step on its own.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from safetwin.safety.runio import ConfigError

logger = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    """The demo's knobs; the defaults fit a 2-core CPU machine in about 15 minutes.

    scene: bundled scene to capture, train on and deploy.
    train_on_capture: train on the captured twin (true) or on the bundled scene (false).
    demo_episodes: scripted-expert episodes for behaviour cloning.
    bc_epochs: behaviour-cloning epochs.
    total_steps: PPO-Lagrangian fine-tuning budget (env steps).
    eval_episodes: audit evaluation episodes per mode (raw, filtered).
    deploy_seconds: length of the deploy run on the virtual robot (s).
    estop_script: operator events during the deploy, ``[[t_s, press|release|reset|arm], ...]``.
    seed: seed of every stage.
    """

    scene: str = "tabletop_push"
    train_on_capture: bool = False
    demo_episodes: int = 30
    bc_epochs: int = 30
    total_steps: int = 3000
    eval_episodes: int = 20
    deploy_seconds: float = 8.0
    estop_script: list = field(default_factory=lambda: [[3.0, "press"], [4.0, "release"],
                                                        [4.5, "reset"], [5.0, "arm"]])
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("demo_episodes", "eval_episodes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.total_steps < 0 or self.deploy_seconds <= 0:
            raise ConfigError("total_steps must be >= 0 and deploy_seconds > 0")


def _stage(title: str) -> float:
    logger.info("=== %s ===", title)
    print(f"\n=== {title} ===", flush=True)
    return time.monotonic()


def run_demo(cfg: DemoConfig) -> int:
    """Run the whole pipeline; returns 0 when every stage ran (the audit verdicts are printed)."""
    from safetwin.robot_io.deploy import run_deploy
    from safetwin.robot_io.deploy_config import DeployConfig
    from safetwin.train.config import TrainConfig
    from safetwin.train.run import run_train
    from safetwin.twin.capture.pipeline import CaptureConfig, run_capture

    from .stages import AuditStageConfig, run_audit_stage

    timings: dict[str, float] = {}
    t = _stage("1/5 capture: synthetic RGB-D capture -> twin")
    scene_dir = run_capture(CaptureConfig(scene=cfg.scene, name=f"captured_{cfg.scene}", seed=cfg.seed))
    timings["capture"] = time.monotonic() - t
    train_scene = str(scene_dir / "scene.yaml") if cfg.train_on_capture else cfg.scene

    t = _stage(f"2/5 train: BC on expert demos, then PPO-Lagrangian ({train_scene})")
    train_run = run_train(TrainConfig(scene=train_scene, seed=cfg.seed, demo_episodes=cfg.demo_episodes,
                                      bc_epochs=cfg.bc_epochs, total_steps=cfg.total_steps,
                                      critic_warmup=1))  # a short budget: fine-tune after one iteration
    timings["train"] = time.monotonic() - t

    t = _stage("3/5 audit the checkpoint (twin, raw and behind the QP filter)")
    train_verdict = run_audit_stage(AuditStageConfig(run_dir=str(train_run), kind="train",
                                                     episodes=cfg.eval_episodes, seed=cfg.seed + 1000))
    timings["audit"] = time.monotonic() - t

    t = _stage("4/5 deploy on the virtual robot, with an e-stop press, release, reset and re-arm")
    if train_verdict != 0:
        print("The checkpoint did not pass its audit: the gate would refuse it on hardware. The demo "
              "deploys it on the VIRTUAL robot only, with --i-accept-unaudited.")
    deploy_run = run_deploy(DeployConfig(
        checkpoint=str(train_run / "checkpoints" / "policy.safetensors"), scene=train_scene, port="sim",
        accept_unaudited=train_verdict != 0, duration_s=cfg.deploy_seconds, seed=cfg.seed,
        estop_script=cfg.estop_script, instruction=first_instruction(train_scene)))
    timings["deploy"] = time.monotonic() - t

    t = _stage("5/5 audit the deploy run (telemetry, event-log hash chain)")
    deploy_verdict = run_audit_stage(AuditStageConfig(run_dir=str(deploy_run), kind="deploy"))
    timings["deploy_audit"] = time.monotonic() - t
    _print_summary(scene_dir, train_run, deploy_run, train_verdict, deploy_verdict, timings)
    return 0


def first_instruction(scene_name: str) -> str:
    """The scene's first instruction template filled for its first target (what the policy knows)."""
    from safetwin.twin.scene import load_scene

    scene = load_scene(scene_name)
    return scene.task.instruction(0, scene.object(scene.task.targets[0]))


def _print_summary(scene_dir: Path, train_run: Path, deploy_run: Path, train_verdict: int,
                   deploy_verdict: int, timings: dict[str, float]) -> None:
    train_report = json.loads((train_run / "audit" / "report.json").read_text())
    deploy_summary = json.loads((deploy_run / "summary.json").read_text())
    metrics = train_report.get("metrics", {})
    lines = ["", "=== SafeTwin demo summary ===",
             f"captured twin     {scene_dir}/scene.yaml  (report: {scene_dir}/capture_report.md)",
             f"training run      {train_run}",
             f"checkpoint audit  {'PASS' if train_verdict == 0 else 'FAIL'}  {train_run}/audit/report.html"]
    for mode in ("raw", "filtered"):
        m = metrics.get(mode)
        if isinstance(m, dict) and "success_rate" in m:
            cost = m.get("safety_cost", {})
            lines.append(f"  {mode:9s} success {m['success_rate']:.0%}  mean cost {cost.get('mean', float('nan')):.2f}"
                         f"  by category {cost.get('per_category_mean')}")
    lines += [f"deploy run        {deploy_run}  status {deploy_summary.get('status')}, stops "
              f"{[s.get('cause') for s in deploy_summary.get('stops', [])]}",
              f"deploy audit      {'PASS' if deploy_verdict == 0 else 'FAIL'}  {deploy_run}/audit/report.html",
              "stage times (s)   " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()),
              "SafeTwin documents software risk-reduction measures; it makes no PL or SIL claim."]
    print("\n".join(lines), flush=True)
