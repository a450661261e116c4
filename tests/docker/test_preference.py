"""The preference stages in the CPU image: dpo trains in the job's container (the image's lock
carries TRL), offline, with the adapter-disabled reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.core.rundir import read_record
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


def test_ppo_trains_in_the_image_with_an_rm_run_as_its_reward_model(
    cpu_image, tiny_model: Path, tmp_path: Path
):
    """The rm run trains on the host; ppo runs in the job's container, which sees that run (its
    adapter/ and spec.yaml) and the base it names only through read-only mounts."""
    pairs = {"datasets": [{"path": str(ROOT / "data" / "preference.json")}], "cutoff_len": 64}
    steps = {"max_steps": 2, "logging_steps": 1, "per_device_train_batch_size": 2}
    rm = write_job(tmp_path / "rm.yaml", tiny_model, name="rm", stage="rm", data=pairs, training=steps,
                   resources={"gpus": 0})  # fmt: skip
    result = runner_cli("submit", str(rm), "--executor", "local")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (rm_dir,) = (tmp_path / "out" / "rm").iterdir()
    spec = write_job(
        tmp_path / "ppo.yaml", tiny_model, name="dock-ppo", image="cpu", stage="ppo", data=pairs,
        ppo={"reward_model": str(rm_dir), "response_length": 8}, training=steps, resources={"gpus": 0},
    )  # fmt: skip
    result = runner_cli("submit", str(spec))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_dir,) = (tmp_path / "out" / "dock-ppo").iterdir()
    record = read_record(run_dir)
    assert (record.executor, record.status, record.exit_code) == ("docker", "succeeded", 0)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "objective/scores" in r] == [1, 2]  # PPO's own metrics
    assert f"reward model: {rm_dir / 'adapter'} on {tiny_model}" in (run_dir / "train.log").read_text()
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
