"""The preference stages in the CPU image: dpo trains in the job's container (the image's lock
carries TRL), offline, with the adapter-disabled reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.execute.runs import read_record
from tests.conftest import ROOT, runner_cli, write_job

pytestmark = pytest.mark.docker


def test_dpo_trains_in_the_image(cpu_image, tiny_model: Path, tmp_path: Path, docker):
    spec = write_job(
        tmp_path / "job.yaml", tiny_model, name="dock-dpo", image="cpu", stage="dpo",
        data={"datasets": [{"path": str(ROOT / "data" / "preference.json")}], "cutoff_len": 64},
        training={"max_steps": 2, "logging_steps": 1, "per_device_train_batch_size": 2},
        resources={"gpus": 0},
    )  # fmt: skip
    result = runner_cli("submit", str(spec))  # docker is the default executor
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_dir,) = (tmp_path / "out" / "dock-dpo").iterdir()
    record = read_record(run_dir)
    assert (record.executor, record.status, record.exit_code) == ("docker", "succeeded", 0)
    assert json.loads((run_dir / "results.json").read_text())["global_step"] == 2
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "rewards/margins" in r] == [1, 2]  # DPO's own metrics
    log = (run_dir / "train.log").read_text()
    assert "reference: the base, adapter switched off" in log
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert not (run_dir / "adapter" / "ref").exists()
