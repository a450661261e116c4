"""Stage pt: continued pretraining on plain text, concatenated and cut into blocks."""

from __future__ import annotations

from pathlib import Path

from transformers import DataCollatorForSeq2Seq

from runner.spec.job import JobSpec
from runner.train import dataset, loop
from runner.train.methods import apply_method
from runner.train.model import load_model, load_tokenizer
from runner.train.templates import IGNORE


def run(spec: JobSpec, run_dir: Path) -> dict:
    loop.seed_everything(spec)
    tokenizer = load_tokenizer(spec.model.path, spec.model.trust_remote_code)
    train_ds, eval_ds = dataset.build(spec, tokenizer)
    model = apply_method(load_model(spec), spec)
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE)
    return loop.train(spec, run_dir, model, tokenizer, train_ds, eval_ds, collator)
