"""Every CPU-capable method trains the tiny model, saves, reloads and generates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ROOT, runner_cli

pytestmark = pytest.mark.integration

METHODS = {
    "full": "{type: full}",
    "freeze": "{type: freeze, trainable_layers: 1}",
    "lora-dora-rslora": "{type: lora, r: 4, dora: true, rslora: true, modules_to_save: [lm_head]}",
    "prefix-v2": "{type: prefix, num_virtual_tokens: 4, projection: true, encoder_hidden_size: 32}",
    "ptuning": "{type: ptuning, num_virtual_tokens: 4, encoder_hidden_size: 32}",
    "prompt": "{type: prompt, num_virtual_tokens: 4, init_text: 你是谁}",
    "ia3": "{type: ia3}",
}


@pytest.mark.parametrize("name", METHODS)
def test_method_trains_saves_reloads_generates(name: str, tmp_path: Path, tiny_model: Path):
    import torch
    from transformers import AutoModelForCausalLM

    spec = tmp_path / "job.yaml"
    spec.write_text(
        f"name: m\nmodel: {{path: {tiny_model}}}\nmethod: {METHODS[name]}\n"
        f"data: {{datasets: [{{path: {ROOT}/data/identity.json}}], cutoff_len: 64}}\n"
        f"training: {{max_steps: 3, learning_rate: 1.0e-2}}\nresources: {{gpus: 0}}\noutput: {{dir: {tmp_path}/out}}\n"
    )
    result = runner_cli("submit", str(spec), "--executor", "local")
    assert result.returncode == 0, result.stdout[-3000:]
    (run_dir,) = (tmp_path / "out" / "m").iterdir()
    results = json.loads((run_dir / "results.json").read_text())
    trainable, total = results["trainable_params"], results["total_params"]
    original = AutoModelForCausalLM.from_pretrained(tiny_model, local_files_only=True).state_dict()
    if name == "full":
        assert trainable == total == sum(t.numel() for t in original.values())
    else:
        assert 0 < trainable < total
    if name in ("full", "freeze"):
        saved = AutoModelForCausalLM.from_pretrained(run_dir / "model", local_files_only=True).state_dict()
        changed = {k for k in original if not torch.equal(original[k], saved[k])}
        if name == "freeze":  # only the last of the two decoder layers trains
            assert changed and all(k.startswith("model.layers.1.") for k in changed), changed
            assert trainable == sum(v.numel() for k, v in original.items() if k.startswith("model.layers.1."))
        else:
            assert "model.layers.0.self_attn.q_proj.weight" in changed
    from runner.train.tools.inference import Settings, generate, load

    (answer,) = generate(
        load(run_dir), [[{"role": "user", "content": "你是谁？"}]], Settings(max_new_tokens=4)
    )
    assert isinstance(answer, str)


@pytest.mark.parametrize("method", [
    {"type": "lora", "r": 4, "modules_to_save": ["lm_head"]},
    {"type": "ptuning", "num_virtual_tokens": 4, "encoder_hidden_size": 32},
])  # fmt: skip
def test_fp16_mixed_precision_steps_with_trained_half_weights(method: dict, tiny_model: Path):
    """Under fp16 the frozen base loads in half precision; a module trained in full beside the
    adapter (modules_to_save) must not stay fp16, or the grad scaler refuses the first step
    ("Attempting to unscale FP16 gradients"). The same scaler, on the CPU."""
    import torch

    from runner.core.jobspec.job import JobSpec
    from runner.train.methods import apply_method
    from runner.train.model import load_tokenizer

    spec = JobSpec.model_validate({
        "name": "fp16", "model": {"path": str(tiny_model)}, "method": method,
        "data": {"datasets": [{"path": str(ROOT / "data" / "identity.json")}]}, "training": {"fp16": True},
    })  # fmt: skip
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float16, local_files_only=True)
    model = apply_method(base, spec)
    trained = [(n, p.dtype) for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all(dtype == torch.float32 for _, dtype in trained), trained
    assert any(p.dtype == torch.float16 for p in model.parameters() if not p.requires_grad)
    ids = load_tokenizer(str(tiny_model))("你是谁？我是小R。", return_tensors="pt")["input_ids"]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    with torch.autocast("cpu", dtype=torch.float16):
        loss = model(input_ids=ids, labels=ids).loss
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)  # raised for fp16 gradients
    scaler.step(optimizer)
    scaler.update()
    assert torch.isfinite(loss)
