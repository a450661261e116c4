"""The part every stage shares: TrainingArguments from the spec, the Trainer, the save."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import sys
from pathlib import Path

from transformers import PrinterCallback, Trainer, TrainingArguments, set_seed

from runner.core import atomic
from runner.core.errors import UnsupportedError
from runner.core.jobspec.job import PROMPT_LEARNING, JobSpec
from runner.core.rundir import RunDir
from runner.train import checkpoint, compat, dataset, memory
from runner.train.callbacks import MetricsCallback, ShareFiles, StopOnSignal, share
from runner.train.dataset import LENGTH
from runner.train.model import count_parameters, device_type, liger, precision
from runner.train.reporting import reporters

log = logging.getLogger(__name__)


def training_arguments(
    spec: JobSpec,
    run_dir: Path,
    has_eval: bool,
    checkpointing: memory.Checkpointing | None = None,
    args_class: type[TrainingArguments] = TrainingArguments,
    **extra,
) -> TrainingArguments:
    """`checkpointing`: what memory.plan chose under training.memory_cap_gib; else the spec's.
    `args_class` and `extra`: a subclass's own settings (TRL's configs for the preference stages)."""  # fmt: skip
    t = spec.training
    cpu = device_type() == "cpu"
    if cpu and spec.distributed.deepspeed and os.environ.get("DS_ACCELERATOR") != "cpu":
        raise UnsupportedError("distributed.deepspeed needs CUDA GPUs; none is visible here")
    dtype = precision(spec)
    adam_epsilon = t.adam_epsilon
    if dtype == "fp16" and "adam_epsilon" not in t.model_fields_set:
        # float16 underflows AdamW's default 1e-8 in its denominator; fp16 recipes use 1e-4.
        adam_epsilon = 1e-4
        log.info("fp16: adam_epsilon 1e-4 (set training.adam_epsilon to override)")
    log.info("precision: %s", dtype)
    checkpointing = checkpointing or memory.Checkpointing(
        t.gradient_checkpointing, t.checkpoint_every_n_layers, t.offload_activations and not cpu
    )
    if cpu and t.offload_activations:
        log.warning("offload_activations: on CPU the activations are in host memory already; ignored")
    eval_steps = t.eval_steps or t.save_steps
    batch, accumulation = t.per_device_train_batch_size, t.gradient_accumulation_steps
    if t.micro_batch_tokens:  # the Trainer takes whole steps; RunnerTrainer splits them by tokens
        batch, accumulation = batch * accumulation, 1
    return args_class(
        output_dir=str(RunDir(run_dir).checkpoints),
        learning_rate=t.learning_rate,
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=batch,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=accumulation,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_steps or t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        adam_epsilon=adam_epsilon,
        optim=t.optim,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=eval_steps if has_eval else None,
        seed=t.seed,
        bf16=dtype == "bf16",
        fp16=dtype == "fp16",
        **_checkpointing(checkpointing),
        dataloader_num_workers=t.dataloader_num_workers
        if t.dataloader_num_workers is not None
        else (0 if cpu else 2),
        dataloader_pin_memory=not cpu,
        use_liger_kernel=liger(spec),
        train_sampling_strategy=t.train_sampling_strategy,
        length_column_name=LENGTH,
        torch_compile=t.torch_compile,
        use_cpu=cpu,
        deepspeed=str(RunDir(run_dir).deepspeed_config) if spec.distributed.deepspeed else None,
        ddp_find_unused_parameters=False,
        report_to="none",
        disable_tqdm=not (sys.stderr.isatty() or os.environ.get("RUNNER_TTY") == "1"),
        remove_unused_columns=False,
        save_only_model=False,
        **extra,
    )


def _checkpointing(c: memory.Checkpointing) -> dict:
    """transformers 5 calls it activation checkpointing, and takes selective (every n-th layer)
    and offloaded variants through its kwargs."""
    if not c.on:
        return {"activation_checkpointing": False}
    kwargs = {"use_reentrant": False, "every_n_layers": c.every_n_layers, "offload": c.offload}
    return {"activation_checkpointing": True, "activation_checkpointing_kwargs": kwargs}


@contextlib.contextmanager
def model_loading(spec: JobSpec, run_dir: Path):
    """Around loading the model and applying the method. Under ZeRO-3 the weights are partitioned
    across the ranks as they load, so no rank ever holds the whole model: transformers does that
    while a DeepSpeed config is live, which the TrainingArguments carrying it make it. They are
    made here, before from_pretrained, and kept alive through it."""
    ds = spec.distributed.deepspeed
    args = training_arguments(spec, run_dir, has_eval=False) if ds is not None and ds.zero == 3 else None
    if args is not None:
        import deepspeed

        log.info("ZeRO-3: loading the model partitioned over %d process(es)", args.world_size)  # joins them
        deepspeed.init_distributed()  # DeepSpeed's view of that process group (on CPU it has none yet)
    try:
        yield
        # ru_maxrss: KiB on Linux; the process's peak so far, so loading's unless something before it was larger.
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        log.info("model loaded: peak RSS %.0f MiB on rank %d", peak, int(os.environ.get("RANK", 0)))
    finally:
        del args


class Resumable(compat.CommittedCheckpoints, compat.StopAtMaxSteps):
    """What every stage's trainer is made of besides its library class (transformers' Trainer for
    sft and pt, TRL's for rm, dpo and kto): checkpoints committed whole (checkpoint.py) and the
    resume rules. `train` refuses a trainer that saves checkpoints without it."""


class RunnerTrainer(Resumable, compat.TokenBudgetSteps, compat.LogitsOnTargets, Trainer):
    """The HF Trainer as sft and pt train with it: committed checkpoints, token-budget steps
    (`micro_batch_tokens`) and logits at trained positions only (`targets_only`)."""


def make_trainer(spec: JobSpec, run_dir: Path, model, tokenizer, train_ds, eval_ds, collator) -> Trainer:
    """The Trainer a job trains with (the benchmark times this same object)."""
    checkpointing = None
    if spec.training.memory_cap_gib:
        if liger(spec):  # the probe must see the fused loss the Trainer patches in at train()
            from transformers.integrations.liger import apply_liger_kernel

            apply_liger_kernel(model, None)
        checkpointing = memory.plan(spec, model)
    args = training_arguments(spec, run_dir, has_eval=eval_ds is not None, checkpointing=checkpointing)
    optimizers = (
        (_loraplus_optimizer(spec, model, args), None)
        if getattr(spec.method, "loraplus_lr_ratio", None)
        else (None, None)
    )
    trainer = RunnerTrainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
        data_collator=collator, processing_class=tokenizer, optimizers=optimizers,
        callbacks=[MetricsCallback(run_dir, plain=args.disable_tqdm), ShareFiles(), *reporters(spec, run_dir)],
    )  # fmt: skip
    trainer.remove_callback(PrinterCallback)  # MetricsCallback prints readable lines instead
    trainer.micro_batch_tokens = spec.training.micro_batch_tokens
    if trainer.micro_batch_tokens and not trainer.model_accepts_loss_kwargs:
        raise UnsupportedError(
            "training.micro_batch_tokens: this model's forward cannot scale its loss by the step's "
            "token count, so passes of different sizes would be weighted wrongly; remove "
            "micro_batch_tokens and set per_device_train_batch_size instead"
        )
    trainer.targets_only = (
        spec.training.logits_on_targets_only
        and not args.use_liger_kernel
        and spec.method.type not in PROMPT_LEARNING
        and compat.takes_logits_to_keep(model)
    )
    return trainer


def train(spec: JobSpec, run_dir: Path, model, tokenizer, train_ds, eval_ds, collator, make=None) -> dict:
    """Train (continuing from the newest complete checkpoint when RUNNER_RESUME=1), save the
    result and return the final metrics (also written to results.json). `make`: builds the
    Trainer in place of make_trainer (the preference stages' TRL trainers)."""
    run = RunDir(run_dir)
    trainable, total = count_parameters(model)
    log.info("trainable params: %s of %s (%.4f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    trainer = (make or make_trainer)(spec, run_dir, model, tokenizer, train_ds, eval_ds, collator)
    if trainer.args.save_strategy != "no" and not isinstance(trainer, Resumable):
        raise TypeError(f"{type(trainer).__name__} saves checkpoints without runner.train.trainer.Resumable")
    trainer.add_callback(stop := StopOnSignal())
    if spec.method.type == "adalora":  # its rank budget is reallocated after every optimizer step
        from runner.train.adalora import RankBudget

        trainer.add_callback(RankBudget())
    resume = None
    if os.environ.get("RUNNER_RESUME") == "1":
        main = trainer.is_world_process_zero()
        resume = checkpoint.latest_checkpoint(run.checkpoints, quiet=not main)
        trainer.accelerator.wait_for_everyone()  # every rank chose before the unfinished saves go
        if main:
            checkpoint.clear_staging(run.checkpoints)
        if resume:
            log.info("resuming from %s", resume)
        else:
            log.warning("no complete checkpoint in %s: training starts from step 0", run.checkpoints)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if stop.requested:
        log.info("stopped at step %d; checkpoint saved; `runner resume` continues", result.global_step)
        return {"stopped": True, "global_step": result.global_step}
    if trainer.is_world_process_zero():
        checkpoint.clear_staging(run.checkpoints)
    out = run.output(spec.method.type, continues_adapter=bool(spec.model.adapter))
    model.config.use_cache = True  # the saved model generates with a cache again
    try:
        trainer.save_model(str(out))  # every rank must call it (ZeRO-3 gathers the weights)
    except Exception as e:
        if trainer.is_world_process_zero() and checkpoint.is_disk_full(e, run.checkpoints):
            raise checkpoint.model_disk_full_error(out, run.checkpoints, run.id) from None
        raise
    evaluated = trainer.evaluate() if eval_ds is not None else {}
    if not trainer.is_world_process_zero():
        return {}
    tokenizer.save_pretrained(str(out))
    share(out)
    metrics = {**result.metrics, "trainable_params": trainable, "total_params": total,
               "train_samples": len(train_ds), "global_step": result.global_step, "output": out.name,
               "world_size": trainer.args.world_size, "data": dict(dataset.last_stats), **evaluated}  # fmt: skip
    atomic.write_text(run.results, json.dumps(metrics, indent=2) + "\n")
    return metrics


def _loraplus_optimizer(spec: JobSpec, model, args: TrainingArguments):
    import torch
    from peft.optimizers import create_loraplus_optimizer

    return create_loraplus_optimizer(
        model=model, optimizer_cls=torch.optim.AdamW, lr=args.learning_rate,
        loraplus_lr_ratio=spec.method.loraplus_lr_ratio, weight_decay=args.weight_decay,
    )  # fmt: skip


def seed_everything(spec: JobSpec) -> None:
    set_seed(spec.training.seed)
