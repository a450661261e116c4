"""A run directory, OUTPUT/<name>/<run-id>/: its files, its record and its result.

Every path inside a run is named here and nowhere else; every other module asks a RunDir. State
lives on disk beside the run, never in memory, so any later command (or a restarted CLI, or
another machine that mounts the outputs) sees the same truth. A run directory is created exactly
once and never reused.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import socket
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from runner.core import atomic
from runner.core.errors import NoSuchRunError, RunError
from runner.core.jobspec.job import WHOLE_MODEL_METHODS

SPEC = "spec.yaml"  # the resolved spec the run trains with
RECORD = "run.json"  # its record (RunRecord)
LOG_NAME = "train.log"
METRICS = "metrics.jsonl"  # one line per logged step
RESULTS = "results.json"  # the final metrics
EVAL_RESULTS = "eval_results.json"  # an evaluation's scores (stage eval; a classifier's validation split)
PLOT = "loss.png"
TENSORBOARD = "tensorboard"  # TensorBoard's event files, with training.report_to: tensorboard
DEEPSPEED = "deepspeed.json"  # the rendered ZeRO config
CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"  # the result of an adapter method: PEFT adapter + tokenizer
MODEL = "model"  # the result of full or freeze tuning: a whole model + tokenizer
EXPORT = "export"  # `runner export`'s default output
BATCH_SCRIPT = "job.sbatch"  # the run's Slurm batch script
# Written by the job when it stopped on request with a checkpoint saved: torchrun itself exits 1
# on the SIGTERM that asked for the stop, so its exit code cannot tell a stop from a crash.
STOP_MARK = "stopped"
STOPPED = 143  # 128 + SIGTERM


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def spec_file(self) -> Path:
        return self.path / SPEC

    @property
    def record_file(self) -> Path:
        return self.path / RECORD

    @property
    def log(self) -> Path:
        return self.path / LOG_NAME

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def results(self) -> Path:
        return self.path / RESULTS

    @property
    def eval_results(self) -> Path:
        return self.path / EVAL_RESULTS

    def write_evaluation(self, summary: dict) -> None:
        """An evaluation's summary: eval_results.json, and results.json as every run has."""
        from runner.core import atomic

        text = json.dumps(summary, indent=2, ensure_ascii=False) + "\n"
        for path in (self.eval_results, self.results):
            atomic.write_text(path, text)

    @property
    def plot(self) -> Path:
        return self.path / PLOT

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD

    @property
    def deepspeed_config(self) -> Path:
        return self.path / DEEPSPEED

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def stop_mark(self) -> Path:
        return self.path / STOP_MARK

    @property
    def export(self) -> Path:
        return self.path / EXPORT

    @property
    def batch_script(self) -> Path:
        return self.path / BATCH_SCRIPT

    def output(self, method: str, continues_adapter: bool = False) -> Path:
        """Where training saves its result: adapter/ for an adapter method (or one continued from
        model.adapter), model/ for a whole model."""
        return self.path / (ADAPTER if method not in WHOLE_MODEL_METHODS or continues_adapter else MODEL)

    def result(self) -> Path | None:
        """The saved result, adapter/ or model/; None before training saved one."""
        if (self.path / ADAPTER / "adapter_config.json").is_file():
            return self.path / ADAPTER
        if (self.path / MODEL / "config.json").is_file():
            return self.path / MODEL
        return None

    def trained_on(self) -> tuple[str | None, str | None]:
        """The base model and the adapter the run started from (model.path, model.adapter of its
        spec.yaml), read as plain YAML: no validation, as the spec was validated when it ran."""
        from ruamel.yaml import YAML

        try:
            model = (YAML(typ="safe").load(self.spec_file.read_text(encoding="utf-8")) or {}).get(
                "model"
            ) or {}
        except (OSError, ValueError, AttributeError):
            return None, None
        path, adapter = model.get("path"), model.get("adapter")
        return (path if isinstance(path, str) else None, adapter if isinstance(adapter, str) else None)

    def record(self) -> RunRecord:
        return read_record(self.path)

    @staticmethod
    def holds_run(path: str | Path) -> bool:
        return (Path(path) / RECORD).is_file()

    @classmethod
    def create(cls, output_dir: str | Path, name: str) -> RunDir:
        """A fresh directory OUTPUT/name/<timestamp>-<random>; never an existing one."""
        parent = job_dir(output_dir, name)
        for _ in range(20):
            run_id = time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)
            path = parent / run_id
            try:
                path.mkdir(parents=True, exist_ok=False)
                return cls(path)
            except FileExistsError:
                continue
            except OSError as e:
                raise RunError(f"cannot create run directory under {parent}: {e.strerror}") from e
        raise RunError(f"could not find a free run id under {parent}")


