"""The job log a person reads: a 4-step ZeRO-3 job on 2 CPU processes through the real
`runner submit --executor local`. Each distinct library warning once, with its count at the end;
the lines every rank prints alike from rank 0 only; output.verbose keeps everything."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from tests.conftest import runner_cli, write_job

pytestmark = pytest.mark.integration


def run_log(tmp_path: Path, model: Path, verbose: bool) -> list[str]:
    spec = write_job(
        tmp_path / "job.yaml", model, name="z3log",
        training={"max_steps": 4, "logging_steps": 1, "per_device_train_batch_size": 2, "save_steps": 1000},
        resources={"gpus": 0, "procs_per_node": 2}, distributed={"deepspeed": {"zero": 3}},
        output={"dir": str(tmp_path / "out"), "verbose": verbose},
    )  # fmt: skip
    result = runner_cli("submit", str(spec), "--executor", "local")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    (run_dir,) = (tmp_path / "out" / "z3log").iterdir()
    return (run_dir / "train.log").read_text(encoding="utf-8").splitlines()


def test_the_log_shows_each_warning_once_and_rank_lines_once(tmp_path: Path, tiny_model: Path):
    lines = run_log(tmp_path, tiny_model, verbose=False)
    warnings = [line for line in lines if "Warning" in line and not line.startswith("  ")]
    repeated = {w: n for w, n in collections.Counter(warnings).items() if n > 1}
    assert not repeated, repeated
    assert all(w.startswith("warning: ") for w in warnings), warnings  # one line each, no source echo
    assert sum("tokenizing" in line for line in lines) == 1  # not once per rank
    assert not any(line.startswith("gcc ") for line in lines)
    assert any(line.startswith("warnings shown once above") for line in lines)
    assert any("on rank 1" in line for line in lines)  # a line that differs by rank stays
    assert len(lines) < 45, "\n".join(lines)


def test_verbose_keeps_every_line(tmp_path: Path, tiny_model: Path):
    lines = run_log(tmp_path, tiny_model, verbose=True)
    assert sum("tokenizing" in line for line in lines) == 2  # each rank's
    assert not any(line.startswith("warnings shown once above") for line in lines)
