"""A multi-node rendezvous that cannot complete ends within distributed.rendezvous_timeout_s with
what to check, never a hang: a node that cannot reach node 0, and node 0 whose peers never come.
No training runs; torchrun's agent gives up before any worker starts."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.core.jobspec.job import JobSpec
from runner.core.launch import render_launch
from runner.core.rundir import read_record
from tests.conftest import ROOT, runner_cli, write_job

pytestmark = pytest.mark.integration
TIMEOUT = 10
# TEST-NET-1 (RFC 5737): never routed, so a connection to it can only time out or be refused.
UNREACHABLE = "192.0.2.1"


def test_node_that_cannot_reach_node_0_fails_within_its_timeout(tmp_path: Path, tiny_model: Path):
    spec = write_job(tmp_path / "job.yaml", tiny_model, name="rdzv", resources={"gpus": 0, "nodes": 2},
                     distributed={"master_addr": UNREACHABLE, "master_port": 29517, "node_rank": 1,
                                  "rendezvous_timeout_s": TIMEOUT})  # fmt: skip
    started = time.monotonic()
    result = runner_cli("submit", str(spec), "--executor", "local")
    took = time.monotonic() - started
    assert result.returncode != 0
    assert took < TIMEOUT + 30, took  # the wait, one retry's delay, and the start of python and torch
    said = result.stdout + result.stderr
    assert f"node 1 could not reach node 0's rendezvous at {UNREACHABLE}:29517 within {TIMEOUT} s" in said
    assert "Traceback" not in said and "frame #" not in said
    (run_dir,) = (tmp_path / "out" / "rdzv").iterdir()
    record = read_record(run_dir)
    assert record.status == "failed"
    assert f"rendezvous at {UNREACHABLE}:29517" in record.message and "nc -z" in record.message


def test_node_0_whose_peers_never_come_fails_within_its_timeout(tmp_path: Path):
    """Node 0 hosts the rendezvous and waits for the others; nobody else starts."""
    spec = JobSpec.model_validate({
        "name": "rdzv", "model": {"path": "/m"}, "method": {"type": "lora"},
        "data": {"datasets": [{"path": "/d.json"}]}, "resources": {"gpus": 0, "nodes": 2},
        "distributed": {"master_addr": "127.0.0.1", "master_port": 29518, "rendezvous_timeout_s": TIMEOUT},
    })  # fmt: skip
    argv = render_launch(spec, None, python=sys.executable, spec_file=tmp_path / "job.yaml")
    assert argv[1:4] == ["-m", "runner.train", "launch"]
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=TIMEOUT + 60)
    took = time.monotonic() - started
    assert result.returncode == 1
    assert took < TIMEOUT + 30, took
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "error: the other node(s) of this 2-node job did not reach the rendezvous at 127.0.0.1:29518 "
            f"within {TIMEOUT} s"
        )
    ), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
