"""The docker executor: the job's image, GPUs, read-only inputs, no network, the user's uid."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from runner.docker_api import Docker
from runner.errors import RunError, RunnerError
from runner.execute.local import LOG
from runner.execute.runs import RunRecord, now
from runner.render.container import host_paths_exist, image_ref, render_container
from runner.spec.job import JobSpec


class DockerExecutor:
    name = "docker"

    def __init__(self, sink: Callable[[bytes], None], tty: bool = False, docker: Docker | None = None):
        self.sink = sink
        self.docker = docker
        del tty  # the container's output is a log, never a terminal

    def check(self, spec: JobSpec) -> None:
        """Everything that can be refused before a run directory or container exists."""
        self.docker = self.docker or Docker()
        ref = image_ref(spec)
        if not self.docker.image_id(ref):
            raise RunError(
                f"image {ref} is not loaded; build it (runner build {spec.image}) or load its bundle "
                f"(runner load FILE)"
            )
        missing = host_paths_exist(spec)
        if missing:
            raise RunError(f"not on this host, so it cannot be mounted: {', '.join(missing)}")
        wanted = spec.resources.gpus
        if wanted != 0:
            have = self.docker.gpu_count()
            need = len(wanted) if isinstance(wanted, list) else (1 if wanted == "all" else wanted)
            if have < need:
                raise RunError(
                    f"resources.gpus asks for {wanted} but this machine has {have} GPU(s) visible to Docker; "
                    "use gpus: 0 for CPU, or fewer GPUs"
                )

    def run(self, record: RunRecord, spec: JobSpec) -> int:
        if self.docker is None:
            self.check(spec)
        config = render_container(spec, Path(record.run_dir), os.getuid(), os.getgid(), record.id)
        record.update(command=config["command"], executor=self.name)
        try:
            container = self.docker.start(config)
        except RunnerError as e:
            record.update(status="failed", ended=now(), message=str(e))
            raise
        record.update(status="running", started=now(), container=container.id[:12])
        stopped = False
        with open(Path(record.run_dir) / LOG, "ab") as log:
            try:
                for chunk in container.logs(stream=True, follow=True):
                    log.write(chunk)
                    log.flush()
                    self.sink(chunk)
                code = container.wait()["StatusCode"]
            except KeyboardInterrupt:
                stopped = True
                container.stop(timeout=60)  # SIGTERM first: the trainer may save a checkpoint
                code = container.wait()["StatusCode"]
            finally:
                container.remove(force=True)
        status = "stopped" if stopped else ("succeeded" if code == 0 else "failed")
        record.update(status=status, exit_code=code, ended=now())
        return code
