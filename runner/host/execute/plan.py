"""What an executor will run for a job: the command, the environment it sets over the shell's,
and the GPUs its processes see. The executor runs exactly its plan, and `runner plan` prints
it; neither rebuilds it beside the other."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Plan:
    argv: list[str]  # the command: the job's processes, or `docker run` of its container
    env: dict[str, str]  # set over the shell's environment (the local executor; a container's is in argv)
    gpu_names: list[str]  # the GPUs the job's processes see, where known
    container: dict[str, Any] | None = field(default=None)  # the docker executor's container config
    script: str | None = field(default=None)  # the batch script the command submits (a scheduler's)

    def lines(self) -> list[str]:
        out = []
        if self.env:
            out += ["# environment (over this shell's)", *(f"{k}={v}" for k, v in self.env.items())]
        out += ["# command", shlex.join(self.argv)]
        if self.script is not None:
            out += [f"# the batch script it submits ({self.argv[-1]})", *self.script.splitlines()]
        return out
