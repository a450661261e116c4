"""Runs the eval, export, chat and serve tests share: the tiny model trained once on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import runner_cli, write_job


def train(directory: Path, base: Path, **sections) -> Path:
    """A finished run of a small job; its run directory."""
    directory.mkdir(parents=True, exist_ok=True)
    spec = write_job(directory / "job.yaml", base, **sections)
    result = runner_cli("submit", str(spec), "--executor", "local")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_dir,) = (directory / "out" / "job").iterdir()
    return run_dir


@pytest.fixture(scope="session")
def lora_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """LoRA (with a trained lm_head beside it) that learned enough to change what the model says."""
    return train(
        tmp_path_factory.mktemp("lora-run"), tiny_model,
        method={"type": "lora", "r": 8, "modules_to_save": ["lm_head"]},
        data={"placeholders": {"name": "小R", "author": "Runner Team"}, "val_size": 4},
        training={"max_steps": 20, "learning_rate": 5e-3, "per_device_train_batch_size": 8,
                  "lr_scheduler_type": "constant", "seed": 0},
    )  # fmt: skip
