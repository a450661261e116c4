"""Compose files, checked by the tool that consumes them (docker-compose v1) and run for real."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, runner_cli, write_job

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def compose_bin():
    path = shutil.which("docker-compose")
    if not path:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is missing; scripts/provision-docker.sh installs it")
        pytest.skip("docker-compose is not installed (scripts/provision-docker.sh installs it)")
    return path


def compose(
    bin_: str, *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [bin_, *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600
    )


def top_level_env(out: Path, model: Path, **more: str) -> dict[str, str]:
    return {"IMAGE": "localhost/runner/cpu:latest", "JOB": "jobs/demo.yaml", "MODEL_DIR": str(model),
            "OUTPUT_DIR": str(out), "RUNNER_UID": str(os.getuid()), "RUNNER_GID": str(os.getgid()), **more}  # fmt: skip


def test_top_level_compose_file_is_valid_and_says_what_is_missing(compose_bin, tmp_path):
    env = top_level_env(tmp_path / "out", tmp_path / "model", RUNNER_GID="50")
    result = compose(compose_bin, "-f", "docker-compose.yml", "config", cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr
    assert f"user: {os.getuid()}:50" in result.stdout.replace("'", "")  # a string, not a base-60 number
    bare = {k: v for k, v in os.environ.items() if k not in ("MODEL_DIR", "OUTPUT_DIR", "RUNNER_UID")}
    refused = subprocess.run([compose_bin, "-f", "docker-compose.yml", "config", "-q"], cwd=ROOT,
                             capture_output=True, text=True, env={**bare, "RUNNER_GID": "0"})  # fmt: skip
    assert refused.returncode != 0 and "set RUNNER_UID" in refused.stderr


def test_the_rendered_golden_with_gid_50_is_valid_for_compose_v1(compose_bin, tmp_path):
    """YAML 1.1 reads an unquoted 1234:50 as a base-60 number; the golden quotes it."""
    (tmp_path / "docker-compose.yml").write_text((ROOT / "tests" / "golden" / "compose.yml").read_text())
    result = compose(compose_bin, "config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "user: 1234:50" in result.stdout.replace("'", "").replace('"', "")


def give_to_the_job(out: Path) -> None:
    """What the note of a render by root asks: the output directory is the job's user's."""
    from runner.host.render.lockdown import job_user

    for path in (out, *out.rglob("*")):
        os.chown(path, *job_user(os.getuid(), os.getgid()))


def up(compose_bin: str, project: list[str], service: str, cwd: Path, env: dict | None = None):
    """The documented command: `up` exits with the job's own exit code."""
    try:
        return compose(compose_bin, *project, "up", "--exit-code-from", service, service, cwd=cwd, env=env)
    finally:
        compose(compose_bin, *project, "down", cwd=cwd, env=env)


def test_top_level_compose_runs_the_demo_in_two_processes(compose_bin, cpu_image, tiny_model, tmp_path):
    out = tmp_path / "outputs"
    out.mkdir()
    env = top_level_env(out, tiny_model, NPROC="2")
    project = ["-p", f"runnertest{os.getpid()}", "-f", "docker-compose.yml", "--profile", "cpu"]
    result = up(compose_bin, project, "train-cpu", ROOT, env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_dir,) = (p for p in (out / "demo").iterdir() if p.is_dir())  # one run, written once
    assert (run_dir / "model" / "model.safetensors").is_file()
    assert '"status": "succeeded"' in (run_dir / "run.json").read_text()
    assert json.loads((run_dir / "results.json").read_text())["world_size"] == 2
    # The run names host paths: runner chat works on it from the host.
    assert str(tiny_model) in (run_dir / "spec.yaml").read_text()
    chat = runner_cli("chat", str(run_dir), "-m", "你是谁？", "--executor", "local")
    assert chat.returncode == 0 and "assistant>" in chat.stdout, chat.stderr[-2000:]


def test_rendered_compose_runs_its_job_in_two_processes(compose_bin, cpu_image, tiny_model, tmp_path):
    spec = write_job(tmp_path / "job.yaml", tiny_model, name="composed", image="cpu",
                     training={"max_steps": 2}, resources={"gpus": 0, "procs_per_node": 2},
                     distributed={"nccl": {"p2p_disable": True}})  # fmt: skip
    rendered = runner_cli("compose", str(spec), "-o", str(tmp_path / "c"))
    assert rendered.returncode == 0, rendered.stderr
    give_to_the_job(tmp_path / "out")
    text = (tmp_path / "c" / "docker-compose.yml").read_text()
    assert "--nproc-per-node=2" in text and 'NCCL_P2P_DISABLE: "1"' in text
    project = ["-p", f"runnercomposed{os.getpid()}"]
    assert compose(compose_bin, *project, "config", "-q", cwd=tmp_path / "c").returncode == 0
    result = up(compose_bin, project, "composed", tmp_path / "c")
    assert result.returncode == 0, result.stdout[-3000:]
    (run_dir,) = (p for p in (tmp_path / "out" / "composed").iterdir() if p.is_dir())
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    assert json.loads((run_dir / "results.json").read_text())["world_size"] == 2


def test_a_failing_job_makes_up_fail(compose_bin, cpu_image, tiny_model, tmp_path):
    spec = write_job(tmp_path / "job.yaml", tiny_model, name="failing", image="cpu")
    assert runner_cli("compose", str(spec), "-o", str(tmp_path / "c")).returncode == 0
    # Valid when rendered; by the time the job reads it, the data file is broken.
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    spec_file = tmp_path / "c" / "failing.yaml"
    spec_file.write_text(spec_file.read_text().replace(str(ROOT / "data" / "identity.json"), str(broken)))
    compose_file = tmp_path / "c" / "docker-compose.yml"
    compose_file.write_text(
        compose_file.read_text().replace(str(ROOT / "data" / "identity.json"), str(broken))
    )
    result = up(compose_bin, ["-p", f"runnerfail{os.getpid()}"], "failing", tmp_path / "c")
    assert result.returncode != 0, result.stdout[-3000:]


def test_an_unloaded_image_is_never_pulled(compose_bin, tiny_model, tmp_path):
    """The name cannot resolve to a public registry: compose fails without pulling anything."""
    spec = write_job(tmp_path / "job.yaml", tiny_model, name="nopull", image="never-built")
    rendered = runner_cli("compose", str(spec), "-o", str(tmp_path / "c"))
    assert rendered.returncode == 0
    assert "image localhost/runner/never-built:latest is not loaded" in rendered.stderr
    assert "runner load FILE" in rendered.stderr
    result = up(compose_bin, ["-p", f"runnernopull{os.getpid()}"], "nopull", tmp_path / "c")
    assert result.returncode != 0
    said = result.stdout + result.stderr
    assert "localhost/runner/never-built" in said and "docker.io" not in said, said[-2000:]
