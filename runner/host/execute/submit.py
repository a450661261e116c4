"""submit: a validated spec becomes a run directory and a running process."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from runner.core.errors import RunError
from runner.core.jobspec.load import load_job
from runner.core.launch import prepare
from runner.core.rundir import RunRecord
from runner.host.execute.docker import DockerExecutor
from runner.host.execute.local import LocalExecutor
from runner.host.execute.slurm import SlurmExecutor

EXECUTORS = {"local": LocalExecutor, "docker": DockerExecutor, "slurm": SlurmExecutor}
# Executors whose job outlives the command that started it.
DETACHABLE = ("docker", "slurm")


def submit(
    spec_path: str | Path, executor: str, sink: Callable[[bytes], None], base: Path | None = None,
    detach: bool = False, image: str | None = None,
) -> RunRecord:  # fmt: skip
    """Run a job to its end (or start it, detached); the record on disk says how it went."""
    if executor not in EXECUTORS:
        raise RunError(f"unknown executor '{executor}'; available: {', '.join(EXECUTORS)}")
    if detach and executor not in DETACHABLE:
        raise RunError(
            "--detach needs the docker or slurm executor (a container or a Slurm job outlives this command)"
        )
    runner_ = EXECUTORS[executor](sink, tty=sys.stdout.isatty())
    record, spec = prepare(spec_path, base, runner_, image=image)
    if detach:
        runner_.start(record, spec)
    else:
        runner_.run(record, spec)
    return record


def resume(record: RunRecord, sink: Callable[[bytes], None], detach: bool = False) -> RunRecord:
    """Continue a stopped or failed run in place, from its newest complete checkpoint, with the
    executor it ran on."""
    if record.status in ("running", "succeeded"):
        raise RunError(f"run {record.id} is {record.status}; only a stopped or failed run resumes")
    name = record.executor if record.executor in EXECUTORS else "local"
    if detach and name not in DETACHABLE:
        raise RunError(
            "--detach needs the docker or slurm executor (a container or a Slurm job outlives this command)"
        )
    spec = load_job(record.dir.spec_file)
    executor = EXECUTORS[name](sink, tty=sys.stdout.isatty())
    executor.check(spec)
    if detach:
        executor.start(record, spec, resume=True)
    else:
        executor.run(record, spec, resume=True)
    return record
