"""What the stage's record (core/stages.py) says it cannot do or must have, refused before anything
starts: a feature it does without, asked for by the spec, and a key it needs, left unset."""

from __future__ import annotations

import contextlib
import typing
from typing import NamedTuple

from runner.core import stages
from runner.core.jobspec.checks.context import Context, changed, either
from runner.core.jobspec.job import METHODS, PROMPT_LEARNING, JobSpec, TrainingSpec
from runner.core.jobspec.partial import Unchecked


class Ask(NamedTuple):
    """How a spec asks for one of stages.FEATURES."""

    section: str
    key: str
    values: tuple[str, ...] = ()  # the values that ask for it; none: any value but the default
    options: tuple[str, ...] = ()  # every value the key takes, to name those the stage takes
    # A switch on by default where the stage has it: asked for only where the spec writes it on.
    written: bool = False


_SAMPLING = typing.get_args(TrainingSpec.model_fields["train_sampling_strategy"].annotation)
ASKS: dict[str, Ask] = {
    "prompt learning": Ask("method", "type", PROMPT_LEARNING, METHODS),
    "packing": Ask("data", "packing"),
    "val_size": Ask("data", "val_size"),
    "micro_batch_tokens": Ask("training", "micro_batch_tokens"),
    "memory_cap_gib": Ask("training", "memory_cap_gib"),
    "gradient_checkpointing": Ask("training", "gradient_checkpointing"),
    "sequential": Ask("training", "train_sampling_strategy", ("sequential",), _SAMPLING),
    "group_by_length": Ask("training", "train_sampling_strategy", ("group_by_length",), _SAMPLING),
    "batch_rebalance": Ask("training", "train_sampling_strategy", ("batch_rebalance",), _SAMPLING),
    "deepspeed": Ask("distributed", "deepspeed"),
    "logits_on_targets_only": Ask("training", "logits_on_targets_only", written=True),
    "adalora": Ask("method", "type", ("adalora",), METHODS),
    "template": Ask("model", "template"),
    "default_system": Ask("model", "default_system"),
}


def unsupported(spec: JobSpec, at: Context) -> None:
    """Every feature the spec asks for that its stage does without, at the key that asks."""
    stage = stages.STAGES[spec.stage]
    for feature, why in stage.unsupported.items():
        ask = ASKS[feature]
        loc = (ask.section, ask.key)
        try:
            section = getattr(spec, ask.section)
            value = getattr(section, ask.key)
        except Unchecked:
            continue  # the schema refused it
        if ask.written:
            if value and ask.key in section.model_fields_set:
                at.add(loc, f"does not apply to stage '{stage.name}' ({why}); remove it")
        elif not ask.values and changed(section, ask.key):
            at.add(loc, f"does not apply to stage '{stage.name}' ({why}); remove it")
        elif value in ask.values:
            taken = [o for o in ask.options if o not in _refused(stage, ask.section, ask.key)]
            at.add(loc, f"stage '{stage.name}' does not take '{value}' ({why}); use {either(taken)}")


def needs(spec: JobSpec, at: Context) -> None:
    """Every key the stage needs, set."""
    stage = stages.STAGES[spec.stage]
    for key, what in stage.needs.items():
        section, name = key.split(".")
        with contextlib.suppress(Unchecked):  # the schema refused it
            if getattr(getattr(spec, section), name) is None:
                at.add(("stage",), f"stage {stage.name} needs {what}")


def _refused(stage: stages.Stage, section: str, key: str) -> set[str]:
    """The values of one key that ask for features the stage does without."""
    asks = (ASKS[f] for f in stage.unsupported)
    return {v for ask in asks if (ask.section, ask.key) == (section, key) for v in ask.values}


CHECKS = (unsupported, needs)
