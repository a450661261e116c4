"""Stage pt: continued pretraining on plain text, concatenated and cut into blocks."""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset
from transformers import DataCollatorForSeq2Seq

from runner.spec.job import JobSpec
from runner.train import data, loop
from runner.train.data import DataError
from runner.train.methods import apply_method
from runner.train.model import load_model, load_tokenizer
from runner.train.sft import split


def run(spec: JobSpec, run_dir: Path) -> dict:
    loop.seed_everything(spec)
    tokenizer = load_tokenizer(spec.model.path, spec.model.trust_remote_code)
    train_ds, eval_ds = split(blocks(spec, tokenizer), spec)
    model = apply_method(load_model(spec), spec)
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    return loop.train(spec, run_dir, model, tokenizer, train_ds, eval_ds, collator)


def blocks(spec: JobSpec, tokenizer) -> Dataset:
    """Every text + eos, concatenated, cut into cutoff_len blocks (the last may be shorter)."""
    stream: list[int] = []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for text in data.load(spec.data).texts:
        stream += tokenizer(text, add_special_tokens=True)["input_ids"] + eos
    n = spec.data.cutoff_len
    rows = [stream[i : i + n] for i in range(0, len(stream), n)]
    rows = [r for r in rows if len(r) > 1]
    if not rows:
        raise DataError("the text datasets produce no tokens")
    return Dataset.from_list([{"input_ids": r, "attention_mask": [1] * len(r), "labels": r} for r in rows])
