"""``safetwin``: the console script with one subcommand per pipeline stage.

    safetwin capture   capture folder (or none: synthetic) -> scenes/<name>/
    safetwin rollout   scripted expert in the twin: success rate and costs
    safetwin train     BC pre-training then PPO-Lagrangian fine-tuning -> runs/train/<id>/
    safetwin audit     evaluation + logs -> <run>/audit/report.{html,json}; exit 1 on FAIL
    safetwin deploy    audited checkpoint -> virtual robot (PORT=sim) or a serial port
    safetwin verify-log  check the hash chain of a deploy run's event log
    safetwin demo      every stage on the embedded default

Each stage's options are the fields of its typed config dataclass (``--help`` lists them);
unknown options are errors, and the resolved config is saved in the run directory.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .dataclass_args import add_dataclass_options, build_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

logger = logging.getLogger("safetwin")


@dataclass(frozen=True)
class Stage:
    """A subcommand: ``module:config_class`` and ``module:function`` taking the config."""

    help: str
    config: str
    run: str


STAGES: dict[str, Stage] = {
    "capture": Stage("real-to-sim capture -> scenes/<name>/",
                     "safetwin.twin.capture.pipeline:CaptureConfig",
                     "safetwin.twin.capture.pipeline:run_capture"),
    "rollout": Stage("roll out the scripted expert in the twin (success rate, costs)",
                     "safetwin.cli.stages:RolloutConfig", "safetwin.cli.stages:run_rollout"),
    "train": Stage("behaviour cloning, then PPO-Lagrangian fine-tuning",
                   "safetwin.train.config:TrainConfig", "safetwin.train.run:run_train"),
    "audit": Stage("safety audit of a training or deploy run (exit 1 on FAIL)",
                   "safetwin.cli.stages:AuditStageConfig", "safetwin.cli.stages:run_audit_stage"),
    "deploy": Stage("deploy an audited checkpoint on the virtual robot or a serial port",
                    "safetwin.robot_io.deploy_config:DeployConfig", "safetwin.cli.stages:run_deploy_stage"),
    "verify-log": Stage("verify the hash chain of an event log",
                        "safetwin.cli.stages:VerifyLogConfig", "safetwin.cli.stages:run_verify_log"),
    "demo": Stage("capture -> train -> audit -> deploy (with an e-stop) -> deploy audit",
                  "safetwin.cli.demo:DemoConfig", "safetwin.cli.demo:run_demo"),
}


def _load(ref: str) -> object:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def build_parser(stages: dict[str, Stage] = STAGES) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="safetwin", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="_stage", required=True, metavar="STAGE")
    for name, stage in stages.items():
        p = sub.add_parser(name, help=stage.help, description=stage.help)
        p.add_argument("--config", dest="_config", metavar="FILE.yaml",
                       help="YAML file of options; command-line options override it")
        try:
            add_dataclass_options(p, _load(stage.config))  # type: ignore[arg-type]
        except (ImportError, AttributeError) as exc:  # a stage whose package is not installed
            p.set_defaults(_unavailable=f"{name}: unavailable ({exc})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # the gate's override is spelled as the issue and the README spell it
    argv = ["--accept-unaudited" if a == "--i-accept-unaudited" else a for a in argv]
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if getattr(args, "_unavailable", None):
        parser.error(args._unavailable)
    stage = STAGES[args._stage]
    config_cls = _load(stage.config)
    run: Callable[[object], object] = _load(stage.run)  # type: ignore[assignment]
    skip = ("verbose",)
    try:
        cfg = build_config(config_cls, argparse.Namespace(**{k: v for k, v in vars(args).items()
                                                             if k not in skip}),
                           config_file=args._config, skip=skip)
        result = run(cfg)
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130
    except (ValueError, FileNotFoundError, PermissionError, RuntimeError) as exc:
        logger.error("%s", exc)
        logger.debug("details", exc_info=True)
        return 2
    return int(result) if isinstance(result, int) and not isinstance(result, bool) else 0


if __name__ == "__main__":
    sys.exit(main())
