"""The preference stages really train, through the real CLI, on the tiny model on CPU.

dpo: reward margins grow and the trained policy puts more log-probability on chosen answers
relative to rejected ones than the base does; only the adapter changes. rm: the reward model
ranks its training pairs right. kto: trains, saves and reloads. And the peak memory of LoRA dpo
with the adapter-disabled reference against a full frozen copy, both measured.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from tests.conftest import ROOT, runner_cli, write_job

pytestmark = pytest.mark.integration
PAIRS = ROOT / "data" / "preference.json"


def _submit(tmp_path: Path, model: Path, name: str, **sections) -> Path:
    job = write_job(tmp_path / f"{name}.json", model, name=name, **sections)
    result = runner_cli("submit", str(job), "--executor", "local")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_dir,) = (tmp_path / "out" / name).glob("2*")
    return run_dir


def _metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [m for m in map(json.loads, lines) if "loss" in m]


def _assert_committed(run_dir: Path, steps: list[int]) -> None:
    """Every checkpoint of the run was committed as sft's are: a COMPLETE marker listing its
    files, nothing left in checkpoints/.partial (runner/train/checkpoint.py)."""
    found = sorted((run_dir / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert [int(p.name.split("-")[1]) for p in found] == steps
    for path in found:
        marker = json.loads((path / "COMPLETE").read_text())
        assert marker["step"] == int(path.name.split("-")[1])
        assert set(marker["files"]) == {str(f.relative_to(path)) for f in path.rglob("*") if f.is_file()} - {
            "COMPLETE"
        }
        assert not (path / "ref").exists()  # the reference's copy of a continued adapter is never saved
    assert not list((run_dir / "checkpoints" / ".partial").glob("checkpoint-*"))


def _weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _answer_logps(model, tokenizer, pairs: list[dict]) -> list[tuple[float, float]]:
    """Summed log-probabilities of (chosen, rejected) of each pair, tokenized as training does."""
    import torch

    from runner.core.data.preference import encode_pair

    out = []
    for pair in pairs:
        ids = encode_pair(tokenizer, pair, 64)
        scores = []
        for key in ("chosen_ids", "rejected_ids"):
            seq = torch.tensor([ids["prompt_ids"] + ids[key]])
            with torch.no_grad():
                logp = model(seq).logits[0, :-1].log_softmax(-1)
            targets = seq[0, 1:]
            start = len(ids["prompt_ids"]) - 1
            scores.append(logp[start:].gather(1, targets[start:, None]).sum().item())
        out.append(tuple(scores))
    return out


def _pairs() -> list[dict]:
    records = json.loads(PAIRS.read_text())
    return [{"prompt": [{"role": "user", "content": r["instruction"]}], "chosen": r["chosen"],
             "rejected": r["rejected"]} for r in records]  # fmt: skip


def _assert_chosen_rose_and_only_the_adapter_moved(tiny_model: Path, run_dir: Path, loss: str) -> None:
    """On every training pair, chosen minus rejected log-prob rose from the base to the trained
    adapter; the adapter changed (B starts at zero) and no base weight did."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run_dir / "adapter")
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    before, pairs = _weights(base), _pairs()
    gap_before = [c - r for c, r in _answer_logps(base, tokenizer, pairs)]
    tuned = PeftModel.from_pretrained(base, run_dir / "adapter")
    gap_after = [c - r for c, r in _answer_logps(tuned, tokenizer, pairs)]
    rose = sum(a > b for a, b in zip(gap_after, gap_before, strict=True))
    print(f"{loss}: chosen - rejected log-prob, mean: base {sum(gap_before) / len(pairs):.2f} -> "
          f"{sum(gap_after) / len(pairs):.2f}; rose on {rose}/{len(pairs)} pairs")  # fmt: skip
    assert rose == len(pairs)
    lora_b = {k: v for k, v in tuned.state_dict().items() if "lora_B" in k}
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b.values())
    merged = tuned.get_base_model().state_dict()
    for name, weight in before.items():
        key = name.replace(".weight", ".base_layer.weight")
        assert torch.equal(merged.get(key, merged.get(name)), weight), name


