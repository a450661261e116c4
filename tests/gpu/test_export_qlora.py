"""A QLoRA run exported: the adapter merged into a bf16 copy of the unquantized base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import write_job


def test_a_qlora_run_exports_as_a_dequantized_bf16_model(tmp_path: Path, tiny_model: Path):
    pytest.importorskip("bitsandbytes")
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from runner.host.execute.submit import prepare
    from runner.train.stages import sft
    from runner.train.tools.export import export

    record, spec = prepare(write_job(tmp_path / "job.json", tiny_model, method={"type": "qlora", "bits": 4, "r": 8},
                                     resources={"gpus": 1},
                                     training={"max_steps": 20, "learning_rate": 5e-3, "bf16": True}))  # fmt: skip
    run_dir = Path(record.run_dir)
    sft.run(spec, run_dir)
    out = tmp_path / "exported"
    assert "merged" in export(run_dir, out, dtype="bf16")
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "bfloat16"

    ids = torch.tensor([[1, 5, 9, 13, 17]], device="cuda")
    exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16).cuda().eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).cuda().eval()
    with torch.no_grad():
        plain = base(input_ids=ids).logits.float()
        adapted = (
            PeftModel.from_pretrained(base, str(run_dir / "adapter")).eval()(input_ids=ids).logits.float()
        )
        merged = exported(input_ids=ids).logits.float()
    # bf16 weights: close to the adapter on the unquantized base, and far closer than the bare base.
    assert (merged - adapted).abs().max() < 0.25 * (adapted - plain).abs().max()
    torch.testing.assert_close(merged, adapted, atol=5e-2, rtol=5e-2)
