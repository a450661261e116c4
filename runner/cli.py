"""The `runner` command. Thin: parse arguments, call one library function, print.

Importing this module must stay cheap: no torch, transformers or peft (a test checks it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from runner import __version__
from runner.errors import RunError, RunnerError, SpecError


class _Group(click.Group):
    """Turns library errors into one clear message and an exit code, never a traceback."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except SpecError as e:
            for problem in e.problems:
                click.echo(str(problem), err=True)
            n = len(e.problems)
            click.echo(f"{n} problem{'s' if n != 1 else ''}; nothing was started.", err=True)
            ctx.exit(e.exit_code)
        except RunnerError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="runner")
def main() -> None:
    """Fine-tune open LLMs on GPU servers that have no internet."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")


@main.command()
@click.argument("jobs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--no-data", is_flag=True, help="Do not read the records of the data (its files are still checked)."
)
def validate(jobs: tuple[str, ...], no_data: bool) -> None:
    """Check job specs, and read their data; report every problem with its file:line:col."""
    from runner.spec import load_job
    from runner.spec.checks import reading_data

    problems = []
    for job in jobs:
        try:
            with reading_data(not no_data):
                load_job(job)
            click.echo(f"ok  {job}")
        except SpecError as e:
            problems += e.problems
    if problems:
        raise SpecError(problems)


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False), default=None,
              help="Write the job spec here instead of printing it.")  # fmt: skip
def convert(config: str, out: str | None) -> None:
    """Turn a LLaMA-Factory training YAML into a runner job spec; list what does not carry over."""
    from runner.spec.convert import ConvertError, convert, dump
    from runner.spec.yaml_loader import load_yaml

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
        click.echo(f"{'not carried over' if note.at is None else 'note'}: {note}", err=True)


_image_option = click.option(
    "--image", "image", metavar="NAME|REF",
    help="Run in this image instead of the spec's (an image spec name, or a full reference).",
)  # fmt: skip


def _load(job: str, image: str | None, files: bool = True):
    """The resolved spec; --image replaces the spec's image. `files=False`: the schema only, for
    a job whose files are where it will run (a cluster's volumes), not here."""
    from runner.spec import load_job, resolve

    spec = resolve(load_job(job, files=files), Path.cwd())
    if image:
        spec.image = image
    return spec


@main.command()
@click.argument("job", type=click.Path(dir_okay=False))
@click.option("--executor", type=click.Choice(["docker", "local"]), default="docker", show_default=True,
              help="Show what this executor would run.")  # fmt: skip
@_image_option
def plan(job: str, executor: str, image: str | None) -> None:
    """Show the resolved spec and the exact command a submit would run."""
    import os
    import shlex

    from runner.execute.gpus import host_gpu_names, visible_names
    from runner.render import nccl
    from runner.render.container import docker_run_argv, render_container
    from runner.render.launch import launch_env, render_launch, visible_devices
    from runner.spec import to_yaml

    spec = _load(job, image)
    run_dir = Path(spec.output.dir) / spec.name / "<run-id>"
    names = visible_names(host_gpu_names(), spec) if spec.resources.gpus != 0 else []
    click.echo(f"# resolved spec of {job}")
    click.echo(to_yaml(spec))
    click.echo("# NCCL")
    for line in nccl.explain(spec, names):
        click.echo(line)
    if executor == "local":
        click.echo("# environment (over this shell's)")
        devices = visible_devices(spec)
        extra = {"CUDA_VISIBLE_DEVICES": devices} if devices is not None else {}
        for key, value in {**launch_env(spec, names), **extra}.items():
            click.echo(f"{key}={value}")
        click.echo("# command")
        click.echo(shlex.join(render_launch(spec, run_dir, python=sys.executable)))
        return
    click.echo("# command (the docker executor; runner submit starts this container through the engine)")
    config = render_container(spec, run_dir, os.getuid(), os.getgid(), "<run-id>", names)
    click.echo(shlex.join(docker_run_argv(config)))


def _sink(line: bytes) -> None:
    sys.stdout.buffer.write(line)
    sys.stdout.flush()


def _report(record) -> None:
    from runner.execute.runs import loss_summary

    click.echo(f"run {record.id}: {record.status} (exit {record.exit_code}) -> {record.run_dir}")
    if record.message:
        click.echo(f"  {record.message}")
    summary = loss_summary(record.run_dir)
    if summary:
        click.echo(summary)
    if record.status not in ("succeeded", "running"):
        sys.exit(record.exit_code or 1)


@main.command()
@click.argument("job", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "out", type=click.Path(file_okay=False), default=None,
              help="Directory for docker-compose.yml and the resolved spec [default: OUTPUT_DIR/NAME/compose].")  # fmt: skip
@_image_option
def compose(job: str, out: str | None, image: str | None) -> None:
    """Render a compose file that runs JOB with `docker compose up` (no runner needed there)."""
    import os

    from runner.render import nccl
    from runner.render.compose import render_compose
    from runner.render.container import image_ref
    from runner.spec import to_yaml

    spec = _load(job, image)
    target = Path(out).resolve() if out else Path(spec.output.dir) / spec.name / "compose"
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
    _warn_if_not_loaded(image_ref(spec))
    _note_root(spec)
    click.echo(f"run it: cd {target} && docker compose up --exit-code-from {spec.name}")


def _note_root(spec) -> None:
    """Rendered by root, a job runs as nobody (runner.render.lockdown): it must write output.dir."""
    import os

    from runner.render.lockdown import job_user

    if os.getuid() == 0:
        uid, gid = job_user(0, 0)
        click.echo(f"note: rendered by root, the job runs as {uid}:{gid}, which must be able to create its "
                   f"run directory under {spec.output.dir} (e.g. chown {uid}:{gid} it)", err=True)  # fmt: skip


@main.command()
@click.argument("job", type=click.Path(dir_okay=False))
@click.option("--target", type=click.Choice(["hosts", "k8s", "slurm"]), required=True,
              help="hosts: one `docker run` per host; k8s: Kubeflow Trainer manifests; slurm: an sbatch script.")  # fmt: skip
@click.option("--hostfile", type=click.Path(dir_okay=False, exists=True), default=None,
              help="hosts: one host per line (node 0 first; `host slots=N` as DeepSpeed writes it is fine).")  # fmt: skip
@click.option("--api", type=click.Choice(["v2", "v1"]), default="v2", show_default=True,
              help="k8s: v2 a TrainJob (Kubeflow Trainer), v1 a PyTorchJob (training operator).")  # fmt: skip
@click.option("-o", "--output", "out", type=click.Path(), default=None,
              help="k8s: write the manifests to this file [default: print them]; slurm: the directory for "
              "the script and the resolved spec [default: OUTPUT_DIR/NAME/slurm].")  # fmt: skip
@_image_option
def render(job: str, target: str, hostfile: str | None, api: str, out: str | None, image: str | None) -> None:
    """Render JOB for another engine: hosts without runner, Kubernetes or Slurm.

    hosts creates a run directory and prints the `docker run` each host runs; k8s and slurm
    leave the run directory to the job (each apply or sbatch is a new run)."""
    if target == "hosts":
        _render_hosts(job, hostfile, image)
    elif target == "k8s":
        _render_k8s(job, api, out, image)
    else:
        _render_slurm(job, out, image)


def _at(job: str, loc: tuple[str, ...], message: str) -> SpecError:
    """A problem with a spec's key, located in its file."""
    from runner.spec.yaml_loader import load_yaml

    return SpecError([load_yaml(job, env={}).problem(loc, message)])


def _render_hosts(job: str, hostfile: str | None, image: str | None) -> None:
    import os

    from runner.execute.docker import hand_over
    from runner.execute.runs import prepare
    from runner.render.container import render_hosts

    if hostfile is None:
        raise click.UsageError("--target hosts needs --hostfile FILE (one host per line, node 0 first)")
    hosts = _hosts(Path(hostfile))
    nodes = _load(job, image).resources.nodes
    if nodes != len(hosts):
        raise _at(job, ("resources", "nodes"), f"is {nodes} but {hostfile} lists {len(hosts)} host(s); "
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

    from runner.render.k8s import ClusterInputError, check_image, render_k8s, to_text

    spec = _load(job, image, files=False)  # the model and data are on the cluster; the job checks them there
    try:
        check_image(spec, (Path.cwd() / "images" / f"{spec.image}.yaml").is_file())
        text = to_text(spec, render_k8s(spec, os.getuid(), os.getgid(), _launch_id(), api), api)
    except ClusterInputError as e:
        raise _at(job, e.loc, e.message) from None
    _note_root(spec)
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

    from runner.render.k8s import ClusterInputError
    from runner.render.slurm import default_image_note, render_slurm
    from runner.spec import to_yaml

    spec = _load(job, image, files=False)  # the nodes' storage may not be mounted here; the job checks it
    target = Path(out).resolve() if out else Path(spec.output.dir) / spec.name / "slurm"
    spec_file = target / f"{spec.name}.yaml"
    try:
        script = render_slurm(spec, spec_file, os.getuid(), os.getgid())
    except ClusterInputError as e:
        raise _at(job, e.loc, e.message) from None
    try:
        target.mkdir(parents=True, exist_ok=True)
        spec_file.write_text(to_yaml(spec), encoding="utf-8")
        (target / f"{spec.name}.sbatch").write_text(script, encoding="utf-8")
    except OSError as e:
        raise RunError(f"cannot write the Slurm files to {target}: {e.strerror}") from None
    click.echo(f"{target / f'{spec.name}.sbatch'}")
    if note := default_image_note(spec):
        click.echo(f"the image file, made once on a node that has the image loaded: {note}")
    _note_root(spec)
    click.echo(f"run it: sbatch {target / f'{spec.name}.sbatch'}")


def _warn_if_not_loaded(ref: str) -> None:
    """Compose clients try to pull an image that is not loaded (v1 ignores pull_policy: never);
    say so now, where runner can still name the fix."""
    from runner.docker_api import Docker, DockerUnavailable

    try:
        loaded = Docker(timeout=10).image_id(ref)
    except DockerUnavailable:
        return  # rendered on a machine without an engine: nothing to check here
    if not loaded:
        click.echo(f"warning: image {ref} is not loaded in this Docker engine; load its bundle first "
                   "(runner load FILE): `up` would fail trying to pull it", err=True)  # fmt: skip


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


@main.command()
@click.argument("job", type=click.Path(dir_okay=False))
@click.option("--executor", type=click.Choice(["docker", "local"]), default="docker", show_default=True,
              help="docker: in the job's image (GPUs, read-only inputs, no network); local: a process here.")  # fmt: skip
@click.option("--detach", "-d", is_flag=True, help="Start and return; follow with `runner logs ID -f`.")
@_image_option
def submit(job: str, executor: str, detach: bool, image: str | None) -> None:
    """Validate JOB, create a new run directory and train."""
    from runner.execute.submit import submit as do_submit

    record = do_submit(job, executor, _sink, detach=detach, image=image)
    if detach:
        click.echo(f"run {record.id}: started in container {record.container} -> {record.run_dir}")
        click.echo(f"  runner logs {record.id} -f    runner stop {record.id}")
        return
    _report(record)


def _record(run_id: str):
    """A run's record, brought up to date with its container when it ran detached."""
    from runner.execute.runs import find_run

    record = find_run(run_id)
    if record.status == "running" and record.container:
        from runner.docker_api import Docker
        from runner.execute.docker import refresh

        refresh(record, Docker())
    return record


@main.command("ls")
def list_runs() -> None:
    """Every run this user submitted, newest last."""
    from runner.execute.runs import all_runs

    rows = all_runs()
    for r in rows:
        if r.status == "running":
            r = _record(r.id)
        click.echo(f"{r.id:<22} {r.name:<20} {r.status:<10} {r.executor:<7} {r.run_dir}")
    if not rows:
        click.echo("no runs yet")


@main.command()
@click.argument("run_id")
def status(run_id: str) -> None:
    """A run's state, exit code, cause and loss so far."""
    import json as _json
    from dataclasses import asdict

    record = _record(run_id)
    click.echo(_json.dumps(asdict(record), indent=2, ensure_ascii=False))


@main.command()
@click.argument("run_id")
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the run ends.")
def logs(run_id: str, follow: bool) -> None:
    """Print a run's log (train.log), and with -f follow it while the run goes on."""
    import time

    record = _record(run_id)
    path = Path(record.run_dir) / "train.log"
    offset = 0
    while True:
        if path.exists():
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
                offset += len(chunk)
                _sink(chunk)
        if not follow or record.status != "running":
            break
        time.sleep(1)
        record = _record(run_id)
    if follow:
        click.echo(f"run {record.id}: {record.status} (exit {record.exit_code})")


@main.command()
@click.argument("run_id")
@click.option("--timeout", default=300, show_default=True, help="Seconds to wait for the checkpoint.")
def stop(run_id: str, timeout: int) -> None:
    """Stop a detached run: it saves a checkpoint, then exits; `runner resume` continues it."""
    from runner.docker_api import Docker
    from runner.execute.docker import stop as do_stop

    record = do_stop(_record(run_id), Docker(), timeout)
    click.echo(f"run {record.id}: {record.status} (exit {record.exit_code})")


@main.command()
@click.argument("run_id")
@click.option("--detach", "-d", is_flag=True, help="Start and return.")
def resume(run_id: str, detach: bool) -> None:
    """Continue a stopped or failed run from its newest complete checkpoint, in place."""
    from runner.execute.submit import resume as do_resume

    record = do_resume(_record(run_id), _sink, detach)
    if detach:
        click.echo(f"run {record.id}: resumed in container {record.container}")
        return
    _report(record)


@main.command()
@click.argument("run", type=click.Path(exists=True))
@click.option("-m", "--message", help="Ask one question and exit; omit for an interactive chat.")
@click.option("--system", help="System prompt.")
@click.option("--executor", type=click.Choice(["docker", "local"]), default=None,
              help="Where the model runs; default: where the run trained.")  # fmt: skip
def chat(run: str, message: str | None, system: str | None, executor: str | None) -> None:
    """Talk to what a run trained. RUN is a run directory, a job spec for its latest run, or an
    exported model directory. Interactive: answers stream, the conversation is kept, /reset
    forgets it."""
    from runner.execute.runs import latest_run, read_record
    from runner.execute.tools import run_tool
    from runner.render.launch import render_chat

    if Path(run, "config.json").exists() or Path(run, "adapter_config.json").exists():  # an exported model
        import os
        import subprocess

        from runner.render.launch import OFFLINE_ENV

        argv = [sys.executable, "-m", *render_chat(Path(run).resolve(), message, system)]
        sys.exit(subprocess.call(argv, env={**os.environ, **OFFLINE_ENV}))
    if Path(run).is_file():
        from runner.spec import load_job

        spec = load_job(run)
        record = latest_run(spec.output.dir, spec.name)
    else:
        record = read_record(run)  # refuses anything that is not a run directory
        record.run_dir = str(Path(run).resolve())
    executor = executor or ("docker" if record.executor == "docker" else "local")
    module_args = render_chat(Path(record.run_dir), message, system)
    sys.exit(run_tool(record, module_args, executor, _sink, interactive=message is None))


@main.command()
@click.argument("job", type=click.Path(dir_okay=False))
@click.option(
    "-n", "count", default=3, show_default=True, type=click.IntRange(min=0), help="Examples to show."
)
def preview(job: str, count: int) -> None:
    """Show what training will see: N examples with their trained tokens marked, and the data's
    figures (rows, tokens, records per dataset, samples dropped by cutoff_len). Runs the job's
    own tokenization here (its cache is shared with training)."""
    import os
    import subprocess

    from runner.render.launch import OFFLINE_ENV
    from runner.spec import load_job

    load_job(job)  # every problem of the spec, before any library loads
    color = "always" if sys.stdout.isatty() else "never"
    argv = [sys.executable, "-m", "runner.train.preview", job, "-n", str(count), "--color", color]
    sys.exit(subprocess.call(argv, env={**os.environ, **OFFLINE_ENV}))


@main.command("tiny-model")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights.")
def tiny_model(out_dir: str, seed: int) -> None:
    """Build a tiny random Llama model and tokenizer locally (no download)."""
    import os
    import subprocess

    from runner.render.launch import OFFLINE_ENV

    argv = [sys.executable, "-m", "runner.train.tiny", out_dir, "--seed", str(seed)]
    sys.exit(subprocess.call(argv, env={**os.environ, **OFFLINE_ENV}))


# --- images: connected side (lock, wheels, build, bundle) and air-gapped side (load) ---------

_find_links = click.option(
    "--find-links", "find_links", multiple=True, metavar="DIR|URL",
    help="Extra place to find wheels (e.g. a folder with a CPU torch build). Repeatable.",
)  # fmt: skip


@main.command()
@click.argument("image")
@_find_links
def lock(image: str, find_links: tuple[str, ...]) -> None:
    """Resolve IMAGE's requirements for its platform into images/IMAGE.lock (pinned, hashed)."""
    from runner.build.lock import lock as do_lock
    from runner.build.lock import parse_lock
    from runner.spec import load_image

    path = do_lock(load_image(image), Path("images"), list(find_links))
    click.echo(f"{path}: {len(parse_lock(path.read_text(encoding='utf-8')))} packages pinned with hashes")


@main.command()
@click.argument("image")
@click.option("--verify", is_flag=True, help="Only check the wheelhouse against the lock; no network.")
@_find_links
def wheels(image: str, verify: bool, find_links: tuple[str, ...]) -> None:
    """Fill offline_wheels/IMAGE/ with every wheel the lock needs (or --verify it)."""
    from runner.build.wheels import WheelhouseError, fill
    from runner.build.wheels import verify as check
    from runner.spec import load_image

    spec = load_image(image)
    if not verify:
        fill(spec, Path("images"), Path("offline_wheels"), list(find_links))
    problems = check(spec, Path("images"), Path("offline_wheels"))
    if problems:
        raise WheelhouseError(f"offline_wheels/{spec.name} is not complete:\n  " + "\n  ".join(problems))
    n = len(list((Path("offline_wheels") / spec.name).glob("*.whl")))
    click.echo(f"offline_wheels/{spec.name}: {n} wheels, complete for images/{spec.name}.lock")


@main.command()
@click.argument("image")
@click.option("--quiet", "-q", is_flag=True, help="Do not stream the build log.")
def build(image: str, quiet: bool) -> None:
    """Build IMAGE from its wheelhouse with the network off for every step."""
    from runner.build.image import build as do_build
    from runner.spec import load_image

    built = do_build(
        load_image(image),
        Path("images"),
        Path("offline_wheels"),
        log=(lambda s: None) if quiet else click.echo,
    )
    click.echo(f"built {built.tag} ({built.image_id[:19]}) in {built.seconds:.0f} s")


@main.command()
@click.argument("refs", nargs=-1, required=True)
@click.option(
    "-o", "--output", "out", required=True, type=click.Path(), help="Archive to write (a new file)."
)
@click.option("--model", type=click.Path(), help="A model directory to carry too.")
@click.option("--data", type=click.Path(), help="A data directory to carry too.")
def bundle(refs: tuple[str, ...], out: str, model: str | None, data: str | None) -> None:
    """Pack images (IMAGE names or docker refs) and optionally a model and data into one archive.

    Each image brings every tag it has (`localhost/runner/NAME:latest` and its content-hash tag).
    """
    from runner.build.bundle import bundle as do_bundle
    from runner.spec.image import image_ref

    resolved = [image_ref(r) for r in refs]
    total = do_bundle(
        resolved, Path(out), Path(model) if model else None, Path(data) if data else None, log=click.echo
    )
    click.echo(f"{out}: {Path(out).stat().st_size / 2**20:.1f} MiB, aggregate sha256 {total}")


@main.command()
@click.argument("archive", type=click.Path())
@click.option("--to", "to", type=click.Path(), help="Where the bundle's model/ and data/ go.")
def load(archive: str, to: str | None) -> None:
    """Verify a bundle's checksums, load its images, check their ids and tags."""
    from runner.build.bundle import load as do_load

    manifest = do_load(Path(archive), Path(to) if to else None, log=click.echo)
    for image in manifest["images"]:
        others = [t for t in image.get("tags", []) if t != image["ref"]]
        also = f", also tagged {', '.join(others)}" if others else ""
        click.echo(f"loaded {image['ref']} ({image['id'][:19]}){also}")
    if to:
        for prefix in ("model", "data"):
            if any(name.startswith(prefix + "/") for name in manifest["files"]):
                click.echo(f"{prefix}/ -> {Path(to) / prefix}")
    click.echo(f"verified: aggregate sha256 {manifest['aggregate']}")


@main.command()
def env() -> None:
    """Versions of every dependency, the torch device state and the Docker engine."""
    from runner.envinfo import report

    for key, value in report():
        click.echo(f"{key:<14} {value}")


# eval, export and serve: runner/commands.py
from runner import commands  # noqa: E402

for _command in (commands.evaluate, commands.export, commands.serve):
    main.add_command(_command)


if __name__ == "__main__":
    main()
