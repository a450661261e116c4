"""runner export: an adapter merged into its base, loaded back by plain transformers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import runner_cli
from tests.integration.trained import lora_run, train  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration
PROMPT = "Human: 你是谁？\nAssistant: "


def logits(model, tokenizer):
    import torch

    ids = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


def test_merged_export_reloads_with_the_same_logits(lora_run: Path, tmp_path: Path):  # noqa: F811
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from runner.core.jobspec.load import load_job

    out = tmp_path / "exported"
    result = runner_cli("export", str(lora_run), "--out", str(out), "--executor", "local")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "merged" in result.stdout
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    assert not list(tmp_path.glob(".exported.export-*"))  # the work directory is gone
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template  # the template travels with the model
    assert GenerationConfig.from_pretrained(out).eos_token_id  # stops where a turn ends

    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    base_dir = load_job(lora_run / "spec.yaml", files=False).model.path
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    plain = logits(base, tokenizer)
    adapted = logits(PeftModel.from_pretrained(base, str(lora_run / "adapter")).eval(), tokenizer)
    merged = logits(exported, tokenizer)
    assert (adapted - plain).abs().max() > 1e-2  # the adapter matters, so the comparison can fail
    torch.testing.assert_close(merged, adapted, atol=1e-4, rtol=1e-4)

    chat = runner_cli("chat", str(out), "-m", "你是谁？")  # the exported directory, as it is
    assert chat.returncode == 0, chat.stderr[-3000:]
    assert "user> 你是谁？\nassistant> " in chat.stdout


def test_export_refuses_a_non_empty_directory_and_force_replaces_it(lora_run: Path, tmp_path: Path):  # noqa: F811
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = runner_cli("export", str(lora_run), "--out", str(out), "--executor", "local")
    assert result.returncode == 2
    assert "is not empty" in result.stderr and "--force" in result.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    result = runner_cli(
        "export", str(lora_run), "--out", str(out), "--force", "--dtype", "bf16", "--executor", "local"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()
    from safetensors import safe_open

    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.bfloat16"}  # noqa: SIM118


def test_a_run_without_a_result_is_refused_by_export_eval_serve_and_chat(lora_run: Path, tmp_path: Path):  # noqa: F811
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    for name in ("run.json", "spec.yaml"):
        shutil.copy(lora_run / name, unfinished / name)
    for command in (["export", "--out", str(tmp_path / "x")], ["eval"], ["serve"], ["chat", "-m", "hi"]):
        result = runner_cli(command[0], str(unfinished), *command[1:], "--executor", "local")
        assert result.returncode != 0, command
        assert "has no result" in result.stderr and "Traceback" not in result.stderr, (command, result.stderr)
    assert not (tmp_path / "x").exists()


def test_a_quantized_base_is_refused_before_anything_is_written(tiny_model: Path, tmp_path: Path):
    from runner.core.errors import RunnerError
    from runner.train.tools.export import export

    base = tmp_path / "base-4bit"
    base.mkdir()
    config = json.loads((tiny_model / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (base / "config.json").write_text(json.dumps(config))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "base_model_name_or_path": str(base)})
    )
    with pytest.raises(RunnerError, match="stored quantized .bitsandbytes 4-bit.*broken model"):
        export(adapter, tmp_path / "out")
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "adapter",
        "base-4bit",
    ]


def test_prefix_adapters_are_exported_unmerged_with_how_to_load_them(tmp_path: Path, tiny_model: Path):
    from runner.train.tools.inference import Settings, generate, load

    run = train(tmp_path / "prefix", tiny_model, method={"type": "prefix", "num_virtual_tokens": 4},
                training={"max_steps": 2})  # fmt: skip
    out = tmp_path / "exported"
    result = runner_cli("export", str(run), "--out", str(out), "--executor", "local")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "cannot be merged" in result.stdout
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    assert "PeftModel.from_pretrained" in (out / "README.md").read_text()
    loaded = load(out)  # the exported adapter loads on its own: its base is found from its config
    assert type(loaded.model).__name__.startswith("Peft")
    assert len(generate(loaded, [[{"role": "user", "content": "hi"}]], Settings(max_new_tokens=3))) == 1


def test_a_fully_trained_model_exports_with_its_tokenizer_and_template(tmp_path: Path, tiny_model: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = train(tmp_path / "full", tiny_model, method={"type": "full"}, model={"template": "default"},
                training={"max_steps": 2, "learning_rate": 1e-2})  # fmt: skip
    out = tmp_path / "exported"
    result = runner_cli("export", str(run), "--out", str(out), "--executor", "local")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert "Human: " in tokenizer.chat_template  # the job's template, not the base's own (chatml)
    eos = AutoModelForCausalLM.from_pretrained(out).generation_config.eos_token_id
    assert eos == [tokenizer.eos_token_id]
    torch.testing.assert_close(
        logits(AutoModelForCausalLM.from_pretrained(out).eval(), tokenizer),
        logits(AutoModelForCausalLM.from_pretrained(run / "model").eval(), tokenizer),
    )
