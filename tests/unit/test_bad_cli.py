"""Bad command-line arguments: each gets its one message and exit code, and starts nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from runner.host.cli import main
from tests.conftest import DATA

JOB = str(DATA / "good_spec.yaml")
CASES = [  # (arguments, exit code, the message)
    (["submit", "nope.yaml"], 2, "nope.yaml: no such file\n1 problem; nothing was started."),
    (["logs", "20990101-000000-dead"], 2, "error: no run '20990101-000000-dead'; `runner ls` lists them"),
    (["resume", "nope"], 2, "error: no run 'nope'; `runner ls` lists them"),
    (["stop", "nope"], 2, "error: no run 'nope'; `runner ls` lists them"),
    (["status", "nope"], 2, "error: no run 'nope'; `runner ls` lists them"),
    (["preview", JOB, "-n", "-1"], 2, "Invalid value for '-n': -1 is not in the range x>=0."),
    (["submit", JOB, "--executor", "k8s"], 2, "Invalid value for '--executor': 'k8s' is not one of 'docker', 'local', 'slurm'."),
    (["render", JOB, "--target", "k9s"], 2, "Invalid value for '--target': 'k9s' is not one of 'hosts', 'k8s', 'slurm'."),
    (["render", JOB, "--target", "hosts"], 2, "--hostfile"),
    (["convert", "nope.yaml"], 2, "nope.yaml: no such file\n1 problem; nothing was started."),
    (["validate"], 2, "Missing argument 'JOBS...'."),
    (["load", "nope.tar"], 5, "error: nope.tar: no such file"),
    (["tiny-model"], 2, "Missing argument"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "code", "message"), CASES, ids=[" ".join(c[0][:2]) for c in CASES])
def test_bad_arguments_refused(args: list[str], code: int, message: str, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("RUNNER_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == code, result.output
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.output and result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["home"])  # nothing made


def test_a_run_directory_that_is_no_run(tmp_path: Path):
    result = CliRunner().invoke(main, ["chat", str(tmp_path), "-m", "hi"])
    assert (result.exit_code, result.stderr) == (
        2,
        f"error: {tmp_path} is not a run directory (no run.json)\n",
    )


@pytest.mark.parametrize("ref", ["/no/such/run", "run*", "../x"])
def test_a_path_or_pattern_is_no_run_id(ref: str, tmp_path: Path, monkeypatch):
    from runner.core.rundir import index_dir

    monkeypatch.setenv("RUNNER_HOME", str(tmp_path / "home"))
    index_dir().mkdir(parents=True)  # runs were submitted before
    (index_dir() / "20990101-000000-dead").write_text(str(tmp_path) + "\n")
    result = CliRunner().invoke(main, ["status", ref])
    assert (result.exit_code, result.stderr) == (2, f"error: no run '{ref}'; `runner ls` lists them\n")
