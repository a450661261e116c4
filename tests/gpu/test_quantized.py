"""QLoRA (4-bit NF4 with double quantization, and 8-bit) and precision chosen by the device."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import write_job


def _run(tmp_path: Path, tiny_model: Path, method: dict, **sections):
    from runner.host.execute.submit import prepare
    from runner.train.stages import sft

    record, spec = prepare(write_job(tmp_path / "job.json", tiny_model, method=method,
                                     resources={"gpus": 1}, **sections))  # fmt: skip
    run_dir = Path(record.run_dir)
    return run_dir, sft.run(spec, run_dir)


@pytest.mark.parametrize("bits", [4, 8])
def test_qlora_trains_a_quantized_base_and_reloads(bits, tmp_path, tiny_model):
    """bf16 (the default on these GPUs): embeddings, head and norms stay bf16, not fp32."""
    pytest.importorskip("bitsandbytes")
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    method = {"type": "qlora", "bits": bits, "r": 8}
    run_dir, metrics = _run(tmp_path, tiny_model, method,
                            training={"max_steps": 20, "learning_rate": 5e-3, "logging_steps": 1})  # fmt: skip
    assert metrics["global_step"] == 20 and 0 < metrics["trainable_params"] < metrics["total_params"]
    losses = [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]  # fmt: skip
    assert losses[-1] < 0.9 * losses[0]
    quant = (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)
             if bits == 4 else BitsAndBytesConfig(load_in_8bit=True))  # fmt: skip
    base = AutoModelForCausalLM.from_pretrained(tiny_model, quantization_config=quant, device_map={"": 0})
    kind = "Linear4bit" if bits == 4 else "Linear8bitLt"
    assert any(type(m).__name__ == kind for m in base.modules())
    model = PeftModel.from_pretrained(base, run_dir / "adapter")
    ids = torch.tensor([[1, 2, 3]], device="cuda")
    assert model.generate(input_ids=ids, max_new_tokens=4).shape[1] > 3


def test_precision_is_bf16_where_the_gpu_has_it(tmp_path, tiny_model, caplog):
    import torch

    with caplog.at_level("INFO"):
        _run(tmp_path, tiny_model, {"type": "lora", "r": 4})
    expected = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    assert f"precision: {expected}" in caplog.text


@pytest.mark.parametrize("upcast", [False, True])
def test_qlora_keeps_unquantized_weights_in_bf16_unless_asked(upcast, tmp_path, tiny_model):
    pytest.importorskip("bitsandbytes")
    import torch

    from runner.host.execute.submit import prepare
    from runner.train.methods import apply_method
    from runner.train.model import load_model

    _, spec = prepare(write_job(tmp_path / "job.json", tiny_model, resources={"gpus": 1}, training={"bf16": True},
                                method={"type": "qlora", "r": 8, "upcast_unquantized": upcast}))  # fmt: skip
    model = apply_method(load_model(spec), spec)
    embed = model.get_input_embeddings().weight
    assert embed.dtype == (torch.float32 if upcast else torch.bfloat16)
