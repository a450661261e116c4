"""The local executor: the entrypoint as a child process on this machine."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import PurePath

from runner.core.errors import RunError
from runner.core.jobspec.job import JobSpec
from runner.core.launch import launch_env, render_launch, visible_devices
from runner.core.rundir import RunRecord, ended, now
from runner.host.execute.gpus import host_gpu_names, require_gpus, visible_names
from runner.host.execute.plan import Plan


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
