"""A classification job in the CPU image: stage cls trains the tiny BERT in the job's container,
offline, through `runner submit` (docker is the default executor), and writes its scores and label
set beside the run; no dependency beyond the image's lock (the scores are numpy)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.core.rundir import read_record
from tests.conftest import ROOT, runner_cli, write_job

pytestmark = pytest.mark.docker


def test_a_classifier_trains_in_the_image(cpu_image, tiny_encoder: Path, tmp_path: Path, docker):
    spec = write_job(
        tmp_path / "job.yaml", tiny_encoder, name="dock-cls", image="cpu", stage="cls",
        method={"type": "adalora", "init_r": 4, "target_r": 2, "tinit": 2, "tfinal": 2},
        data={"datasets": [{"path": str(ROOT / "tests" / "data" / "classification" / "sentiment_zh.jsonl")}],
              "cutoff_len": 64, "val_size": 16},
        training={"max_steps": 8, "logging_steps": 1, "per_device_train_batch_size": 8},
        resources={"gpus": 0},
    )  # fmt: skip
    result = runner_cli("submit", str(spec))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_dir,) = (tmp_path / "out" / "dock-cls").iterdir()
    record = read_record(run_dir)
    assert (record.executor, record.status, record.exit_code) == ("docker", "succeeded", 0)
    report = json.loads((run_dir / "eval_results.json").read_text())
    assert report["samples"] == 16 and report["labels"] == ["好评", "差评"] and "confusion_matrix" in report
    labels = json.loads((run_dir / "adapter" / "labels.json").read_text())
    assert labels == {"task": "sequence", "labels": ["好评", "差评"], "multi_label": False, "threshold": 0.5}
    config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "ADALORA" and config["task_type"] == "SEQ_CLS"
    assert "adalora: ranks 4 -> 2 on average" in (run_dir / "train.log").read_text()
