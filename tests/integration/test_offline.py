"""A job whose model would need the network fails within seconds, saying what to copy in."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from runner.core.rundir import read_record
from tests.conftest import runner_cli, write_job
from tests.offline_model import reaching_model

pytestmark = pytest.mark.integration


def test_remote_code_that_downloads_fails_fast_with_the_fix(tiny_model: Path, tmp_path: Path):
    model = reaching_model(tiny_model, tmp_path / "model")
    spec = write_job(tmp_path / "job.yaml", model, name="net",
                     model={"path": str(model), "trust_remote_code": True})  # fmt: skip
    began = time.monotonic()
    result = runner_cli("submit", str(spec), "--executor", "local", env={"HF_HOME": str(tmp_path / "hf")})
    took = time.monotonic() - began
    said = result.stdout + result.stderr
    assert result.returncode == 1, said[-3000:]
    assert "needs a file from the Hugging Face hub, and this machine is offline" in said
    assert "huggingface-cli download" in said and "Traceback" not in said
    assert took < 60, took  # no retry loop, no hang
    (run_dir,) = (tmp_path / "out" / "net").iterdir()
    record = read_record(run_dir)
    assert (record.status, record.exit_code) == ("failed", 1) and "Hugging Face hub" in record.message
    print(f"RELIABILITY offline: a model reaching for the hub failed in {took:.1f} s with the fix")
