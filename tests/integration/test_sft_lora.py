"""Real LoRA SFT runs of the tiny model on CPU, through the real `runner` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.core.rundir import read_record
from tests.conftest import ROOT, runner_cli

pytestmark = pytest.mark.integration

JOB = """\
name: lora-test
model:
  path: {model}
method:
  type: lora
  r: 16
  target: all-linear
data:
  datasets:
    - path: {root}/data/identity.json
  placeholders: {{name: 小R, author: Runner Team}}
  cutoff_len: 128
training:
  learning_rate: 5.0e-3
  max_steps: {steps}
  per_device_train_batch_size: 8
  logging_steps: 5
  lr_scheduler_type: constant
  seed: 0
resources:
  gpus: 0
output:
  dir: {out}
"""


def submit(tmp_path: Path, tiny_model: Path, steps: int) -> Path:
    spec = tmp_path / "job.yaml"
    spec.write_text(
        JOB.format(model=tiny_model, root=ROOT, steps=steps, out=tmp_path / "out"), encoding="utf-8"
    )
    before = set((tmp_path / "out" / "lora-test").glob("*"))
    result = runner_cli("submit", str(spec), "--executor", "local")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_dir,) = set((tmp_path / "out" / "lora-test").glob("*")) - before
    return run_dir


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model: Path) -> Path:
    return submit(tmp_path_factory.mktemp("lora"), tiny_model, steps=40)


def test_run_directory_holds_everything(lora_run: Path):
    record = read_record(lora_run)
    assert (record.status, record.exit_code) == ("succeeded", 0)
    assert record.command[1:3] == ["-m", "runner.train"]
    for name in ("spec.yaml", "run.json", "train.log", "metrics.jsonl", "loss.png", "results.json",
                 "adapter/adapter_config.json", "adapter/adapter_model.safetensors"):  # fmt: skip
        assert (lora_run / name).is_file(), name
    assert (lora_run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((lora_run / "results.json").read_text())
    assert results["global_step"] == 40
    assert 0 < results["trainable_params"] < results["total_params"]


def test_loss_decreased(lora_run: Path):
    rows = [json.loads(line) for line in (lora_run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) >= 5  # one line per logging step
    assert losses[-1] < 0.85 * losses[0], losses


def test_adapter_reloads_lora_changed_base_did_not(lora_run: Path, tiny_model: Path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained(tiny_model, local_files_only=True).state_dict()
    base = AutoModelForCausalLM.from_pretrained(tiny_model, local_files_only=True)
    model = PeftModel.from_pretrained(base, lora_run / "adapter")
    lora_b = {k: v for k, v in model.state_dict().items() if "lora_B" in k}
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b.values())  # B starts at zero
    checked = 0
    for name, tensor in model.state_dict().items():
        if "lora_" in name:
            continue
        key = name.replace("base_model.model.", "").replace(".base_layer", "")
        assert torch.equal(tensor, original[key]), name
        checked += 1
    assert checked == len(original)
    ids = torch.tensor([[1, 2, 3]])
    out = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    assert 3 < out.shape[1] <= 7  # generated at least one token, at most the 4 asked for


def test_a_second_submit_never_overwrites(tmp_path: Path, tiny_model: Path, lora_run: Path):
    first = submit(tmp_path, tiny_model, steps=1)
    second = submit(tmp_path, tiny_model, steps=1)
    assert first != second and first.parent == second.parent
    assert read_record(first).status == read_record(second).status == "succeeded"