def job_dir(output_dir: str | Path, name: str) -> Path:
    """OUTPUT/<name>: every run of one job."""
    return Path(output_dir) / name


def launch_pointer(output_dir: str | Path, name: str, launch_id: str) -> Path:
    """Where rank 0 of a launch that made its own run directory leaves its path for the others."""
    return job_dir(output_dir, name) / f".launch-{launch_id}"


@dataclass
class RunRecord:
    """What later commands need to know of a run, however it was started (submit, compose, one
    `docker run` per host, a cluster): where it is, how it went, and where it ran."""

    id: str
    name: str
    run_dir: str
    spec_file: str
    executor: str = "local"  # local, docker, hosts, compose, slurm, k8s, or entrypoint (by hand)
    status: str = "created"  # created -> running -> succeeded | failed | stopped
    command: list[str] = field(default_factory=list)
    exit_code: int | None = None
    pid: int | None = None
    created: str = ""
    started: str | None = None
    ended: str | None = None
    message: str | None = None
    container: str | None = None
    image: str | None = None  # the image it ran in; None: a process on a machine
    host: str | None = None  # the machine that created it
    cluster_job: str | None = None  # the id its cluster's scheduler gave it (Slurm's job id)

    @property
    def dir(self) -> RunDir:
        return RunDir(self.run_dir)

    @property
    def in_image(self) -> bool:
        """Whether it ran in a container: the tools that use its result run in that image too."""
        return bool(self.image) or self.executor in ("docker", "hosts")  # records that name no image

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


def new_record(run: RunDir, name: str, spec_file: str, command: list[str], executor: str,
               image: str | None) -> RunRecord:  # fmt: skip
    """The record of a run just created, saved and indexed."""
    record = RunRecord(
        id=run.id, name=name, run_dir=str(run.path), spec_file=spec_file, command=command,
        created=now(), executor=executor, image=image, host=socket.gethostname(),
    )  # fmt: skip
    record.save()
    register(record)
    return record


def ended(record: RunRecord, code: int, stopped: bool = False) -> None:
    """Record how a run's process ended: stopped on request (checkpoint saved), or by its code."""
    if stopped or code == STOPPED or record.dir.stop_mark.exists():
        status, code = "stopped", STOPPED
    else:
        status = "succeeded" if code == 0 else "failed"
    record.update(status=status, exit_code=code, ended=now(), pid=None,
                  message=explain_failure(record.run_dir, code) if code else None)  # fmt: skip


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


_FIELDS = {f.name for f in fields(RunRecord)}


def read_record(run_dir: str | Path) -> RunRecord:
    path = Path(run_dir) / RECORD
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        # A record written by another version of runner may know other fields: what this one
        # knows is read, the rest kept aside rather than refused.
        return RunRecord(**{k: v for k, v in data.items() if k in _FIELDS})
    except FileNotFoundError:
        raise NoSuchRunError(f"{run_dir} is not a run directory (no {RECORD})") from None
    except (ValueError, TypeError, AttributeError) as e:
        raise RunError(f"{path} is damaged: {e}") from None


def runs_of(output_dir: str | Path, name: str) -> list[RunRecord]:
    """Every recorded run of a job, oldest first (run ids sort by time)."""
    parent = job_dir(output_dir, name)
    if not parent.is_dir():
        return []
    return [read_record(p) for p in sorted(parent.iterdir()) if RunDir.holds_run(p)]


