"""`runner eval`, `runner export` and `runner serve`: what was trained, evaluated, exported and
served. Thin, as runner.cli: no torch here; the work runs in `runner.train.*` modules, locally or
in the job's image through the run's executor."""

from __future__ import annotations

import sys
from pathlib import Path

import click

_executor = click.option(
    "--executor", type=click.Choice(["docker", "local"]), default=None,
    help="Where the model runs; default: where the run trained.",
)  # fmt: skip


def _sink(line: bytes) -> None:
    sys.stdout.buffer.write(line)
    sys.stdout.flush()


def run_of(ref: str):
    """A run's record: a job spec (its latest succeeded run), a run directory, or a run id."""
    from runner.execute.runs import find_run, latest_run

    if Path(ref).is_file():
        from runner.spec import load_job

        spec = load_job(ref, files=False)
        return latest_run(spec.output.dir, spec.name)
    record = find_run(ref)  # refuses anything that is not a run
    if Path(ref, "run.json").exists():
        record.run_dir = str(Path(ref).resolve())
    return record


def where(record, executor: str | None) -> str:
    return executor or ("docker" if record.executor == "docker" else "local")


@click.command("export")
@click.argument("run")
@click.option("--out", "out", type=click.Path(file_okay=False), default=None,
              help="Directory to write [default: RUN_DIR/export]; must be new or empty.")  # fmt: skip
@click.option("--force", is_flag=True, help="Replace what OUT holds (only once the export is complete).")
@click.option("--dtype", type=click.Choice(["auto", "bf16", "fp16", "fp32"]), default="auto", show_default=True,
              help="Weights' type; auto: the base model's.")  # fmt: skip
@_executor
def export(run: str, out: str | None, force: bool, dtype: str, executor: str | None) -> None:
    """Merge a run's adapter into its base and write a model plain `transformers` loads.

    RUN is a run directory, a run id, or a job spec (its latest succeeded run). Prefix, P-Tuning
    and prompt-tuning adapters cannot merge: the adapter is exported with how to load it."""
    from runner.execute.tools import run_tool
    from runner.train.export import check_out
    from runner.train.inference import resolve

    record = run_of(run)
    resolve(record.run_dir)  # a run without a result is refused here, before anything starts
    target = Path(out).resolve() if out else Path(record.run_dir) / "export"
    check_out(target, force)
    args = [
        "runner.train.export",
        record.run_dir,
        str(target),
        "--dtype",
        dtype,
        *(["--force"] if force else []),
    ]
    target.parent.mkdir(parents=True, exist_ok=True)
    code = run_tool(
        record, args, where(record, executor), _sink, interactive=False, writes=(str(target.parent),)
    )
    sys.exit(code)