def test_dpo_lora_raises_chosen_over_rejected(tmp_path, tiny_model):
    run_dir = _submit(
        tmp_path, tiny_model, "dpo", stage="dpo",
        data={"datasets": [{"path": str(PAIRS)}], "cutoff_len": 64},
        training={"max_steps": 12, "logging_steps": 1, "per_device_train_batch_size": 4,
                  "learning_rate": 2e-3, "lr_scheduler_type": "constant"},
    )  # fmt: skip
    steps = _metrics(run_dir)
    margins = [m["rewards/margins"] for m in steps]
    print(f"dpo reward margins by step: {[round(x, 3) for x in margins]}")
    assert margins[0] == pytest.approx(0, abs=1e-6)  # the policy starts as its reference
    assert sum(margins[-3:]) / 3 > 0.5 and margins[-1] > margins[1]
    assert steps[-1]["rewards/accuracies"] == 1

    _assert_chosen_rose_and_only_the_adapter_moved(tiny_model, run_dir, "dpo")
    assert not (run_dir / "adapter" / "ref").exists()


def test_rm_ranks_its_training_pairs(tmp_path, tiny_model):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run_dir = _submit(
        tmp_path, tiny_model, "rm", stage="rm",
        data={"datasets": [{"path": str(PAIRS)}], "cutoff_len": 64, "val_size": 4},
        training={"max_steps": 15, "logging_steps": 1, "per_device_train_batch_size": 4,
                  "learning_rate": 5e-3, "eval_steps": 100},
    )  # fmt: skip
    results = json.loads((run_dir / "results.json").read_text())
    assert "eval_accuracy" in results  # the pairwise accuracy on the eval split

    tokenizer = AutoTokenizer.from_pretrained(run_dir / "adapter")
    base = AutoModelForSequenceClassification.from_pretrained(
        tiny_model, num_labels=1, pad_token_id=tokenizer.pad_token_id
    )
    before = _weights(base)
    rm = PeftModel.from_pretrained(base, run_dir / "adapter").eval()
    from runner.core.data.preference import encode_pair

    right = 0
    for pair in _pairs():
        ids = encode_pair(tokenizer, pair, 64)
        with torch.no_grad():
            c, r = (
                rm(torch.tensor([ids["prompt_ids"] + ids[k]])).logits.item()
                for k in ("chosen_ids", "rejected_ids")
            )
        right += c > r
    accuracy = right / len(_pairs())
    print(
        f"rm pairwise accuracy on its training pairs: {accuracy:.3f} (eval split: {results['eval_accuracy']:.3f})"
    )
    assert accuracy > 0.9
    state = rm.state_dict()
    head = [k for k in state if "score" in k and "modules_to_save" in k]
    assert head and not torch.equal(state[head[0]], before["score.weight"])  # the value head trained
    assert all(state[k].abs().sum() > 0 for k in state if "lora_B" in k)  # and the adapter
    embed = "base_model.model.model.embed_tokens.weight"
    assert torch.equal(state[embed], before["model.embed_tokens.weight"])  # the base did not


