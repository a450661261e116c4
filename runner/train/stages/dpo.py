"""Stage dpo: direct preference optimization on pairs.

Losses sigmoid (DPO), ipo and hinge run on TRL's DPOTrainer against a reference model
(tuning.reference_model). The reference-free losses run on TRL's experimental trainers, on the
same tokenized pairs: orpo (ORPOTrainer: the sft loss on chosen plus an odds-ratio term, weighted
by beta) and simpo (CPOTrainer with loss_type simpo and no sft term: length-normalized
log-probabilities with a target margin).
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from trl import DPOConfig, DPOTrainer

from runner.core.jobspec.job import JobSpec
from runner.train import compat, dataset
from runner.train import trainer as loop
from runner.train import trl_stages as tuning
from runner.train.methods import apply_method
from runner.train.model import fit_vocab, load_model, tokenizer_for

REFERENCE_FREE = ("orpo", "simpo")


class Trainer(compat.TokenizedPairs, tuning.Preference, DPOTrainer):
    """TRL's DPO on runner's tokenized pairs, checkpoints committed as sft's are."""


def run(spec: JobSpec, run_dir: Path) -> dict:
    loop.seed_everything(spec)
    tokenizer = tokenizer_for(spec)
    train_ds, eval_ds = dataset.build(spec, tokenizer)
    reference_free = spec.preference.loss in REFERENCE_FREE
    with loop.model_loading(spec, run_dir):
        model = load_model(spec)
        model = apply_method(model, spec, train_embeddings=fit_vocab(model, tokenizer))
        ref = None if reference_free else tuning.reference_model(spec, tokenizer)
    make = _make_reference_free if reference_free else partial(_make, ref=ref)
    metrics = loop.train(spec, run_dir, model, tokenizer, train_ds, eval_ds, None, make=make)
    return tuning.record_peak_memory(run_dir, metrics)


def _make(spec, run_dir, model, tokenizer, train_ds, eval_ds, collator, ref=None):
    p = spec.preference
    config = {"beta": p.beta, "loss_type": [p.loss], "precompute_ref_log_probs": p.reference == "precomputed"}
    trainer = tuning.make(Trainer, DPOConfig, spec, run_dir, model, tokenizer, train_ds, eval_ds,
                          ref_model=ref, config=config)  # fmt: skip
    tuning.drop_fresh_reference_adapter(trainer, spec)
    return trainer


def _reference_free_classes(loss: str):
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # the API is pinned with the image's lock
    if loss == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        base, config_cls = ORPOTrainer, ORPOConfig
    else:
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        base, config_cls = CPOTrainer, CPOConfig

    class PairTrainer(compat.TokenizedPairRows, tuning.Preference, base):
        pass

    return PairTrainer, config_cls


def _make_reference_free(spec, run_dir, model, tokenizer, train_ds, eval_ds, collator):
    p = spec.preference
    trainer_cls, config_cls = _reference_free_classes(p.loss)
    config = {"beta": p.beta, "max_completion_length": spec.data.cutoff_len}
    if p.loss == "simpo":
        config |= {"loss_type": "simpo", "cpo_alpha": 0.0}
    return tuning.make(
        trainer_cls, config_cls, spec, run_dir, model, tokenizer, train_ds, eval_ds, config=config
    )
