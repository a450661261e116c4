"""What every check is given: where the spec's paths start, what it found so far, and what the
checks before it learned (the model directory, once it proved to be one)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from runner.core.jobspec.job import JobSpec
from runner.core.jobspec.yaml_loader import Loc

Found = list[tuple[Loc, str]]


@dataclass
class Context:
    base: Path  # relative paths in the spec start here
    writes: Path | None = None  # a run's own re-check: the run directory it writes into
    read: bool = True  # read every record of the data
    found: Found = field(default_factory=list)
    model_dir: Path | None = None  # model.path, once checked to be a readable model directory
    # runner starts this node itself (validate, submit): a multi-node rendezvous address must be
    # in the spec. False where a launcher gives it (render --target hosts|k8s|slurm, a node's job).
    launched_here: bool = False

    def add(self, loc: Loc, message: str) -> None:
        self.found.append((loc, message))


# A check: it reads the typed spec and adds what is wrong to the context. Reading a part of the
# spec that failed validation raises partial.Unchecked, which skips the rest of that check.
Check = Callable[[JobSpec, Context], None]


def unset(value: str) -> bool:
    """A value holding an unset ${VAR}: yaml_loader reported it, and it names no real path."""
    return "${" in value


def changed(section: BaseModel, key: str) -> bool:
    """Whether the spec asks for something with this key: its value differs from the schema's
    default (a run's resolved spec lists every default, so writing one out asks for nothing)."""
    value: Any = getattr(section, key)
    return value != type(section).model_fields[key].get_default(call_default_factory=True)


def either(options: list[str] | tuple[str, ...]) -> str:
    """a, b or c."""
    return options[0] if len(options) == 1 else f"{', '.join(options[:-1])} or {options[-1]}"
