"""The docker executor as a real user meets it: not root.

Every command here runs as the plain user (runner-test, see `plain_user`), or as a second uid
that exists nowhere but in its files, never as the root that runs the suite: outputs belong to
who submitted, a model one uid saved trains under another, and inputs the job could not read
are refused before anything starts.

pytest's own tmp directory is private to root (0700), so these tests work in directories of
their own under the system's tmp directory, open (0755) like shared storage.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runner.core.rundir import read_record
from tests.conftest import DOCKER_SOCKET, ROOT, runner_cli, write_job
from tests.docker.conftest import User

pytestmark = pytest.mark.docker
STEPS = 400


def shared_dir(uid: int, gid: int, prefix: str = "runner-nonroot-") -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    os.chown(path, uid, gid)
    return path


@pytest.fixture(scope="session")
def shared_model(tiny_model: Path) -> Iterator[Path]:
    """The tiny model as root saved it (its very files, hard-linked), where other users reach it."""
    top = shared_dir(0, 0, "runner-nonroot-model-")
    try:
        shutil.copytree(tiny_model, top / "tiny", copy_function=os.link)
    except OSError:  # another file system: a copy keeps the modes, and root as the owner
        shutil.rmtree(top / "tiny", ignore_errors=True)
        shutil.copytree(tiny_model, top / "tiny")
    yield top / "tiny"
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def work(plain_user: User) -> Iterator[Path]:
    """A directory the plain user owns: its job files and outputs go here."""
    path = shared_dir(plain_user.uid, plain_user.gid)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def job(directory: Path, model_dir: Path, owner: tuple[int, int], /, name: str = "plain", **sections) -> Path:
    """write_job's small LoRA job in the CPU image, owned by `owner`; outputs in directory/out.
    Sections replace or extend write_job's (`model={"path": ...}` replaces model_dir)."""
    path = write_job(directory / f"{name}.yaml", model_dir, name=name, image="cpu", **sections)
    os.chown(path, *owner)
    return path


def only_run(out: Path, name: str) -> Path:
    (run_dir,) = (out / name).iterdir()
    return run_dir


def owned_by_others(path: Path, uid: int) -> list[str]:
    return [f"{p} (uid {p.lstat().st_uid})" for p in [path, *path.rglob("*")] if p.lstat().st_uid != uid]


def unreadable_by_others(path: Path) -> list[str]:
    return [f"{p} ({p.stat().st_mode & 0o777:04o})" for p in path.rglob("*")
            if p.is_file() and not p.stat().st_mode & 0o004]  # fmt: skip


def tail(result: subprocess.CompletedProcess) -> str:
    return result.stdout[-3000:] + result.stderr[-3000:]


def free_uid(start: int = 1235) -> int:
    """A uid no passwd entry names: a user of a container or a directory service, no group file."""
    uid = start
    while True:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
        uid += 1


def test_plain_user_trains_on_a_model_root_saved_and_chats(plain_user: User, cpu_image, shared_model, work):
    weights = shared_model / "model.safetensors"
    assert weights.stat().st_uid == 0, "the model must be root's, saved by another uid than the job's"
    result = runner_cli("submit", str(job(work, shared_model, (plain_user.uid, plain_user.gid))),
                        user=plain_user.name)  # fmt: skip
    assert result.returncode == 0, tail(result)
    run_dir = only_run(work / "out", "plain")
    record = read_record(run_dir)
    assert (record.executor, record.status, record.exit_code) == ("docker", "succeeded", 0)
    assert json.loads((run_dir / "results.json").read_text())["global_step"] == 3
    assert owned_by_others(work / "out", plain_user.uid) == []  # the CLI's files and the container's
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert unreadable_by_others(run_dir / "adapter") == []  # not safetensors' 0600

    chat = runner_cli("chat", str(run_dir), "-m", "你好", user=plain_user.name)  # in the image, as trained
    assert chat.returncode == 0, tail(chat)
    assert "user> 你好" in chat.stdout and "assistant>" in chat.stdout


def test_a_model_one_uid_saved_trains_under_another(plain_user: User, cpu_image, shared_model, work):
    full = job(work, shared_model, (plain_user.uid, plain_user.gid), name="full",
               method={"type": "full"}, training={"max_steps": 2})  # fmt: skip
    first = runner_cli("submit", str(full), user=plain_user.name)
    assert first.returncode == 0, tail(first)
    model = only_run(work / "out", "full") / "model"
    assert (model / "model.safetensors").stat().st_uid == plain_user.uid
    assert unreadable_by_others(model) == []

    other = (free_uid(), free_uid())  # neither root nor the plain user, nor in any group file
    elsewhere = shared_dir(*other)
    try:
        second = runner_cli("submit", str(job(elsewhere, model, other, name="second")), user=other)
        assert second.returncode == 0, tail(second)
        run_dir = only_run(elsewhere / "out", "second")
        assert read_record(run_dir).status == "succeeded"
        assert owned_by_others(elsewhere / "out", other[0]) == []
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)


