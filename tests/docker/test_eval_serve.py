"""eval, export, chat and serve of a run trained in the CPU image, each in that image with
the network off, as the run trained."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from runner.core.rundir import read_record
from runner.host.render.lockdown import job_user  # root's jobs run as an unprivileged user
from tests.conftest import ROOT, runner_cli, write_job
from tests.integration.test_chat import Terminal
from tests.integration.test_serve import free_port

pytestmark = pytest.mark.docker
KEY = "in-image-key"


@pytest.fixture(scope="module")
def dock_run(cpu_image, tiny_model: Path, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("dock-eval-serve")
    spec = write_job(directory / "job.yaml", tiny_model, name="evalserve", image=cpu_image.tag,
                     data={"val_size": 2}, training={"max_steps": 4, "logging_steps": 1})  # fmt: skip
    result = runner_cli("submit", str(spec))  # the docker executor
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_dir,) = (directory / "out" / "evalserve").iterdir()
    assert read_record(run_dir).executor == "docker"
    return run_dir


def test_eval_runs_in_the_image(dock_run: Path):
    result = runner_cli("eval", str(dock_run), "--max-new-tokens", "4")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run,) = [p for p in (dock_run.parent.parent / "evalserve-eval").iterdir() if (p / "run.json").exists()]
    assert read_record(run).executor == "docker"
    assert len((run / "generated_predictions.jsonl").read_text().splitlines()) == 2
    summary = json.loads((run / "eval_results.json").read_text())
    assert summary["eval_loss"] > 0 and "rouge-l" in summary
    assert "bleu-4" in summary or {"bleu-4-corpus", "bleu-4-sentence"} <= summary.keys()  # zh or en method
    assert (run / "eval_results.json").stat().st_uid == job_user(os.getuid(), os.getgid())[0]


def test_a_benchmark_eval_runs_in_the_image(dock_run: Path):
    """The shipped tiny C-Eval benchmark, mounted read-only into the image as the job's data."""
    from tests.conftest import DATA

    evals = dock_run.parent.parent / "evalserve-eval"
    before = set(evals.glob("*/run.json"))
    result = runner_cli(
        "eval", str(dock_run), "--benchmark", str(DATA / "benchmark" / "ceval-tiny"), "--n-shot", "1"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (record,) = set(evals.glob("*/run.json")) - before
    run = record.parent
    assert read_record(run).executor == "docker"
    summary = json.loads((run / "eval_results.json").read_text())
    assert summary["questions"] == 6 and summary["benchmark"]["layout"] == "ceval"
    assert len((run / "benchmark_predictions.jsonl").read_text().splitlines()) == 6


def test_export_runs_in_the_image(dock_run: Path, tmp_path: Path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "exported"
    result = runner_cli("export", str(dock_run), "--out", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "merged" in result.stdout
    assert (out / "model.safetensors").stat().st_uid == job_user(os.getuid(), os.getgid())[0]
    AutoModelForCausalLM.from_pretrained(out)


def test_an_interactive_chat_in_the_image(dock_run: Path):
    term = Terminal([sys.executable, "-m", "runner.host.cli", "chat", str(dock_run)])
    try:
        assert "/reset" in term.until("user> ", timeout=180)
        term.type("你是谁？")
        assert "assistant> " in term.until("user> ")
        term.type("/exit")
        assert term.proc.wait(timeout=60) == 0
    finally:
        term.proc.kill()
        os.close(term.fd)


def test_serve_from_the_image_without_network(dock_run: Path, docker):
    import openai

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner.host.cli", "serve", str(dock_run), "--port", str(port)],
        cwd=ROOT, env={**os.environ, "RUNNER_API_KEY": KEY}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"{url}/models", timeout=5)
            except urllib.error.HTTPError:
                break  # 401 from the server in the container: up, and asking for the key
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"runner serve did not come up:\n{proc.stdout.read().decode()[-3000:]}")
                time.sleep(0.5)
        (container,) = docker.client.containers.list(filters={"label": "runner.job=evalserve"})
        assert container.attrs["HostConfig"]["NetworkMode"] == "none"
        client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=120)
        model = client.models.list().data[0].id
        question = [{"role": "user", "content": "你是谁？"}]
        answer = client.chat.completions.create(model=model, messages=question, max_tokens=8)
        streamed = client.chat.completions.create(model=model, messages=question, max_tokens=8, stream=True)
        pieces = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
        assert pieces.strip() == answer.choices[0].message.content
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    assert code == 0
    assert docker.client.containers.list(all=True, filters={"label": "runner.job=evalserve"}) == []
