"""The glue of the stages the CLI runs that no single package owns.

``rollout`` (the scripted expert in the twin), ``audit`` (evaluate a checkpoint, then build the
report), ``deploy`` (the gate, then the runner) and ``verify-log``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from safetwin.safety.audit_config import AuditConfig
from safetwin.safety.runio import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_JUNIT = "runs/tests/junit.xml"
"""Where `make test` leaves the suite's results for the audit's safety-scenario table."""


@dataclass
class RolloutConfig:
    """Roll out the scripted expert in the twin and print success rate and costs.

    scene: bundled scene name or path to a scene YAML.
    episodes: number of episodes (each with its own seed, randomized).
    seed: seed of the first episode.
    filtered: run behind the QP safety filter.
    """

    scene: str = "tabletop_push"
    episodes: int = 20
    seed: int = 0
    filtered: bool = False

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ConfigError(f"episodes must be >= 1, got {self.episodes}")


def run_rollout(cfg: RolloutConfig) -> int:
    """Returns 0 when the expert succeeded in every episode at zero cost, 1 otherwise."""
    import gymnasium as gym
    from tqdm import tqdm

    import safetwin.twin.registration  # noqa: F401  (registers safetwin/Twin-v0)

    env = gym.make("safetwin/Twin-v0", scene=cfg.scene)
    if cfg.filtered:
        from safetwin.safety.wrapper import SafetyFilterWrapper

        env = SafetyFilterWrapper(env)
    successes, costs, lengths = [], [], []
    per_category: dict[str, float] = {}
    for ep in tqdm(range(cfg.episodes), desc=f"expert on {cfg.scene}", unit="ep"):
        env.reset(seed=cfg.seed + ep)
        done, cost, steps, info = False, 0.0, 0, {}
        while not done:
            _, _, terminated, truncated, info = env.step(env.unwrapped.expert_action())
            cost += float(info["cost"])
            for key, value in info["costs"].items():
                per_category[key] = per_category.get(key, 0.0) + float(value)
            steps += 1
            done = terminated or truncated
        successes.append(bool(info.get("is_success", False)))
        costs.append(cost)
        lengths.append(steps)
    env.close()
    summary = {"scene": cfg.scene, "episodes": cfg.episodes, "success_rate": float(np.mean(successes)),
               "mean_cost": float(np.mean(costs)), "mean_length": float(np.mean(lengths)),
               "costs_by_category": per_category}
    logger.info("expert rollout: %s", json.dumps(summary))
    print(f"scene {cfg.scene}: success {summary['success_rate']:.0%} over {cfg.episodes} episodes, "
          f"mean cost {summary['mean_cost']:.3f}, mean length {summary['mean_length']:.1f} steps, "
          f"costs by category {per_category}")
    return 0 if summary["success_rate"] == 1.0 and summary["mean_cost"] == 0.0 else 1


def resolve_run_dir(run_dir: str, kind: str) -> Path:
    """``run_dir`` itself, or with ``latest`` the newest folder under ``runs/<kind>/``."""
    if run_dir != "latest":
        path = Path(run_dir)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such run directory")
        return path
    root = Path("runs") / kind
    candidates = sorted((p for p in root.glob("*") if p.is_dir()), key=lambda p: p.name)
    if not candidates:
        raise FileNotFoundError(f"no runs under {root}/: run `make {kind}` first")
    return candidates[-1]


@dataclass
class AuditStageConfig:
    """Audit a training run (evaluate its checkpoint in the twin first) or a deploy run.

    run_dir: the run directory, or ``latest`` (the newest under runs/train/, or runs/deploy/
        with kind deploy).
    kind: ``auto`` (from the run's files), ``train`` or ``deploy``.
    episodes: evaluation episodes per mode (raw and behind the QP filter) for a training run.
    seed: seed of the first evaluation episode.
    evaluate: run the evaluation for a training run (false: reuse an existing eval/).
    junit_xml: pytest JUnit XML whose results fill the report's safety-scenario table (default:
        runs/tests/junit.xml, which `make test` writes, when it exists).
    audit: the audit thresholds (see safetwin.safety.audit_config.AuditConfig).
    """

    run_dir: str = "latest"
    kind: str = "auto"
    episodes: int = 100
    seed: int = 1000
    evaluate: bool = True
    junit_xml: str = ""
    audit: AuditConfig = field(default_factory=AuditConfig)

    def __post_init__(self) -> None:
        if self.kind not in ("auto", "train", "deploy"):
            raise ConfigError(f"kind must be auto, train or deploy, got {self.kind!r}")
        if self.episodes < 1:
            raise ConfigError(f"episodes must be >= 1, got {self.episodes}")


def _train_scene(run: Path) -> str:
    from safetwin.safety.runio import load_yaml

    config = load_yaml(run / "config.yaml")
    if not isinstance(config, dict) or not isinstance(config.get("scene"), str):
        raise ValueError(f"{run / 'config.yaml'}: no scene recorded; is this a training run?")
    return config["scene"]


def run_audit_stage(cfg: AuditStageConfig) -> int:
    """Exit status 0 when every requirement passes, 1 otherwise."""
    from safetwin.safety.audit import build_report

    kind = cfg.kind
    if kind == "auto":
        kind = "deploy" if cfg.run_dir != "latest" and (Path(cfg.run_dir) / "telemetry.jsonl").exists() \
            else "train"
    run = resolve_run_dir(cfg.run_dir, kind)
    spec = None
    if kind == "train":
        from safetwin.twin.scene import load_scene

        scene = load_scene(_train_scene(run))
        spec = scene.safety
        checkpoint = run / "checkpoints" / "policy.safetensors"
        if not checkpoint.is_file():
            raise FileNotFoundError(f"{checkpoint}: the training run has no checkpoint to audit")
        if cfg.evaluate:
            from safetwin.train.evaluate import evaluate

            evaluate(checkpoint, scene, episodes=cfg.episodes, seed=cfg.seed, filtered=True)
    junit = cfg.junit_xml or (DEFAULT_JUNIT if Path(DEFAULT_JUNIT).is_file() else None)
    report = build_report(run, cfg.audit, spec=spec, junit_xml=junit,
                          tests_root=Path(__file__).resolve().parents[1])
    failing = [r for r in report.requirements if not r.passed]
    print(f"audit of {run}: {report.verdict} ({len(report.requirements) - len(failing)}/"
          f"{len(report.requirements)} requirements pass)")
    for req in failing:
        print(f"  FAIL {req.id}: {req.evidence}")
    print(f"  report: {run / 'audit' / 'report.html'}  (machine-readable: report.json)")
    return 0 if report.verdict == "PASS" else 1


def run_deploy_stage(cfg: Any) -> int:
    """Deploy (the gate runs inside the runner); prints where the run and its summary are.

    ``--checkpoint latest`` takes the newest training run's checkpoint and that run's scene.
    """
    from safetwin.robot_io.deploy import run_deploy

    if cfg.checkpoint == "latest":
        train_run = resolve_run_dir("latest", "train")
        cfg = dataclasses.replace(cfg, checkpoint=str(train_run / "checkpoints" / "policy.safetensors"),
                                  scene=_train_scene(train_run))
        logger.info("deploying %s on scene %s", cfg.checkpoint, cfg.scene)
    run = run_deploy(cfg)
    summary = json.loads((run / "summary.json").read_text())
    print(f"deploy run {run}: status {summary.get('status')}; stops: "
          f"{[s.get('cause') for s in summary.get('stops', [])]}")
    print(f"  audit it with: safetwin audit --run-dir {run}")
    return 0 if summary.get("status") == "completed" else 1


@dataclass
class VerifyLogConfig:
    """Verify the SHA-256 hash chain of a supervisor event log.

    path: an events.jsonl file, or a deploy run directory holding one.
    """

    path: str = ""

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError("path is required: --path runs/deploy/<id>/events.jsonl")


def run_verify_log(cfg: VerifyLogConfig) -> int:
    from safetwin.safety.events import verify_chain

    path = Path(cfg.path)
    if path.is_dir():
        path = path / "events.jsonl"
    result = verify_chain(path)
    print(f"{path}: {'intact' if result.ok else 'BROKEN'} ({result})")
    return 0 if result.ok else 1
