"""Stage kto: Kahneman-Tversky optimization on unpaired answers labelled desirable or not
(TRL's KTOTrainer), against a reference model chosen as for dpo (tuning.reference_model)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from trl import KTOConfig, KTOTrainer

from runner.core.jobspec.job import JobSpec
from runner.train import compat, dataset
from runner.train import trainer as loop
from runner.train import trl_stages as tuning
from runner.train.methods import apply_method
from runner.train.model import fit_vocab, load_model, tokenizer_for


class Trainer(compat.TokenizedUnpaired, tuning.Preference, KTOTrainer):
    """TRL's KTO on runner's tokenized answers, checkpoints committed as sft's are."""


def run(spec: JobSpec, run_dir: Path) -> dict:
    loop.seed_everything(spec)
    tokenizer = tokenizer_for(spec)
    train_ds, eval_ds = dataset.build(spec, tokenizer)
    # KTO's KL pairs are fixed neighbours in a batch, so batches keep one order: shuffled once here.
    if spec.training.train_sampling_strategy == "random":
        train_ds = train_ds.shuffle(seed=spec.training.seed)
    training = spec.training.model_copy(update={"train_sampling_strategy": "sequential"})
    spec = spec.model_copy(update={"training": training})
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
    config = {"beta": p.beta, "desirable_weight": p.desirable_weight, "undesirable_weight": p.undesirable_weight,
              "precompute_ref_log_probs": p.reference == "precomputed"}  # fmt: skip
    trainer = tuning.make(Trainer, KTOConfig, spec, run_dir, model, tokenizer, train_ds, eval_ds,
                          ref_model=ref, config=config)  # fmt: skip
    tuning.drop_fresh_reference_adapter(trainer, spec)
    return trainer
