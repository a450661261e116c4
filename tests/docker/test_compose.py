"""Compose files, checked by the tool that consumes them (docker-compose v1) and run for real."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, runner_cli

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


def test_top_level_compose_file_is_valid(compose_bin):
    result = compose(compose_bin, "-f", "docker-compose.yml", "config", "-q", cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_top_level_compose_runs_the_demo_job(compose_bin, cpu_image, tiny_model, tmp_path):
    out = tmp_path / "outputs"
    out.mkdir()
    env = {"IMAGE": "runner/cpu:latest", "JOB": "jobs/demo.yaml", "MODEL_DIR": str(tiny_model),
           "OUTPUT_DIR": str(out), "RUNNER_UID": str(os.getuid()), "RUNNER_GID": str(os.getgid())}  # fmt: skip
    project = ["-p", f"runnertest{os.getpid()}", "-f", "docker-compose.yml", "--profile", "cpu"]
    try:
        result = compose(compose_bin, *project, "up", "--abort-on-container-exit", "--exit-code-from", "train-cpu",
                         "train-cpu", cwd=ROOT, env=env)  # fmt: skip
    finally:
        compose(compose_bin, *project, "down", cwd=ROOT, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_dir,) = (out / "demo").iterdir()
    assert (run_dir / "model" / "model.safetensors").is_file()
    assert '"status": "succeeded"' in (run_dir / "run.json").read_text()


def test_rendered_compose_runs_its_job(compose_bin, cpu_image, tiny_model, tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text(
        f"name: composed\nimage: cpu\nmodel: {{path: {tiny_model}}}\nmethod: {{type: lora}}\n"
        f"data: {{datasets: [{{path: {ROOT}/data/identity.json}}], cutoff_len: 64}}\n"
        f"training: {{max_steps: 2}}\nresources: {{gpus: 0}}\noutput: {{dir: {tmp_path}/out}}\n"
    )
    assert runner_cli("compose", str(spec), "-o", str(tmp_path / "c")).returncode == 0
    project = ["-p", f"runnercomposed{os.getpid()}"]
    assert compose(compose_bin, *project, "config", "-q", cwd=tmp_path / "c").returncode == 0
    try:
        result = compose(compose_bin, *project, "up", "--abort-on-container-exit", cwd=tmp_path / "c")
    finally:
        compose(compose_bin, *project, "down", cwd=tmp_path / "c")
    assert result.returncode == 0, result.stdout[-3000:]
    (run_dir,) = (tmp_path / "out" / "composed").iterdir()
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
