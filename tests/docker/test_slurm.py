"""Slurm for real: the cluster scripts/provision-slurm.sh starts on this machine (slurmctld, two
slurmd nodes, munge), its jobs' containers in this machine's engine, which both nodes use. Every
job goes through `runner submit --executor slurm`; Slurm's own commands do what an
administrator or the time limit would (scontrol update, scancel).

- two nodes, one process each (gloo), reach the weights of one process with the same global
  batch;
- a time limit that strikes mid-run: the job saves a checkpoint on the signal, is requeued and
  continues, to the weights of the uninterrupted run;
- runner stop, runner resume, then scancel: a checkpoint each time, and nothing of the job left
  on any node (no container, no process).

Each test prints a `SLURM ...` line with its figures. The tier takes minutes: it is marked slow,
and CI runs it after `make test` (.ci/run: pytest -m slurm).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import runner_cli, write_job
from tests.docker.conftest import _missing

pytestmark = [pytest.mark.docker, pytest.mark.slurm, pytest.mark.slow]

SLURM_DIR = Path(os.environ.get("RUNNER_SLURM_DIR", "/var/lib/runner-slurm"))
# Long enough that the lowered time limit's signal strikes mid-run: slurmctld checks time limits
# every 30 s, and two nodes run 10 to 15 steps a second on this machine (1,200 steps: 80 to 120 s;
# the signal came at steps 208 and 142 in two runs).
STEPS = 1200
# Two nodes of batch 2 against one process of batch 4: the same samples in every step; gloo's
# all-reduce averages the gradients in another order than one process sums them.
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def slurm(docker) -> Path:
    conf = SLURM_DIR / "slurm.conf"
    if shutil.which("sbatch") is None or not conf.is_file():
        _missing(f"no Slurm cluster here ({conf} is missing); start one: scripts/provision-slurm.sh")
    os.environ["SLURM_CONF"] = str(conf)  # for runner's sbatch and the checks below
    shown = subprocess.run(
        ["sinfo", "--noheader", "--Node", "--format=%N %t"], capture_output=True, text=True
    )
    up = [line for line in shown.stdout.splitlines() if re.search(r" (idle|mix|alloc|comp)", line)]
    if shown.returncode != 0 or len(up) < 2:
        _missing(f"the Slurm cluster has not two nodes up ({shown.stdout or shown.stderr}); "
                 "scripts/provision-slurm.sh starts them")  # fmt: skip
    return conf


def job(directory: Path, model: Path, image: str, name: str, nodes: int = 2, steps: int = STEPS,
        **cluster) -> Path:  # fmt: skip
    """LoRA on the identity data; the same samples in every step whatever the nodes."""
    return write_job(
        directory / f"{name}.json", model, name=name, image=image,
        training={"max_steps": steps, "per_device_train_batch_size": 4 // nodes, "logging_steps": 10,
                  "learning_rate": 1e-3, "lr_scheduler_type": "linear", "save_steps": 100000, "seed": 7},
        resources={"gpus": 0, "nodes": nodes, "shm": "256m", **({"procs_per_node": 1} if nodes > 1 else {})},
        output={"dir": str(directory / "out")}, cluster=cluster,
    )  # fmt: skip


def the_run(directory: Path, name: str) -> Path:
    (run_dir,) = [p for p in (directory / "out" / name).iterdir() if p.is_dir()]
    return run_dir


def adapter(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def record(run_dir: Path) -> dict:
    """The run's record as `runner status` brings it up to date from Slurm."""
    shown = runner_cli("status", str(run_dir))
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


def job_field(job_id: str, key: str) -> str | None:
    shown = subprocess.run(["scontrol", "--oneliner", "show", "job", job_id], capture_output=True, text=True)
    m = re.search(rf"\b{key}=(\S+)", shown.stdout)
    return m.group(1) if m else None


