"""What the command modules share: loading a spec for a command, printing a run's outcome, the
located error of a spec key."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from runner.core.errors import SpecError

image_option = click.option(
    "--image", "image", metavar="NAME|REF",
    help="Run in this image instead of the spec's (an image spec name, or a full reference).",
)  # fmt: skip


def load_spec(job: str, image: str | None, files: bool = True):
    """The resolved spec; --image replaces the spec's image. `files=False`: the schema only, for
    a job whose files are where it will run (a cluster's volumes), not here."""
    from runner.core.jobspec.load import load_job, resolve

    spec = resolve(load_job(job, files=files), Path.cwd())
    if image:
        spec.image = image
    return spec


def sink(line: bytes) -> None:
    sys.stdout.buffer.write(line)
    sys.stdout.flush()


def report(record) -> None:
    from runner.core.rundir import loss_summary

    click.echo(f"run {record.id}: {record.status} (exit {record.exit_code}) -> {record.run_dir}")
    if record.message:
        click.echo(f"  {record.message}")
    summary = loss_summary(record.run_dir)
    if summary:
        click.echo(summary)
    if record.status not in ("succeeded", "running"):
        sys.exit(record.exit_code or 1)


def spec_problem(job: str, loc: tuple[str, ...], message: str) -> SpecError:
    """A problem with a spec's key, located in its file."""
    from runner.core.jobspec.yaml_loader import load_yaml

    return SpecError([load_yaml(job, env={}).problem(loc, message)])


def note_root(spec) -> None:
    """Rendered by root, a job runs as nobody (runner.host.render.lockdown): it must write output.dir."""
    import os

    from runner.host.render.lockdown import job_user

    if os.getuid() == 0:
        uid, gid = job_user(0, 0)
        click.echo(f"note: rendered by root, the job runs as {uid}:{gid}, which must be able to create its "
                   f"run directory under {spec.output.dir} (e.g. chown {uid}:{gid} it)", err=True)  # fmt: skip


def warn_if_not_loaded(ref: str, why: str = "`up` would fail trying to pull it") -> None:
    """Compose clients try to pull an image that is not loaded (v1 ignores pull_policy: never),
    a cluster's nodes never pull it; say so now, where runner can still name the fix."""
    from runner.host.docker_api import Docker, DockerUnavailable

    try:
        loaded = Docker(timeout=10).image_id(ref)
    except DockerUnavailable:
        return  # rendered on a machine without an engine: nothing to check here
    if not loaded:
        click.echo(f"warning: image {ref} is not loaded in this Docker engine; load its bundle first "
                   f"(runner load FILE): {why}", err=True)  # fmt: skip


def record_of(run_id: str):
    """A run's record, brought up to date with its container when it ran detached, or with its
    Slurm job."""
    from runner.core.rundir import find_run

    record = find_run(run_id)
    if record.executor == "slurm":
        from runner.host.execute.slurm import refresh as refresh_job

        return refresh_job(record)
    if record.status == "running" and record.container:
        from runner.host.docker_api import Docker
        from runner.host.execute.docker import refresh

        refresh(record, Docker())
    return record
