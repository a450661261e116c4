"""The docker executor: the job's image, GPUs, read-only inputs, no network, the user's uid."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path, PurePath

from runner.core.errors import RunError, RunnerError
from runner.core.jobspec.job import JobSpec
from runner.core.launch import cache_path, read_only_paths
from runner.core.rundir import RunRecord, ended, now
from runner.host.docker_api import Docker, DockerUnavailable
from runner.host.execute.gpus import host_gpu_names, require_gpus, visible_names
from runner.host.execute.plan import Plan
from runner.host.render.container import docker_run_argv, image_ref, missing_on_host, render_container
from runner.host.render.lockdown import job_user


class DockerExecutor:
    name = "docker"

    def __init__(self, sink: Callable[[bytes], None], tty: bool = False, docker: Docker | None = None):
        self.sink = sink
        self.docker = docker
        self.gpu_names: list[str] = []
        del tty  # the container's output is a log, never a terminal

    def check(self, spec: JobSpec) -> None:
        """Everything that can be refused before a run directory or container exists."""
        try:
            self.docker = self.docker or Docker()
        except DockerUnavailable as e:
            raise DockerUnavailable(f"{e}; or run the job as a process on this machine: "
                                    "runner submit JOB --executor local") from None  # fmt: skip
        ref = image_ref(spec)
        if not self.docker.image_id(ref):
            raise RunError(
                f"image {ref} is not loaded; build it (runner build {spec.image}) or load its bundle "
                f"(runner load FILE)"
            )
        missing = missing_on_host(spec)
        if missing:
            raise RunError(f"not on this host, so it cannot be mounted: {', '.join(missing)}")
        uid, gid = job_user(os.getuid(), os.getgid())
        who = f"{uid}:{gid}" + (" (root's jobs run unprivileged)" if os.getuid() == 0 else "")
        # The container runs as uid:gid, without this shell's other groups. Each input is mounted
        # at its own path: its own modes count there, not those of the directories above it.
        bad = [p for path in read_only_paths(spec) for p in unreadable_as(Path(path), uid, gid)]
        if bad:
            raise RunError(
                f"the container runs as {who} and could not read {', '.join(map(str, bad[:3]))}"
                f"{f' and {len(bad) - 3} more' if len(bad) > 3 else ''}; make them readable "
                "(e.g. chmod -R a+rX DIR) or owned by you"
            )  # fmt: skip
        self.gpu_names = self.docker.gpu_names() if spec.resources.gpus != 0 else []
        if spec.resources.gpus != 0:
            require_gpus(spec, self.gpu_names, "this machine")

    def image_of(self, spec: JobSpec) -> str:
        return image_ref(spec)

    def plan(self, spec: JobSpec, run_dir: PurePath, run_id: str) -> Plan:
        """The job's container (as `docker run` flags): the GPUs the engine reports, or, where it
        is not reachable (`runner plan` on another machine), those nvidia-smi lists here."""
        names = self.gpu_names
        if spec.resources.gpus != 0 and not names:
            try:
                names = (self.docker or Docker(timeout=10)).gpu_names()
            except DockerUnavailable:
                names = host_gpu_names()
        names = visible_names(names, spec) if spec.resources.gpus != 0 else []
        config = render_container(spec, run_dir, os.getuid(), os.getgid(), run_id, names)
        return Plan(docker_run_argv(config), {}, names, config)

    def start(self, record: RunRecord, spec: JobSpec, resume: bool = False, tee: bool = True):
        """Start the job's container and return it; with `tee` it writes its own train.log."""
        if self.docker is None:
            self.check(spec)
        hand_over(record, spec)
        config = self.plan(spec, record.dir.path, record.id).container
        config["environment"].update(
            {"RUNNER_TEE": "1" if tee else "0", "RUNNER_RESUME": "1" if resume else "0"}
        )
        if resume:
            config["name"] += f"-r{int(time.time())}"
            record.dir.stop_mark.unlink(missing_ok=True)
        record.update(command=config["command"], executor=self.name, image=config["image"])
        try:
            container = self.docker.start(config)
        except RunnerError as e:
            record.update(status="failed", ended=now(), message=str(e))
            raise
        record.update(
            status="running", started=now(), ended=None, exit_code=None, container=container.id[:12]
        )
        return container

    def run(self, record: RunRecord, spec: JobSpec, resume: bool = False) -> int:
        container = self.start(record, spec, resume=resume, tee=False)
        stopped = False
        with open(record.dir.log, "ab") as log:
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
        ended(record, code, stopped)
        return code


def refresh(record: RunRecord, docker: Docker) -> RunRecord:
    """Bring a running record up to date with its container (which may have ended meanwhile)."""
    if record.status != "running" or not record.container:
        return record
    container = docker.container(record.container)
    if container is None:
        record.update(status="failed", ended=now(), message="its container is gone")
        return record
    container.reload()
    if container.status in ("exited", "dead"):
        ended(record, container.attrs["State"]["ExitCode"])
        container.remove(force=True)
    return record


def stop(record: RunRecord, docker: Docker, timeout: int = 300) -> RunRecord:
    """SIGTERM: the trainer saves a checkpoint after the current step and exits."""
    container = docker.container(record.container) if record.container else None
    if record.status != "running" or container is None:
        raise RunError(f"run {record.id} is not running (status: {record.status})")
    container.stop(timeout=timeout)
    return refresh(record, docker)


def hand_over(record: RunRecord, spec: JobSpec) -> None:
    """Give the run directory and the data cache to the job's user where root submitted (the
    job runs as nobody); another user's cache stays theirs."""
    uid, gid = job_user(os.getuid(), os.getgid())
    if (uid, gid) == (os.getuid(), os.getgid()):
        return
    for path in (Path(record.run_dir), *([Path(c)] if (c := cache_path(spec)) else [])):
        if path.stat().st_uid == 0:
            os.chown(path, uid, gid)


def unreadable_as(path: Path, uid: int, gid: int, limit: int = 10000) -> list[Path]:
    """What uid:gid, with no other groups (a container's user), cannot read under path: files
    without read permission, directories without read and search permission for it."""

    def denied(p: Path, need: int) -> bool:
        st = p.stat()
        shift = 6 if st.st_uid == uid else 3 if st.st_gid == gid else 0
        return (st.st_mode >> shift) & need != need

    if path.is_file():
        return [path] if denied(path, 4) else []
    bad = []
    for n, (root, dirs, files) in enumerate(os.walk(path)):
        if n > limit:
            break
        if denied(Path(root), 5):
            bad.append(Path(root))
            dirs.clear()
            continue
        bad += [Path(root, f) for f in files if denied(Path(root, f), 4)]
    return bad