def test_kto_trains_and_saves_committed_checkpoints(tmp_path, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run_dir = _submit(
        tmp_path, tiny_model, "kto", stage="kto",
        data={"datasets": [{"path": str(ROOT / "data" / "kto.json"), "format": "sharegpt"}], "cutoff_len": 64},
        training={"max_steps": 4, "logging_steps": 1, "per_device_train_batch_size": 4, "learning_rate": 2e-3,
                  "save_steps": 2},
    )  # fmt: skip
    _assert_committed(run_dir, [2, 4])
    steps = _metrics(run_dir)
    assert len(steps) == 4 and steps[-1]["loss"] < steps[0]["loss"]
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    tuned = PeftModel.from_pretrained(base, run_dir / "adapter")
    lora_b = [v for k, v in tuned.state_dict().items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)
    assert not any(".ref." in k for k in tuned.state_dict())


def test_dpo_reference_memory(tmp_path_factory, tmp_path):
    """LoRA dpo whose reference is the adapter switched off, against the same with a frozen copy
    of the model: the peak resident memory of each training process, measured."""
    from runner.train.tools.tiny import build_tiny_model

    model_dir = tmp_path_factory.mktemp("models") / "wider"
    build_tiny_model(model_dir, hidden_size=512, num_layers=8, intermediate_size=1536)
    weights = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
    peaks = {}
    for reference in ("auto", "copy"):
        (tmp_path / reference).mkdir()
        run_dir = _submit(
            tmp_path / reference, model_dir, "dpo", stage="dpo", preference={"reference": reference},
            data={"datasets": [{"path": str(PAIRS)}], "cutoff_len": 64},
            training={"max_steps": 2, "logging_steps": 1, "per_device_train_batch_size": 2},
        )  # fmt: skip
        peaks[reference] = json.loads((run_dir / "results.json").read_text())["peak_rss_mib"]
    print(f"LoRA dpo peak RSS: adapter-disabled reference {peaks['auto']:.0f} MiB, frozen full copy "
          f"{peaks['copy']:.0f} MiB (weights {weights / 2**20:.0f} MiB)")  # fmt: skip
    assert peaks["copy"] - peaks["auto"] > 0.6 * weights / 2**20


def test_pairs_without_chosen_are_refused_before_training(tmp_path, tiny_model):
    bad = tmp_path / "pairs.json"
    bad.write_text('[\n {"instruction": "Who are you?", "output": "Runner."}\n]\n')
    job = write_job(tmp_path / "job.json", tiny_model, stage="dpo", data={"datasets": [{"path": str(bad)}]})
    result = runner_cli("submit", str(job), "--executor", "local")
    assert result.returncode == 2
    assert "pairs.json:2: record 1: stage dpo needs preference pairs: columns 'chosen'" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "out").exists()  # nothing started


@pytest.mark.parametrize("loss", ["orpo", "simpo"])
def test_reference_free_losses_raise_chosen_over_rejected(loss, tmp_path, tiny_model):
    """orpo and simpo (TRL's experimental ORPO and CPO trainers) on the same pairs and glue: no
    reference model, the margins grow, chosen log-probs rise relative to rejected, and only the
    adapter changes; their checkpoints are committed as sft's are."""

    run_dir = _submit(
        tmp_path, tiny_model, loss, stage="dpo", preference={"loss": loss},
        data={"datasets": [{"path": str(PAIRS)}], "cutoff_len": 64},
        training={"max_steps": 8, "logging_steps": 1, "per_device_train_batch_size": 4,
                  "learning_rate": 2e-3, "lr_scheduler_type": "constant", "save_steps": 4},
    )  # fmt: skip
    _assert_committed(run_dir, [4, 8])
    log = (run_dir / "train.log").read_text()
    assert "reference:" not in log  # none is built or kept
    margins = [m["rewards/margins"] for m in _metrics(run_dir)]
    print(f"{loss} reward margins by step: {[round(x, 3) for x in margins]}")
    assert len(margins) == 8 and sum(margins[-3:]) / 3 > sum(margins[:3]) / 3 and margins[-1] > 0

    _assert_chosen_rose_and_only_the_adapter_moved(tiny_model, run_dir, loss)


