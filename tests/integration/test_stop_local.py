"""`runner stop` on a run that is a process here (`runner submit --executor local` in another
shell): it saves a checkpoint and ends as stopped, as a container run does."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, runner_cli, write_job

pytestmark = pytest.mark.integration


def test_runner_stop_stops_a_local_run(tmp_path, tiny_model):
    spec = write_job(tmp_path / "long.json", tiny_model, name="long",
                     training={"max_steps": 2000, "save_steps": 5, "logging_steps": 5,
                               "per_device_train_batch_size": 1})  # fmt: skip
    submit = subprocess.Popen([sys.executable, "-m", "runner.host.cli", "submit", str(spec), "--executor", "local"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)  # fmt: skip
    try:
        runs = tmp_path / "out" / "long"
        deadline = time.time() + 300
        while not list(runs.glob("*/checkpoints/checkpoint-5/COMPLETE")) and time.time() < deadline:
            assert submit.poll() is None, submit.communicate()[0][-2000:]
            time.sleep(0.1)
        (run_dir,) = runs.iterdir()
        stopped = runner_cli("stop", run_dir.name, "--timeout", "120")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert "stopped (exit 143)" in stopped.stdout
        out = submit.communicate(timeout=120)[0]
        assert submit.returncode == 143, out[-2000:]
    finally:
        if submit.poll() is None:
            submit.kill()
    record = json.loads((run_dir / "run.json").read_text())
    assert (record["status"], record["exit_code"]) == ("stopped", 143)
    assert any(int(p.name.split("-")[1]) >= 5 for p in (run_dir / "checkpoints").glob("checkpoint-*"))
    again = runner_cli("stop", run_dir.name)
    assert again.returncode != 0 and "is not running" in again.stderr
