"""The sbatch script `runner render --target slurm` writes, run for real on this machine as one
node of a Slurm job: the script itself under bash, with the SLURM_* variables Slurm would set
and two stand-ins for the scheduler's own commands (srun runs its command once, here; scontrol
lists the allocation's hosts). The container trains the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from runner.core.rundir import read_record
from tests.conftest import runner_cli, write_job
from tests.docker.test_compose import give_to_the_job

pytestmark = pytest.mark.docker

SRUN = """#!/bin/bash
# srun on a one-node allocation: its options dropped, the command run once, here.
while [ "$#" -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done
exec "$@"
"""
SCONTROL = """#!/bin/bash
# scontrol show hostnames LIST: one host a line.
[ "$1 $2" = "show hostnames" ] || exit 2
tr ',' '\\n' <<<"$3"
"""


def test_the_sbatch_script_trains_on_one_node(docker, cpu_image, tiny_model: Path, tmp_path: Path):
    spec = write_job(tmp_path / "job.yaml", tiny_model, name="slurmjob", image="cpu",
                     training={"max_steps": 2, "per_device_train_batch_size": 2, "logging_steps": 1},
                     resources={"gpus": 0, "shm": "256m"})  # fmt: skip
    rendered = runner_cli("render", str(spec), "--target", "slurm")
    assert rendered.returncode == 0, rendered.stderr
    script = tmp_path / "out" / "slurmjob" / "slurm" / "slurmjob.sbatch"
    assert f"sbatch {script}" in rendered.stdout
    give_to_the_job(tmp_path / "out")  # rendered by root, the job runs as nobody: the outputs are its own
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242", "SLURM_NODEID": "0",
           "SLURM_JOB_NODELIST": "localhost", "SLURM_JOB_NUM_NODES": "1", "SLURM_NNODES": "1"}  # fmt: skip
    try:
        done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=600)
    finally:
        subprocess.run(["docker", "rm", "-f", "runner-slurmjob-4242-n0"], capture_output=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (run_dir,) = [p for p in (tmp_path / "out" / "slurmjob").iterdir() if p.name not in ("slurm",)]
    assert f"run directory: {run_dir}" in done.stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert results["global_step"] == 2
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    record = read_record(run_dir)
    assert record.status == "succeeded"
    # Each sbatch is a new run: the entrypoint made this one from the spec next to the script.
    assert (run_dir / "spec.yaml").is_file() and (script.parent / "slurmjob.yaml").is_file()
