"""Activation offloading on a GPU: less device memory, the same weights."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import write_job


def test_offloaded_activations_train_the_same_weights(tmp_path, tiny_model):
    import torch

    from runner.execute.submit import prepare
    from runner.train import sft

    weights = {}
    for name, extra in {"resident": {}, "offloaded": {"offload_activations": True}}.items():
        job = write_job(tmp_path / f"{name}.json", tiny_model, name=name, method={"type": "full"},
                        resources={"gpus": 1},
                        training={"max_steps": 3, "gradient_checkpointing": True, "bf16": False, "fp16": False,
                                  **extra})  # fmt: skip
        record, spec = prepare(job)
        sft.run(spec, Path(record.run_dir))
        from safetensors.torch import load_file

        weights[name] = load_file(Path(record.run_dir) / "model" / "model.safetensors")
    for key, value in weights["resident"].items():
        assert torch.allclose(value, weights["offloaded"][key], atol=1e-5), key
