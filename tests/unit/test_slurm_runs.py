"""The slurm executor and the life cycle of a Slurm run (submit, status, stop), with Slurm's
commands stood in for: what runner asks Slurm, and what it makes of the answers and of the
run's files. tests/docker/test_slurm.py does the same on a real cluster."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from runner.core.rundir import RunDir, RunRecord
from runner.host.execute import slurm
from runner.host.execute.submit import submit
from tests.conftest import DATA, write_job


class FakeSlurm:
    """Slurm's client commands: each call recorded, `scontrol show job` answering `state`."""

    def __init__(self, state: str | None = "PENDING", reason: str = "Resources", code: str = "0:0"):
        self.calls: list[tuple[str, ...]] = []
        self.state, self.reason, self.code = state, reason, code
        self.on_signal = None  # what a scancel --signal does to the job

    def __call__(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        self.calls.append(argv)
        out, rc = "", 0
        if argv[0] == "sbatch":
            out = "77;cluster\n"
        elif argv[:3] == ("scontrol", "--oneliner", "show"):
            if self.state is None:
                out, rc = "slurm_load_jobs error: Invalid job id specified\n", 1
            else:
                out = f"JobId={argv[-1]} JobName=job JobState={self.state} Reason={self.reason} ExitCode={self.code}\n"
        elif argv[0] == "sacct":
            out, rc = "Slurm accounting storage is disabled\n", 1
        elif argv[0] == "scancel" and argv[1].startswith("--signal") and self.on_signal:
            self.on_signal()
        return subprocess.CompletedProcess(argv, rc, out, "")


@pytest.fixture
def fake(monkeypatch) -> FakeSlurm:
    fake = FakeSlurm()
    monkeypatch.setattr(slurm, "_slurm", fake)
    monkeypatch.setattr(slurm.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(slurm, "POLL_S", 0.01)
    return fake


@pytest.fixture
def job(tmp_path) -> Path:
    return write_job(tmp_path / "job.json", DATA / "models" / "fake", image="cpu",
                     resources={"gpus": 0, "nodes": 2, "procs_per_node": 1})  # fmt: skip


def test_submit_writes_the_run_and_its_script_then_sbatch(fake, job):
    record = submit(job, "slurm", lambda b: None, detach=True)
    script = RunDir(record.run_dir).batch_script
    assert fake.calls[0] == ("sbatch", "--parsable", str(script))
    assert record.cluster_job == "77" and record.status == "running" and record.executor == "slurm"
    assert record.image == "localhost/runner/cpu:latest" and record.message == "Slurm job 77: submitted"
    text = script.read_text()
    assert f"--run-dir {record.run_dir}" in text and f"#SBATCH --output={record.run_dir}/train.log" in text


def test_status_follows_slurm_then_the_runs_files(fake, job):
    record = submit(job, "slurm", lambda b: None, detach=True)
    assert slurm.refresh(record).message == "Slurm job 77: PENDING (Resources)"
    fake.state, fake.reason = "RUNNING", "None"
    assert slurm.refresh(record).status == "running" and record.message == "Slurm job 77: RUNNING"
    fake.state, fake.code = "COMPLETED", "0:0"
    RunDir(record.run_dir).results.write_text("{}")
    assert slurm.refresh(record).status == "succeeded" and record.exit_code == 0


@pytest.mark.parametrize(
    ("state", "code", "stop_mark", "status", "message"),
    [("FAILED", "1:0", True, "stopped", None),
     ("TIMEOUT", "0:15", False, "failed", "Slurm job 77 ended TIMEOUT: "),
     (None, "", False, "failed", "Slurm job 77 is no longer known to Slurm: see train.log")],
)  # fmt: skip
def test_how_a_slurm_run_ended(fake, job, state, code, stop_mark, status, message):
    record = submit(job, "slurm", lambda b: None, detach=True)
    fake.state, fake.code = state, code
    if stop_mark:
        RunDir(record.run_dir).stop_mark.write_text("8\n")
    slurm.refresh(record)
    assert record.status == status
    assert message is None or record.message.startswith(message), record.message
    if state == "TIMEOUT":
        assert record.exit_code == 128 + 15


def test_a_script_submitted_by_hand_is_found_by_its_log(fake, tmp_path):
    run = RunDir.create(tmp_path, "job")
    record = RunRecord(id=run.id, name="job", run_dir=str(run.path), spec_file="j", executor="slurm")
    record.save()
    assert slurm.refresh(record).status == "created" and fake.calls == []  # not submitted yet
    run.log.write_text("runner: Slurm job 88 on n[1-2] (restart 0)\nstep 1/9\n")
    fake.state = "RUNNING"
    assert slurm.refresh(record).cluster_job == "88" and record.status == "running"
    assert fake.calls[-1][-1] == "88"


def test_stop_sends_the_time_limits_stop_without_the_requeue(fake, job):
    record = submit(job, "slurm", lambda b: None, detach=True)
    fake.state = "RUNNING"

    def stopped():  # the job saves a checkpoint, leaves its stop mark and ends
        RunDir(record.run_dir).stop_mark.write_text("3\n")
        fake.state, fake.code = "FAILED", "143:0"

    fake.on_signal = stopped
    slurm.stop(record, timeout=5)
    assert ("scancel", "--signal=USR1", "77") in fake.calls
    assert record.status == "stopped" and record.exit_code == 143
    assert not any(c[0] == "scancel" and len(c) == 2 for c in fake.calls)  # no cancel needed


def test_stop_cancels_a_queued_job_and_one_that_does_not_stop(fake, job):
    record = submit(job, "slurm", lambda b: None, detach=True)
    slurm.stop(record)
    assert fake.calls[-1] == ("scancel", "77") and record.status == "stopped"
    record = submit(job, "slurm", lambda b: None, detach=True)
    fake.state = "RUNNING"
    slurm.stop(record, timeout=0)
    assert fake.calls[-1] == ("scancel", "77") and "did not stop within 0 s; cancelled" in record.message


def test_plan_prints_the_script_it_submits(fake, job):
    from runner.core.jobspec.load import load_job

    planned = slurm.SlurmExecutor(lambda b: None).plan(load_job(job), Path("/out/job/RUN"))
    lines = planned.lines()
    assert lines[:2] == ["# command", "sbatch --parsable /out/job/RUN/job.sbatch"]
    assert (
        "#SBATCH --nodes=2" in lines and lines[2] == "# the batch script it submits (/out/job/RUN/job.sbatch)"
    )
