"""Two processes on CPU (gloo) through the real `runner submit --executor local`: plain DDP and
DeepSpeed ZeRO-1/2/3 each end with the weights a one-process run of the same global batch
reaches; ZeRO-3's adapter reloads with plain transformers + PEFT and generates; ZeRO-3 loads
the model partitioned, which per-rank memory shows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.core.rundir import read_record
from tests.conftest import runner_cli, write_job

pytestmark = pytest.mark.integration
STEPS = 4
# Same samples per step, summed in another order across processes: float32 rounding only.
# Plain SGD, so a weight moves in proportion to its gradient (Adam's first steps turn rounding
# noise in near-zero gradients into whole learning-rate steps); a lost or doubled sample
# would change the step's gradient by a quarter.
TOL = 1e-5


def train(tmp_path: Path, model: Path, name: str, procs: int, deepspeed: dict | None,
          executor: str = "local", out: Path | None = None, **sections) -> Path:  # fmt: skip
    """Submit a small LoRA job through the real CLI and return its run directory."""
    out = out or tmp_path / "out"
    sections["output"] = {"dir": str(out)}
    sections.setdefault("method", {"type": "lora", "r": 8, "target": ["q_proj", "v_proj", "down_proj"]})
    spec = write_job(
        tmp_path / f"{name}.yaml", model, name=name,
        training={"max_steps": STEPS, "learning_rate": 0.5, "optim": "sgd", "max_grad_norm": 1e9,
                  "per_device_train_batch_size": 4 // procs, "lr_scheduler_type": "constant",
                  "save_steps": 1000},
        resources={"gpus": 0, "procs_per_node": procs},
        distributed={"deepspeed": deepspeed}, **sections,
    )  # fmt: skip
    result = runner_cli("submit", str(spec), "--executor", executor)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    (run_dir,) = (out / name).iterdir()
    return run_dir


def adapter(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_model: Path) -> Path:
    return train(tmp_path_factory.mktemp("single"), tiny_model, "single", 1, None)


@pytest.mark.parametrize("zero", [None, 1, 2, 3], ids=["ddp", "zero1", "zero2", "zero3"])
def test_two_processes_reach_the_weights_of_one(zero, one_process: Path, tmp_path: Path, tiny_model: Path):
    run_dir = train(tmp_path, tiny_model, "multi", 2, None if zero is None else {"zero": zero})
    record = read_record(run_dir)
    assert record.command[1:4] == ["-m", "torch.distributed.run", "--nproc-per-node=2"]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["world_size"] == 2 and results["global_step"] == STEPS
    if zero is not None:
        assert json.loads((run_dir / "deepspeed.json").read_text())["zero_optimization"]["stage"] == zero
        assert "DeepSpeed" in (run_dir / "train.log").read_text()
    ref, got = adapter(one_process), adapter(run_dir)
    assert ref.keys() == got.keys()
    # LoRA's B starts at zero: what it holds is what training moved, far more than the tolerance.
    moved = max(ref[k].abs().max().item() for k in ref if "lora_B" in k)
    assert moved > 100 * TOL
    worst = max((ref[k] - got[k]).abs().max().item() for k in ref)
    print(
        f"{'ddp' if zero is None else f'zero{zero}'}: max |w_2proc - w_1proc| = {worst:.2e} (moved {moved:.2e})"
    )
    assert worst < TOL


def test_zero3_adapter_reloads_with_plain_peft_and_generates(tmp_path: Path, tiny_model: Path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = train(tmp_path, tiny_model, "z3", 2, {"zero": 3})
    log = (run_dir / "train.log").read_text()
    assert "ZeRO-3: loading the model partitioned over 2 process(es)" in log
    base = AutoModelForCausalLM.from_pretrained(tiny_model, local_files_only=True)
    model = PeftModel.from_pretrained(base, run_dir / "adapter")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "adapter", local_files_only=True)
    ids = tokenizer("你是谁？", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids.shape[1]
    mode = (run_dir / "adapter" / "adapter_model.safetensors").stat().st_mode & 0o777
    assert mode & 0o044 == 0o044, f"saved files must be readable by others (umask 022), got {mode:04o}"


def test_zero3_full_fine_tuning_saves_a_whole_model(tmp_path: Path, tiny_model: Path):
    """Partitioned over two ranks while training, gathered whole on save: plain transformers
    loads it with every weight at its full shape and generates."""
    import torch
    from transformers import AutoModelForCausalLM

    run_dir = train(tmp_path, tiny_model, "z3full", 2, {"zero": 3}, method={"type": "full"})
    model = AutoModelForCausalLM.from_pretrained(run_dir / "model", local_files_only=True)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, local_files_only=True)
    trained, original = model.state_dict(), base.state_dict()
    assert {k: v.shape for k, v in trained.items()} == {k: v.shape for k, v in original.items()}
    assert any(not torch.equal(trained[k], original[k]) for k in original)  # and it trained
    out = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3, do_sample=False)
    assert out.shape[1] == 6
