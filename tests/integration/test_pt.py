"""Stage pt: plain text, concatenated into cutoff_len blocks, every token trained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ROOT, runner_cli

pytestmark = pytest.mark.integration


def test_pretraining_on_plain_text(tmp_path: Path, tiny_model: Path):
    corpus = tmp_path / "corpus.jsonl"
    lines = [
        {"text": f"第{i}行：离线服务器上的继续预训练。Continued pretraining, line {i}."} for i in range(40)
    ]
    corpus.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n", encoding="utf-8")
    spec = tmp_path / "job.yaml"
    spec.write_text(
        f"name: pt\nstage: pt\nmodel: {{path: {tiny_model}}}\nmethod: {{type: lora}}\n"
        f"data: {{datasets: [{{path: {corpus}, format: text}}], cutoff_len: 32}}\n"
        f"training: {{max_steps: 3, logging_steps: 1}}\nresources: {{gpus: 0}}\noutput: {{dir: {tmp_path}/out}}\n"
    )
    result = runner_cli("submit", str(spec), "--executor", "local", cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:]
    (run_dir,) = (tmp_path / "out" / "pt").iterdir()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["global_step"] == 3 and results["train_samples"] > 1  # blocks, not records
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