def test_plain_user_detaches_stops_and_resumes(plain_user: User, cpu_image, shared_model, work, docker):
    # One short sample a step: a few hundred steps in well under a minute, on a busy CPU too.
    quick = {"max_steps": STEPS, "logging_steps": 10, "save_steps": 100, "per_device_train_batch_size": 1}
    spec = job(work, shared_model, (plain_user.uid, plain_user.gid), name="life", data={"cutoff_len": 32},
               training=quick)  # fmt: skip

    def cli(*args: str) -> subprocess.CompletedProcess:
        return runner_cli(*args, user=plain_user.name)

    started = cli("submit", str(spec), "--detach")
    assert started.returncode == 0, tail(started)
    run_id = started.stdout.split()[1].rstrip(":")
    try:
        run_dir = only_run(work / "out", "life")
        log = run_dir / "train.log"
        deadline = time.time() + 120
        while "step 110/" not in (log.read_text() if log.exists() else "") and time.time() < deadline:
            time.sleep(0.5)
        assert cli("status", run_id).stdout.count('"running"') == 1  # by id: the plain user's own index

        stopped = cli("stop", run_id)
        assert stopped.returncode == 0 and "stopped (exit 143)" in stopped.stdout, tail(stopped)
        checkpoints = sorted((run_dir / "checkpoints").glob("checkpoint-*"))
        assert checkpoints, "SIGTERM must leave a checkpoint"
        stopped_at = max(int(p.name.split("-")[1]) for p in checkpoints)
        assert 100 <= stopped_at < STEPS

        resumed = cli("resume", run_id, "--detach")
        assert resumed.returncode == 0, tail(resumed)
        followed = cli("logs", run_id, "-f")
        assert followed.returncode == 0, tail(followed)
        assert f"resuming from {run_dir}/checkpoints/checkpoint-{stopped_at}" in followed.stdout
        assert followed.stdout.rstrip().endswith("succeeded (exit 0)")
        assert json.loads((run_dir / "results.json").read_text())["global_step"] == STEPS
        assert owned_by_others(work / "out", plain_user.uid) == []
    finally:  # a failed assertion leaves no container running on the shared engine
        for container in docker.client.containers.list(
            all=True, filters={"label": f"runner.run-id={run_id}"}
        ):
            container.remove(force=True)


# Inputs the plain user's job could not read: (spec sections, the path the refusal names).
def weights_0600(work: Path, model: Path) -> tuple[dict, Path]:
    copy = work / "locked"
    shutil.copytree(model, copy)  # copied by root: root's files
    (copy / "model.safetensors").chmod(0o600)
    return {"model": {"path": str(copy)}}, copy / "model.safetensors"


def data_0600(work: Path, model: Path) -> tuple[dict, Path]:
    data = work / "data.json"
    shutil.copy(ROOT / "data" / "identity.json", data)
    data.chmod(0o600)
    return {"data": {"datasets": [{"path": str(data)}]}}, data


def data_for_docker_group_only(work: Path, model: Path) -> tuple[dict, Path]:
    """Readable by the plain user's shell through its docker group; the container runs with its
    uid:gid alone, so only the executor's own check (unreadable_as) sees the problem."""
    sections, data = data_0600(work, model)
    os.chown(data, 0, DOCKER_SOCKET.stat().st_gid)
    data.chmod(0o640)
    return sections, data


def model_in_a_private_dir(work: Path, model: Path) -> tuple[dict, Path]:
    private = work / "private"
    private.mkdir(mode=0o700)  # root's; the model itself is readable, but cannot be reached
    shutil.copytree(model, private / "tiny")
    return {"model": {"path": str(private / "tiny")}}, private / "tiny"


@pytest.mark.parametrize(
    "make", [weights_0600, data_0600, data_for_docker_group_only, model_in_a_private_dir]
)
def test_unreadable_input_refused_before_anything_starts(
    plain_user: User, make: Callable[[Path, Path], tuple[dict, Path]], cpu_image, shared_model, work
):
    sections, named = make(work, shared_model)
    result = runner_cli("submit", str(job(work, shared_model, (plain_user.uid, plain_user.gid), **sections)),
                        user=plain_user.name)  # fmt: skip
    assert result.returncode != 0, tail(result)
    assert str(named) in result.stderr and str(plain_user.uid) in result.stderr, tail(result)
    assert "Traceback" not in result.stderr, tail(result)
    assert not (work / "out").exists()


def compose_as(user: User, *args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """docker-compose v1 (the client the project installs) as the plain user, its groups included."""
    from tests.conftest import as_user

    compose_bin = shutil.which("docker-compose")
    if not compose_bin:
        pytest.fail("docker-compose is missing; scripts/provision-docker.sh installs it")
    _, _, switch = as_user(user.name)
    return subprocess.run([*switch, compose_bin, *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "HOME": str(cwd), **env}, timeout=600)  # fmt: skip


def test_compose_up_as_the_plain_user(plain_user: User, cpu_image, shared_model: Path, work: Path):
    """`runner compose` then the documented `up`, as the plain user (uid 1234, gid 1234, not
    1000): it trains one run that belongs to it."""
    me = (plain_user.uid, plain_user.gid)
    spec = job(work, shared_model, me, name="composed")
    rendered = runner_cli("compose", str(spec), "-o", str(work / "c"), user=plain_user.name)
    assert rendered.returncode == 0, rendered.stderr
    assert f'user: "{plain_user.uid}:{plain_user.gid}"' in (work / "c" / "docker-compose.yml").read_text()
    project = ["-p", f"runnernonroot{os.getpid()}"]
    try:
        up = compose_as(
            plain_user, *project, "up", "--exit-code-from", "composed", "composed", cwd=work / "c", env={}
        )
    finally:
        compose_as(plain_user, *project, "down", cwd=work / "c", env={})
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-2000:]
    run_dir = only_run(work / "out", "composed")
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert owned_by_others(run_dir, plain_user.uid) == []


