"""The classification stages (cls, ner): their settings, what of a language model's spec does not
apply to them, every record's label against the label set; and AdaLoRA's budget schedule, which
must fit the run before the model loads."""

from __future__ import annotations

import contextlib

from runner.core import stages
from runner.core.jobspec.checks.context import Context, changed, either, unset
from runner.core.jobspec.checks.model import run_adapter
from runner.core.jobspec.job import ClassificationSpec, EvalSpec, JobSpec
from runner.core.jobspec.partial import Unchecked

_NO_TEXT = "a classifier writes no text: eval's settings are stage eval's generation settings"


def settings(spec: JobSpec, at: Context) -> None:
    """classification.* belongs to the classification stages, and what they take of it."""
    stage = stages.STAGES[spec.stage]
    section = spec.classification
    if not stage.data.classify:
        for key in ClassificationSpec.model_fields:
            if changed(section, key):
                at.add(("classification", key), f"applies to stage {either(stages.CLASSIFYING)} only, not "
                                                 f"'{stage.name}'; remove it")  # fmt: skip
        return
    if section.multi_label and stage.data.classify == "token":
        at.add(("classification", "multi_label"), f"stage '{stage.name}' gives each word one tag; multi_label "
                                                  "is for labelling whole texts (stage cls); remove it")  # fmt: skip
    if section.labels is not None and len(section.labels) < 2 and not section.multi_label:
        at.add(("classification", "labels"), f"names {len(section.labels)} label; a classifier chooses among two "
                                             "or more (for one yes/no label, set multi_label: true)")  # fmt: skip
    if changed(section, "threshold") and not section.multi_label:
        at.add(("classification", "threshold"), "applies to multi_label only (one label per text is the most "
                                                "probable one); remove it or set multi_label: true")  # fmt: skip


def not_for_a_classifier(spec: JobSpec, at: Context) -> None:
    """Generation settings, a chat adapter to continue, registry entries: none applies to a classifier."""
    stage = stages.STAGES[spec.stage]
    if not stage.data.classify:
        return
    for key in EvalSpec.model_fields:
        if changed(spec.eval, key):
            at.add(("eval", key), f"does not apply to stage '{stage.name}' ({_NO_TEXT}); remove it")
    if spec.model.adapter is not None:
        at.add(("model", "adapter"), f"stage '{stage.name}' trains a new head and adapter; to go on from an "
                                     "earlier classifier, export it (runner export RUN) and set model.path to "
                                     "the export")  # fmt: skip
    for i, ds in enumerate(spec.data.datasets):
        with contextlib.suppress(Unchecked):
            if ds.name and not ds.path:
                at.add(("data", "datasets", i, "name"),
                       f"dataset_info.json entries hold conversations (alpaca, sharegpt); stage '{stage.name}' "
                       f"reads {stage.data.what}: give the file as path: FILE (format: {stage.data.formats[0]})")  # fmt: skip


def labels(spec: JobSpec, at: Context) -> None:
    """Every record's label, read as training reads it, against the label set."""
    from runner.core.data import labels as reader

    stage = stages.STAGES[spec.stage]
    if not (at.read and stage.data.classify):
        return
    section = spec.classification
    for i, ds in enumerate(spec.data.datasets):
        with contextlib.suppress(Unchecked):
            path = ds.path
            if not path or unset(path) or ds.format not in reader.FORMATS or not (at.base / path).exists():
                continue  # reported by the data checks
            local = ds.model_copy(update={"path": str(at.base / path)})
            where = f"data.datasets[{i}]"
            errors, total = reader.check(local, where, section.labels, stage.data.classify,
                                         section.multi_label, spec.stage)  # fmt: skip
            loc = ("data", "datasets", i, "path")
            for e in errors:
                at.add(loc, e.text(path))
            if total > len(errors):
                at.add(loc, f"{path}: {total - len(errors)} more record(s) with a label the label set does not "
                            "take after these")  # fmt: skip


def adalora(spec: JobSpec, at: Context) -> None:
    """AdaLoRA prunes its ranks from init_r down to target_r between tinit and the last tfinal steps:
    the targets and the schedule must leave it something to do, and every step's gradients must be
    there to score the weights by."""
    method = spec.method
    if method.type != "adalora":
        return
    if method.target_r >= method.init_r:
        at.add(("method", "target_r"), f"is {method.target_r}, not below init_r ({method.init_r}): AdaLoRA "
                                       "prunes ranks from init_r down to target_r; lower target_r or raise "
                                       "init_r (or use method lora for a fixed rank)")  # fmt: skip
    steps = spec.training.max_steps
    if steps > 0 and method.tinit + method.tfinal >= steps:
        at.add(("method", "tinit"), f"is {method.tinit} and tfinal {method.tfinal}: with training.max_steps "
                                    f"{steps} they leave no step to reallocate the rank budget in (AdaLoRA "
                                    f"prunes after tinit and before the last tfinal steps); keep tinit + tfinal "
                                    f"below {steps}")  # fmt: skip
    if spec.distributed.deepspeed is not None:
        at.add(("distributed", "deepspeed"), "does not combine with method adalora: DeepSpeed steps and clears "
                                             "the gradients inside its backward pass, before the hook where AdaLoRA "
                                             "scores the weights by them; train without DeepSpeed (DDP)")  # fmt: skip
    if spec.model.adapter is not None:
        at.add(("model", "adapter"), "AdaLoRA starts a new adapter at init_r and prunes it; continue an adapter "
                                     "with the method that trained it, or leave out model.adapter")  # fmt: skip
    stage = stages.STAGES[spec.stage]
    if spec.preference.reference == "precomputed" and stage.data.preference:
        at.add(("preference", "reference"), "precomputed keeps no reference model, so TRL would keep its "
                                            "reference as a second adapter beside the trained one, which PEFT's "
                                            "AdaLoRA refuses (one adapter only); use auto or copy (a frozen copy "
                                            "of the model)")  # fmt: skip
    if method.orth_reg_weight and stage.data.preference:
        at.add(("method", "orth_reg_weight"), f"cannot apply to stage '{stage.name}': its trainer computes the "
                                              "loss outside the model, where PEFT adds the penalty; remove it")  # fmt: skip


def evaluation(spec: JobSpec, at: Context) -> None:
    """Stage eval: a classifier is scored on labelled data of its kind, a language model on conversations."""
    from runner.core.data.labels import classifier_of

    if stages.STAGES[spec.stage].trains or at.model_dir is None or spec.eval.benchmark is not None:
        return
    adapter = spec.model.adapter
    where = run_adapter(adapter, at.base) if adapter and not unset(adapter) else None
    if adapter and (where is None or not where.is_dir()):
        return  # reported by the model checks
    kind = classifier_of(at.model_dir, where)
    wanted = {"classification": "sequence", "tagging": "token"}
    for i, ds in enumerate(spec.data.datasets):
        with contextlib.suppress(Unchecked):
            data_kind = wanted.get(ds.format)
            if data_kind == kind:
                continue
            loc = ("data", "datasets", i, "format")
            if kind is None:
                at.add(loc, f"'{ds.format}' is a classifier's test set, and the model is a language model (no "
                            "classification head); evaluate it on conversations (alpaca, sharegpt)")  # fmt: skip
            else:
                fmt = next(f for f, k in wanted.items() if k == kind)
                what = "labels whole texts" if kind == "sequence" else "tags words"
                at.add(loc, f"the model is a classifier that {what}: evaluate it on data in format {fmt} "
                            f"(got '{ds.format}')")  # fmt: skip


CHECKS = (settings, not_for_a_classifier, labels, adalora, evaluation)
