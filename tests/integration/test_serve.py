"""runner serve, talked to by the official openai client, streaming and not, and refusing bad
requests with an HTTP 4xx and a JSON body."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.integration.trained import lora_run  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration
openai = pytest.importorskip("openai", reason="the dev dependencies are not installed")
KEY = "test-key-123"
QUESTION = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "你是谁？"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(lora_run: Path):  # noqa: F811
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner.host.cli", "serve", str(lora_run), "--port", str(port)],
        cwd=ROOT, env={**os.environ, "RUNNER_API_KEY": KEY}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/models", timeout=2)
        except urllib.error.HTTPError:
            break  # 401: up, and asking for the key
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"runner serve did not come up:\n{proc.stdout.read().decode()[-3000:]}")
            time.sleep(0.3)
    yield url
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0  # the server itself was the process: it stopped cleanly


@pytest.fixture(scope="module")
def expected(lora_run: Path) -> str:  # noqa: F811
    """The greedy answer, from the model loaded here."""
    from runner.train.tools.inference import Settings, generate, load

    return generate(load(lora_run), [QUESTION], Settings(max_new_tokens=12))[0]


def client(url: str, key: str = KEY):
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=60)


def test_models_and_a_completion(server: str, expected: str, lora_run: Path):  # noqa: F811
    (model,) = client(server).models.list().data
    assert model.id == f"job/{lora_run.name}"
    reply = client(server).chat.completions.create(model=model.id, messages=QUESTION, max_tokens=12)
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == expected and expected
    assert reply.usage.prompt_tokens > 0 and 0 < reply.usage.completion_tokens <= 12


def test_streaming_gives_the_same_answer_piece_by_piece(server: str, expected: str):
    stream = client(server).chat.completions.create(messages=QUESTION, model="", max_tokens=12, stream=True)
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1
    assert "".join(pieces).strip() == expected


def test_a_wrong_api_key_is_refused(server: str):
    with pytest.raises(openai.AuthenticationError) as e:
        client(server, key="wrong").chat.completions.create(model="", messages=QUESTION, max_tokens=2)
    assert e.value.status_code == 401
    assert e.value.body["code"] == "invalid_api_key"


def test_bad_requests_get_a_4xx_with_a_json_body(server: str):
    def post(body: bytes) -> tuple[int, dict]:
        req = urllib.request.Request(f"{server}/chat/completions", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    status, body = post(b'{"messages": [')
    assert status == 400 and body["error"]["code"] == "invalid_json"
    status, body = post(json.dumps({"messages": []}).encode())
    assert status == 400 and body["error"]["param"] == "messages"
    status, body = post(json.dumps({"messages": [{"role": "user", "content": "x" * 2_000_000}]}).encode())
    assert status == 413 and body["error"]["code"] == "request_too_large"
    with pytest.raises(openai.BadRequestError) as e:  # longer than the model's 1024-token context
        client(server).chat.completions.create(
            model="", messages=[{"role": "user", "content": "你好 " * 2000}]
        )
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):
        client(server).chat.completions.create(model="another-model", messages=QUESTION, max_tokens=2)
