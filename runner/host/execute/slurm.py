"""The slurm executor: the run's batch script (runner.host.render.slurm), submitted with sbatch
from this machine, a login node of the cluster that mounts the storage its nodes do (the run
directory is made here, and the nodes write into it).

State lives where Slurm and the run put it: the job's state from scontrol (sacct once Slurm
has forgotten the job, where accounting is on), and the run's own files (results.json, the
stop mark) for how it ended; its log is the output file Slurm writes, train.log. Every Slurm
command goes through `_slurm`, one narrow interface that tests can replace.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePath

from runner.core.errors import RunError
from runner.core.jobspec.job import JobSpec
from runner.core.rundir import STOPPED, RunDir, RunRecord, ended, explain_failure, now
from runner.host.execute.docker import hand_over
from runner.host.execute.plan import Plan
from runner.host.render.container import image_ref, missing_on_host
from runner.host.render.k8s import ClusterInputError, gpus_per_node
from runner.host.render.slurm import STOP_SIGNAL, render_slurm

POLL_S = 2.0
# States of a job Slurm has not finished with (a requeued job passes through several).
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
          "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "SPECIAL_EXIT", "RESV_DEL_HOLD"}  # fmt: skip
_LOGGED_JOB = re.compile(rb"^runner: Slurm job (\d+) ", re.MULTILINE)


def _slurm(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    """A Slurm client command (sbatch, scontrol, sacct, scancel), its output as text."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise RunError(f"{argv[0]} is not on this machine's PATH: Slurm's client commands are needed "
                       "here (a login node of the cluster)") from None  # fmt: skip
    except subprocess.TimeoutExpired:
        raise RunError(f"{' '.join(argv)} did not answer within 60 s: is slurmctld up?") from None
    if check and done.returncode != 0:
        raise RunError(f"{' '.join(argv)} failed: {(done.stderr or done.stdout).strip()}")
    return done


@dataclass(frozen=True)
class JobState:
    name: str  # JobState as Slurm says it: PENDING, RUNNING, COMPLETED, CANCELLED, TIMEOUT, ...
    reason: str | None
    exit_code: int | None

    @property
    def active(self) -> bool:
        return self.name in ACTIVE


def job_state(job: str) -> JobState | None:
    """Slurm's view of a job; None once it has forgotten it (MinJobAge) and keeps no accounting."""
    shown = _slurm("scontrol", "--oneliner", "show", "job", job, check=False)
    if shown.returncode == 0 and (m := re.search(r"\bJobState=(\S+)", shown.stdout)):
        reason = re.search(r"\bReason=(\S+)", shown.stdout)
        code = re.search(r"\bExitCode=(\d+):(\d+)", shown.stdout)
        return JobState(m.group(1), reason.group(1) if reason and reason.group(1) != "None" else None,
                        _exit(code.group(1), code.group(2)) if code else None)  # fmt: skip
    accounted = _slurm("sacct", "--noheader", "--parsable2", "--allocations", "--jobs", job,
                       "--format=State,ExitCode", check=False)  # fmt: skip
    rows = [line.split("|") for line in accounted.stdout.splitlines() if "|" in line]
    if accounted.returncode == 0 and rows:
        state, code = rows[-1][0].split()[0], rows[-1][1].split(":")
        return JobState(state, None, _exit(code[0], code[1]) if len(code) == 2 else None)
    return None


def _exit(code: str, signal: str) -> int:
    return 128 + int(signal) if int(signal) else int(code)


