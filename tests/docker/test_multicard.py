"""Two processes in one container (the docker executor): DDP and ZeRO-1/2/3 reach the weights of
a one-process run of the same global batch; a ZeRO-2 run stopped with `runner stop` and resumed
ends with the weights of an uninterrupted one (optimizer state restored from DeepSpeed's
checkpoint)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from runner.core.rundir import find_run, read_record
from tests.conftest import runner_cli, write_job
from tests.integration.test_multicard import TOL, adapter, train

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_model: Path) -> Path:
    return train(tmp_path_factory.mktemp("single"), tiny_model, "single", 1, None)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> Path:
    """One output directory for these runs: DeepSpeed's ops compile once, into its cache."""
    return tmp_path_factory.mktemp("outputs")


@pytest.mark.parametrize("zero", [None, 1, 2, 3], ids=["ddp", "zero1", "zero2", "zero3"])
def test_two_processes_in_the_image_reach_the_weights_of_one(
    zero, one_process, cpu_image, tiny_model, tmp_path, outputs
):
    run_dir = train(tmp_path, tiny_model, f"dock-{zero or 'ddp'}", 2, None if zero is None else {"zero": zero},
                    executor="docker", out=outputs, image="cpu")  # fmt: skip
    record = read_record(run_dir)
    assert record.executor == "docker" and record.command[:4] == [
        "python", "-m", "torch.distributed.run", "--nproc-per-node=2"
    ]  # fmt: skip
    assert json.loads((run_dir / "results.json").read_text())["world_size"] == 2
    ref, got = adapter(one_process), adapter(run_dir)
    worst = max((ref[k] - got[k]).abs().max().item() for k in ref)
    print(f"docker {'ddp' if zero is None else f'zero{zero}'}: max |w_2proc - w_1proc| = {worst:.2e}")
    assert worst < TOL


STEPS = 300


def zero2_job(tmp_path: Path, model: Path, name: str, outputs: Path) -> Path:
    return write_job(
        tmp_path / f"{name}.yaml", model, name=name, image="cpu", output={"dir": str(outputs)},
        training={"max_steps": STEPS, "logging_steps": 10, "save_steps": 50, "learning_rate": 1e-3,
                  "per_device_train_batch_size": 2},
        resources={"gpus": 0, "procs_per_node": 2}, distributed={"deepspeed": {"zero": 2}},
    )  # fmt: skip


def test_zero2_stopped_and_resumed_ends_with_the_uninterrupted_weights(
    cpu_image, tiny_model, tmp_path, outputs, monkeypatch
):
    monkeypatch.setenv("RUNNER_HOME", str(tmp_path / "home"))
    started = runner_cli("submit", str(zero2_job(tmp_path, tiny_model, "stopped", outputs)), "--detach")
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.split()[1].rstrip(":")
    record = find_run(run_id)
    log = Path(record.run_dir) / "train.log"
    deadline = time.time() + 180
    while "step 60/" not in (log.read_text() if log.exists() else "") and time.time() < deadline:
        time.sleep(0.3)
    stopped = runner_cli("stop", run_id, "--timeout", "120")
    assert "stopped (exit 143)" in stopped.stdout, stopped.stdout + stopped.stderr + log.read_text()[-3000:]
    checkpoints = sorted((Path(record.run_dir) / "checkpoints").glob("checkpoint-*"))
    stopped_at = max(int(p.name.split("-")[1]) for p in checkpoints)
    assert 60 <= stopped_at < STEPS
    # DeepSpeed's own checkpoint: the optimizer partitions of both ranks.
    assert list((Path(record.run_dir) / "checkpoints" / f"checkpoint-{stopped_at}").rglob("*optim_states.pt"))
    resumed = runner_cli("resume", run_id)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-2000:]
    assert json.loads((Path(record.run_dir) / "results.json").read_text())["global_step"] == STEPS

    whole = runner_cli("submit", str(zero2_job(tmp_path, tiny_model, "whole", outputs)))
    assert whole.returncode == 0, whole.stdout[-3000:]
    (whole_dir,) = (outputs / "whole").iterdir()
    ref, got = adapter(whole_dir), adapter(Path(record.run_dir))
    worst = max((ref[k] - got[k]).abs().max().item() for k in ref)
    print(f"zero2 stopped at step {stopped_at} of {STEPS}, resumed: max |w - w_uninterrupted| = {worst:.2e}")
    assert worst < 1e-6
