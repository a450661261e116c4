"""AdaLoRA (PEFT): its config from the spec, and the step hook its rank budget needs.

AdaLoRA keeps each adapted matrix as P diag(E) Q and, between `tinit` and the last `tfinal` steps,
prunes the singular values whose weights matter least, by a cubic schedule from init_r per matrix
down to target_r on average. PEFT does that in `update_and_allocate(step)`, which must run after
every optimizer step and before the gradients are cleared, because it scores each weight by
|w * grad|. `RankBudget` is that hook, as a Trainer callback (`on_optimizer_step`, transformers'
public event between the optimizer's step and `zero_grad`): every stage that trains through
transformers' Trainer loop (pt, sft, rm, dpo, kto, cls, ner) gets it from runner/train/trainer.py.

The schedule's length (PEFT's total_step) is the run's own step count, known once the Trainer has
counted the steps its epochs make (`state.max_steps` at train begin); the config is made with a
provisional one and corrected there, before the first step.
"""

from __future__ import annotations

import logging

from transformers import TrainerCallback

from runner.core.errors import RunnerError
from runner.core.jobspec.job import JobSpec

log = logging.getLogger(__name__)
ORTH_REG_WEIGHT = 0.5  # PEFT's default


def config(spec: JobSpec, whole: list[str] = (), within: list[str] = ()):
    """`whole`: modules trained in full beside the adapter; `within`: the modules no adapter may target."""
    import peft

    from runner.core import stages

    m = spec.method
    steps = spec.training.max_steps
    provisional = steps if steps > 0 else m.tinit + m.tfinal + 1  # RankBudget sets the real one
    orth = m.orth_reg_weight
    if orth is None:  # added to the loss by the model: where a trainer computes the loss, it cannot be
        orth = 0.0 if stages.STAGES[spec.stage].data.preference else ORTH_REG_WEIGHT
    return peft.AdaLoraConfig(
        task_type=peft.TaskType.CAUSAL_LM, init_r=m.init_r, target_r=m.target_r, tinit=m.tinit, tfinal=m.tfinal,
        deltaT=m.deltaT, beta1=m.beta1, beta2=m.beta2, orth_reg_weight=orth, total_step=provisional,
        lora_alpha=m.alpha or 2 * m.init_r, lora_dropout=m.dropout,
        target_modules="all-linear" if m.target == ["all-linear"] else m.target,
        modules_to_save=list(dict.fromkeys([*m.modules_to_save, *whole])) or None,
        exclude_modules=list(within) or None,
    )  # fmt: skip


def _adalora(model):
    """The AdaLoRA model (PEFT's tuner) under a PeftModel, or None."""
    from peft.tuners.adalora import AdaLoraModel

    tuner = getattr(model, "base_model", None)
    return tuner if isinstance(tuner, AdaLoraModel) else None


class RankBudget(TrainerCallback):
    """Sets the schedule's length at train begin and reallocates the rank budget after every
    optimizer step."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        tuner = _adalora(model)
        if tuner is None:
            raise RunnerError("method adalora: the model under training carries no AdaLoRA adapter")
        cfg = tuner.peft_config[tuner.trainable_adapter_name]
        total = state.max_steps
        if cfg.tinit + cfg.tfinal >= total:
            raise RunnerError(
                f"method adalora: this run makes {total} optimizer steps, and tinit ({cfg.tinit}) + tfinal "
                f"({cfg.tfinal}) leave none to reallocate the rank budget in; lower them below {total}, or "
                "train longer (num_train_epochs, max_steps)"
            )
        cfg.total_step = total
        log.info("adalora: ranks %d -> %d on average over steps %d to %d of %d", cfg.init_r, cfg.target_r,
                 cfg.tinit, total - cfg.tfinal, total)  # fmt: skip

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        tuner = _adalora(model)
        # state.global_step counts the steps before this one, as PEFT's update_and_allocate expects.
        tuner.update_and_allocate(state.global_step)
