"""The local executor: the entrypoint as a child process on this machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from runner.core.jobspec.job import JobSpec
from runner.core.launch import launch_env, render_launch, visible_devices
from runner.core.rundir import STOP_MARK, RunRecord, ended, now
from runner.host.execute.gpus import host_gpu_names, require_gpus, visible_names

LOG = "train.log"


class LocalExecutor:
    """Runs argv as a subprocess, streams its output to `sink` and to the run's log."""

    name = "local"

    def __init__(self, sink: Callable[[bytes], None], tty: bool = False):
        self.sink = sink
        self.tty = tty  # the user watches a terminal: the child may draw a progress bar

    def check(self, spec: JobSpec) -> None:
        """Refuse GPUs this machine does not have, before anything is created."""
        if spec.resources.gpus != 0:
            require_gpus(spec, host_gpu_names(), "this machine")

    def environment(self, spec: JobSpec) -> dict[str, str]:
        """The launch's environment over this shell's, seeing exactly the GPUs the spec asks for."""
        names = host_gpu_names() if spec.resources.gpus != 0 else []
        env = {**os.environ, **launch_env(spec, visible_names(names, spec))}
        if "TORCH_EXTENSIONS_DIR" in os.environ:  # the shell's own cache of compiled ops serves every run
            env["TORCH_EXTENSIONS_DIR"] = os.environ["TORCH_EXTENSIONS_DIR"]
        if (devices := visible_devices(spec)) is not None:
            env["CUDA_VISIBLE_DEVICES"] = devices
        return env

    def run(self, record: RunRecord, spec: JobSpec, resume: bool = False) -> int:
        argv = render_launch(spec, Path(record.run_dir), python=sys.executable)
        (Path(record.run_dir) / STOP_MARK).unlink(missing_ok=True)
        child_env = {**self.environment(spec), **({"RUNNER_TTY": "1"} if self.tty else {}),
                     "RUNNER_RESUME": "1" if resume else "0"}  # fmt: skip
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env, start_new_session=True
        )
        record.update(status="running", pid=proc.pid, started=now(), command=argv, executor=self.name)
        stopped = False
        with open(Path(record.run_dir) / LOG, "ab") as log:
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