@pytest.fixture(scope="session")
def host_install(wheelhouse: Path, plain_user: User) -> Iterator[Path]:
    """runner as a GPU server's host has it: Debian's own python3, `pip install runner` without
    the train extra (no torch, no transformers), from the wheelhouse, readable by every user."""
    from runner.host.images.build import runner_wheel

    top = shared_dir(0, 0, "runner-host-install-")
    venv = top / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True)
    wheel = runner_wheel(top / "dist")
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet"]
    subprocess.run([*pip, "--no-index", "--find-links", str(wheelhouse), str(wheel)], check=True)
    probe = subprocess.run([venv / "bin" / "python", "-c", "import torch"], capture_output=True)
    assert probe.returncode != 0, "a host install must not carry torch"
    subprocess.run(["chmod", "-R", "a+rX", str(top)], check=True)
    yield venv / "bin" / "runner"
    shutil.rmtree(top, ignore_errors=True)


def test_a_compose_run_from_a_host_install(
    plain_user: User, cpu_image, shared_model: Path, work: Path, host_install: Path
):
    """The top-level docker-compose.yml with its documented variables, as the plain user; then,
    from a host install without the training libraries: `runner ls` lists the run compose
    started, and chat, export and eval on it run in the image it trained in."""
    from tests.conftest import as_user, user_home

    me = (plain_user.uid, plain_user.gid)
    out = work / "top"
    out.mkdir()
    os.chown(out, *me)
    env = {"IMAGE": "localhost/runner/cpu:latest", "JOB": "jobs/demo.yaml", "MODEL_DIR": str(shared_model),
           "OUTPUT_DIR": str(out), "RUNNER_UID": str(plain_user.uid), "RUNNER_GID": str(plain_user.gid)}  # fmt: skip
    project = [
        "-p",
        f"runnernonroottop{os.getpid()}",
        "-f",
        str(ROOT / "docker-compose.yml"),
        "--profile",
        "cpu",
    ]
    try:
        up = compose_as(
            plain_user, *project, "up", "--exit-code-from", "train-cpu", "train-cpu", cwd=ROOT, env=env
        )
    finally:
        compose_as(plain_user, *project, "down", cwd=ROOT, env=env)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-2000:]
    run_dir = only_run(out, "demo")
    assert json.loads((run_dir / "results.json").read_text())["global_step"] > 0
    assert owned_by_others(run_dir, plain_user.uid) == []
    record = read_record(run_dir)
    assert (record.executor, record.image, record.status) == (
        "compose",
        "localhost/runner/cpu:latest",
        "succeeded",
    )

    _, _, switch = as_user(plain_user.name)
    home = user_home(*me)
    fresh = {
        **os.environ,
        "HOME": str(home),
        "RUNNER_HOME": str(home / "host-install"),
        "OUTPUT_DIR": str(out),
    }

    def host(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*switch, str(host_install), *args], capture_output=True, text=True, cwd=work,
                              env=fresh, timeout=600)  # fmt: skip

    listed = host("ls")  # nothing indexed yet: found under $OUTPUT_DIR
    assert listed.returncode == 0, tail(listed)
    assert record.id in listed.stdout and "compose" in listed.stdout, listed.stdout

    chat = host("chat", record.id, "-m", "你是谁？")  # by id, as `runner ls` showed it
    assert chat.returncode == 0, tail(chat)
    assert "assistant>" in chat.stdout

    exported = host("export", str(run_dir), "--out", str(work / "exported"))
    assert exported.returncode == 0, tail(exported)
    assert (work / "exported" / "config.json").is_file()
    assert owned_by_others(work / "exported", plain_user.uid) == []

    evaluated = host("eval", str(run_dir), "--data", str(ROOT / "data" / "identity.json"), "--max-samples", "2",
                     "--max-new-tokens", "8")  # fmt: skip
    assert evaluated.returncode == 0, tail(evaluated)
    (eval_run,) = (out / "demo-eval").glob("*/run.json")
    assert (read_record(eval_run.parent).executor, read_record(eval_run.parent).image) == (
        "docker", "localhost/runner/cpu:latest",
    )  # fmt: skip

    local = host("chat", str(run_dir), "--executor", "local", "-m", "你是谁？")
    assert local.returncode != 0 and "Traceback" not in local.stderr, tail(local)
    assert "pip install 'runner[train]'" in local.stderr and "--executor docker" in local.stderr, tail(local)
