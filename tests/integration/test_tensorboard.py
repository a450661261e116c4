"""training.report_to: tensorboard leaves event files in the run directory that TensorBoard's own
reader reads back, with the same losses as metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.core.rundir import RunDir
from tests.integration.trained import train

pytestmark = pytest.mark.integration


def test_event_files_hold_the_logged_metrics(tmp_path: Path, tiny_model: Path):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator",
        reason="the tensorboard package (in .[train]) is not installed",
    )
    run = RunDir(train(tmp_path, tiny_model, data={"val_size": 4},
                       training={"max_steps": 4, "logging_steps": 1, "eval_steps": 2, "report_to": "tensorboard"}))  # fmt: skip
    events = list(run.tensorboard.glob("events.out.tfevents.*"))
    assert events, f"no event file in {run.tensorboard}: {sorted(p.name for p in run.path.iterdir())}"

    acc = event_accumulator.EventAccumulator(str(run.tensorboard))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/loss", "train/learning_rate", "train/grad_norm", "eval/loss"} <= set(tags), tags
    logged = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    expected = {r["step"]: r["loss"] for r in logged if "loss" in r}
    read = {e.step: e.value for e in acc.Scalars("train/loss")}
    assert read.keys() == expected.keys()
    assert all(read[s] == pytest.approx(expected[s], rel=1e-6) for s in expected)
