"""A LLaMA-Factory LoRA SFT config, converted by `runner convert`, trains on the tiny model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from runner.core.rundir import read_record
from tests.conftest import DATA, runner_cli

pytestmark = pytest.mark.integration


def test_converted_lora_sft_trains(tmp_path: Path, tiny_model: Path):
    shutil.copy(DATA / "llamafactory" / "llama3_lora_sft.yaml", tmp_path)
    shutil.copytree(DATA / "llamafactory" / "data", tmp_path / "data")
    result = runner_cli("convert", "llama3_lora_sft.yaml", "-o", "job.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    yaml = YAML()  # round trip: the converted file's comments stay
    spec = yaml.load((tmp_path / "job.yaml").read_text(encoding="utf-8"))
    # Two short steps on the CPU: the only edits to the converted spec.
    spec["training"].update(max_steps=2, gradient_accumulation_steps=2, bf16=False)
    spec["data"]["cutoff_len"] = 128
    spec["resources"] = {"gpus": 0}
    # The tiny model's tokenizer has none of llama3's control tokens: validate says to add them.
    spec["model"]["add_special_tokens"] = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    with (tmp_path / "job.yaml").open("w", encoding="utf-8") as f:
        yaml.dump(spec, f)
    result = runner_cli("submit", "job.yaml", "--executor", "local", cwd=tmp_path,
                        env={"MODEL_DIR": str(tiny_model)})  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_dir,) = (tmp_path / "saves" / "llama3-8b" / "lora" / "sft").iterdir()
    assert (read_record(run_dir).status, read_record(run_dir).exit_code) == ("succeeded", 0)
    assert json.loads((run_dir / "results.json").read_text())["global_step"] == 2
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    # The new tokens' rows trained: the embeddings are saved beside the adapter, and chat reads them.
    from safetensors import safe_open

    with safe_open(run_dir / "adapter" / "adapter_model.safetensors", "pt") as f:
        saved = [k for k in f.keys() if "embed_tokens" in k]  # noqa: SIM118 (safe_open is no dict)
        assert saved and f.get_tensor(saved[0]).shape[0] == len(json.loads(
            (run_dir / "adapter" / "tokenizer.json").read_text())["model"]["vocab"]) + 3  # fmt: skip
    result = runner_cli("chat", str(run_dir), "--executor", "local", "-m", "hi", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "assistant>" in result.stdout
