"""The local executor: the entrypoint as a child process on this machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from runner.errors import RunError
from runner.execute.runs import RunRecord, explain_failure, now
from runner.render.launch import OFFLINE_ENV, render_launch
from runner.spec.job import JobSpec

LOG = "train.log"


def gpu_names() -> list[str]:
    """GPUs on this machine, from nvidia-smi (no torch import on the host side)."""
    import shutil

    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


class LocalExecutor:
    """Runs argv as a subprocess, streams its output to `sink` and to the run's log."""

    name = "local"

    def __init__(self, sink: Callable[[bytes], None], tty: bool = False):
        self.sink = sink
        self.tty = tty  # the user watches a terminal: the child may draw a progress bar

    def check(self, spec: JobSpec) -> None:
        """Refuse GPUs this machine does not have, before anything is created."""
        wanted = spec.resources.gpus
        if wanted == 0:
            return
        have = len(gpu_names())
        need = len(wanted) if isinstance(wanted, list) else (1 if wanted == "all" else wanted)
        if have < need:
            raise RunError(
                f"resources.gpus is {wanted!r} but this machine has {have} GPU(s); "
                "set gpus: 0 to train on CPU"
            )

    def run(self, record: RunRecord, spec: JobSpec) -> int:
        argv = render_launch(spec, Path(record.run_dir), python=sys.executable)
        child_env = {**os.environ, **OFFLINE_ENV, **({"RUNNER_TTY": "1"} if self.tty else {})}
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env, start_new_session=True
        )
        record.update(status="running", pid=proc.pid, started=now(), command=argv)
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
        status = "stopped" if stopped else ("succeeded" if code == 0 else "failed")
        record.update(status=status, exit_code=code, ended=now(), pid=None,
                      message=explain_failure(record.run_dir, code) if code else None)  # fmt: skip
        return code
