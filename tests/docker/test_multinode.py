"""Two nodes as two containers on this host's network, started by exactly the commands
`runner render --target hosts` prints: torchrun rendezvous over the network, gloo, one adapter."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from runner.core.rundir import read_record
from tests.conftest import runner_cli, write_job

pytestmark = pytest.mark.docker


def test_two_hosts_run_the_printed_commands(docker, cpu_image, tiny_model: Path, tmp_path: Path):
    spec = write_job(tmp_path / "job.yaml", tiny_model, name="twonode", image="cpu",
                     training={"max_steps": 4, "per_device_train_batch_size": 2},
                     resources={"gpus": 0, "nodes": 2, "procs_per_node": 1},
                     distributed={"master_port": 29555})  # fmt: skip
    # Both "hosts" are this machine: node 0's address is the rendezvous for node 1.
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# node 0 first\n127.0.0.1 slots=1\nlocalhost slots=1\n")
    rendered = runner_cli("render", str(spec), "--target", "hosts", "--hostfile", str(hostfile))
    assert rendered.returncode == 0, rendered.stderr
    commands = [line for line in rendered.stdout.splitlines() if line.startswith("docker run")]
    assert len(commands) == 2 and "--master-addr=127.0.0.1" in commands[1]
    (run_dir,) = (tmp_path / "out" / "twonode").iterdir()
    procs = [
        subprocess.Popen(c, shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for c in commands
    ]
    try:
        outs = [p.communicate(timeout=300)[0].decode(errors="replace") for p in procs]
    finally:
        for p in procs:
            p.kill()
        for rank in (0, 1):
            subprocess.run(
                ["docker", "rm", "-f", f"runner-twonode-{run_dir.name}-n{rank}"], capture_output=True
            )
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["world_size"] == 2 and results["global_step"] == 4
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert read_record(run_dir).executor == "hosts"


def test_a_hostfile_that_disagrees_with_the_spec_is_refused(tiny_model: Path, tmp_path: Path):
    spec = write_job(tmp_path / "job.yaml", tiny_model, resources={"gpus": 0, "nodes": 3})
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("a\nb\n")
    result = runner_cli("render", str(spec), "--target", "hosts", "--hostfile", str(hostfile))
    assert result.returncode == 2 and "resources.nodes: is 3 but" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
