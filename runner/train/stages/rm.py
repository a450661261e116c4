"""Stage rm: a reward model, the causal LM with a value head (a one-output `score` layer) trained
on pairs so that the chosen answer scores above the rejected one (TRL's RewardTrainer). The
pairwise accuracy on the eval split is reported as eval_accuracy.

With an adapter method the value head trains in full beside the adapter and is saved with it;
continuing an sft adapter (model.adapter), that adapter is merged into the base first and a new
one trains, since a causal LM's adapter has no value head to continue.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

from trl import RewardConfig, RewardTrainer

from runner.core.jobspec.job import JobSpec
from runner.train import dataset
from runner.train import trainer as loop
from runner.train import trl_stages as tuning
from runner.train.methods import PEFT_METHODS, apply_method
from runner.train.model import attention, fit_vocab, tokenizer_for, weight_dtype

log = logging.getLogger(__name__)
HEAD = "score"  # transformers' name of the value head of *ForSequenceClassification


class Trainer(tuning.Preference, RewardTrainer):
    """TRL's reward trainer (it takes runner's tokenized chosen_ids/rejected_ids as they are),
    checkpoints committed as sft's are."""


def load_reward_model(spec: JobSpec, tokenizer):
    """The base as a sequence classifier with one output, the last real token's score."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        spec.model.path, num_labels=1, local_files_only=True, trust_remote_code=spec.model.trust_remote_code,
        dtype=weight_dtype(spec), attn_implementation=attention(spec), pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    model.config.use_cache = False
    if spec.model.adapter:
        from peft import PeftConfig, PeftModel

        log.info("merging adapter %s into the base; a new adapter and value head train", spec.model.adapter)
        # An sft adapter is a causal LM's (task_type CAUSAL_LM): loaded as a plain adapter, as PEFT's
        # causal-LM wrapper needs generation methods a model with a value head does not have.
        config = PeftConfig.from_pretrained(spec.model.adapter)
        config.task_type = None
        model = PeftModel.from_pretrained(model, spec.model.adapter, config=config).merge_and_unload()
    return model


def run(spec: JobSpec, run_dir: Path) -> dict:
    loop.seed_everything(spec)
    tokenizer = tokenizer_for(spec)
    train_ds, eval_ds = dataset.build(spec, tokenizer)
    fresh = spec.model_copy(update={"model": spec.model.model_copy(update={"adapter": None})})
    with loop.model_loading(spec, run_dir):
        model = load_reward_model(spec, tokenizer)
        grew = fit_vocab(model, tokenizer)
        if spec.method.type in PEFT_METHODS:
            model = apply_method(model, fresh, train_embeddings=grew, task="SEQ_CLS")
        else:
            model = apply_method(model, fresh, train_embeddings=grew)
            for param in getattr(model, HEAD).parameters():  # freeze: the head always trains
                param.requires_grad_(True)
    metrics = loop.train(spec, run_dir, model, tokenizer, train_ds, eval_ds, None, make=partial(_make))
    return tuning.record_peak_memory(run_dir, metrics)


def _make(spec, run_dir, model, tokenizer, train_ds, eval_ds, collator):
    return tuning.make(Trainer, RewardConfig, spec, run_dir, model, tokenizer, train_ds, eval_ds)
