"""What the board does to runs: validate and submit a job spec, stop and resume a run.

Submit and resume run the `runner` command itself in a child process of their own session, so a
run the board started outlives the board, and goes through exactly the checks, executor and
permissions the command line has. Stop does what `runner stop` does for a run in a container; a
run that is a process here gets the same SIGTERM (the trainer saves a checkpoint, then exits),
which the operating system lets only its owner (or root) send.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.core.errors import RunError, SpecError
from runner.core.rundir import RunRecord, read_record, runs_of
from runner.host.execute.local import signal_run

log = logging.getLogger(__name__)

SPEC_SUFFIXES = (".yaml", ".yml", ".json")
EXECUTORS = ("docker", "local")


@dataclass(frozen=True)
class Jobs:
    """The job specs under one directory (jobs/), by path relative to it."""

    root: Path

    def list(self) -> list[str]:
        if not self.root.is_dir():
            return []
        found = []
        for path in sorted(self.root.rglob("*")):
            relative = path.relative_to(self.root)
            if (
                path.suffix in SPEC_SUFFIXES
                and path.is_file()
                and not any(p.startswith(".") for p in relative.parts)
            ):
                found.append(relative.as_posix())
        return found

    def path(self, name: str) -> Path:
        from runner.host.board.access import NotServed, inside

        path = inside(self.root, name)
        if path is None or path.suffix not in SPEC_SUFFIXES:
            raise NotServed(f"no job spec '{name}' in {self.root}")
        return path


def problems_of(error: SpecError) -> list[dict[str, Any]]:
    """A SpecError as the page shows it: each problem's FILE:LINE:COL line, and its parts."""
    return [
        {"text": str(p), "file": p.file, "line": p.line, "col": p.col, "path": p.path, "message": p.message}
        for p in error.problems
    ]


def validate(spec_path: Path, base: Path) -> dict[str, Any]:
    """Every problem of a spec, as `runner validate` finds them (its data's records too)."""
    from runner.core.jobspec.checks import reading_data
    from runner.core.jobspec.load import load_job

    try:
        with reading_data(True):
            spec = load_job(spec_path, base=base)
    except SpecError as e:
        return {"ok": False, "problems": problems_of(e)}
    return {"ok": True, "problems": [], "name": spec.name}


def submit(spec_path: Path, executor: str, base: Path, state_dir: Path, wait_s: float = 60) -> dict[str, Any]:
    """Validate, then `runner submit` in the background; the run's id once its directory exists."""
    from runner.core.jobspec.load import load_job, resolve

    if executor not in EXECUTORS:
        raise RunError(f"unknown executor '{executor}'; one of {', '.join(EXECUTORS)}")
    checked = validate(spec_path, base)
    if not checked["ok"]:
        return checked
    spec = resolve(load_job(spec_path, base=base), base)
    before = {r.id for r in runs_of(spec.output.dir, spec.name)}
    argv = ["submit", str(spec_path), "--executor", executor, *(["--detach"] if executor == "docker" else [])]
    proc, errors = _start(argv, base, state_dir, f"submit-{spec.name}")
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        new = [r for r in runs_of(spec.output.dir, spec.name) if r.id not in before]
        if new:
            return {"ok": True, "problems": [], "run": new[-1].id}
        if proc.poll() is not None:
            new = [r for r in runs_of(spec.output.dir, spec.name) if r.id not in before]
            if new:
                return {"ok": True, "problems": [], "run": new[-1].id}
            raise RunError(_failure("runner submit", proc.returncode, errors))
        time.sleep(0.2)
    raise RunError(f"runner submit made no run directory within {wait_s:.0f}s; see {errors}")


def resume(record: RunRecord, base: Path, state_dir: Path, wait_s: float = 30) -> dict[str, Any]:
    """`runner resume` in the background, once the run is no longer running."""
    if record.status in ("running", "succeeded"):
        raise RunError(f"run {record.id} is {record.status}; only a stopped or failed run resumes")
    detach = ["--detach"] if record.executor == "docker" else []
    proc, errors = _start(["resume", record.id, *detach], base, state_dir, f"resume-{record.id}")
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        now = read_record(record.run_dir)
        if now.status == "running" and now.started != record.started:
            return {"ok": True, "run": record.id, "state": now.status}
        if proc.poll() is not None:
            now = read_record(record.run_dir)
            if proc.returncode == 0 or now.status == "running":
                return {"ok": True, "run": record.id, "state": now.status}
            raise RunError(_failure("runner resume", proc.returncode, errors))
        time.sleep(0.2)
    raise RunError(f"run {record.id} did not start again within {wait_s:.0f}s; see {errors}")


def stop(record: RunRecord, timeout: float = 300, wait_s: float = 5) -> dict[str, Any]:
    """Ask a running run to stop: it saves a checkpoint after the current step, then exits.
    Returns at once for a process (the page follows the record); a container waits as `runner stop`."""
    if record.status != "running":
        raise RunError(f"run {record.id} is not running (status: {record.status})")
    if record.container:
        from runner.host.docker_api import Docker
        from runner.host.execute.docker import stop as stop_container

        record = stop_container(record, Docker(), int(timeout))
        return {"ok": True, "run": record.id, "state": record.status}
    signal_run(record)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        now = read_record(record.run_dir)
        if now.status != "running":
            return {"ok": True, "run": record.id, "state": now.status}
        time.sleep(0.2)
    return {"ok": True, "run": record.id, "state": "stopping"}


# Commands started here, reaped as they end (none lingers as a zombie); what a command that
# succeeded said on stderr is deleted then, what a failed one said is kept for the user.
_children: list[tuple[subprocess.Popen, Path]] = []


def state_dir() -> Path:
    """Where the board keeps what its commands said: beside the run index ($RUNNER_HOME)."""
    from runner.core.rundir import index_dir

    return index_dir().parent / "board"


def _start(argv: list[str], cwd: Path, state_dir: Path, label: str) -> tuple[subprocess.Popen, Path]:
    """`runner ARGV` in a session of its own; what it says on stderr goes to a file the board reads
    if it fails (its stdout, the training log, is in the run directory already)."""
    reap()
    state_dir.mkdir(parents=True, exist_ok=True)
    errors = state_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{label}.err"
    with open(errors, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runner.host.cli", *argv], cwd=cwd, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
        )  # fmt: skip
    _children.append((proc, errors))
    return proc, errors


def reap() -> None:
    """Collect the exit status of the commands started here that have ended."""
    running = []
    for proc, errors in _children:
        if proc.poll() is None:
            running.append((proc, errors))
        elif proc.returncode == 0:
            errors.unlink(missing_ok=True)
    _children[:] = running


def _failure(what: str, code: int, errors: Path) -> str:
    try:
        said = errors.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        said = ""
    return f"{what} failed (exit {code})" + (f":\n{said[-4000:]}" if said else "")
