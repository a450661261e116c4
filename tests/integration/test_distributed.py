"""Two processes, one machine, on CPU: torchrun + gloo DDP through the real `runner submit`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.core.rundir import read_record
from tests.conftest import runner_cli, write_job

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("budget", [None, 64], ids=["fixed", "token-budget"])
def test_two_process_ddp_on_cpu(budget, tmp_path: Path, tiny_model: Path):
    """With a token budget each process may take a different number of passes per step; the
    gradients are still exchanged once per step."""
    spec = write_job(tmp_path / "job.yaml", tiny_model, name="ddp", data={"packing": budget is not None},
                     training={"max_steps": 4, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2,
                               "micro_batch_tokens": budget},
                     resources={"procs_per_node": 2})  # fmt: skip
    result = runner_cli("submit", str(spec), "--executor", "local")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    (run_dir,) = (tmp_path / "out" / "ddp").iterdir()
    record = read_record(run_dir)
    assert record.command[1:4] == ["-m", "torch.distributed.run", "--nproc-per-node=2"]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["world_size"] == 2 and results["global_step"] == 4
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in rows if "loss" in r]) == 4  # logged once, by rank 0 only
