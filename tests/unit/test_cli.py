from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from runner.host.cli import main
from tests.conftest import ROOT, runner_cli

JOBS = sorted((ROOT / "jobs").glob("*.yaml"))


def test_cli_imports_no_heavy_libraries():
    code = (
        "import sys, runner.host.cli, runner.core.jobspec, runner.host.execute.submit, runner.core.launch, runner.host.envinfo\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'trl', 'deepspeed', 'datasets', 'accelerate')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_shipped_job_validates(tiny_model: Path):
    assert JOBS, "jobs/ holds no spec"
    env = {"MODEL_DIR": str(tiny_model), "RM": str(tiny_model)}  # RM: ppo's reward model
    result = runner_cli("validate", *map(str, JOBS), env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("ok  ") == len(JOBS)


def test_plan_shows_resolved_spec_and_command():
    result = CliRunner().invoke(main, ["plan", "tests/data/good_spec.yaml"])
    assert result.exit_code == 0, result.output
    assert "learning_rate: 0.0001" in result.stdout  # defaults are written out
    assert "-m runner.train" in result.stdout and "HF_HUB_OFFLINE=1" in result.stdout


def test_validate_reports_all_files_then_fails():
    result = CliRunner().invoke(
        main, ["validate", "tests/data/good_spec.yaml", "tests/data/bad_specs/unknown_key.yaml"]
    )
    assert result.exit_code == 2
    assert "ok  tests/data/good_spec.yaml" in result.stdout
    assert "unknown_key.yaml:11:3 training.learning_rat" in result.stderr


def test_env_reports_versions_without_failing():
    result = CliRunner().invoke(main, ["env"])
    assert result.exit_code == 0
    assert "pydantic" in result.stdout and "torch device" in result.stdout and "docker" in result.stdout


def test_chat_refuses_a_directory_that_is_no_run(tmp_path: Path):
    result = CliRunner().invoke(main, ["chat", str(tmp_path), "-m", "hi"])
    assert result.exit_code == 2
    assert "is not a run directory" in result.stderr


def test_the_training_entrypoint_imports_no_executor_and_no_docker_sdk():
    """The in-container side needs run records, not the host's executors or the engine's SDK."""
    import subprocess
    import sys

    code = ("import sys, runner.train.__main__; "
            "bad = [m for m in ('runner.host.execute.docker', 'runner.host.execute.local', 'runner.host.execute.submit', "
            "'docker', 'runner.host.docker_api') if m in sys.modules]; print(bad); sys.exit(bool(bad))")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
