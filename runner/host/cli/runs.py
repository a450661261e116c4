"""Commands on runs: ls, status, logs, stop, resume."""

from __future__ import annotations

import click

from runner.host.cli.common import (
    record_of,
    report,
    sink,
)


@click.command("ls")
@click.argument("output_dirs", nargs=-1, type=click.Path(file_okay=False))
def list_runs(output_dirs: tuple[str, ...]) -> None:
    """Every run, newest last: those this user started, and those found under OUTPUT_DIRS (runs a
    compose file, another host or a cluster started) [default: the output directories of the
    known runs, $OUTPUT_DIR, and ./outputs]."""
    import os
    from pathlib import Path

    from runner.core.rundir import all_runs

    dirs = [Path(d) for d in output_dirs]
    if not dirs:
        known = {Path(r.run_dir).parent.parent for r in all_runs()}
        dirs = [*sorted(known), *(Path(d) for d in (os.environ.get("OUTPUT_DIR"), "outputs") if d)]
    rows = all_runs([d for d in dict.fromkeys(dirs) if d.is_dir()])
    for r in rows:
        if r.status == "running" or (r.status == "created" and r.executor == "slurm"):
            r = record_of(r.id)  # brought up to date with its container or its Slurm job
        click.echo(f"{r.id:<22} {r.name:<20} {r.status:<10} {r.executor:<10} {r.run_dir}")
    if not rows:
        click.echo("no runs yet")


@click.command()
@click.argument("run_id")
def status(run_id: str) -> None:
    """A run's state, exit code, cause and loss so far; its evaluation's scores (eval_results.json:
    an eval run's, a classifier's on its validation split) where it has them."""
    import json as _json
    from dataclasses import asdict

    record = record_of(run_id)
    shown = asdict(record)
    scores = _scores(record.dir.eval_results)
    if scores:
        shown["eval_results"] = scores
    click.echo(_json.dumps(shown, indent=2, ensure_ascii=False))


def _scores(path) -> dict | None:
    """The scores of an eval_results.json, with a classifier's confusion matrix (its other tables stay
    in the file)."""
    import json as _json

    try:
        found = _json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(found, dict):
        return None
    kept = {k: v for k, v in found.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    if isinstance(found.get("confusion_matrix"), dict):
        kept["confusion_matrix"] = found["confusion_matrix"]
    kept["file"] = str(path)
    return kept


@click.command()
@click.argument("run_id")
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the run ends.")
def logs(run_id: str, follow: bool) -> None:
    """Print a run's log (train.log), and with -f follow it while the run goes on."""
    import time

    record = record_of(run_id)
    path = record.dir.log
    offset = 0
    while True:
        if path.exists():
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
                offset += len(chunk)
                sink(chunk)
        if not follow or record.status != "running":
            break
        time.sleep(1)
        record = record_of(run_id)
    if follow:
        click.echo(f"run {record.id}: {record.status} (exit {record.exit_code})")


@click.command()
@click.argument("run_id")
@click.option("--timeout", default=300, show_default=True, help="Seconds to wait for the checkpoint.")
def stop(run_id: str, timeout: int) -> None:
    """Stop a run: a detached container, a process here, or a Slurm job. It saves a checkpoint,
    then exits; `runner resume` continues it."""
    record = record_of(run_id)
    if record.executor == "slurm":
        from runner.host.execute.slurm import stop as stop_job

        record = stop_job(record, timeout)
    elif not record.container and record.pid:  # a process here (submit --executor local)
        from runner.host.execute.local import stop as stop_process

        record = stop_process(record, timeout)
    else:
        from runner.host.docker_api import Docker
        from runner.host.execute.docker import stop as do_stop

        record = do_stop(record, Docker(), timeout)
    click.echo(f"run {record.id}: {record.status} (exit {record.exit_code})")


@click.command()
@click.argument("run_id")
@click.option("--detach", "-d", is_flag=True, help="Start and return.")
def resume(run_id: str, detach: bool) -> None:
    """Continue a stopped or failed run from its newest complete checkpoint, in place."""
    from runner.host.execute.submit import resume as do_resume

    record = do_resume(record_of(run_id), sink, detach)
    if detach and record.executor == "slurm":
        click.echo(f"run {record.id}: resumed as Slurm job {record.cluster_job}")
        return
    if detach:
        click.echo(f"run {record.id}: resumed in container {record.container}")
        return
    report(record)


COMMANDS = (
    list_runs,
    status,
    logs,
    stop,
    resume,
)
