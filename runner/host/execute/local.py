"""The local executor: the entrypoint as a child process on this machine."""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path, PurePath

from runner.core.errors import RunError
from runner.core.jobspec.job import JobSpec
from runner.core.launch import launch_env, render_launch, visible_devices
from runner.core.offline import OFFLINE_ENV
from runner.core.rundir import RunRecord, ended, now, read_record
from runner.host.execute.gpus import host_gpu_names, require_gpus, visible_names
from runner.host.execute.plan import Plan

log = logging.getLogger(__name__)


def require_training_libraries(
    what: str, way_out: str = "Run it in the job's image (--executor docker)"
) -> None:
    """Refuse, with the way out, to run in-container code on a host install of runner (no torch,
    no transformers: `pip install runner` without the train extra, as a GPU server's host has it)."""
    missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        raise RunError(
            f"{what} needs the training libraries, and this runner has none ({', '.join(missing)} "
            f"not installed: a host install). {way_out}, or install them here: "
            "pip install 'runner[train]'"
        )


def run_here(module_args: list[str], what: str, way_out: str) -> int:
    """`python -m <module_args>` as a child of this process, offline, on this machine's training
    libraries (refused, with the way out, on a host install); its exit code."""
    require_training_libraries(what, way_out)
    return subprocess.call([sys.executable, "-m", *module_args], env={**os.environ, **OFFLINE_ENV})


class LocalExecutor:
    """Runs argv as a subprocess, streams its output to `sink` and to the run's log."""

    name = "local"

    def __init__(self, sink: Callable[[bytes], None], tty: bool = False):
        self.sink = sink
        self.tty = tty  # the user watches a terminal: the child may draw a progress bar

    def check(self, spec: JobSpec) -> None:
        """Refuse GPUs this machine does not have, or a job it has no libraries for, before
        anything is created."""
        require_training_libraries("training here (--executor local)")
        if spec.resources.gpus != 0:
            require_gpus(spec, host_gpu_names(), "this machine")

    def image_of(self, spec: JobSpec) -> None:
        return None  # a process on this machine, in no image

    def plan(self, spec: JobSpec, run_dir: PurePath, run_id: str | None = None) -> Plan:
        """The launch's command and environment, seeing exactly the GPUs the spec asks for."""
        del run_id  # a process needs no name
        names = visible_names(host_gpu_names(), spec) if spec.resources.gpus != 0 else []
        env = launch_env(spec, names)
        if "TORCH_EXTENSIONS_DIR" in os.environ:  # the shell's own cache of compiled ops serves every run
            env.pop("TORCH_EXTENSIONS_DIR", None)
        if (devices := visible_devices(spec)) is not None:
            env["CUDA_VISIBLE_DEVICES"] = devices
        return Plan(render_launch(spec, run_dir, python=sys.executable), env, names)

    def run(self, record: RunRecord, spec: JobSpec, resume: bool = False) -> int:
        plan = self.plan(spec, record.dir.path)
        argv = plan.argv
        record.dir.stop_mark.unlink(missing_ok=True)
        child_env = {**os.environ, **plan.env, **({"RUNNER_TTY": "1"} if self.tty else {}),
                     "RUNNER_RESUME": "1" if resume else "0"}  # fmt: skip
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env, start_new_session=True
        )
        record.update(status="running", pid=proc.pid, started=now(), command=argv, executor=self.name)
        stopped = False
        with open(record.dir.log, "ab") as log:
            try:
                assert proc.stdout is not None
                for line in iter(proc.stdout.readline, b""):
                    log.write(line)
                    log.flush()
                    self.sink(line)
                code = proc.wait()
            except KeyboardInterrupt:
                # Ctrl-C: let the trainer stop cleanly, as `runner stop` does.
                stopped = True
                proc.send_signal(signal.SIGTERM)
                code = proc.wait()
        ended(record, code, stopped)
        return code


def stop(record: RunRecord, timeout: float = 300) -> RunRecord:
    """Stop a run that is a process on this machine (`runner submit --executor local`, in another
    shell): SIGTERM to its processes, which save a checkpoint after the current step and exit;
    waits up to `timeout` seconds for its record to say so."""
    if record.status != "running":
        raise RunError(f"run {record.id} is not running (status: {record.status})")
    signal_run(record)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = read_record(record.run_dir)
        if now.status != "running":
            return now
        time.sleep(0.5)
    raise RunError(f"run {record.id} did not stop within {timeout:.0f} s; its log says what it is doing")


def signal_run(record: RunRecord) -> None:
    """SIGTERM to the run's process group (the local executor starts it in a session of its own)."""
    import socket

    if record.pid is None:
        raise RunError(
            f"run {record.id} has no process to stop (executor {record.executor}); stop it where it runs"
        )
    if record.host and record.host != socket.gethostname():
        raise RunError(f"run {record.id} runs on {record.host}, not here; stop it there")
    if not _is_the_run(record):
        raise RunError(f"run {record.id}'s process {record.pid} is gone; its record says running because "
                       "the process that watched it died too")  # fmt: skip
    try:
        os.killpg(record.pid, signal.SIGTERM)
    except ProcessLookupError:
        raise RunError(f"run {record.id}'s process {record.pid} is gone") from None
    except PermissionError:
        raise RunError(f"run {record.id} belongs to another user: uid {os.getuid()} may not signal its "
                       "process") from None  # fmt: skip
    log.info("sent SIGTERM to run %s (process group %d)", record.id, record.pid)


def _is_the_run(record: RunRecord) -> bool:
    """The pid still names this run's process, not one that reused the number."""
    try:
        cmdline = Path(f"/proc/{record.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    wanted = os.fsencode(record.run_dir.rstrip("/"))
    return any(arg.rstrip(b"/") == wanted or arg.startswith(wanted + b"/") for arg in cmdline)
