"""submit: a validated spec becomes a run directory and a running process."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from runner.errors import RunError
from runner.execute.docker import DockerExecutor
from runner.execute.local import LocalExecutor
from runner.execute.runs import RunRecord, new_run_dir, now, register
from runner.render.container import cache_path
from runner.render.deepspeed import render_deepspeed
from runner.render.launch import render_launch
from runner.spec import JobSpec, load_job, resolve, to_yaml

EXECUTORS = {"local": LocalExecutor, "docker": DockerExecutor}


def prepare(spec_path: str | Path, base: Path | None = None, executor=None) -> tuple[RunRecord, JobSpec]:
    """Validate, let the executor refuse what it cannot run, then create the run directory and
    write the resolved spec. Any refusal happens before anything exists on disk."""
    base = base or Path.cwd()
    spec = resolve(load_job(spec_path, base=base), base)
    if executor is not None:
        executor.check(spec)
    run_dir = new_run_dir(spec.output.dir, spec.name)
    if cache := cache_path(spec):
        Path(cache).mkdir(exist_ok=True)  # made here, so it belongs to the user, not to a container
    (run_dir / "spec.yaml").write_text(to_yaml(spec), encoding="utf-8")
    ds_config = render_deepspeed(spec)
    if ds_config is not None:
        (run_dir / "deepspeed.json").write_text(json.dumps(ds_config, indent=2) + "\n", encoding="utf-8")
    record = RunRecord(
        id=run_dir.name, name=spec.name, run_dir=str(run_dir), spec_file=str(spec_path),
        command=render_launch(spec, run_dir, python=sys.executable), created=now(),
        executor=getattr(executor, "name", "entrypoint"),
    )  # fmt: skip
    record.save()
    register(record)
    return record, spec


def submit(
    spec_path: str | Path, executor: str, sink: Callable[[bytes], None], base: Path | None = None,
    detach: bool = False,
) -> RunRecord:  # fmt: skip
    """Run a job to its end (or start it, detached); the record on disk says how it went."""
    if executor not in EXECUTORS:
        raise RunError(f"unknown executor '{executor}'; available: {', '.join(EXECUTORS)}")
    if detach and executor != "docker":
        raise RunError("--detach needs the docker executor (a container outlives this command)")
    runner_ = EXECUTORS[executor](sink, tty=sys.stdout.isatty())
    record, spec = prepare(spec_path, base, runner_)
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
    if detach and name != "docker":
        raise RunError("--detach needs the docker executor (a container outlives this command)")
    spec = load_job(Path(record.run_dir) / "spec.yaml")
    executor = EXECUTORS[name](sink, tty=sys.stdout.isatty())
    executor.check(spec)
    if detach:
        executor.start(record, spec, resume=True)
    else:
        executor.run(record, spec, resume=True)
    return record
