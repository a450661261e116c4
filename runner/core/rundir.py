"""Run directories and their records: OUTPUT/<name>/<run-id>/run.json.

State lives on disk beside the run, never in memory, so any later command (or a restarted
CLI) sees the same truth. A run directory is created exactly once and never reused.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runner.core import atomic
from runner.core.errors import NoSuchRunError, RunError

RECORD = "run.json"
LOG_NAME = "train.log"
# Written by the job when it stopped on request with a checkpoint saved: torchrun itself exits 1
# on the SIGTERM that asked for the stop, so its exit code cannot tell a stop from a crash.
STOP_MARK = "stopped"
STOPPED = 143  # 128 + SIGTERM


@dataclass
class RunRecord:
    id: str
    name: str
    run_dir: str
    spec_file: str
    executor: str = "local"
    status: str = "created"  # created -> running -> succeeded | failed | stopped
    command: list[str] = field(default_factory=list)
    exit_code: int | None = None
    pid: int | None = None
    created: str = ""
    started: str | None = None
    ended: str | None = None
    message: str | None = None
    container: str | None = None

    def save(self) -> None:
        # A reader never sees half a record, and a crash (even of the machine) leaves the old
        # one or the new one: temporary file, fsync, rename.
        path = Path(self.run_dir) / RECORD
        try:
            atomic.write_text(path, json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n")
        except OSError as e:
            full = " (the disk is full: free space there)" if e.errno == errno.ENOSPC else ""
            raise RunError(f"cannot write the run record {path}: {e.strerror}{full}") from None

    def update(self, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(self, key, value)
        self.save()


def ended(record: RunRecord, code: int, stopped: bool = False) -> None:
    """Record how a run's process ended: stopped on request (checkpoint saved), or by its code."""
    if stopped or code == STOPPED or (Path(record.run_dir) / STOP_MARK).exists():
        status, code = "stopped", STOPPED
    else:
        status = "succeeded" if code == 0 else "failed"
    record.update(status=status, exit_code=code, ended=now(), pid=None,
                  message=explain_failure(record.run_dir, code) if code else None)  # fmt: skip


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def new_run_dir(output_dir: str | Path, name: str) -> Path:
    """A fresh directory OUTPUT/name/<timestamp>-<random>; never an existing one."""
    parent = Path(output_dir) / name
    for _ in range(20):
        run_id = time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)
        path = parent / run_id
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise RunError(f"cannot create run directory under {parent}: {e.strerror}") from e
    raise RunError(f"could not find a free run id under {parent}")


def read_record(run_dir: str | Path) -> RunRecord:
    path = Path(run_dir) / RECORD
    try:
        return RunRecord(**json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise NoSuchRunError(f"{run_dir} is not a run directory (no {RECORD})") from None
    except (ValueError, TypeError) as e:
        raise RunError(f"{path} is damaged: {e}") from None


def runs_of(output_dir: str | Path, name: str) -> list[RunRecord]:
    """Every recorded run of a job, oldest first (run ids sort by time)."""
    parent = Path(output_dir) / name
    if not parent.is_dir():
        return []
    return [read_record(p) for p in sorted(parent.iterdir()) if (p / RECORD).exists()]


def latest_run(output_dir: str | Path, name: str, status: str = "succeeded") -> RunRecord:
    done = [r for r in runs_of(output_dir, name) if r.status == status]
    if not done:
        raise RunError(f"job '{name}' has no {status} run under {output_dir}; submit it first")
    return done[-1]


def loss_summary(run_dir: str | Path) -> str | None:
    """One line: how the training loss moved, from the run's metrics.jsonl."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    losses = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    if not losses:
        return None
    (s0, first), (s1, last) = losses[0], losses[-1]
    low = min(loss for _, loss in losses)
    plot = Path(run_dir) / "loss.png"
    where = f"; plot: {plot}" if plot.exists() else ""
    return f"loss {first:.4f} (step {s0}) -> {last:.4f} (step {s1}), lowest {low:.4f}{where}"


# --- an index of runs by id, so `runner status ID` finds a run wherever its output went -------


def index_dir() -> Path:
    base = os.environ.get("RUNNER_HOME") or os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "runner"
    )
    return Path(base) / "runs"


def register(record: RunRecord) -> None:
    try:
        index_dir().mkdir(parents=True, exist_ok=True)
        (index_dir() / record.id).write_text(record.run_dir + "\n", encoding="utf-8")
    except OSError:
        pass  # an unwritable home only costs the lookup by id; the run itself is unaffected


def find_run(ref: str) -> RunRecord:
    """A run by directory, id, or unique id prefix."""
    if Path(ref, RECORD).exists():
        return read_record(ref)
    named = "/" not in ref and "\0" not in ref and not any(c in ref for c in "*?[")  # an id or its prefix
    entries = sorted(index_dir().glob(f"{ref}*")) if named and index_dir().is_dir() else []
    if not entries:
        raise NoSuchRunError(f"no run '{ref}'; `runner ls` lists them")
    if len(entries) > 1:
        raise NoSuchRunError(f"'{ref}' matches several runs: {', '.join(p.name for p in entries[:5])}")
    return read_record(entries[0].read_text(encoding="utf-8").strip())


def all_runs() -> list[RunRecord]:
    out = []
    for entry in sorted(index_dir().glob("*")) if index_dir().is_dir() else []:
        try:
            out.append(read_record(entry.read_text(encoding="utf-8").strip()))
        except RunError:
            continue  # its directory was deleted
    return out


# Exit codes and log lines -> what happened and what to do.
_ADVICE = [
    ("out of memory", "CUDA ran out of memory: lower per_device_train_batch_size (raise "
     "gradient_accumulation_steps to keep the batch), set gradient_checkpointing: true, use "
     "deepspeed zero 3 with offload, or method qlora"),
    ("nccl", "NCCL failed: on consumer cards (RTX 30xx/40xx) set NCCL_P2P_DISABLE=1 and "
     "NCCL_IB_DISABLE=1; check resources.shm"),
]  # fmt: skip


def explain_failure(run_dir: str | Path, code: int | None) -> str | None:
    log = Path(run_dir) / "train.log"
    tail = log.read_text(encoding="utf-8", errors="replace")[-20000:] if log.exists() else ""
    for needle, advice in _ADVICE:
        if needle in tail.lower():
            return advice
    if code == 137:
        return "killed (SIGKILL): the host ran out of memory, or the stop did not finish in time"
    if code == 143:
        return "stopped on request; `runner resume` continues from the last checkpoint"
    return _last_error(tail)


def _last_error(log_tail: str) -> str | None:
    """The job's own last error line (`error: ...` or a traceback's final `XError: ...`), so a
    failed run always says why; the log has the rest."""
    for line in reversed(log_tail.splitlines()):
        line = line.strip().removeprefix("[rank0]:").strip()
        if "ChildFailedError" in line:  # torchrun's summary; the worker's own error is above it
            continue
        if line.startswith("error:") or re.match(r"^[A-Za-z_.]*(Error|Exception)\b.*:", line):
            return line[:500] + f" (see {LOG_NAME})"
    return None
