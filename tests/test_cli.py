"""The `safetwin` console script: typed options, strict configs, the stages' glue."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from safetwin.cli.dataclass_args import build_config
from safetwin.cli.main import build_parser, main
from safetwin.cli.stages import RolloutConfig
from safetwin.safety.events import EventLog
from safetwin.safety.runio import ConfigError


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


def test_every_stage_is_listed_and_has_typed_options() -> None:
    out = subprocess.run([sys.executable, "-m", "safetwin.cli.main", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for stage in ("capture", "train", "audit", "deploy", "demo", "rollout", "verify-log"):
        assert stage in out
    args = parse("rollout", "--episodes", "3", "--filtered")
    cfg = build_config(RolloutConfig, args, skip=("verbose",))
    assert cfg.episodes == 3 and cfg.filtered is True and cfg.scene == "tabletop_push"


@pytest.mark.parametrize("stage", ["capture", "train", "audit", "deploy", "demo", "rollout", "verify-log"])
def test_every_stage_help_renders(stage: str) -> None:
    """argparse %-formats help text: a docstring with a literal percent sign must not crash --help."""
    out = subprocess.run([sys.executable, "-m", "safetwin.cli.main", stage, "--help"], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage: safetwin" in out.stdout


def test_unknown_option_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["rollout", "--episodez", "3"])
    assert info.value.code == 2
    assert "unrecognized arguments: --episodez" in capsys.readouterr().err


def test_config_file_unknown_key_and_validation(tmp_path: Path) -> None:
    bad = tmp_path / "r.yaml"
    bad.write_text("episodes: 2\nepisodez: 3\n")
    with pytest.raises(ConfigError, match=r"r\.yaml: unknown option\(s\) \['episodez'\]"):
        build_config(RolloutConfig, parse("rollout"), config_file=str(bad), skip=("verbose",))
    bad.write_text("episodes: 0\n")
    with pytest.raises(ConfigError, match="episodes must be >= 1"):
        build_config(RolloutConfig, parse("rollout"), config_file=str(bad), skip=("verbose",))
    good = tmp_path / "g.yaml"
    good.write_text("episodes: 2\nscene: reach_avoid\n")
    cfg = build_config(RolloutConfig, parse("rollout", "--episodes", "5"), config_file=str(good),
                       skip=("verbose",))
    assert (cfg.scene, cfg.episodes) == ("reach_avoid", 5), "command line overrides the file"


def test_nested_audit_thresholds_and_override_spelling() -> None:
    args = parse("audit", "--audit.min-success-rate", "0.9", "--episodes", "7")
    from safetwin.cli.stages import AuditStageConfig

    cfg = build_config(AuditStageConfig, args, skip=("verbose",))
    assert cfg.audit.min_success_rate == 0.9 and cfg.episodes == 7
    with pytest.raises(SystemExit):
        parse("deploy", "--i-accept-unaudited")  # only main() maps the spelling
    from safetwin.robot_io.deploy_config import DeployConfig

    assert "accept_unaudited" in {f for f in DeployConfig.__dataclass_fields__}


def test_rollout_runs_the_expert_end_to_end(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["rollout", "--scene", "reach_avoid", "--episodes", "2", "--seed", "3"])
    out = capsys.readouterr().out
    assert "scene reach_avoid: success 100% over 2 episodes, mean cost 0.000" in out
    assert code == 0


def test_verify_log_detects_tampering(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    for i in range(3):
        log.append("transition", state="ARMED", cause=None, data={"i": i})
    log.close(state="DISARMED")
    assert main(["verify-log", "--path", str(tmp_path)]) == 0
    lines = path.read_text().splitlines()
    record = json.loads(lines[1])
    record["data"] = {"i": 42}
    lines[1] = json.dumps(record, sort_keys=True)
    path.write_text("\n".join(lines) + "\n")
    assert main(["verify-log", "--path", str(path)]) == 1
    assert "BROKEN" in capsys.readouterr().out