def wait_for(what: str, check, timeout: float, every: float = 1.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if found := check():
            return found
        time.sleep(every)
    pytest.fail(f"waited {timeout:.0f} s for {what}")


def training(run_dir: Path) -> bool:
    log = run_dir / "train.log"
    return log.exists() and re.search(r"^step \d+/", log.read_text(errors="replace"), re.M) is not None


@pytest.fixture(scope="module")
def image(cpu_image) -> str:
    """The content tag of the image this suite built: another build's `latest` cannot replace it."""
    return cpu_image.tag


@pytest.fixture(scope="module")
def uninterrupted(slurm, image, tiny_model, tmp_path_factory) -> Path:
    """Two nodes, one process each, never interrupted."""
    directory = tmp_path_factory.mktemp("slurm-uninterrupted")
    started = time.time()
    done = runner_cli("submit", str(job(directory, tiny_model, image, "whole")), "--executor", "slurm")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    print(
        f"\nSLURM two nodes, {STEPS} steps: {time.time() - started:.0f} s through runner submit --executor slurm"
    )
    return the_run(directory, "whole")


def test_two_nodes_train_as_one_process_with_the_same_batch(uninterrupted, tiny_model, tmp_path):
    results = json.loads((uninterrupted / "results.json").read_text())
    assert results["world_size"] == 2 and results["global_step"] == STEPS
    log = (uninterrupted / "train.log").read_text()
    assert "runner: Slurm job " in log and "on runner-n[1-2]" in log
    rec = record(uninterrupted)
    assert rec["status"] == "succeeded" and rec["executor"] == "slurm" and rec["cluster_job"]
    one = runner_cli("submit", str(job(tmp_path, tiny_model, "cpu", "one", nodes=1)), "--executor", "local")
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-2000:]
    worst = max_diff(adapter(uninterrupted), adapter(the_run(tmp_path, "one")))
    moved = max(
        t.abs().max().item() for k, t in adapter(uninterrupted).items() if "lora_B" in k
    )  # B starts at 0
    print(f"\nSLURM 2 nodes x 1 process (batch 2) vs 1 process (batch 4), {STEPS} steps: "
          f"max |dw| {worst:.1e} (tolerance {TOLERANCE:g}; lora_B moved up to {moved:.1e})")  # fmt: skip
    assert moved > 100 * TOLERANCE
    assert worst <= TOLERANCE


def test_the_time_limit_checkpoints_requeues_and_resumes_to_the_same_weights(
    uninterrupted, slurm, image, tiny_model, tmp_path, cancel_at_the_end
):
    """The limit is lowered once training runs (`scontrol update`, as an administrator may), so
    that it strikes mid-run whatever this machine's speed: due at once, as the job asked for
    its signal 300 s ahead. Slurm's requeue delay (about two minutes) is cut short too."""
    spec = job(tmp_path, tiny_model, image, "limited", time_limit="10", stop_before_limit=300)
    submitted = runner_cli("submit", str(spec), "--executor", "slurm", "--detach")
    assert submitted.returncode == 0, submitted.stderr
    run_dir = the_run(tmp_path, "limited")
    job_id = record(run_dir)["cluster_job"]
    cancel_at_the_end.append(job_id)
    assert f"submitted as Slurm job {job_id}" in submitted.stdout
    wait_for("training to start", lambda: training(run_dir), 300)
    h, m, s = (int(x) for x in job_field(job_id, "RunTime").split("-")[-1].split(":"))
    limit = (h * 3600 + m * 60 + s) // 60 + 5  # minutes: its signal, 5 minutes ahead, is due now
    subprocess.run(["scontrol", "update", f"JobId={job_id}", f"TimeLimit={limit}"], check=True)
    starts = 1
    while True:
        state = wait_for("the job to be requeued or to end", lambda: job_field(job_id, "JobState"), 60)
        if state == "PENDING" and job_field(job_id, "Reason") == "BeginTime":
            subprocess.run(
                ["scontrol", "update", f"JobId={job_id}", "StartTime=now", "TimeLimit=30"], check=True
            )
            starts += 1
            wait_for("the requeued job to start", lambda: job_field(job_id, "JobState") != "PENDING", 120)
        rec = record(run_dir)
        if rec["status"] != "running":
            break
        assert starts <= 3, "requeued again and again"
        time.sleep(2)
    log = (run_dir / "train.log").read_text()
    assert rec["status"] == "succeeded", log[-4000:]
    stopped_at = [int(k) for k in re.findall(r"stopped at step (\d+); checkpoint saved", log)]
    resumed = re.findall(r"resuming from \S+/checkpoint-(\d+)", log)
    assert stopped_at and 0 < stopped_at[0] < STEPS, log[-4000:]  # mid-run
    assert "runner: stopped ahead of the time limit with a checkpoint saved; requeued" in log
    assert "(restart 1)" in log and resumed and int(resumed[0]) == stopped_at[0]
    assert json.loads((run_dir / "results.json").read_text())["global_step"] == STEPS
    worst = max_diff(adapter(run_dir), adapter(uninterrupted))
    print(f"\nSLURM time limit: stopped at step {stopped_at[0]}/{STEPS}, requeued {starts - 1}x, resumed; "
          f"final weights vs uninterrupted max |dw| {worst:.1e}")  # fmt: skip
    assert worst == 0, f"the requeued run's weights differ by up to {worst:g}"
    listed = runner_cli("ls", str(tmp_path / "out"))
    assert re.search(rf"{run_dir.name}\s+limited\s+succeeded\s+slurm", listed.stdout), listed.stdout
    shown = runner_cli("logs", run_dir.name)
    assert shown.returncode == 0 and shown.stdout.count("runner: Slurm job") >= 2


