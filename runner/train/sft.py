"""Stage sft: supervised fine-tuning on conversations; only assistant turns are trained."""

from __future__ import annotations

from pathlib import Path

from runner.spec.job import JobSpec
from runner.train import dataset, loop
from runner.train.methods import apply_method
from runner.train.model import load_model, load_tokenizer
from runner.train.templates import apply_template


def run(spec: JobSpec, run_dir: Path) -> dict:
    loop.seed_everything(spec)
    tokenizer = load_tokenizer(spec.model.path, spec.model.trust_remote_code)
    apply_template(tokenizer, spec.model.template)
    train_ds, eval_ds = dataset.build(spec, tokenizer)
    with loop.model_loading(spec, run_dir):
        model = apply_method(load_model(spec), spec)
    return loop.train(spec, run_dir, model, tokenizer, train_ds, eval_ds, dataset.collator(spec, tokenizer))
