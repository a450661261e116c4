"""`runner submit` with the docker executor, on the real engine."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from runner.core.rundir import read_record
from runner.host.render.lockdown import job_user
from tests.conftest import runner_cli, write_job

pytestmark = pytest.mark.docker


def write(tmp_path: Path, tiny_model: Path, image: str = "cpu", gpus: object = 0, **resources) -> Path:
    return write_job(
        tmp_path / "job.yaml", tiny_model, name="dock", image=image, resources={"gpus": gpus, **resources}
    )


def test_submit_runs_in_the_image_offline(cpu_image, tiny_model: Path, tmp_path: Path, docker):
    result = runner_cli("submit", str(write(tmp_path, tiny_model)))  # docker is the default executor
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_dir,) = (tmp_path / "out" / "dock").iterdir()
    record = read_record(run_dir)
    assert (record.executor, record.status, record.exit_code) == ("docker", "succeeded", 0)
    # The submitter's, or nobody's where root submitted (runner.host.render.lockdown).
    assert (run_dir / "adapter" / "adapter_model.safetensors").stat().st_uid == job_user(os.getuid(), 0)[0]
    assert json.loads((run_dir / "results.json").read_text())["global_step"] == 3
    assert "step 3/3" in (run_dir / "train.log").read_text()
    assert docker.client.containers.list(all=True, filters={"label": f"runner.run-id={record.id}"}) == []
    chat = runner_cli("chat", str(run_dir), "-m", "你是谁？")  # in the same image, as the run trained
    assert chat.returncode == 0, chat.stderr[-2000:]
    assert "user> 你是谁？" in chat.stdout and "assistant>" in chat.stdout


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"gpus": 2}, "resources.gpus asks for 2 but this machine has 0 GPU(s)"),
        ({"image": "not-built"}, "image localhost/runner/not-built:latest is not loaded"),
    ],
)
def test_refused_before_anything_starts(change, message, tiny_model: Path, tmp_path: Path, docker):
    result = runner_cli("submit", str(write(tmp_path, tiny_model, **change)))
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_two_process_ddp_in_one_container(cpu_image, tiny_model: Path, tmp_path: Path):
    spec = write(tmp_path, tiny_model, procs_per_node=2)
    result = runner_cli("submit", str(spec))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_dir,) = (tmp_path / "out" / "dock").iterdir()
    assert read_record(run_dir).command[:4] == ["python", "-m", "torch.distributed.run", "--nproc-per-node=2"]
    assert json.loads((run_dir / "results.json").read_text())["world_size"] == 2


def test_the_nccl_setting_of_the_spec_is_in_the_container(
    cpu_image, tiny_model: Path, tmp_path: Path, docker
):
    """distributed.nccl.p2p_disable: true, seen by `docker inspect` of the job's container."""
    spec = write_job(tmp_path / "job.yaml", tiny_model, name="nccl", image="cpu",
                     training={"max_steps": 2000}, resources={"gpus": 0, "procs_per_node": 2},
                     distributed={"nccl": {"p2p_disable": True}})  # fmt: skip
    started = runner_cli("submit", str(spec), "--detach")
    assert started.returncode == 0, started.stderr
    (run_dir,) = (tmp_path / "out" / "nccl").iterdir()
    container = docker.container(read_record(run_dir).container)
    try:
        env = container.attrs["Config"]["Env"]
        assert "NCCL_P2P_DISABLE=1" in env and not any(e.startswith("NCCL_IB_DISABLE") for e in env)
    finally:
        container.remove(force=True)


def test_remote_code_that_downloads_fails_fast_in_the_container(cpu_image, tiny_model: Path, tmp_path: Path):
    """The same model as tests/integration/test_offline.py, in the job's container (no network)."""
    import time

    from tests.offline_model import reaching_model

    model = reaching_model(tiny_model, tmp_path / "model")
    spec = write_job(tmp_path / "job.yaml", model, name="net", image="cpu",
                     model={"path": str(model), "trust_remote_code": True})  # fmt: skip
    began = time.monotonic()
    result = runner_cli("submit", str(spec))
    took = time.monotonic() - began
    said = result.stdout + result.stderr
    assert result.returncode == 1, said[-3000:]
    assert "needs a file from the Hugging Face hub, and this machine is offline" in said
    assert "Traceback" not in said and took < 90, took
    (run_dir,) = (tmp_path / "out" / "net").iterdir()
    assert read_record(run_dir).status == "failed"