class SlurmExecutor:
    name = "slurm"
    starts_nodes = False  # the batch script gives every node node 0's address

    def __init__(self, sink: Callable[[bytes], None], tty: bool = False):
        self.sink = sink
        del tty  # Slurm writes the output to a file; nothing here is a terminal

    def check(self, spec: JobSpec) -> None:
        """What can be refused here before a run directory or a job exists."""
        if shutil.which("sbatch") is None:
            raise RunError("--executor slurm submits with Slurm's sbatch, which is not on this machine's "
                           "PATH: run runner on a login node of the cluster, or make the script with "
                           "`runner render JOB --target slurm` and sbatch it there")  # fmt: skip
        try:
            gpus_per_node(spec)
        except ClusterInputError as e:
            raise RunError(f"{'.'.join(e.loc)}: {e.message}") from None
        missing = missing_on_host(spec)
        if missing:
            raise RunError(f"not on this machine: {', '.join(missing)}; the job's nodes and this machine "
                           "(which makes the run directory) must see its files at the same paths, on "
                           "shared storage")  # fmt: skip

    def image_of(self, spec: JobSpec) -> str:
        return image_ref(spec)

    def plan(self, spec: JobSpec, run_dir: PurePath, run_id: str | None = None) -> Plan:
        """sbatch of the run's batch script, and the script."""
        del run_id  # the run directory names the run
        script = render_slurm(spec, run_dir, os.getuid(), os.getgid())
        return Plan(["sbatch", "--parsable", str(RunDir(run_dir).batch_script)], {}, [], script=script)

    def start(self, record: RunRecord, spec: JobSpec, resume: bool = False) -> str:
        """Write the run's batch script and submit it; the job's id. A resume submits the same
        script again: it continues from the newest complete checkpoint it finds."""
        del resume  # the script decides by the checkpoints there are
        hand_over(record, spec)  # root's job runs as nobody, which must write the run
        plan = self.plan(spec, record.dir.path)
        if not record.dir.batch_script.exists():  # one script a run: made here, or by `runner render`
            record.dir.batch_script.write_text(plan.script or "", encoding="utf-8")
        try:
            job = _slurm(*plan.argv).stdout.strip().split(";")[0]
        except RunError as e:
            record.update(status="failed", ended=now(), message=str(e))
            raise
        record.update(status="running", started=now(), ended=None, exit_code=None, cluster_job=job,
                      command=plan.argv, executor=self.name, image=self.image_of(spec),
                      message=f"Slurm job {job}: submitted")  # fmt: skip
        return job

    def run(self, record: RunRecord, spec: JobSpec, resume: bool = False) -> int:
        """Submit, then print the run's log as Slurm writes it until the job ends; Ctrl-C stops
        it as `runner stop` does (a checkpoint first)."""
        self.start(record, spec, resume)
        offset = _tail(record.dir.log, 0, self.sink)
        try:
            while refresh(record).status == "running":
                time.sleep(POLL_S)
                offset = _tail(record.dir.log, offset, self.sink)
        except KeyboardInterrupt:
            stop(record)
        _tail(record.dir.log, offset, self.sink)
        return record.exit_code or 0


def _tail(path: Path, offset: int, sink: Callable[[bytes], None]) -> int:
    """Pass on what `path` gained since `offset`; the new offset."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
    except FileNotFoundError:
        return offset
    if chunk:
        sink(chunk)
    return offset + len(chunk)


def submitted_job(record: RunRecord) -> str | None:
    """The run's Slurm job: the one runner submitted, or the one its log names (a batch script
    that was rendered here and submitted by hand says its job id first)."""
    if record.cluster_job:
        return record.cluster_job
    try:
        found = _LOGGED_JOB.findall(record.dir.log.read_bytes())
    except FileNotFoundError:
        return None
    return found[-1].decode() if found else None


def refresh(record: RunRecord) -> RunRecord:
    """Bring a Slurm run's record up to date: running while Slurm has the job; once it has
    finished with it, succeeded, stopped (with a checkpoint) or failed, as the run's files say."""
    if record.status not in ("created", "running"):
        return record
    job = submitted_job(record)
    if job is None:
        return record  # rendered, not submitted yet
    state = job_state(job)
    if state is not None and state.active:
        why = f" ({state.reason})" if state.reason else ""
        record.update(status="running", cluster_job=job, started=record.started or now(),
                      message=f"Slurm job {job}: {state.name}{why}")  # fmt: skip
        return record
    record.cluster_job = job
    if record.dir.stop_mark.exists():
        ended(record, STOPPED)
    elif record.dir.results.exists() or (state and state.name == "COMPLETED" and state.exit_code == 0):
        ended(record, 0)
    else:  # a TERM without the stop mark (a time limit that struck, a cancel) is no stop
        code = (state.exit_code if state else None) or 1
        what = f"ended {state.name}" if state else "is no longer known to Slurm"
        why = explain_failure(record.run_dir, code if code != STOPPED else None) or "see train.log"
        record.update(status="failed", exit_code=code, ended=now(), pid=None,
                      message=f"Slurm job {job} {what}: {why}")  # fmt: skip
    return record


def stop(record: RunRecord, timeout: int = 300) -> RunRecord:
    """Every node saves a checkpoint and stops (the signal the time limit's stop sends, without
    the requeue); past `timeout` seconds, or while the job still waits in the queue, it is
    cancelled. `runner resume` continues it."""
    from runner.core.jobspec.load import load_job

    refresh(record)
    job = submitted_job(record)
    if record.status != "running" or job is None:
        raise RunError(f"run {record.id} is not running (status: {record.status})")
    state = job_state(job)
    if state is not None and state.name == "PENDING":
        _slurm("scancel", job)
        ended(record, STOPPED, stopped=True)
        record.update(message=f"Slurm job {job} was cancelled before it started")
        return record
    runtime = load_job(record.dir.spec_file, files=False).cluster.container_runtime
    _slurm("scancel", f"--signal={STOP_SIGNAL[runtime]}", job)
    deadline = time.time() + timeout
    while refresh(record).status == "running" and time.time() < deadline:
        time.sleep(POLL_S)
    if record.status == "running":
        _slurm("scancel", job)
        record.update(message=f"Slurm job {job} did not stop within {timeout} s; cancelled")
    return record
