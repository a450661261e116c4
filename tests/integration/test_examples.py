"""Every example in jobs/ really trains: each runs on the tiny model on CPU for two steps.

Only what a CPU cannot do is changed (GPUs, DeepSpeed), ppo's answers are short and AdaLoRA's
budget schedule fits two steps; the method,
data, template and the rest of each example are used as shipped. ppo's reward model is the tiny
model itself, read as a sequence classifier (a whole reward model's directory). QLoRA must refuse a machine without CUDA in one message.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration
JOBS = sorted((ROOT / "jobs").glob("*.yaml"))


@pytest.mark.parametrize("job", JOBS, ids=lambda p: p.stem)
def test_example_trains_on_the_tiny_model(job: Path, tmp_path, tiny_model, monkeypatch):
    import torch

    from runner.core import stages
    from runner.core.errors import UnsupportedError
    from runner.core.jobspec.load import load_job, resolve
    from runner.core.rundir import RunDir

    monkeypatch.setenv("MODEL_DIR", str(tiny_model))
    monkeypatch.setenv("OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("RM", str(tiny_model))  # ppo's reward model: the tiny model with a new value head
    spec = resolve(load_job(job), ROOT)
    spec.training.max_steps, spec.training.save_steps = 2, 1000
    spec.resources.gpus, spec.distributed.deepspeed = 0, None
    spec.ppo.response_length = 8
    if spec.method.type == "adalora":  # its budget schedule fitted to the two steps
        spec.method.tinit = spec.method.tfinal = 0
    run_dir = RunDir.create(spec.output.dir, spec.name).path
    stage = importlib.import_module(stages.STAGES[spec.stage].module)
    if spec.method.type == "qlora" and not torch.cuda.is_available():
        with pytest.raises(UnsupportedError, match="needs a CUDA GPU; none is visible here"):
            stage.run(spec, run_dir)
        return
    metrics = stage.run(spec, run_dir)
    assert metrics["global_step"] == 2
    saved = run_dir / metrics["output"]
    assert (saved / ("adapter_config.json" if metrics["output"] == "adapter" else "config.json")).exists()
    results = json.loads((run_dir / "results.json").read_text())
    assert 0 < results["trainable_params"] <= results["total_params"]
