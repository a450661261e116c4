"""`runner plan` prints what the executor runs: both come from the executor's one `plan`. Each
test captures what an executor really starts (the process, or the container handed to the
engine) and compares it with what `runner plan` printed for the same spec."""

from __future__ import annotations

import io
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from runner.host.cli import main
from tests.conftest import ROOT


@pytest.fixture
def spec(tmp_path: Path) -> str:
    """A small LoRA job on CPU, its runs under tmp_path."""
    path = tmp_path / "job.yaml"
    path.write_text(
        f"name: planned\nmodel: {{path: {ROOT}/tests/data/models/fake}}\nmethod: {{type: lora}}\n"
        f"data: {{datasets: [{{path: {ROOT}/tests/data/datasets/alpaca.json}}]}}\n"
        f"resources: {{gpus: 0}}\noutput: {{dir: {tmp_path}/out}}\n",
        encoding="utf-8",
    )
    return str(path)


def planned(spec: str, executor: str, *extra: str) -> tuple[list[str], dict[str, str]]:
    """The command and the environment `runner plan` prints."""
    result = CliRunner().invoke(main, ["plan", spec, "--executor", executor, *extra])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    start = lines.index("# command")
    env_at = (
        lines.index("# environment (over this shell's)")
        if "# environment (over this shell's)" in lines
        else None
    )
    env = dict(line.split("=", 1) for line in lines[env_at + 1 : start]) if env_at is not None else {}
    return shlex.split(lines[start + 1]), env


def with_run(argv: list[str], run_dir: Path) -> list[str]:
    """The planned command with the run directory and id a submit created."""
    return [
        a.replace(str(run_dir.parent / "<run-id>"), str(run_dir)).replace("<run-id>", run_dir.name)
        for a in argv
    ]


class FakeProcess:
    pid = 4242
    stdout = io.BytesIO(b"")

    def wait(self) -> int:
        return 0


def test_the_local_executor_runs_what_plan_prints(monkeypatch, tmp_path, spec):
    from runner.host.execute import local
    from runner.host.execute.submit import submit

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ops"))  # the shell's own: not overridden
    argv, env = planned(spec, "local")
    started = {}

    def popen(command, **kwargs):
        started.update(argv=command, env=kwargs["env"])
        return FakeProcess()

    monkeypatch.setattr(local.subprocess, "Popen", popen)
    record = submit(spec, "local", lambda b: None, base=ROOT)
    run_dir = Path(record.run_dir)
    assert started["argv"] == with_run(argv, run_dir)
    assert {k: started["env"][k] for k in env} == env
    assert started["env"]["TORCH_EXTENSIONS_DIR"] == str(tmp_path / "ops")


class FakeContainer:
    id = "0123456789abcdef"

    def logs(self, **kwargs):
        return iter(())

    def wait(self):
        return {"StatusCode": 0}

    def remove(self, force: bool = False):
        pass


class FakeEngine:
    """The engine's side of the docker executor: what it was asked to start."""

    def __init__(self):
        self.started: list[dict] = []

    def image_id(self, ref: str) -> str:
        return "sha256:" + "0" * 64

    def gpu_names(self) -> list[str]:
        return []

    def start(self, config: dict) -> FakeContainer:
        self.started.append(config)
        return FakeContainer()


@pytest.mark.parametrize("image", [None, "localhost/runner/cpu:latest"])
def test_the_docker_executor_starts_what_plan_prints(monkeypatch, image, spec):
    from runner.host.execute import docker as docker_executor
    from runner.host.execute.submit import submit
    from runner.host.render.container import docker_run_argv

    engine = FakeEngine()
    monkeypatch.setattr(docker_executor, "Docker", lambda *a, **k: engine)
    argv, _ = planned(spec, "docker", *(["--image", image] if image else []))
    record = submit(spec, "docker", lambda b: None, base=ROOT, image=image)
    (config,) = engine.started
    # What each start sets beside the plan: whether the container writes its own log, and resumes.
    assert {config["environment"].pop(k) for k in ("RUNNER_TEE", "RUNNER_RESUME")} == {"0"}
    assert docker_run_argv(config) == with_run(argv, Path(record.run_dir))
    assert record.image == (image or "localhost/runner/default:latest")
