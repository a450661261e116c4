"""Stage dpo: direct preference optimization on pairs (TRL's DPOTrainer).

Losses: sigmoid (DPO), ipo and hinge, each against a reference model (tuning.reference_model).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from trl import DPOConfig, DPOTrainer

from runner.spec.job import JobSpec
from runner.train import dataset, loop, tuning
from runner.train.methods import apply_method
from runner.train.model import fit_vocab, load_model, tokenizer_for


class Trainer(tuning.Saving, DPOTrainer):
    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return dataset  # tokenized already, with the job's template (runner/train/preference.py)


def run(spec: JobSpec, run_dir: Path) -> dict:
    loop.seed_everything(spec)
    tokenizer = tokenizer_for(spec)
    train_ds, eval_ds = dataset.build(spec, tokenizer)
    with loop.model_loading(spec, run_dir):
        model = load_model(spec)
        model = apply_method(model, spec, train_embeddings=fit_vocab(model, tokenizer))
        ref = tuning.reference_model(spec, tokenizer)
    metrics = loop.train(
        spec, run_dir, model, tokenizer, train_ds, eval_ds, None, make=partial(_make, ref=ref)
    )
    return tuning.record_peak_memory(run_dir, metrics)


def _make(spec, run_dir, model, tokenizer, train_ds, eval_ds, collator, ref=None):
    p = spec.preference
    config = {"beta": p.beta, "loss_type": [p.loss], "precompute_ref_log_probs": p.reference == "precomputed"}
    trainer = tuning.make(Trainer, DPOConfig, spec, run_dir, model, tokenizer, train_ds, eval_ds,
                          ref_model=ref, config=config)  # fmt: skip
    tuning.drop_fresh_reference_adapter(trainer, spec)
    return trainer
