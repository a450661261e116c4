"""Stage sft: supervised fine-tuning on conversations; only assistant turns are trained."""

from __future__ import annotations

import logging
from pathlib import Path

from datasets import Dataset
from transformers import DataCollatorForSeq2Seq

from runner.spec.job import JobSpec
from runner.train import data, loop
from runner.train.data import DataError
from runner.train.methods import apply_method
from runner.train.model import load_model, load_tokenizer
from runner.train.templates import apply_template, encode

log = logging.getLogger(__name__)


def run(spec: JobSpec, run_dir: Path) -> dict:
    loop.seed_everything(spec)
    tokenizer = load_tokenizer(spec.model.path, spec.model.trust_remote_code)
    apply_template(tokenizer, spec.model.template)
    train_ds, eval_ds = tokenize(spec, tokenizer)
    model = apply_method(load_model(spec), spec)
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    return loop.train(spec, run_dir, model, tokenizer, train_ds, eval_ds, collator)


def tokenize(spec: JobSpec, tokenizer) -> tuple[Dataset, Dataset | None]:
    loaded = data.load(spec.data)
    rows, dropped = [], 0
    for messages in loaded.conversations:
        row = encode(tokenizer, messages, spec.data.cutoff_len)
        if row is None:
            dropped += 1
        else:
            rows.append(row)
    if dropped:
        log.warning("%d sample(s) had no answer left within cutoff_len=%d and were dropped",
                    dropped, spec.data.cutoff_len)  # fmt: skip
    if not rows:
        raise DataError(f"no sample is left after tokenization (cutoff_len={spec.data.cutoff_len})")
    log.info("%d training samples, %d tokens", len(rows), sum(len(r["input_ids"]) for r in rows))
    return split(Dataset.from_list(rows), spec)


def split(ds: Dataset, spec: JobSpec) -> tuple[Dataset, Dataset | None]:
    size = spec.data.val_size
    if not size:
        return ds, None
    n_val = int(size) if size >= 1 else max(1, round(size * len(ds)))
    if n_val >= len(ds):
        raise DataError(f"data.val_size={size} leaves no training samples out of {len(ds)}")
    parts = ds.train_test_split(test_size=n_val, seed=spec.training.seed)
    return parts["train"], parts["test"]
