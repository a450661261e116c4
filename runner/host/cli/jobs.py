"""Commands on a job spec: validate, convert, preview, plan, submit, compose, render."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from runner.core.errors import RunError, RunnerError, SpecError
from runner.host.cli.common import (
    image_option,
    load_spec,
    note_root,
    report,
    sink,
    spec_problem,
    warn_if_not_loaded,
)


@click.command()
@click.argument("jobs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--no-data", is_flag=True, help="Do not read the records of the data (its files are still checked)."
)
@click.option(
    "--on-cluster", is_flag=True,
    help="The specs are for a scheduler that gives each node node 0's address (submit --executor slurm, "
    "render --target hosts|k8s|slurm): a multi-node spec needs no distributed.master_addr.",
)  # fmt: skip
def validate(jobs: tuple[str, ...], no_data: bool, on_cluster: bool) -> None:
    """Check job specs, and read their data; report every problem with its file:line:col."""
    from runner.core.jobspec.checks import reading_data
    from runner.core.jobspec.load import load_job

    problems = []
    for job in jobs:
        try:
            with reading_data(not no_data):
                load_job(job, launched_here=not on_cluster)
            click.echo(f"ok  {job}")
        except SpecError as e:
            problems += e.problems
    if problems:
        raise SpecError(problems)


@click.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False), default=None,
              help="Write the job spec here instead of printing it.")  # fmt: skip
def convert(config: str, out: str | None) -> None:
    """Turn a LLaMA-Factory training YAML into a runner job spec; list what does not carry over."""
    from runner.core.jobspec.convert import ConvertError, convert, dump
    from runner.core.jobspec.yaml_loader import load_yaml

    source = load_yaml(config, env={})
    if source.data is None:
        raise SpecError(source.problems)
    try:
        spec, notes = convert(source.data, Path(config).name, Path(config).parent)
    except ConvertError as e:
        raise RunnerError(f"{config}: {e}") from None
    text = dump(spec, notes, config)
    if out:
        Path(out).write_text(text, encoding="utf-8")
        click.echo(f"wrote {out}; check it with: runner validate {out}", err=True)
    else:
        click.echo(text, nl=False)
    for note in notes:
        click.echo(f"{note.label}: {note}", err=True)


@click.command()
@click.argument("job", type=click.Path(dir_okay=False))
@click.option("--executor", type=click.Choice(["docker", "local", "slurm"]), default="docker", show_default=True,
              help="Show what this executor would run.")  # fmt: skip
@image_option
def plan(job: str, executor: str, image: str | None) -> None:
    """Show the resolved spec and the exact command a submit would run."""
    from runner.core import nccl
    from runner.core.jobspec.load import to_yaml
    from runner.core.rundir import job_dir
    from runner.host.execute.submit import EXECUTORS

    spec = load_spec(job, image)
    run_dir = job_dir(spec.output.dir, spec.name) / "<run-id>"
    planned = EXECUTORS[executor](sink).plan(spec, run_dir, "<run-id>")
    click.echo(f"# resolved spec of {job}")
    click.echo(to_yaml(spec))
    click.echo("# NCCL")
    for line in nccl.explain(spec, planned.gpu_names):
        click.echo(line)
    if executor == "docker":
        click.echo("# the docker executor: runner submit starts this container through the engine")
    for line in planned.lines():
        click.echo(line)


@click.command()
@click.argument("job", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "out", type=click.Path(file_okay=False), default=None,
              help="Directory for docker-compose.yml and the resolved spec [default: OUTPUT_DIR/NAME/compose].")  # fmt: skip
@image_option
def compose(job: str, out: str | None, image: str | None) -> None:
    """Render a compose file that runs JOB with `docker compose up` (no runner needed there)."""
    import os

    from runner.core import nccl
    from runner.core.jobspec.load import to_yaml
    from runner.host.render.compose import render_compose
    from runner.host.render.container import image_ref

    spec = load_spec(job, image)
    from runner.core.rundir import job_dir

    target = Path(out).resolve() if out else job_dir(spec.output.dir, spec.name) / "compose"
    try:
        target.mkdir(parents=True, exist_ok=True)
        Path(spec.output.dir).mkdir(parents=True, exist_ok=True)  # yours, not made by docker as root
        spec_file = target / f"{spec.name}.yaml"
        spec_file.write_text(to_yaml(spec), encoding="utf-8")
        (target / "docker-compose.yml").write_text(
            render_compose(spec, spec_file, os.getuid(), os.getgid()), encoding="utf-8"
        )
    except OSError as e:
        raise RunError(f"cannot write the compose files to {target}: {e.strerror}") from None
    click.echo(f"{target / 'docker-compose.yml'}")
    for line in nccl.explain(spec, None):
        click.echo(f"  {line}")
    warn_if_not_loaded(image_ref(spec))
    note_root(spec)
    click.echo(f"run it: cd {target} && docker compose up --exit-code-from {spec.name}")


@click.command()
@click.argument("job", type=click.Path(dir_okay=False))
@click.option("--target", type=click.Choice(["hosts", "k8s", "slurm"]), required=True,
              help="hosts: one `docker run` per host; k8s: Kubeflow Trainer manifests; slurm: an sbatch script.")  # fmt: skip
@click.option("--hostfile", type=click.Path(dir_okay=False, exists=True), default=None,
              help="hosts: one host per line (node 0 first; `host slots=N` as DeepSpeed writes it is fine).")  # fmt: skip
@click.option("--api", type=click.Choice(["v2", "v1"]), default="v2", show_default=True,
              help="k8s: v2 a TrainJob (Kubeflow Trainer), v1 a PyTorchJob (training operator).")  # fmt: skip
@click.option("-o", "--output", "out", type=click.Path(), default=None,
              help="k8s: write the manifests to this file [default: print them]; slurm: a copy of the batch "
              "script here too [default: only in the run directory].")  # fmt: skip
@image_option
def render(job: str, target: str, hostfile: str | None, api: str, out: str | None, image: str | None) -> None:
    """Render JOB for another engine: hosts without runner, Kubernetes or Slurm.

    hosts creates a run directory and prints the `docker run` each host runs; slurm creates a
    run directory and writes its batch script there (sbatch it once; a requeue or another sbatch
    continues the run); k8s leaves the run directory to the job (each apply is a new run)."""
    if target == "hosts":
        _render_hosts(job, hostfile, image)
    elif target == "k8s":
        _render_k8s(job, api, out, image)
    else:
        _render_slurm(job, out, image)


def _render_hosts(job: str, hostfile: str | None, image: str | None) -> None:
    import os

    from runner.core.launch import prepare
    from runner.host.execute.docker import hand_over
    from runner.host.render.container import render_hosts

    if hostfile is None:
        raise click.UsageError("--target hosts needs --hostfile FILE (one host per line, node 0 first)")
    hosts = _hosts(Path(hostfile))
    nodes = load_spec(job, image).resources.nodes
    if nodes != len(hosts):
        raise spec_problem(job, ("resources", "nodes"), f"is {nodes} but {hostfile} lists {len(hosts)} host(s); "
                  f"list {nodes} there (node 0 first) or set resources.nodes: {len(hosts)}")  # fmt: skip
    record, spec = prepare(job, image=image)
    record.update(executor="hosts")
    hand_over(record, spec)
    click.echo(render_hosts(spec, Path(record.run_dir), hosts, os.getuid(), os.getgid(), record.id), nl=False)


def _launch_id() -> str:
    import secrets
    import time

    return f"{time.strftime('%m%d%H%M')}-{secrets.token_hex(2)}"


def _render_k8s(job: str, api: str, out: str | None, image: str | None) -> None:
    import os

    from runner.host.render.k8s import ClusterInputError, cluster_image, render_k8s, to_text

    spec = load_spec(
        job, image, files=False
    )  # the model and data are on the cluster; the job checks them there
    try:
        text = to_text(spec, render_k8s(spec, os.getuid(), os.getgid(), _launch_id(), api), api)
    except ClusterInputError as e:
        raise spec_problem(job, e.loc, e.message) from None
    ref, pull = cluster_image(spec)
    if pull == "Never":  # the bundle's image, loaded on every node: it should be loaded here too
        warn_if_not_loaded(ref, "the nodes would fail to start it, as they never pull it")
    note_root(spec)
    if out is None:
        click.echo(text, nl=False)
        return
    try:
        Path(out).write_text(text, encoding="utf-8")
    except OSError as e:
        raise RunError(f"cannot write {out}: {e.strerror}") from None
    click.echo(f"{out}\napply it: kubectl apply -f {out}")


def _render_slurm(job: str, out: str | None, image: str | None) -> None:
    import os
    import shutil

    from runner.core.launch import prepare
    from runner.host.execute.docker import hand_over
    from runner.host.render.container import image_ref
    from runner.host.render.k8s import ClusterInputError, gpus_per_node
    from runner.host.render.slurm import render_slurm, slurm_image_note

    try:
        gpus_per_node(load_spec(job, image))  # refused before a run directory exists
    except ClusterInputError as e:
        raise spec_problem(job, e.loc, e.message) from None
    record, spec = prepare(job, image=image)
    record.update(executor="slurm", image=image_ref(spec))
    hand_over(record, spec)
    script = record.dir.batch_script
    try:
        script.write_text(render_slurm(spec, record.dir.path, os.getuid(), os.getgid()), encoding="utf-8")
        if out:
            shutil.copyfile(script, out)
    except OSError as e:
        raise RunError(f"cannot write the batch script: {e.strerror} ({e.filename})") from None
    click.echo(f"{script}")
    if note := slurm_image_note(spec):
        click.echo(f"the image file, made once on a node that has the image loaded: {note}")
    elif spec.cluster.container_runtime == "docker":
        warn_if_not_loaded(image_ref(spec), "every node's engine must have it loaded")
    click.echo(f"run it: sbatch {script}    then: runner logs {record.id} -f")


def _hosts(path: Path) -> list[str]:
    hosts = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        host = line.split()[0]
        if not all(c.isalnum() or c in ".-_:" for c in host):
            raise RunError(f"{path}:{n}: '{host}' is not a host name or address")
        hosts.append(host)
    if not hosts:
        raise RunError(f"{path} lists no host")
    return hosts


@click.command()
@click.argument("job", type=click.Path(dir_okay=False))
@click.option("--executor", type=click.Choice(["docker", "local", "slurm"]), default="docker", show_default=True,
              help="docker: in the job's image (GPUs, read-only inputs, no network); local: a process here; "
              "slurm: a batch job on the cluster this machine submits to (its nodes run the image).")  # fmt: skip
@click.option("--detach", "-d", is_flag=True, help="Start and return; follow with `runner logs ID -f`.")
@image_option
def submit(job: str, executor: str, detach: bool, image: str | None) -> None:
    """Validate JOB, create a new run directory and train."""
    from runner.host.execute.submit import submit as do_submit

    record = do_submit(job, executor, sink, detach=detach, image=image)
    if detach and executor == "slurm":
        click.echo(f"run {record.id}: submitted as Slurm job {record.cluster_job} -> {record.run_dir}")
        click.echo(f"  runner logs {record.id} -f    runner stop {record.id}")
        return
    if detach:
        click.echo(f"run {record.id}: started in container {record.container} -> {record.run_dir}")
        click.echo(f"  runner logs {record.id} -f    runner stop {record.id}")
        return
    report(record)


@click.command()
@click.argument("job", type=click.Path(dir_okay=False))
@click.option(
    "-n", "count", default=3, show_default=True, type=click.IntRange(min=0), help="Examples to show."
)
def preview(job: str, count: int) -> None:
    """Show what training will see: N examples with their trained tokens marked, and the data's
    figures (rows, tokens, records per dataset, samples dropped by cutoff_len). Runs the job's
    own tokenization here (its cache is shared with training)."""
    from runner.core.jobspec.load import load_job
    from runner.host.execute.local import run_here

    load_job(job)  # every problem of the spec, before any library loads
    color = "always" if sys.stdout.isatty() else "never"
    sys.exit(run_here(["runner.train.tools.preview", job, "-n", str(count), "--color", color],
                      "preview (it tokenizes with the model's tokenizer)", "Run it on a machine that has them"))  # fmt: skip


COMMANDS = (
    validate,
    convert,
    plan,
    compose,
    render,
    submit,
    preview,
)
