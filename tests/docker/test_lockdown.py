"""A job's container on the real engine: locked down when root submits it, and no secret of the
submitting side reaches the container, the image or the run's records.

Prints the figures of the reliability table:
  RELIABILITY secrets: N places scanned, 0 leaks
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.core.rundir import read_record
from runner.host.render import lockdown
from tests.conftest import ROOT, runner_cli, write_job
from tests.docker.conftest import BASE

pytestmark = pytest.mark.docker

SETUID = ["find", "/", "-xdev", "-perm", "/6000", "-type", "f"]


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory open like shared storage (pytest's own are root's only)."""
    path = Path(tempfile.mkdtemp(prefix="runner-lockdown-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_image_keeps_no_setuid_binary(docker, cpu_image):
    code, found = docker.run(BASE, SETUID, network_mode="none", user="0:0")
    assert code == 0 and "/su" in found, f"the base image should carry setuid binaries to strip: {found}"
    code, found = docker.run(cpu_image.tag, SETUID, network_mode="none", user="0:0")
    assert code == 0 and found.strip() == "", found


def _tail(result) -> str:
    return result.stdout[-3000:] + result.stderr[-3000:]


def test_root_submits_a_locked_down_job_and_no_secret_travels(
    docker, cpu_image, cpu_spec, images_dir, wheels_root, tiny_model, shared, monkeypatch
):
    if os.getuid() != 0:
        pytest.skip("this test submits as root (the container must run as nobody all the same)")
    marker = f"runner-secret-{secrets.token_hex(12)}"
    planted = {
        "HF_TOKEN": f"hf_{marker}",
        "AWS_SECRET_ACCESS_KEY": f"aws-{marker}",
        "RUNNER_TEST_MARKER": marker,
    }
    # Inputs as on shared storage; beside the data, a file with the token in it.
    model = shared / "tiny"
    shutil.copytree(tiny_model, model)
    data = shared / "data"
    data.mkdir()
    shutil.copy(ROOT / "data" / "identity.json", data / "identity.json")
    (data / ".env").write_text(f"HF_TOKEN=hf_{marker}\n")
    for path in (model, *model.iterdir(), data, *data.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    spec = write_job(shared / "job.yaml", model, name="locked", image="cpu",
                     data={"datasets": [{"path": str(data / "identity.json")}], "cutoff_len": 32},
                     training={"max_steps": 2, "logging_steps": 1})  # fmt: skip
    spec.chmod(0o644)

    started = runner_cli("submit", str(spec), "--detach", env=planted)
    assert started.returncode == 0, _tail(started)
    run_id = started.stdout.split()[1].rstrip(":")
    (container,) = docker.client.containers.list(all=True, filters={"label": f"runner.run-id={run_id}"})
    try:
        container.wait(timeout=300)
        container.reload()
        attrs, logs = container.attrs, container.logs().decode(errors="replace")
        status = runner_cli("status", run_id)  # brings the record up to date, removes the container
    finally:
        if docker.container(container.id):
            container.remove(force=True)
    assert '"succeeded"' in status.stdout, _tail(status) + logs[-3000:]

    # docker inspect: the lockdown, as the engine applied it.
    host = attrs["HostConfig"]
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"] and host["Privileged"] is False
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["PidsLimit"] == lockdown.PIDS_LIMIT and host["ReadonlyRootfs"] is True
    assert host["Tmpfs"] == {"/tmp": "rw,exec,nosuid,nodev"}
    assert attrs["Config"]["User"] == "65534:65534"
    writable = {m["Destination"] for m in attrs["Mounts"] if m["RW"]}
    run_dir = Path(read_record(shared / "out" / "locked" / run_id).run_dir)
    assert writable == {str(run_dir), str(shared / "out" / ".cache")}
    assert str(data / ".env") not in {m["Source"] for m in attrs["Mounts"]}  # only the dataset itself
    # ... and the job trained under it, as nobody.
    assert attrs["State"]["ExitCode"] == 0, logs[-3000:]
    assert json.loads((run_dir / "results.json").read_text())["global_step"] == 2
    assert (run_dir / "adapter" / "adapter_model.safetensors").stat().st_uid == 65534

    # The image, built with the secrets in the environment: the same content tag (the build
    # takes nothing from the environment), and nothing of them in its history, labels or config.
    # (Its id can differ where an earlier test removed the build cache.)
    from runner.host.images.build import build

    for key, value in planted.items():
        monkeypatch.setenv(key, value)
    rebuilt = build(cpu_spec, images_dir, wheels_root, docker=docker)
    assert rebuilt.tag == cpu_image.tag

    places: dict[str, str] = {
        "container environment": json.dumps(attrs["Config"]["Env"]),
        "container inspect": json.dumps(attrs),
        "container labels": json.dumps(attrs["Config"]["Labels"]),
        "container log": logs,
        "image history": json.dumps(docker.history(rebuilt.image_id)),
        "image labels": json.dumps(docker.client.images.get(rebuilt.image_id).labels),
        "image config": json.dumps(docker.client.images.get(rebuilt.image_id).attrs),
        "submit output": started.stdout + started.stderr,
        "status output": status.stdout + status.stderr,
    }
    for path in sorted(p for p in (shared / "out").rglob("*") if p.is_file()):
        places[f"run file {path.relative_to(shared / 'out')}"] = path.read_bytes().decode(errors="replace")
    assert {f"run file locked/{run_id}/{name}" for name in ("spec.yaml", "run.json", "train.log")} <= set(
        places
    )
    needles = [marker, *planted.values()]
    leaks = [where for where, text in places.items() if any(n in text for n in needles)]
    print(f"\nRELIABILITY secrets: {len(places)} places scanned, {len(leaks)} leaks")
    assert leaks == []


def test_a_job_root_submits_is_refused_what_nobody_cannot_read(cpu_image, tiny_model, shared):
    if os.getuid() != 0:
        pytest.skip("this test submits as root")
    model = shared / "tiny"
    shutil.copytree(tiny_model, model)  # root's files
    (model / "model.safetensors").chmod(0o600)
    spec = write_job(shared / "job.yaml", model, name="private", image="cpu")
    started = time.time()
    result = runner_cli("submit", str(spec))
    assert result.returncode != 0 and time.time() - started < 60
    assert (
        f"runs as 65534:65534 (root's jobs run unprivileged) and could not read {model / 'model.safetensors'}"
        in result.stderr
    )
    assert "Traceback" not in result.stderr and not (shared / "out").exists()


def test_a_gpu_job_container_keeps_the_lockdown_where_memlock_cannot_be_raised(docker, cpu_image, shared):
    """A GPU job's container as rendered (raised memlock and stack limits), its device request
    left out: this engine has no NVIDIA runtime, and, nested, may not raise memlock. Started the
    way the executor starts it, the container runs all the same, locked down."""
    from runner.core.jobspec.job import JobSpec
    from runner.host.render.container import render_container

    spec = JobSpec.model_validate({
        "name": "gpu", "image": "cpu", "model": {"path": str(shared)}, "method": {"type": "lora"},
        "data": {"datasets": [{"path": str(shared)}]}, "output": {"dir": str(shared / "out")},
        "resources": {"gpus": 1},
    })  # fmt: skip
    run_dir = shared / "out" / "gpu" / "run"
    run_dir.mkdir(parents=True)
    config = render_container(spec, run_dir, 0, 0, f"lockdown-{secrets.token_hex(4)}")
    assert config["device_requests"] and {u["Name"] for u in config["ulimits"]} == {"memlock", "stack"}
    config.update(
        device_requests=[],
        volumes={},
        working_dir="/",
        command=["sh", "-c", "id -u; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status"],
    )
    container = docker.start(config)
    try:
        assert container.wait(timeout=60)["StatusCode"] == 0
        out = container.logs().decode()
        container.reload()
        host = container.attrs["HostConfig"]
    finally:
        container.remove(force=True)
    assert out.split()[0] == "65534" and "CapEff:\t0000000000000000" in out and "NoNewPrivs:\t1" in out, out
    assert host["CapDrop"] == ["ALL"] and "no-new-privileges" in host["SecurityOpt"]
    assert host["ReadonlyRootfs"] is True and host["PidsLimit"] == lockdown.PIDS_LIMIT
