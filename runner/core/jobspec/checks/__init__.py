"""Checks that need more than one field, or the file system, on the validated spec.

They read typed sections, so every default comes from the schema. When part of a spec fails
validation, they run on the parts that validated (jobspec/partial.py): a check that reads a part
that failed is skipped, and the schema's error and every other check's findings are reported
together, in one pass. A check reports (location, message); the location is the key's dotted
path, which load maps to its line and column (or its nearest written parent's).

One module per concern: model (its directory, adapter, template), data (files, registry
entries, every record), stage (what the stage's record refuses or needs), preference (dpo's
losses, ppo's reward model), training (method, loop and distributed combinations), classify
(the classification stages' labels and settings, AdaLoRA's schedule), files.
"""

from __future__ import annotations

import contextlib
import contextvars
from pathlib import Path

from runner.core.jobspec.checks import classify, data, files, model, preference, stage, training
from runner.core.jobspec.checks.context import Check, Context, Found
from runner.core.jobspec.checks.files import is_hub_id, unreadable
from runner.core.jobspec.checks.model import earlier_run, run_adapter
from runner.core.jobspec.checks.preference import tokenizer_difference
from runner.core.jobspec.job import JobSpec
from runner.core.jobspec.partial import Unchecked

__all__ = [
    "CHECKS", "Found", "check", "earlier_run", "is_hub_id", "reading_data", "run_adapter",
    "tokenizer_difference", "unreadable",
]  # fmt: skip

# In order: a later check may use what an earlier one learned (model.model_dir sets the model).
CHECKS: tuple[Check, ...] = (
    *model.CHECKS, *stage.CHECKS, *preference.CHECKS, *data.CHECKS, *training.CHECKS, *classify.CHECKS,
    *files.CHECKS,
)  # fmt: skip
# Whether the checks read every record of the data (`runner validate --no-data` turns it off).
_READ_DATA = contextvars.ContextVar("read_data", default=True)


@contextlib.contextmanager
def reading_data(enabled: bool):
    """Within this block, check() reads the data (enabled) or only looks at its files."""
    token = _READ_DATA.set(enabled)
    try:
        yield
    finally:
        _READ_DATA.reset(token)


def check(spec: JobSpec, base: Path, writes: Path | None = None, launched_here: bool = False) -> Found:
    """Every problem beyond the schema: (location, message). `writes`: the run directory a run's
    own re-check writes into, checked instead of output.dir; that re-check leaves reading the
    data to the training that follows. `launched_here`: runner starts the node itself (validate,
    submit), so the spec must say where a multi-node rendezvous is."""
    at = Context(base, writes, read=writes is None and _READ_DATA.get(), launched_here=launched_here)
    for one in CHECKS:
        with contextlib.suppress(Unchecked):  # it read a part the schema refused, and reported
            one(spec, at)
    return at.found
