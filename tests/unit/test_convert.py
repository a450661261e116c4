"""`runner convert`: LLaMA-Factory training YAMLs become runner job specs that validate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from runner.core.jobspec.convert import ConvertError, convert
from tests.conftest import DATA, runner_cli

LF = DATA / "llamafactory"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """The LLaMA-Factory examples with their data/ (identity, alpaca_en_demo), as in its repository."""
    for item in LF.iterdir():
        (shutil.copytree if item.is_dir() else shutil.copy)(item, tmp_path / item.name)
    return tmp_path


@pytest.fixture(scope="module")
def llama3_model(tiny_model: Path, tmp_path_factory) -> Path:
    """The tiny model with Llama 3's control tokens in its tokenizer, as a Llama 3 directory has:
    the examples use template llama3, which validate refuses on a tokenizer without them."""
    out = tmp_path_factory.mktemp("models") / "tiny-llama3"
    shutil.copytree(tiny_model, out)
    text = (out / "tokenizer.json").read_text(encoding="utf-8")
    tokenizer = json.loads(text)
    top = max(t["id"] for t in tokenizer["added_tokens"])
    for i, token in enumerate(["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], start=top + 1):
        tokenizer["added_tokens"].append({"id": i, "content": token, "single_word": False, "lstrip": False,
                                          "rstrip": False, "normalized": False, "special": True})  # fmt: skip
    (out / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
    return out


def converted(workdir: Path, name: str, tiny_model: Path) -> tuple[dict, str]:
    out = workdir / f"{name}.runner.yaml"
    result = runner_cli("convert", f"{name}.yaml", "-o", out.name, cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    check = runner_cli("validate", out.name, cwd=workdir, env={"MODEL_DIR": str(tiny_model)})
    assert check.returncode == 0, check.stderr
    return YAML(typ="safe").load(out.read_text(encoding="utf-8")), result.stderr


def test_lora_sft(workdir: Path, llama3_model: Path):
    spec, notes = converted(workdir, "llama3_lora_sft", llama3_model)
    assert spec["name"] == "sft"
    assert spec["model"] == {"path": "${MODEL_DIR}", "trust_remote_code": True, "template": "llama3"}
    assert spec["method"] == {"type": "lora"}  # rank 8 and target all are runner's defaults
    assert spec["data"] == {
        "datasets": [{"name": "identity", "max_samples": 1000}, {"name": "alpaca_en_demo", "max_samples": 1000}],
        "dataset_dir": "data", "cutoff_len": 2048, "preprocessing_workers": 16,
    }  # fmt: skip
    assert spec["training"] == {
        "dataloader_num_workers": 4, "per_device_train_batch_size": 1, "gradient_accumulation_steps": 8,
        "warmup_ratio": 0.1, "bf16": True, "per_device_eval_batch_size": 8, "gradient_checkpointing": True,
    }  # fmt: skip
    assert spec["output"] == {"dir": "saves/llama3-8b/lora"}
    text = (workdir / "llama3_lora_sft.runner.yaml").read_text(encoding="utf-8")
    assert "# model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct is a hub id" in text
    unmapped = {
        line.split(":")[1].strip() for line in notes.splitlines() if line.startswith("not carried over")
    }
    expected = {
        "overwrite_cache",
        "plot_loss",
        "overwrite_output_dir",
        "save_only_model",
        "report_to",
        "ddp_timeout",
    }
    assert unmapped == expected


def test_qlora(workdir: Path, llama3_model: Path):
    spec, notes = converted(workdir, "llama3_lora_sft_otfq", llama3_model)
    assert spec["method"] == {
        "type": "qlora", "r": 16, "alpha": 32, "dropout": 0.05, "loraplus_lr_ratio": 16.0, "rslora": True,
        "target": ["q_proj", "v_proj"], "modules_to_save": ["embed_tokens"],
    }  # fmt: skip
    assert spec["model"]["attn_implementation"] == "flash_attention_2"
    assert spec["data"]["val_size"] == 0.1
    assert spec["training"]["eval_steps"] == 500
    assert "eval_strategy" not in notes  # steps with eval_steps is what runner does


def test_full_deepspeed_z3(workdir: Path, llama3_model: Path):
    spec, notes = converted(workdir, "llama3_full_sft", llama3_model)
    assert spec["method"] == {"type": "full"}
    assert spec["distributed"] == {"deepspeed": {"zero": 3}}
    assert spec["training"]["learning_rate"] == 1e-5
    assert "ds_z3_config.json is not here; ZeRO stage and offload taken from its name" in notes


def test_validate_points_to_convert(workdir: Path):
    result = runner_cli("validate", "llama3_lora_sft.yaml", cwd=workdir)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "llama3_lora_sft.yaml:2:1: this is a LLaMA-Factory training config, not a runner job spec; "
        "convert it with: runner convert llama3_lora_sft.yaml",
        "1 problem; nothing was started.",
    ]


def test_not_a_llamafactory_config(tmp_path: Path):
    runner_spec = DATA / "good_spec.yaml"
    result = runner_cli("convert", str(runner_spec))
    assert result.returncode == 1
    assert (
        result.stderr
        == f"error: {runner_spec}: this is a runner job spec already; check it with `runner validate`\n"
    )
    other = tmp_path / "other.yaml"
    other.write_text("foo: 1\n", encoding="utf-8")
    result = runner_cli("convert", str(other))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "not a LLaMA-Factory training config" in result.stderr


def test_deepspeed_json_next_to_the_config(tmp_path: Path):
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {
        "stage": 3, "offload_optimizer": {"device": "cpu"}, "offload_param": {"device": "none"}}}))  # fmt: skip
    spec, notes = convert({"model_name_or_path": "/m", "deepspeed": "ds.json"}, "x.yaml", tmp_path)
    assert spec["distributed"]["deepspeed"] == {"zero": 3, "offload_optimizer": True}
    assert not notes or all(n.key != "deepspeed" for n in notes)


def test_pure_mapping():
    spec, notes = convert(
        {
            "model_name_or_path": "./models/qwen", "finetuning_type": "freeze", "freeze_trainable_layers": -4,
            "freeze_extra_modules": "embed_tokens,lm_head", "deepspeed": "ds_z3_offload_config.json",
            "template": "cpm", "dataset": "a", "dataset_dir": "/data", "stage": "pt",
            "enable_liger_kernel": True, "disable_gradient_checkpointing": True, "pissa_init": True,
        },
        "my job.yaml",
    )  # fmt: skip
    assert spec["name"] == "my-job"
    assert spec["stage"] == "pt"
    assert spec["model"] == {"path": "./models/qwen"}
    assert spec["method"] == {
        "type": "freeze",
        "trainable_layers": 4,
        "extra_modules": ["embed_tokens", "lm_head"],
    }
    assert spec["distributed"]["deepspeed"] == {"zero": 3, "offload_optimizer": True, "offload_params": True}
    assert spec["training"]["use_liger_kernel"] is True
    assert "gradient_checkpointing" not in spec["training"]
    by_key = {n.key: n for n in notes}
    assert by_key["template"].at == ("model", "template")
    assert by_key["pissa_init"].at is None
    with pytest.raises(ConvertError):
        convert(["not", "a", "mapping"])
