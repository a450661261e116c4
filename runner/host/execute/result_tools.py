"""Commands that run a model besides training (chat, export, serve) go through the same
executor as the run: in its image with the network off, or as a local process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from runner.core.errors import RunError
from runner.core.rundir import RunRecord
from runner.host.execute.local import run_here
from runner.host.render.container import render_container


def run_tool(
    record: RunRecord,
    module_args: list[str],
    executor: str,
    sink: Callable[[bytes], None],
    interactive: bool,
    writes: tuple[str, ...] = (),
) -> int:
    """`python -m <module_args>` for a finished run; the run directory is read-only to it, the
    directories in `writes` writable."""
    if executor == "local":
        return run_here(module_args, f"`{module_args[0].rsplit('.', 1)[-1]}` here (--executor local)",
                        "Run it in the run's image (--executor docker)")  # fmt: skip
    docker, config = tool_container(record, module_args, sink, writes)
    if interactive:
        return _attached(config)
    container = docker.start(config)
    try:
        for chunk in container.logs(stream=True, follow=True):
            sink(chunk)
        return container.wait()["StatusCode"]
    finally:
        container.remove(force=True)


def tool_container(
    record: RunRecord, module_args: list[str], sink: Callable[[bytes], None], writes: tuple[str, ...] = ()
):
    """The engine and the container config of a tool: the run's own container (image, user,
    mounts, no network), one GPU at most, the run directory read-only, `writes` writable."""
    from runner.core.jobspec.load import load_job
    from runner.host.docker_api import Docker
    from runner.host.execute.docker import DockerExecutor

    spec = load_job(record.dir.spec_file, files=False)
    # A tool reads the result (and the base it needs), not the training data, which need not be
    # on this host: a run that compose or a cluster started saw it in its own mounts.
    spec = spec.model_copy(update={"data": spec.data.model_copy(update={"datasets": [], "cache": False})})
    if record.image:  # the image it ran in, which a compose file or a cluster may have chosen
        spec = spec.model_copy(update={"image": record.image})
    docker = Docker()
    DockerExecutor(sink, docker=docker).check(
        spec.model_copy(update={"resources": spec.resources.model_copy(update={"gpus": 0})})
    )
    config = render_container(
        spec, Path(record.run_dir), os.getuid(), os.getgid(), f"{record.id}-tool{int(time.time())}"
    )
    config.update(command=["python", "-m", *module_args], device_requests=config["device_requests"][:1])
    config["volumes"][record.run_dir]["mode"] = "ro"
    for path in writes:
        config["volumes"][path] = {"bind": path, "mode": "rw"}
    return docker, config


def _attached(config: dict) -> int:
    """The same container, run by the docker command line attached to this terminal (an
    interactive chat in the image)."""
    import shutil

    from runner.host.render.container import docker_run_argv

    docker = shutil.which("docker")
    if docker is None:
        raise RunError("an interactive chat in the image needs the docker command line; use --executor "
                       "local, or ask one question with -m MESSAGE")  # fmt: skip
    argv = docker_run_argv(config)
    argv[2:2] = ["--interactive", *(["--tty"] if sys.stdin.isatty() else [])]
    return subprocess.call([docker, *argv[1:]])
