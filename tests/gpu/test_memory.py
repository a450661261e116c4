"""Activation offloading on a GPU: less device memory, the same weights."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import write_job


def test_offloaded_activations_train_the_same_weights(tmp_path, tiny_model):
    import torch

    from runner.host.execute.submit import prepare
    from runner.train.stages import sft

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


def test_a_memory_cap_holds_on_the_gpu(tmp_path):
    """A Llama-3.2-1B-shaped LoRA job, 16 packed samples per step in passes of at most 8,192
    tokens, capped at the estimate for checkpointing 1 layer in 2: that plan is chosen, and the
    measured peak stays under the cap."""
    import torch
    from datasets import Dataset

    from bench.throughput import SHAPES, TARGETS, build_model, pad_tokenizer, workload
    from runner.core.jobspec.job import JobSpec
    from runner.train import dataset, memory
    from runner.train import trainer as loop
    from runner.train.methods import apply_method

    def spec(cap):
        return JobSpec.model_validate({
            "name": "cap", "model": {"path": "random"}, "resources": {"gpus": 1},
            "method": {"type": "lora", "r": 16, "target": TARGETS},
            "data": {"datasets": [{"path": "synthetic"}], "packing": True, "cutoff_len": 1024},
            "training": {"per_device_train_batch_size": 16, "micro_batch_tokens": 8192, "max_steps": 4,
                         "save_steps": 10**6, "logging_steps": 1000, "memory_cap_gib": cap},
        })  # fmt: skip

    model = apply_method(build_model("1b", "cuda", torch.bfloat16, 1024, "sdpa"), spec(None))
    profile = memory.measure(model, spec(None), 256, torch.device("cuda"))
    half = profile.estimate(8192, memory.Checkpointing(True, 2))
    assert half < profile.estimate(8192, memory.Checkpointing(False))
    capped = spec(half / memory.GIB)
    rows = Dataset.from_list(workload(16 * 5, 1024, SHAPES["1b"]["vocab_size"]))
    tokenizer = pad_tokenizer()
    trainer = loop.make_trainer(
        capped, tmp_path, model, tokenizer, rows, None, dataset.collator(capped, tokenizer)
    )
    assert trainer.args.activation_checkpointing_kwargs["every_n_layers"] == 2
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    peak = torch.cuda.max_memory_allocated()
    print(f"cap {half / memory.GIB:.2f} GiB, peak {peak / memory.GIB:.2f} GiB")
    assert peak <= half
