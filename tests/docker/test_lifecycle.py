"""submit --detach, logs -f, stop (checkpoint on SIGTERM), resume to the full step count."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from runner.core.rundir import find_run
from tests.conftest import runner_cli, write_job

pytestmark = pytest.mark.docker
STEPS = 1500


def test_detach_stop_resume_reaches_every_step(cpu_image, tiny_model: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("RUNNER_HOME", str(tmp_path / "home"))
    spec = write_job(tmp_path / "job.yaml", tiny_model, name="life", image="cpu",
                     training={"max_steps": STEPS, "logging_steps": 10, "save_steps": 100})  # fmt: skip
    started = runner_cli("submit", str(spec), "--detach")
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.split()[1].rstrip(":")
    record = find_run(run_id)
    log = Path(record.run_dir) / "train.log"
    deadline = time.time() + 120
    while "step 110/" not in (log.read_text() if log.exists() else "") and time.time() < deadline:
        time.sleep(0.5)
    assert runner_cli("status", run_id).stdout.count('"running"') == 1

    stopped = runner_cli("stop", run_id)
    assert stopped.returncode == 0 and "stopped (exit 143)" in stopped.stdout, stopped.stdout + stopped.stderr
    checkpoints = sorted((Path(record.run_dir) / "checkpoints").glob("checkpoint-*"))
    assert checkpoints, "SIGTERM must leave a checkpoint"
    stopped_at = max(int(p.name.split("-")[1]) for p in checkpoints)
    assert 100 <= stopped_at < STEPS

    assert runner_cli("resume", run_id, "--detach").returncode == 0
    followed = runner_cli("logs", run_id, "-f")
    assert followed.returncode == 0
    assert f"resuming from {record.run_dir}/checkpoints/checkpoint-{stopped_at}" in followed.stdout
    assert followed.stdout.rstrip().endswith("succeeded (exit 0)")
    results = json.loads((Path(record.run_dir) / "results.json").read_text())
    assert results["global_step"] == STEPS
    listed = runner_cli("ls").stdout
    assert run_id in listed and "succeeded" in listed
