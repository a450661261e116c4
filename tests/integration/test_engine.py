"""The training engine's guarantees, each measured by really training the tiny model on CPU:
what trains and what stays frozen, packing without leaks, resume equivalence, continuing an
adapter, the tokenized-data cache, the dataset registry and mixing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, write_job

pytestmark = pytest.mark.integration
REGISTRY = ROOT / "tests" / "data" / "registry"


def _prepare(tmp_path: Path, tiny: Path, name: str = "job", **sections):
    from runner.host.execute.submit import prepare

    record, spec = prepare(write_job(tmp_path / f"{name}.json", tiny, name=name, **sections))
    return Path(record.run_dir), spec


def _train(run_dir: Path, spec, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Train in this process; returns the model and a copy of every parameter before training."""
    from runner.train import trainer as loop
    from runner.train.stages import pt, sft

    seen: dict = {}
    real = loop.train

    def spy(spec, run_dir, model, *rest):
        seen["before"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        seen["trainable"] = {n for n, p in model.named_parameters() if p.requires_grad}
        seen["model"] = model
        seen["metrics"] = real(spec, run_dir, model, *rest)
        return seen["metrics"]

    monkeypatch.setattr(loop, "train", spy)
    (pt if spec.stage == "pt" else sft).run(spec, run_dir)
    return seen


def _lora_params(model) -> int:
    """r x (in + out) for every linear layer but the output head: 'all-linear' by hand."""
    import torch

    return sum(
        4 * (m.in_features + m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head")
    )


METHODS = {
    "full": {"type": "full"},
    "freeze-last-layer": {"type": "freeze", "trainable_layers": 1},
    "freeze-named": {"type": "freeze", "trainable_layers": 0, "extra_modules": ["mlp", "lm_head"]},
    "lora": {"type": "lora", "r": 4},
    "lora-plus": {"type": "lora", "r": 4, "loraplus_lr_ratio": 16},
    "lora-dora-rslora-save": {"type": "lora", "r": 4, "dora": True, "rslora": True, "modules_to_save": ["lm_head"]},
    "prefix-v2": {"type": "prefix", "num_virtual_tokens": 4, "projection": True, "encoder_hidden_size": 32},
    "ptuning": {"type": "ptuning", "num_virtual_tokens": 4, "encoder_hidden_size": 32},
    "prompt": {"type": "prompt", "num_virtual_tokens": 4},
    "ia3": {"type": "ia3"},
}  # fmt: skip


@pytest.mark.parametrize("name", METHODS)
def test_trainable_weights_change_frozen_do_not(name, tmp_path, tiny_model, monkeypatch):
    from transformers import AutoModelForCausalLM

    run_dir, spec = _prepare(tmp_path, tiny_model, method=METHODS[name],
                             training={"max_steps": 3, "learning_rate": 1e-2})  # fmt: skip
    seen = _train(run_dir, spec, monkeypatch)
    params = dict(seen["model"].named_parameters())
    trainable, before = seen["trainable"], seen["before"]
    assert trainable, "nothing trained"
    unchanged = [n for n in trainable if params[n].detach().equal(before[n])]
    assert not unchanged, f"trainable but unchanged: {unchanged}"
    moved = [n for n in params if n not in trainable and not params[n].detach().equal(before[n])]
    assert not moved, f"frozen but changed: {moved}"

    count = sum(params[n].numel() for n in trainable)
    assert seen["metrics"]["trainable_params"] == count
    base = AutoModelForCausalLM.from_pretrained(tiny_model, local_files_only=True)
    if name == "full":
        assert count == sum(p.numel() for p in base.parameters())
    elif name == "freeze-last-layer":
        assert trainable == {n for n in params if n.startswith("model.layers.1.")}
    elif name == "freeze-named":
        assert trainable == {n for n in params if ".mlp." in n or n.startswith("lm_head.")}
    elif name in ("lora", "lora-plus"):
        assert count == _lora_params(base)
    elif name == "prompt":
        assert count == 4 * base.config.hidden_size
    else:
        assert 0 < count < sum(p.numel() for p in base.parameters())


def test_loraplus_gives_b_a_larger_learning_rate(tmp_path, tiny_model, monkeypatch):
    from runner.train import trainer as loop

    run_dir, spec = _prepare(tmp_path, tiny_model, method=METHODS["lora-plus"])
    seen: dict = {}
    real = loop._loraplus_optimizer
    monkeypatch.setattr(loop, "_loraplus_optimizer", lambda *a: seen.setdefault("opt", real(*a)))
    _train(run_dir, spec, monkeypatch)
    rates = sorted({g["lr"] for g in seen["opt"].param_groups if g["params"]})
    assert rates[-1] == pytest.approx(16 * rates[0])


# --- packing --------------------------------------------------------------------------------


def _identity_rows(tokenizer, n: int):
    from runner.core.data.readers import load
    from runner.core.data.templates import encode
    from runner.core.jobspec.job import DataSpec

    (items,) = load(DataSpec.model_validate({"datasets": [{"path": str(ROOT / "data" / "identity.json")}],
                                             "placeholders": {"name": "小R", "author": "Runner Team"}}))  # fmt: skip
    return [encode(tokenizer, m, 256) for m in items[:n]]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_batch_has_the_loss_of_the_padded_batch_and_leaks_nothing(attn, tmp_path, tiny_model):
    """Same samples, the model as training loads it (in train mode): padded vs packed with
    restarting positions. Packing the same row with positions that do not restart (every
    token sees the earlier samples) must differ, or this test could not tell a leak from none."""
    import torch
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    from runner.core.data.templates import apply_template
    from runner.train.model import load_model, load_tokenizer

    _, spec = _prepare(
        tmp_path,
        tiny_model,
        method={"type": "full"},
        model={"path": str(tiny_model), "attn_implementation": attn},
    )
    tokenizer = load_tokenizer(str(tiny_model))
    apply_template(tokenizer, "auto")
    model = load_model(spec).train()  # tiny has no dropout: train mode is deterministic
    rows = _identity_rows(tokenizer, 6)
    padded = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)(rows)
    packed = DataCollatorWithFlattening(separator_id=-100)(
        [{k: r[k] for k in ("input_ids", "labels")} for r in rows]
    )
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
    starts = (packed["position_ids"][0] == 0).nonzero().flatten().tolist()
    assert len(starts) == 6  # positions restart at every sample
    with torch.no_grad():
        loss_padded = model(**padded).loss.item()
        loss_packed = model(**packed).loss.item()
        leaking = {**packed, "position_ids": torch.arange(packed["input_ids"].shape[1])[None]}
        loss_leaking = model(**leaking).loss.item()
    assert loss_packed == pytest.approx(loss_padded, rel=1e-5, abs=1e-6)
    assert abs(loss_leaking - loss_padded) > 1e-3


def test_packed_training_follows_the_unpacked_loss_curve(tmp_path, tiny_model):
    """Whole runs, full fine-tuning (no dropout), 8 steps of 4 samples: per-step losses agree."""
    from runner.train.callbacks import read_metrics

    curves = {}
    for packing in (False, True):
        job = write_job(tmp_path / f"p{packing}.json", tiny_model, name=f"pack-{packing}".lower(),
                        method={"type": "full"}, data={"packing": packing, "cutoff_len": 128},
                        training={"max_steps": 8, "learning_rate": 3e-3, "logging_steps": 1})  # fmt: skip
        result = subprocess.run([sys.executable, "-m", "runner.host.cli", "submit", str(job), "--executor", "local"],
                                capture_output=True, text=True, cwd=ROOT)  # fmt: skip
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        (run_dir,) = (tmp_path / "out" / f"pack-{packing}".lower()).iterdir()
        curves[packing] = [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    assert len(curves[False]) == len(curves[True]) == 8
    worst = max(abs(a - b) / a for a, b in zip(curves[False], curves[True], strict=True))
    print(f"unpacked {curves[False]}\npacked   {curves[True]}\nlargest relative difference {worst:.2e}")
    assert curves[True] == pytest.approx(curves[False], rel=1e-4)
    assert curves[False][-1] < curves[False][0]  # it trained


def test_batch_rebalance_keeps_samples_per_step_with_micro_batches_of_balanced_cost(
    tmp_path, tiny_model, monkeypatch
):
    """transformers' cost-balancing sampler with packed rows: every optimizer step still takes
    per_device_train_batch_size x gradient_accumulation_steps samples, but the micro-batches
    differ in sample count (long samples go with fewer others), and the job trains."""
    from runner.core.data.templates import apply_template
    from runner.train import dataset
    from runner.train import trainer as loop
    from runner.train.methods import apply_method
    from runner.train.model import load_model, load_tokenizer

    run_dir, spec = _prepare(tmp_path, tiny_model, data={"packing": True, "cutoff_len": 128}, training={
        "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, "max_steps": 4,
        "train_sampling_strategy": "batch_rebalance"})  # fmt: skip
    tokenizer = load_tokenizer(spec.model.path)
    apply_template(tokenizer, "auto")
    train_ds, _ = dataset.build(spec, tokenizer)
    trainer = loop.make_trainer(spec, run_dir, apply_method(load_model(spec), spec), tokenizer, train_ds, None,
                                dataset.collator(spec, tokenizer))  # fmt: skip
    batches = list(trainer.get_train_dataloader())
    samples = [int((b["position_ids"][0] == 0).sum()) for b in batches]
    assert all(a + b == 8 for a, b in zip(samples[::2], samples[1::2], strict=True)), samples
    assert len(set(samples)) > 1, samples  # micro-batches of different sizes
    assert sum(samples) == len(train_ds) // 8 * 8
    assert _train(run_dir, spec, monkeypatch)["metrics"]["global_step"] == 4


# --- resume ---------------------------------------------------------------------------------


def _entrypoint(run_dir: Path, **env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "runner.train", str(run_dir / "spec.yaml"), "--run-dir", str(run_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env={**os.environ, **env},
    )  # fmt: skip


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path / "adapter_model.safetensors")


def test_resume_reaches_the_weights_of_an_uninterrupted_run(tmp_path, tiny_model):
    """LoRA with dropout (so the random state must be restored too). One run goes through; the
    other is stopped with Ctrl-C after its first checkpoint, a half-written checkpoint is left
    beside it, and `runner resume` continues: same steps, same weights."""
    import torch

    job = {"method": {"type": "lora", "r": 8, "dropout": 0.1},
           "training": {"max_steps": 60, "save_steps": 5, "logging_steps": 5, "per_device_train_batch_size": 4,
                        "learning_rate": 3e-3}}  # fmt: skip
    whole, _ = _prepare(tmp_path, tiny_model, name="whole", **job)
    out = _entrypoint(whole).communicate(timeout=600)[0]
    assert (whole / "results.json").exists(), out[-2000:]

    spec = write_job(tmp_path / "split.json", tiny_model, name="split", **job)
    # As from a terminal: Ctrl-C reaches it even when the suite itself was started with SIGINT
    # ignored (a background job), which the child would otherwise inherit.
    submit = subprocess.Popen([sys.executable, "-m", "runner.host.cli", "submit", str(spec), "--executor", "local"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    runs = tmp_path / "out" / "split"
    deadline = time.time() + 300
    while not list(runs.glob("*/checkpoints/checkpoint-5/trainer_state.json")) and time.time() < deadline:
        assert submit.poll() is None, submit.communicate()[0][-2000:]
        time.sleep(0.05)
    submit.send_signal(signal.SIGINT)  # Ctrl-C: the trainer saves a checkpoint and stops
    out = submit.communicate(timeout=300)[0]
    (split,) = runs.iterdir()
    record = json.loads((split / "run.json").read_text())
    assert record["status"] == "stopped" and record["exit_code"] == 143, out[-2000:]
    half = split / "checkpoints" / "checkpoint-999"  # a save cut short: no trainer_state.json
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"partial")

    resumed = subprocess.run([sys.executable, "-m", "runner.host.cli", "resume", split.name],
                             capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out[-3000:]
    line = out.split("resuming from")[1].split("\n")[0]
    assert "checkpoint-999" not in line
    stopped_at = int(line.split("checkpoint-")[1])
    assert 5 <= stopped_at < 60
    a = json.loads((whole / "results.json").read_text())
    b = json.loads((split / "results.json").read_text())
    assert a["global_step"] == b["global_step"] == 60
    assert json.loads((split / "run.json").read_text())["status"] == "succeeded"
    wa, wb = _weights(whole / "adapter"), _weights(split / "adapter")
    assert wa.keys() == wb.keys()
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    print(f"stopped at step {stopped_at}; largest weight difference after resuming: {worst:g}")
    assert worst <= 1e-6, f"resumed weights differ by up to {worst}"
    assert any(not torch.equal(wa[k], torch.zeros_like(wa[k])) for k in wa if "lora_B" in k)


# --- continue an adapter ---------------------------------------------------------------------


def test_training_continues_from_an_existing_adapter(tmp_path, tiny_model, monkeypatch):
    import torch

    first, spec = _prepare(
        tmp_path, tiny_model, name="first", training={"max_steps": 3, "learning_rate": 1e-2}
    )
    _train(first, spec, monkeypatch)
    saved = _weights(first / "adapter")

    second, spec = _prepare(tmp_path, tiny_model, name="second", model={"adapter": str(first / "adapter")},
                            training={"max_steps": 3, "learning_rate": 1e-2})  # fmt: skip
    seen = _train(second, spec, monkeypatch)
    started = {n.replace(".default", ""): t for n, t in seen["before"].items() if "lora_" in n}
    assert started and len(started) == len(saved)
    for name, tensor in saved.items():  # it started from the saved adapter, not a fresh one
        assert torch.equal(started[name], tensor), name
    after = _weights(second / "adapter")
    assert any(not torch.equal(after[k], saved[k]) for k in saved)


# --- data: cache, registry, mixing --------------------------------------------------------------


def test_tokenized_data_is_cached_by_content(tmp_path, tiny_model, caplog):
    import shutil

    from runner.core.data.templates import apply_template
    from runner.train import dataset
    from runner.train.model import load_tokenizer

    data = tmp_path / "identity.json"
    shutil.copy(ROOT / "data" / "identity.json", data)
    _, spec = _prepare(tmp_path, tiny_model, data={"datasets": [{"path": str(data)}]})
    tokenizer = load_tokenizer(spec.model.path)
    apply_template(tokenizer, "auto")
    with caplog.at_level("INFO"):
        first, _ = dataset.build(spec, tokenizer)
        assert "tokenized data cached in" in caplog.text
        caplog.clear()
        again, _ = dataset.build(spec, tokenizer)
        assert "tokenized data from cache" in caplog.text
    assert again["input_ids"] == first["input_ids"] and again["labels"] == first["labels"]
    two = spec.model_copy(
        update={"data": spec.data.model_copy(update={"preprocessing_workers": 2, "cache": False})}
    )
    parallel, _ = dataset.build(two, tokenizer)  # two worker processes, same rows in the same order
    assert parallel["input_ids"] == first["input_ids"] and parallel["labels"] == first["labels"]
    key = dataset.cache_key(spec, tokenizer)
    assert (Path(spec.output.dir) / ".cache" / "data" / key / "dataset_info.json").exists()

    original = data.read_bytes()
    rows = json.loads(original)
    data.write_text(json.dumps(rows[:-1], ensure_ascii=False), encoding="utf-8")
    assert dataset.cache_key(spec, tokenizer) != key  # the data changed
    data.write_bytes(original)
    assert dataset.cache_key(spec, tokenizer) == key
    own = tokenizer.chat_template
    apply_template(tokenizer, "chatml")
    assert dataset.cache_key(spec, tokenizer) != key  # the template changed
    tokenizer.chat_template = own
    assert dataset.cache_key(spec, tokenizer) == key
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<|new|>"]}, replace_extra_special_tokens=False
    )
    assert dataset.cache_key(spec, tokenizer) != key  # the vocabulary grew
    cut = spec.model_copy(update={"data": spec.data.model_copy(update={"cutoff_len": 32})})
    assert dataset.cache_key(cut, tokenizer) != key  # the preprocessing changed


def test_registry_names_resolve_to_files_formats_and_columns(tmp_path, tiny_model):
    from runner.core.data.readers import load
    from runner.core.jobspec.job import DataSpec

    _, spec = _prepare(tmp_path, tiny_model, data={
        "dataset_dir": str(REGISTRY),
        "datasets": [{"name": "identity"}, {"name": "faq_csv"}, {"name": "chats", "max_samples": 1}],
    })  # fmt: skip
    identity, faq, chats = spec.data.datasets
    assert identity.path == str(REGISTRY / "identity.json") and identity.format == "alpaca"
    # a dataset_info.json entry names the columns it has; "" leaves the others unread
    assert faq.columns == {
        "instruction": "问题",
        "input": "行动",
        "output": "回答",
        "system": "",
        "history": "",
    }
    assert chats.format == "sharegpt" and chats.columns == {"conversations": "dialog", "system": "sys"}
    assert chats.tags == {
        "role_tag": "speaker",
        "content_tag": "text",
        "user_tag": "客户",
        "assistant_tag": "客服",
    }
    assert chats.max_samples == 1
    assert spec.data.dataset_dir is None  # the resolved spec names files only

    a, b, c = load(DataSpec.model_validate(spec.data.model_dump()))
    assert len(a) == 80 and len(b) == 3 and len(c) == 1
    assert b[0][-2:] == [
        {"role": "user", "content": "余额多少？\n查询"},
        {"role": "assistant", "content": "您的余额是100元。"},
    ]
    assert [m["role"] for m in c[0]] == ["system", "user", "assistant", "user", "assistant"]
    assert c[0][0]["content"] == "你是银行客服。"

    _, pt_spec = _prepare(tmp_path, tiny_model, name="pt", stage="pt",
                          data={"dataset_dir": str(REGISTRY), "datasets": [{"name": "c4_demo"}]})  # fmt: skip
    (corpus,) = pt_spec.data.datasets
    assert corpus.format == "text" and corpus.columns == {"text": "text"}


def test_mixing_concat_and_interleave(tmp_path, tiny_model):
    from datasets import Dataset

    from runner.train.dataset import mix

    sources = [Dataset.from_list([{"item": f"a{i}"} for i in range(8)]),
               Dataset.from_list([{"item": f"b{i}"} for i in range(2)])]  # fmt: skip

    def mixed(**data):
        _, spec = _prepare(
            tmp_path, tiny_model, data={"datasets": [{"path": str(REGISTRY / "identity.json")}] * 2, **data}
        )
        return mix(sources, spec)["item"]

    assert mixed() == [f"a{i}" for i in range(8)] + ["b0", "b1"]
    assert mixed(max_samples=3) == ["a0", "a1", "a2"]
    under = mixed(mix="interleave_under")  # alternates, stops when b runs out
    assert under == ["a0", "b0", "a1", "b1"]
    over = mixed(mix="interleave_over")  # until every source ran out; b repeats
    assert over.count("b0") > 1 and all(f"a{i}" in over for i in range(8))
    probs = mixed(mix="interleave_over", mix_probs=[0.9, 0.1])
    assert sum(x.startswith("a") for x in probs) > 2 * sum(x.startswith("b") for x in probs)


def test_a_job_trains_on_mixed_registry_datasets(tmp_path, tiny_model, monkeypatch):
    run_dir, spec = _prepare(tmp_path, tiny_model, data={
        "dataset_dir": str(REGISTRY), "mix": "interleave_over", "mix_probs": [0.5, 0.25, 0.25],
        "datasets": [{"name": "identity"}, {"name": "faq_csv"}, {"name": "chats"}],
        "placeholders": {"name": "小R", "author": "Runner Team"}, "cutoff_len": 128,
    })  # fmt: skip
    seen = _train(run_dir, spec, monkeypatch)
    assert seen["metrics"]["global_step"] == 3 and seen["metrics"]["train_samples"] > 80


# --- bad data: one message, nothing trained ----------------------------------------------------


@pytest.mark.parametrize(
    ("content", "data", "message", "started"),
    [
        ('{broken\n{"also": "broken"\n', {"on_bad_record": "skip"},
         r"data\.datasets\[0\]\.path: .*bad\.jsonl: has no usable record: all 2 were bad and skipped", False),
        # cut as LLaMA-Factory cuts: a long answer after a much longer prompt keeps no token of 8
        ('{"instruction": "' + "a long question " * 60 + '", "output": "yes, the answer is this"}\n', {"cutoff_len": 8},
         r"no sample is left after tokenization: every answer starts beyond cutoff_len=8; raise data\.cutoff_len", True),
        ('{"question": "q", "answer": "a"}\n', {},
         r"bad\.jsonl:1: record 1: no column 'instruction' \(it has: question, answer\); map it in data\.datasets\[0\]\.columns",
         False),
    ],
    ids=["all-records-skipped", "nothing-left-after-cutoff", "missing-column"],
)  # fmt: skip
def test_bad_data_stops_with_one_message(content, data, message, started, tmp_path, tiny_model):
    """Bad records are refused by the spec check before anything starts; what only tokenization
    can find (no answer left within cutoff_len) ends the run with one message."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content, encoding="utf-8")
    job = write_job(tmp_path / "job.json", tiny_model, data={"datasets": [{"path": str(bad)}], **data})
    result = subprocess.run([sys.executable, "-m", "runner.host.cli", "submit", str(job), "--executor", "local"],
                            capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-2000:]
    assert "Traceback" not in output
    import re

    assert re.search(message, output), output[-2000:]
    if not started:
        assert not (tmp_path / "out").exists()
        return
    (run_dir,) = (tmp_path / "out" / "job").iterdir()
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "adapter").exists()


# --- memory: selective and offloaded checkpointing -----------------------------------------------


def test_selective_and_offloaded_checkpointing_train_the_same_weights(tmp_path, tiny_model, monkeypatch):
    """Recomputing every layer or every other layer changes where memory goes, not the arithmetic:
    the same weights. (Offloading needs a GPU: tests/gpu/test_memory.py.)"""
    import torch

    runs = {}
    for name, extra in {"plain": {"gradient_checkpointing": False},
                        "every-layer": {"gradient_checkpointing": True},
                        "every-2nd": {"gradient_checkpointing": True, "checkpoint_every_n_layers": 2}}.items():  # fmt: skip
        run_dir, spec = _prepare(tmp_path, tiny_model, name=name, method={"type": "full"},
                                 training={"max_steps": 3, "learning_rate": 1e-3, **extra})  # fmt: skip
        seen = _train(run_dir, spec, monkeypatch)
        layers = seen["model"].model.layers
        runs[name] = ([getattr(layer, "gradient_checkpointing", False) for layer in layers],
                      {n: p.detach().clone() for n, p in seen["model"].named_parameters()})  # fmt: skip
    assert runs["plain"][0] == [False, False]
    assert runs["every-layer"][0] == [True, True]
    assert runs["every-2nd"][0] == [True, False]
    for name in ("every-layer", "every-2nd"):
        for key, value in runs["plain"][1].items():
            assert torch.allclose(value, runs[name][1][key], atol=1e-6), (name, key)


def test_two_jobs_tokenizing_the_same_data_at_once_both_train(tmp_path, tiny_model):
    """Two processes filling the same cache entry together (two nodes sharing a disk, two jobs
    submitted at once): each writes its own temporary copy, one wins, both train."""
    runs = [_prepare(tmp_path, tiny_model, training={"max_steps": 1})[0] for _ in range(2)]
    procs = [_entrypoint(run) for run in runs]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    (entry,) = (tmp_path / "out" / ".cache" / "data").iterdir()  # one entry, no temporary left over
    assert (entry / "dataset_info.json").exists()


# --- the output layer only where tokens are trained ------------------------------------------------


@pytest.mark.parametrize("packing", [False, True])
def test_logits_at_trained_positions_only_give_the_same_loss(packing, tmp_path, tiny_model):
    import torch
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    from runner.core.data.templates import apply_template
    from runner.train.compat import only_targets
    from runner.train.model import load_model, load_tokenizer

    _, spec = _prepare(tmp_path, tiny_model, method={"type": "full"})
    tokenizer = load_tokenizer(str(tiny_model))
    apply_template(tokenizer, "auto")
    rows = _identity_rows(tokenizer, 6)
    batch = (DataCollatorWithFlattening(separator_id=-100)([{k: r[k] for k in ("input_ids", "labels")} for r in rows])
             if packing else DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)(rows))  # fmt: skip
    model = load_model(spec).train()
    grads = []
    for inputs in (batch, only_targets(batch)):
        model.zero_grad()
        out = model(**inputs)
        out.loss.backward()
        grads.append((out, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (full, full_grads), (reduced, reduced_grads) = grads
    trained = int((batch["labels"][:, 1:] != -100).any(dim=0).sum())
    assert reduced.logits.shape[1] == trained < full.logits.shape[1] * 0.8  # prompts get no logits
    assert reduced.loss.item() == pytest.approx(full.loss.item(), rel=1e-6)
    for name, grad in full_grads.items():  # and the same gradients
        assert torch.allclose(grad, reduced_grads[name], rtol=1e-4, atol=1e-7), name


def test_training_with_logits_at_trained_positions_only_follows_the_same_curve(
    tmp_path, tiny_model, monkeypatch
):

    from runner.train.callbacks import read_metrics

    runs = {}
    for on in (False, True):
        run_dir, spec = _prepare(tmp_path, tiny_model, name=f"targets-{on}".lower(), method={"type": "full"},
                                 training={"max_steps": 5, "logging_steps": 1, "learning_rate": 3e-3,
                                           "logits_on_targets_only": on})  # fmt: skip
        _train(run_dir, spec, monkeypatch)
        runs[on] = [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    assert len(runs[True]) == 5 and runs[True] == pytest.approx(runs[False], rel=1e-5)


@pytest.mark.parametrize("packing", [True, False], ids=["packed", "padded"])
def test_token_budget_micro_batches_train_the_same_weights_in_fewer_passes(
    packing, tmp_path, tiny_model, monkeypatch
):
    """8 samples per optimizer step either as 4 micro-batches of 2, or split by a 128-token
    budget: every pass stays within the budget, there are fewer passes, and the losses and the
    trained weights are the same."""
    from runner.train import microbatch
    from runner.train.callbacks import read_metrics

    passes: list[int] = []
    real_split = microbatch.split

    def spy(batch, budget):
        parts = real_split(batch, budget)
        for p in parts:  # the tokens each pass computes, padding included
            assert p["input_ids"].numel() <= budget, p["input_ids"].shape
        assert sum(int((p["labels"] != -100).sum()) for p in parts) == int((batch["labels"] != -100).sum())
        passes.append(len(parts))
        return parts

    monkeypatch.setattr(microbatch, "split", spy)
    runs = {}
    for budget in (None, 128):
        run_dir, spec = _prepare(tmp_path, tiny_model, name=f"budget-{budget}-{packing}".lower(),
                                 method={"type": "full"}, data={"packing": packing, "cutoff_len": 128},
                                 training={"max_steps": 5, "logging_steps": 1, "learning_rate": 3e-3,
                                           "per_device_train_batch_size": 2, "gradient_accumulation_steps": 4,
                                           "micro_batch_tokens": budget})  # fmt: skip
        seen = _train(run_dir, spec, monkeypatch)
        losses = [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
        runs[budget] = losses, {n: p.detach().clone() for n, p in seen["model"].named_parameters()}
    print(f"passes per step with a 128-token budget: {passes} (fixed: 4)")
    assert len(passes) == 5 and sum(passes) < 5 * 4
    (fixed, fixed_weights), (budgeted, budgeted_weights) = runs[None], runs[128]
    assert len(fixed) == 5 and budgeted == pytest.approx(fixed, rel=1e-5)
    assert fixed[-1] < fixed[0]  # it trained
    # Summation order differs; Adam turns that into updates of ~1e-5. A sample lost or counted
    # twice would move weights by the learning rate (3e-3).
    worst = max((w - budgeted_weights[n]).abs().max().item() for n, w in fixed_weights.items())
    print(f"largest weight difference {worst:.2e}")
    assert worst < 1e-4


# --- memory_cap_gib: checkpointing only as much as memory requires ------------------------------


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_the_memory_probe_extrapolates_what_a_long_pass_keeps(attn, tmp_path, tiny_model):
    """Probing at 64 and 128 tokens predicts what autograd keeps at 512 tokens, layer by layer;
    eager attention keeps a T x T matrix and the probe sees its square term."""
    import torch

    from runner.train import memory
    from runner.train.methods import apply_method
    from runner.train.model import load_model

    _, spec = _prepare(tmp_path, tiny_model, model={"path": str(tiny_model), "attn_implementation": attn})
    model = apply_method(load_model(spec), spec)
    cpu = torch.device("cpu")
    profile = memory.measure(model, spec, 64, cpu)
    layers, rest, layer_input = memory._saved(model, spec, 512, cpu)
    for (a, b), measured in zip(profile.layers, layers, strict=True):
        assert a * 512 + b * 512**2 == pytest.approx(measured, rel=1e-3)
        assert (b > 0) == (attn == "eager")
    assert profile.rest[0] * 512 == pytest.approx(rest, rel=1e-3)
    assert profile.layer_input * 512 == layer_input
    assert profile.static > sum(p.numel() * p.element_size() for p in model.parameters())


def test_a_memory_cap_turns_on_just_enough_checkpointing(tmp_path, tiny_model, monkeypatch, caplog):
    """Caps at the estimates of each plan pick that plan, and the job trains with it."""
    import torch

    from runner.core.data.templates import apply_template
    from runner.train import dataset, memory
    from runner.train import trainer as loop
    from runner.train.methods import apply_method
    from runner.train.model import load_model, load_tokenizer

    sections = {"data": {"cutoff_len": 128}, "training": {"max_steps": 2, "per_device_train_batch_size": 4}}
    run_dir, spec = _prepare(tmp_path, tiny_model, **sections)
    model = apply_method(load_model(spec), spec)
    profile = memory.measure(model, spec, 64, torch.device("cpu"))
    tokenizer = load_tokenizer(spec.model.path)
    apply_template(tokenizer, "auto")
    train_ds, _ = dataset.build(spec, tokenizer)
    for plan in memory.candidates(len(profile.layers), offload=False):
        cap = profile.estimate(4 * 128, plan) / memory.GIB
        capped = spec.model_copy(
            update={"training": spec.training.model_copy(update={"memory_cap_gib": cap})}
        )
        args = loop.make_trainer(capped, run_dir, model, tokenizer, train_ds, None, None).args
        assert args.activation_checkpointing == plan.on
        if plan.on:
            assert args.activation_checkpointing_kwargs["every_n_layers"] == plan.every_n_layers
    run_dir, spec = _prepare(tmp_path, tiny_model, name="capped",
                             **{**sections, "training": {**sections["training"], "memory_cap_gib": cap}})  # fmt: skip
    with caplog.at_level("INFO"):
        seen = _train(run_dir, spec, monkeypatch)
    assert seen["metrics"]["global_step"] == 2
    assert "a pass of 512 tokens with checkpointing every layer" in caplog.text


def test_a_memory_cap_nothing_fits_stops_before_training(tmp_path, tiny_model):
    job = write_job(tmp_path / "job.json", tiny_model, training={"memory_cap_gib": 0.25})
    result = subprocess.run([sys.executable, "-m", "runner.host.cli", "submit", str(job), "--executor", "local"],
                            capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 3 and "Traceback" not in output, output[-2000:]  # 3: cannot run as asked
    assert "training.memory_cap_gib: 0.25 GiB cannot hold a pass of 256 tokens" in output, output[-2000:]
    (run_dir,) = (tmp_path / "out" / "job").iterdir()
    assert not (run_dir / "checkpoints").exists()


def _train_lora(tmp_path: Path, tiny: Path, monkeypatch: pytest.MonkeyPatch, steps: int, **method):
    """A rank-4 LoRA run named after `method`; its spy record and per-step losses."""
    from runner.train.callbacks import read_metrics

    name = "-".join(f"{k}-{v}" for k, v in method.items()).replace("_", "-").lower()
    run_dir, spec = _prepare(tmp_path, tiny, name=name, method={"type": "lora", "r": 4, **method},
                             training={"max_steps": steps, "logging_steps": 1, "learning_rate": 3e-3})  # fmt: skip
    seen = _train(run_dir, spec, monkeypatch)
    seen["spec"] = spec
    return seen, [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


def _force_precision(monkeypatch: pytest.MonkeyPatch, precision: str) -> None:
    """Mixed precision on CPU, as a GPU would train: half-precision weights under autocast."""
    from runner.train import memory
    from runner.train import model as model_module
    from runner.train import trainer as loop

    for module in (model_module, loop, memory):
        monkeypatch.setattr(module, "precision", lambda spec: precision)


def test_lora_without_peft_input_copies_trains_the_same_in_less_memory(tmp_path, tiny_model, monkeypatch):
    """Mixed precision forced on CPU (bf16 weights, fp32 adapters, autocast), with and without
    PEFT's fp32 copy of every adapted layer's input: the same losses to the bit, and the
    decoder layers keep fewer bytes for the backward pass without it."""
    import torch

    from runner.train import memory

    _force_precision(monkeypatch, "bf16")
    runs = {}
    for upcast in (True, False):
        seen, losses = _train_lora(tmp_path, tiny_model, monkeypatch, 4, upcast_adapter_inputs=upcast)
        assert seen["model"].get_base_model().model.embed_tokens.weight.dtype == torch.bfloat16
        kept = sum(memory._saved(seen["model"], seen["spec"], 128, torch.device("cpu"))[0])
        runs[upcast] = losses, kept
    print(f"layers keep {runs[True][1]:,} bytes with the copy, {runs[False][1]:,} without")
    assert len(runs[True][0]) == 4 and runs[False][0] == runs[True][0]
    assert runs[False][1] < 0.9 * runs[True][1]


def _peak_allocated(fn) -> int:
    """Peak bytes that torch's CPU allocator held during fn() above what it held before, read
    from the profiler's memory events."""
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.NamedTemporaryFile(suffix=".json") as trace:
        prof.export_chrome_trace(trace.name)
        events = json.loads(Path(trace.name).read_text())["traceEvents"]
    memory = sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"])
    start = memory[0]["args"]["Total Allocated"] - memory[0]["args"]["Bytes"]
    return max(e["args"]["Total Allocated"] for e in memory) - start


@pytest.mark.parametrize("method", [{"type": "lora", "r": 8}, {"type": "full"}], ids=["lora", "full"])
def test_the_memory_estimate_bounds_the_measured_peak_of_every_plan(method):
    """An 8-layer model (more layers than vocabulary, so checkpointing matters), one step of
    2,048 tokens under each plan, its peak read from the allocator: the estimate is never
    below the measured peak, nor far above it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from runner.core.jobspec.job import JobSpec
    from runner.train import memory
    from runner.train.methods import apply_method

    config = AutoConfig.for_model("llama", hidden_size=256, intermediate_size=688, num_hidden_layers=8,
                                  num_attention_heads=4, num_key_value_heads=4, vocab_size=512, use_cache=False,
                                  tie_word_embeddings=False, attn_implementation="sdpa")  # fmt: skip
    torch.manual_seed(0)
    spec = JobSpec.model_validate({"name": "m", "model": {"path": "m"}, "method": method,
                                   "data": {"datasets": [{"path": "d"}]}})  # fmt: skip
    model = apply_method(AutoModelForCausalLM.from_config(config), spec).train()
    profile = memory.measure(model, spec, 256, torch.device("cpu"))
    grads = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    ids = torch.randint(0, 512, (1, 2048))
    rows = []
    for plan in memory.candidates(8, offload=False):
        if plan.on:
            model.activation_checkpointing_enable(
                {"use_reentrant": False}, every_n_layers=plan.every_n_layers
            )
        model.zero_grad(set_to_none=True)
        measured = _peak_allocated(lambda: model(input_ids=ids, labels=ids).loss.backward()) - grads
        estimate = profile.estimate(2048, plan) - profile.static - memory.RESERVE
        rows.append((plan.describe(8), measured, estimate))
    print("\n".join(f"{d}: measured {m / 2**20:.1f} MiB, estimate {e / 2**20:.1f} MiB" for d, m, e in rows))
    for described, measured, estimate in rows:
        assert measured <= estimate <= 1.6 * measured, described
    assert rows[-1][1] < 0.3 * rows[0][1]  # checkpointing every layer does cut the peak


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fused_lora_trains_like_peft(precision, tmp_path, tiny_model, monkeypatch):
    """The addmm forward against PEFT's own, 5 steps: the same losses and adapter weights in
    float32; in bf16 (forced on CPU, under autocast) the same losses within bf16 rounding, as
    the fused sum rounds once where PEFT rounds three times."""
    import torch
    from peft.tuners.lora.layer import Linear

    _force_precision(monkeypatch, precision)
    runs = {}
    for on in (False, True):
        seen, losses = _train_lora(tmp_path, tiny_model, monkeypatch, 5, fused=on)
        layers = [m for m in seen["model"].modules() if isinstance(m, Linear) and "forward" in vars(m)]
        assert len(layers) == (14 if on else 0)  # all 7 linear layers of both decoder layers
        runs[on] = (
            losses,
            {n: p.detach().clone() for n, p in seen["model"].named_parameters() if p.requires_grad},
        )
    print(f"{precision}: PEFT {runs[False][0]}\n      fused {runs[True][0]}")
    assert len(runs[True][0]) == 5
    if precision == "fp32":
        assert runs[True][0] == pytest.approx(runs[False][0], rel=1e-6)
        for name, weight in runs[False][1].items():
            assert torch.allclose(weight, runs[True][1][name], rtol=1e-5, atol=1e-7), name
    else:
        assert runs[True][0] == pytest.approx(runs[False][0], rel=2e-4)


def test_fused_lora_leaves_dora_dropout_and_merged_layers_to_peft(tmp_path, tiny_model):
    import torch

    from runner.train import fused
    from runner.train.methods import apply_method
    from runner.train.model import load_model

    for method in ({"type": "lora", "r": 4, "dora": True}, {"type": "lora", "r": 4, "dropout": 0.1}):
        _, spec = _prepare(tmp_path, tiny_model, name="other", method=method)
        layer = next(m for m in apply_method(load_model(spec), spec).modules() if "forward" in vars(m))
        assert not fused._plain(layer), method  # the fused forward hands these to PEFT's
    layer.lora_dropout["default"] = torch.nn.Identity()
    assert fused._plain(layer)
    layer.merge()
    assert not fused._plain(layer)


def test_the_cache_key_follows_the_seed_only_where_interleaving_draws_from_it(tmp_path, tiny_model):
    from runner.train import dataset
    from runner.train.model import load_tokenizer

    two = [
        {"path": str(ROOT / "data" / "identity.json")},
        {"path": str(ROOT / "tests/data/datasets/alpaca.json")},
    ]
    tokenizer = load_tokenizer(str(tiny_model))
    for mix, follows in (("interleave_under", True), ("concat", False)):
        _, spec = _prepare(tmp_path, tiny_model, name=f"seed-{mix}", data={"datasets": two, "mix": mix})
        other = spec.model_copy(deep=True)
        other.training.seed += 1
        assert (dataset.cache_key(spec, tokenizer) != dataset.cache_key(other, tokenizer)) == follows, mix