def latest_run(output_dir: str | Path, name: str, status: str = "succeeded") -> RunRecord:
    done = [r for r in runs_of(output_dir, name) if r.status == status]
    if not done:
        raise RunError(f"job '{name}' has no {status} run under {output_dir}; submit it first")
    return done[-1]


def loss_summary(run_dir: str | Path) -> str | None:
    """One line: how the training loss moved, from the run's metrics.jsonl."""
    run = RunDir(run_dir)
    if not run.metrics.exists():
        return None
    lines = run.metrics.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    losses = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    if not losses:
        return None
    (s0, first), (s1, last) = losses[0], losses[-1]
    low = min(loss for _, loss in losses)
    where = f"; plot: {run.plot}" if run.plot.exists() else ""
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
    if RunDir.holds_run(ref):
        return read_record(ref)
    if Path(ref).is_dir():
        raise NoSuchRunError(f"{ref} is not a run directory (no {RECORD})")
    named = "/" not in ref and "\0" not in ref and not any(c in ref for c in "*?[")  # an id or its prefix
    entries = sorted(index_dir().glob(f"{ref}*")) if named and index_dir().is_dir() else []
    if not entries:
        raise NoSuchRunError(f"no run '{ref}'; `runner ls` lists them")
    if len(entries) > 1:
        raise NoSuchRunError(f"'{ref}' matches several runs: {', '.join(p.name for p in entries[:5])}")
    return read_record(entries[0].read_text(encoding="utf-8").strip())


def all_runs(output_dirs: list[Path] = ()) -> list[RunRecord]:
    """Every run in the index, and every run found under `output_dirs` (OUTPUT/<name>/<run-id>:
    those started by compose, on other hosts or on a cluster, which no runner here indexed; they
    are indexed now, so their ids work in every command). Oldest first."""
    found: dict[str, RunRecord] = {}
    for entry in sorted(index_dir().glob("*")) if index_dir().is_dir() else []:
        try:
            record = read_record(entry.read_text(encoding="utf-8").strip())
        except (RunError, OSError):
            continue  # its directory was deleted
        found[record.run_dir] = record
    for output_dir in output_dirs:
        for run in sorted(Path(output_dir).glob(f"*/*/{RECORD}")):
            if str(run.parent) in found or _seen(run.parent, found):
                continue
            try:
                record = read_record(run.parent)
            except (RunError, OSError):
                continue
            record.run_dir = str(run.parent)  # where this machine sees it
            found[record.run_dir] = record
            register(record)
    return sorted(found.values(), key=lambda r: (r.created or "", r.id))


def _seen(path: Path, found: dict[str, RunRecord]) -> bool:
    """Whether `path` is a run already found under another name (a symlink, a mount twice)."""
    real = path.resolve()
    return any(Path(p).resolve() == real for p in found)


# Exit codes and log lines -> what happened and what to do.
_ADVICE = [
    ("out of memory", "CUDA ran out of memory: lower per_device_train_batch_size (raise "
     "gradient_accumulation_steps to keep the batch), set gradient_checkpointing: true, use "
     "deepspeed zero 3 with offload, or method qlora"),
    ("nccl", "NCCL failed: on consumer cards (RTX 30xx/40xx) set NCCL_P2P_DISABLE=1 and "
     "NCCL_IB_DISABLE=1; check resources.shm"),
]  # fmt: skip


def explain_failure(run_dir: str | Path, code: int | None) -> str | None:
    log = RunDir(run_dir).log
    tail = log.read_text(encoding="utf-8", errors="replace")[-20000:] if log.exists() else ""
    for needle, advice in _ADVICE:
        if needle in tail.lower():
            return advice
    if code == 137:
        return "killed (SIGKILL): the host ran out of memory, or the stop did not finish in time"
    if code == 143:
        saved = sorted(
            RunDir(run_dir).checkpoints.glob("checkpoint-*/COMPLETE"), key=lambda p: _step(p.parent)
        )
        if saved:
            return f"stopped on request; `runner resume` continues from {saved[-1].parent.name}"
        return (
            "stopped on request before any checkpoint was saved; `runner resume` starts it again from step 0"
        )
    return _last_error(tail)


def _step(checkpoint: Path) -> int:
    try:
        return int(checkpoint.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


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