@pytest.mark.slow  # ~100 s on two cores; DeepSpeed itself is covered by sft in every run
def test_dpo_under_zero2_on_two_processes_reaches_the_weights_of_one(tmp_path, tiny_model):
    """dpo under DeepSpeed ZeRO-2, two CPU processes (gloo), ends with the adapter a one-process run
    of the same global batch reaches (plain SGD: float32 rounding only, see test_multicard.py)."""
    from tests.integration.test_multicard import TOL, adapter, train

    data = {"datasets": [{"path": str(PAIRS)}], "cutoff_len": 64}
    (tmp_path / "one").mkdir(), (tmp_path / "two").mkdir()
    one = train(tmp_path / "one", tiny_model, "dpo1", 1, None, stage="dpo", data=data)
    two = train(tmp_path / "two", tiny_model, "dpo2", 2, {"zero": 2}, stage="dpo", data=data)
    results = json.loads((two / "results.json").read_text())
    assert results["world_size"] == 2 and results["global_step"] == 4
    assert json.loads((two / "deepspeed.json").read_text())["zero_optimization"]["stage"] == 2
    assert "DeepSpeed" in (two / "train.log").read_text()
    assert [m["step"] for m in _metrics(two) if "rewards/margins" in m]
    ref, got = adapter(one), adapter(two)
    assert ref.keys() == got.keys()
    moved = max(ref[k].abs().max().item() for k in ref if "lora_B" in k)
    worst = max((ref[k] - got[k]).abs().max().item() for k in ref)
    print(f"dpo zero2: max |w_2proc - w_1proc| = {worst:.2e} (moved {moved:.2e})")
    assert moved > 100 * TOL and worst < TOL


def test_ppo_moves_the_policy_against_a_frozen_reward_model(tmp_path, tiny_model):
    """ppo on an rm run: the policy's adapter moves, the base and the reward model do not, and the
    saved adapter reloads on the base and generates."""
    import hashlib

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rm = _submit(
        tmp_path, tiny_model, "rm", stage="rm", data={"datasets": [{"path": str(PAIRS)}], "cutoff_len": 64},
        training={"max_steps": 2, "logging_steps": 1, "per_device_train_batch_size": 4, "learning_rate": 5e-3},
    )  # fmt: skip

    def digests(d: Path) -> dict:
        return {
            f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(d.iterdir()) if f.is_file()
        }

    rm_files = digests(rm / "adapter")
    run_dir = _submit(
        tmp_path, tiny_model, "ppo", stage="ppo", ppo={"reward_model": str(rm), "response_length": 8, "ppo_epochs": 2},
        data={"datasets": [{"path": str(PAIRS)}], "cutoff_len": 64},
        training={"max_steps": 2, "logging_steps": 1, "per_device_train_batch_size": 4, "learning_rate": 5e-3},
    )  # fmt: skip
    resolved = YAML(typ="safe").load((run_dir / "spec.yaml").read_text())
    assert resolved["ppo"]["reward_model"] == str(rm / "adapter")
    steps = _metrics(run_dir)
    print("ppo scores by step:", [round(m["objective/scores"], 4) for m in steps])
    assert len(steps) == 2 and all("objective/kl" in m for m in steps)
    assert json.loads((run_dir / "results.json").read_text())["global_step"] == 2
    assert digests(rm / "adapter") == rm_files  # the reward model's files are as the rm run saved them
    assert not (run_dir / "adapter" / "ref").exists() and not list(run_dir.glob("checkpoints/checkpoint-*"))

    tokenizer = AutoTokenizer.from_pretrained(run_dir / "adapter")
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    before = _weights(base)
    tuned = PeftModel.from_pretrained(base, run_dir / "adapter").eval()
    lora_b = {k: v for k, v in tuned.state_dict().items() if "lora_B" in k}
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b.values())  # the adapter trained (B starts at 0)
    merged = tuned.get_base_model().state_dict()
    for name, weight in before.items():
        key = name.replace(".weight", ".base_layer.weight")
        assert torch.equal(merged.get(key, merged.get(name)), weight), name
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Who are you?"}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)  # fmt: skip
    out = tuned.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]


