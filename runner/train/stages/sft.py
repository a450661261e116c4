"""Stage sft: supervised fine-tuning on conversations; only assistant turns are trained.

Stage pt runs the same steps on plain text (runner/train/stages/pt.py)."""

from __future__ import annotations

from pathlib import Path

from runner.core.jobspec.job import JobSpec
from runner.train import dataset
from runner.train import trainer as loop
from runner.train.methods import apply_method
from runner.train.model import fit_vocab, load_model, tokenizer_for


def run(spec: JobSpec, run_dir: Path) -> dict:
    loop.seed_everything(spec)
    tokenizer = tokenizer_for(spec)
    train_ds, eval_ds = dataset.build(spec, tokenizer)
    with loop.model_loading(spec, run_dir):
        model = load_model(spec)
        model = apply_method(model, spec, train_embeddings=fit_vocab(model, tokenizer))
    return loop.train(spec, run_dir, model, tokenizer, train_ds, eval_ds, dataset.collator(spec, tokenizer))
