"""submit: a validated spec becomes a run directory and a running process."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from runner.errors import RunError
from runner.execute.local import LocalExecutor
from runner.execute.runs import RunRecord, new_run_dir, now
from runner.render.deepspeed import render_deepspeed
from runner.render.launch import OFFLINE_ENV, render_launch
from runner.spec import load_job, resolve, to_yaml

EXECUTORS = {"local": LocalExecutor}


def prepare(spec_path: str | Path, base: Path | None = None) -> tuple[RunRecord, list[str]]:
    """Validate, create the run directory, write the resolved spec: nothing runs yet."""
    base = base or Path.cwd()
    spec = resolve(load_job(spec_path, base=base), base)
    run_dir = new_run_dir(spec.output.dir, spec.name)
    (run_dir / "spec.yaml").write_text(to_yaml(spec), encoding="utf-8")
    ds_config = render_deepspeed(spec)
    if ds_config is not None:
        (run_dir / "deepspeed.json").write_text(json.dumps(ds_config, indent=2) + "\n", encoding="utf-8")
    argv = render_launch(spec, run_dir, python=sys.executable)
    record = RunRecord(
        id=run_dir.name, name=spec.name, run_dir=str(run_dir), spec_file=str(spec_path),
        command=argv, created=now(),
    )  # fmt: skip
    record.save()
    return record, argv


def submit(
    spec_path: str | Path, executor: str, sink: Callable[[bytes], None], base: Path | None = None
) -> RunRecord:
    """Run a job to its end; the record on disk says how it ended."""
    if executor not in EXECUTORS:
        raise RunError(f"unknown executor '{executor}'; available: {', '.join(EXECUTORS)}")
    record, argv = prepare(spec_path, base)
    record.executor = executor
    EXECUTORS[executor](sink, tty=sys.stdout.isatty()).run(record, argv, OFFLINE_ENV)
    return record
