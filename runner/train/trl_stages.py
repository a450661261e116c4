"""What the preference stages (rm, dpo, kto, ppo) share: TRL's trainers on runner's training loop.

Each stage tokenizes its data with the job's chat template (runner/core/data/preference.py), builds
the model as sft does, and hands both to a TRL trainer made here with the same training
arguments, callbacks and saving as every other stage (runner/train/trainer.py). rm, dpo and kto
subclass their TRL trainer with `Preference`: checkpoints committed whole and resumed as sft's
are. Token-budget steps and logits at trained positions only are sft's and pt's: the TRL
trainers batch pairs and compute their losses themselves (core/stages.py says so per stage).
"""

from __future__ import annotations

import json
import logging
import os
import resource
from pathlib import Path

from transformers import PrinterCallback

from runner.core import stages
from runner.core.jobspec.job import JobSpec
from runner.core.rundir import RunDir
from runner.train import compat
from runner.train import trainer as loop
from runner.train.callbacks import MetricsCallback, ShareFiles
from runner.train.methods import PEFT_METHODS
from runner.train.model import fit_vocab, load_model
from runner.train.reporting import reporters

log = logging.getLogger(__name__)


class Preference(compat.AdapterOnlySave, loop.Resumable):
    """What rm, dpo and kto's TRL trainers get: committed checkpoints and sft's resume rules
    (runner/train/trainer.py), and a saved adapter without the reference's copy."""


def tell_not_applied(spec: JobSpec) -> None:
    """One line for each of sft's switches, on by default, that this stage's trainer does without
    (core/stages.py says which, and why; the spec checks refuse one the user wrote on)."""
    stage = stages.STAGES[spec.stage]
    for feature in ("logits_on_targets_only",):
        why = stage.unsupported.get(feature)
        if why and getattr(spec.training, feature):
            log.info("training.%s does not apply to stage %s (%s)", feature, spec.stage, why)


def make(
    trainer_cls, config_cls, spec: JobSpec, run_dir: Path, model, tokenizer, train_ds, eval_ds, **kwargs
):
    """A TRL trainer: `config` (the TRL config's own settings), or `args` made already, and the
    trainer's other arguments (ref_model) in kwargs."""
    tell_not_applied(spec)
    config = kwargs.pop("config", {})
    args = kwargs.pop("args", None) or loop.training_arguments(
        spec, run_dir, has_eval=eval_ds is not None, args_class=config_cls, max_length=spec.data.cutoff_len,
        **config,
    )  # fmt: skip
    optimizers = (None, None)
    if getattr(spec.method, "loraplus_lr_ratio", None):
        optimizers = (loop._loraplus_optimizer(spec, model, args), None)
    trainer = trainer_cls(
        model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
        optimizers=optimizers,
        callbacks=[MetricsCallback(run_dir, plain=args.disable_tqdm), ShareFiles(), *reporters(spec, run_dir)],
        **kwargs,
    )  # fmt: skip
    trainer.remove_callback(PrinterCallback)  # MetricsCallback prints readable lines instead
    return trainer


def reference_model(spec: JobSpec, tokenizer):
    """The frozen copy of the starting model that dpo and kto compare with, or None where none is
    kept: an adapter method (the adapter switched off is the reference) or precomputed log-probs.
    AdaLoRA keeps the copy: TRL would hold the reference as a second adapter beside the trained one,
    and PEFT's AdaLoRA model takes one adapter only."""
    choice = spec.preference.reference
    adapter = spec.method.type in PEFT_METHODS and spec.method.type != "adalora"
    if choice == "precomputed" or (choice == "auto" and adapter):
        return None
    ref = load_model(spec)
    fit_vocab(ref, tokenizer)
    if spec.model.adapter:  # the reference is where training starts: base and adapter, merged
        from peft import PeftModel

        ref = PeftModel.from_pretrained(ref, spec.model.adapter).merge_and_unload()
    ref.requires_grad_(False)
    log.info("reference: a frozen copy of the model")
    return ref.eval()


def drop_fresh_reference_adapter(trainer, spec: JobSpec) -> None:
    """TRL copies the adapter under the name 'ref' to serve as the reference. A new adapter starts
    at zero, so the model with the adapter switched off is that same reference: the copy goes.
    Continuing an adapter (model.adapter), the copy is the reference and stays (it is adapter-sized)."""
    peft_model = trainer.accelerator.unwrap_model(trainer.model)
    configs = getattr(peft_model, "peft_config", {})
    if "ref" in configs and not spec.model.adapter:
        peft_model.delete_adapter("ref")
    if spec.method.type in PEFT_METHODS and trainer.ref_model is None:
        kept = (
            "a frozen copy of the starting adapter" if "ref" in configs else "the base, adapter switched off"
        )
        log.info("reference: %s (no copy of the model)", kept if spec.preference.reference == "auto" else
                 "log-probs precomputed before training")  # fmt: skip


def record_peak_memory(run_dir: Path, metrics: dict) -> dict:
    """The training process's peak resident memory, in results.json (for comparing references)."""
    if not metrics or metrics.get("stopped"):
        return metrics
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    metrics["peak_rss_mib"] = round(peak, 1)
    log.info("peak RSS %.0f MiB on rank %d", peak, int(os.environ.get("RANK", 0)))
    results = RunDir(run_dir).results
    if results.exists():
        saved = json.loads(results.read_text(encoding="utf-8"))
        saved["peak_rss_mib"] = metrics["peak_rss_mib"]
        results.write_text(json.dumps(saved, indent=2) + "\n", encoding="utf-8")
    return metrics