def leftovers(job_id: str) -> list[str]:
    """Whatever of a job is still on this machine, which holds both nodes: its containers, its
    processes (by the SLURM_JOB_ID in their environment), its slurmstepd."""
    found = subprocess.run(["docker", "ps", "--all", "--quiet", "--filter", f"label=runner.slurm-job={job_id}"],
                           capture_output=True, text=True).stdout.split()  # fmt: skip
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f"SLURM_JOB_ID={job_id}".encode() in environ or cmdline.startswith(f"slurmstepd: [{job_id}."):
            found.append(f"pid {proc.name}: {cmdline[:120]}")
    return found


def past(run_dir: Path, step: int) -> bool:
    """Whether the run, resumed from `step`, has logged a later one."""
    log = (run_dir / "train.log").read_text(errors="replace").split("resuming from")[-1]
    return any(int(n) > step for n in re.findall(r"^step (\d+)/", log, re.M))


@pytest.fixture
def cancel_at_the_end():
    """Slurm jobs a test started, cancelled whatever becomes of the test."""
    jobs: list[str] = []
    yield jobs
    for job_id in jobs:
        subprocess.run(["scancel", job_id], capture_output=True)


def test_stop_resume_and_scancel_leave_nothing_behind(slurm, image, tiny_model, tmp_path, cancel_at_the_end):
    spec = job(tmp_path, tiny_model, image, "long", steps=100000)
    assert runner_cli("submit", str(spec), "--executor", "slurm", "-d").returncode == 0
    run_dir = the_run(tmp_path, "long")
    first = record(run_dir)["cluster_job"]
    cancel_at_the_end.append(first)
    wait_for("training to start", lambda: training(run_dir), 300)
    stopped = runner_cli("stop", run_dir.name, "--timeout", "120")
    assert stopped.returncode == 0 and "stopped (exit 143)" in stopped.stdout, stopped.stdout + stopped.stderr
    saved = sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("checkpoint-*"))
    assert saved and (run_dir / "stopped").exists()
    assert wait_for(
        "the nodes to be clean", lambda: leftovers(first) == [] or None, 15
    )  # slurmstepd ends last

    resumed = runner_cli("resume", run_dir.name, "--detach")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    second = record(run_dir)["cluster_job"]
    cancel_at_the_end.append(second)
    assert second != first and f"resumed as Slurm job {second}" in resumed.stdout
    wait_for("the resumed job to train past its checkpoint", lambda: past(run_dir, saved[-1]), 300)
    assert (
        f"resuming from {run_dir}/checkpoints/checkpoint-{saved[-1]}" in (run_dir / "train.log").read_text()
    )
    started = time.time()
    subprocess.run(["scancel", second], check=True)
    wait_for("the job to end", lambda: job_field(second, "JobState") not in ("RUNNING", "COMPLETING"), 120)
    took = time.time() - started
    assert wait_for("the nodes to be clean", lambda: leftovers(second) == [] or None, 15)
    rec = record(run_dir)
    after = sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("checkpoint-*"))
    print(f"\nSLURM runner stop: checkpoint-{saved[-1]}; resumed as job {second}; scancel: ended in {took:.0f} s "
          f"as {job_field(second, 'JobState')}, run {rec['status']} with checkpoint-{after[-1]}, "
          f"leftovers on the nodes: {leftovers(second)}")  # fmt: skip
    assert rec["status"] == "stopped" and after[-1] > saved[-1]  # scancel's TERM: a checkpoint too