def test_ppo_reward_model_is_frozen(tmp_path, tiny_model):
    """The reward model ppo loads from an rm run: its adapter and value head merged, nothing trainable."""
    from runner.core.jobspec.load import load_job, resolve
    from runner.train.model import tokenizer_for
    from runner.train.stages.ppo import load_reward_model

    rm = _submit(
        tmp_path, tiny_model, "rm", stage="rm", data={"datasets": [{"path": str(PAIRS)}], "cutoff_len": 64},
        training={"max_steps": 1, "per_device_train_batch_size": 4, "learning_rate": 5e-3},
    )  # fmt: skip
    job = write_job(tmp_path / "ppo.json", tiny_model, stage="ppo", ppo={"reward_model": str(rm)},
                    data={"datasets": [{"path": str(PAIRS)}]})  # fmt: skip
    spec = resolve(load_job(job), tmp_path)
    reward = load_reward_model(spec, tokenizer_for(spec))
    assert not any(p.requires_grad for p in reward.parameters())
    assert not hasattr(reward, "peft_config")  # merged into a plain sequence classifier
    import torch
    from safetensors.torch import load_file

    saved = load_file(rm / "adapter" / "adapter_model.safetensors")
    (head,) = [v for k, v in saved.items() if "score" in k]
    assert torch.equal(reward.score.weight, head)  # the rm run's trained value head, not a fresh one


def test_ppo_on_two_processes(tmp_path, tiny_model):
    """Two processes (DDP, gloo): the reference forward and the save reach the policy inside the
    wrapped model, and every prompt batch is scored; the saved adapter reloads and generates."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = _submit(
        tmp_path, tiny_model, "ppo2", stage="ppo", ppo={"reward_model": str(tiny_model), "response_length": 8},
        data={"datasets": [{"path": str(PAIRS)}], "cutoff_len": 64}, resources={"gpus": 0, "procs_per_node": 2},
        training={"max_steps": 2, "logging_steps": 1, "per_device_train_batch_size": 2, "learning_rate": 5e-3},
    )  # fmt: skip
    results = json.loads((run_dir / "results.json").read_text())
    assert results["world_size"] == 2 and results["global_step"] == 2
    assert [m["step"] for m in _metrics(run_dir)] == [1, 2]
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "adapter")
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), run_dir / "adapter")
    assert all(v.abs().sum() > 0 for k, v in tuned.state_dict().items() if "lora_B" in k)
    ids = tokenizer("hello", return_tensors="pt").input_ids
    with torch.no_grad():
        assert tuned.generate(ids, max_new_tokens=3, do_sample=False).shape[1] > ids.shape[1]


def test_ppo_stops_after_the_step_a_sigterm_reaches(tmp_path, tiny_model):
    """TRL's PPO loop never reads should_training_stop: a SIGTERM mid-run (docker stop, runner
    stop) still ends it after that step, the run marked stopped, not failed."""
    import os
    import re
    import signal

    from tests.integration.test_faults import Attempt, only_run

    job = write_job(
        tmp_path / "ppo.json", tiny_model, name="ppo", stage="ppo",
        ppo={"reward_model": str(tiny_model), "response_length": 8},
        data={"datasets": [{"path": str(PAIRS)}], "cutoff_len": 64},
        training={"max_steps": 200, "logging_steps": 1, "per_device_train_batch_size": 4},
    )  # fmt: skip
    attempt = Attempt("submit", str(job), "--executor", "local")
    assert attempt.wait_for(r"^step 1/200 "), attempt.text[-3000:]
    (pid,) = attempt.trainers(1).values()
    os.kill(pid, signal.SIGTERM)
    attempt.finish(timeout=300)
    record = json.loads((only_run(tmp_path / "out", "ppo") / "run.json").read_text())
    assert record["status"] == "stopped", (record, attempt.text[-3000:])
    stopped = re.search(r"stopped at step (\d+); stage ppo keeps no checkpoint", attempt.text)
    assert stopped and int(stopped.group(1)) < 200, attempt.text[-3000:]
