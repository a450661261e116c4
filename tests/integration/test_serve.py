"""runner serve, talked to by the official openai client, streaming and not, and refusing bad
requests with an HTTP 4xx and a JSON body; surviving clients that go away, serving several at
once, stopping on SIGTERM."""

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
from typing import Any

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


def start(argv: list[str], key: str | None = KEY) -> tuple[subprocess.Popen, str]:
    """A server process (argv: what follows `python -m`, without --port) and its /v1 address."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RUNNER_API_KEY"}
    proc = subprocess.Popen(
        [sys.executable, "-m", *argv, "--port", str(port)], cwd=ROOT,
        # One OpenMP thread: on a CPU the suite shares with other processes, OpenMP threads spinning
        # for a descheduled partner stall a step for seconds; the tiny model gains nothing from two.
        env={**env, "OMP_NUM_THREADS": "1", **({"RUNNER_API_KEY": key} if key else {})},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc, url
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"the server did not come up:\n{proc.stdout.read().decode()[-3000:]}")
            time.sleep(0.3)


def health(url: str) -> dict:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def server(lora_run: Path):  # noqa: F811
    proc, url = start(["runner.host.cli", "serve", str(lora_run)])
    yield url
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0  # the server itself was the process: it stopped cleanly


@pytest.fixture(scope="module")
def tiny_server(tiny_model: Path):
    """The untrained tiny model (it rambles to any length), served without a key."""
    proc, url = start(
        ["runner.train.tools.serve", str(tiny_model), "--max-batch", "4", "--max-queue", "2"], None
    )
    yield url
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0


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
    with pytest.raises(openai.BadRequestError) as e:  # longer than the model's 4096-token context
        client(server).chat.completions.create(
            model="", messages=[{"role": "user", "content": "你好 " * 5000}]
        )
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):
        client(server).chat.completions.create(model="another-model", messages=QUESTION, max_tokens=2)


def post(url: str, body: dict, key: str | None = None, timeout: float = 60) -> tuple[int, dict, Any]:
    """Status, JSON body and headers of a POST to /chat/completions."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(f"{url}/chat/completions", data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read()), r.headers
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers


def open_stream(url: str, body: dict) -> socket.socket:
    """A streaming request on a raw socket, its first bytes read: the caller closes it."""
    port = int(url.split(":")[2].split("/")[0])
    payload = json.dumps({**body, "stream": True}).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(payload) + payload)  # fmt: skip
    assert b" 200 " in sock.recv(64)
    return sock


def settled(url: str, seconds: float = 10) -> int:
    deadline = time.time() + seconds
    while (running := health(url)["requests"]) and time.time() < deadline:
        time.sleep(0.05)
    return running


LONG = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 900}
LONGEST = {**LONG, "max_tokens": 4000}  # the tiny model's context is 4,096


def test_a_stream_closed_early_does_not_wedge_the_server(tiny_server: str):
    """The issue's reproduction, 20 times: a long stream closed after its first bytes, then a normal
    request, which must answer within 5 s; the closed stream's generation is cancelled."""
    timings = []
    for _ in range(20):
        open_stream(tiny_server, LONG).close()
        started = time.perf_counter()
        status, body, _ = post(tiny_server, {"messages": QUESTION, "max_tokens": 4}, timeout=5)
        timings.append(time.perf_counter() - started)
        assert status == 200 and body["choices"][0]["message"]["role"] == "assistant"
    assert settled(tiny_server) == 0  # every closed stream's generation was cancelled
    print(f"RELIABILITY serve after an early disconnect: 20/20 answered, max {max(timings):.2f} s")
    assert max(timings) < 5


def test_a_short_request_does_not_wait_for_a_long_one(tiny_server: str):
    alone_started = time.perf_counter()
    assert post(tiny_server, {"messages": QUESTION, "max_tokens": 3})[0] == 200
    alone = time.perf_counter() - alone_started
    long = open_stream(tiny_server, LONG)
    try:
        time.sleep(0.3)  # the long one is generating
        started = time.perf_counter()
        status, body, _ = post(tiny_server, {"messages": QUESTION, "max_tokens": 3})
        beside = time.perf_counter() - started
        assert status == 200 and health(tiny_server)["requests"] == 1  # the long one still runs
    finally:
        long.close()
    print(
        f"RELIABILITY serve: a 3-token request took {alone:.2f} s alone, {beside:.2f} s beside a 900-token one"
    )
    assert beside < 3


def test_requests_beyond_the_queue_get_429_with_retry_after(tiny_server: str):
    """max-batch 4 + max-queue 2: the seventh concurrent request is refused, and served again once
    the others are gone."""
    streams = [open_stream(tiny_server, LONG) for _ in range(6)]
    try:
        status, body, headers = post(tiny_server, {"messages": QUESTION, "max_tokens": 2})
        assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"
        assert int(headers["Retry-After"]) > 0
    finally:
        for s in streams:
            s.close()
    assert settled(tiny_server) == 0
    assert post(tiny_server, {"messages": QUESTION, "max_tokens": 2})[0] == 200


def test_stop_sequences_end_the_answer(tiny_server: str):
    full = post(tiny_server, {"messages": QUESTION, "max_tokens": 24})[1]["choices"][0]["message"]["content"]
    cut = next(i for i in range(len(full) // 2, len(full)) if full[i].strip() and full[i] != "\ufffd")
    stop = full[cut : cut + 2]
    head = full[: full.index(stop)].strip()
    reply = client(tiny_server).chat.completions.create(
        model="", messages=QUESTION, max_tokens=24, stop=[stop]
    )
    assert reply.choices[0].message.content == head and reply.choices[0].finish_reason == "stop"
    chunks = client(tiny_server).chat.completions.create(model="", messages=QUESTION, max_tokens=24, stop=stop,
                                                          stream=True)  # fmt: skip
    chunks = list(chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks).strip() == head
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_a_seed_reproduces_a_sampled_answer_beside_other_requests(tiny_server: str):
    ask = {"model": "", "messages": QUESTION, "max_tokens": 16, "temperature": 1.0}
    alone = client(tiny_server).chat.completions.create(**ask, seed=7).choices[0].message.content
    long = open_stream(tiny_server, LONG)
    try:
        beside = client(tiny_server).chat.completions.create(**ask, seed=7).choices[0].message.content
    finally:
        long.close()
    other = {
        client(tiny_server).chat.completions.create(**ask, seed=s).choices[0].message.content for s in (8, 9)
    }
    assert alone == beside and alone not in other


def test_what_the_server_cannot_honour_is_refused(tiny_server: str):
    for bad, param in [({"seed": -(1 << 63) - 1}, "seed"), ({"seed": 1 << 64}, "seed"),
                       ({"frequency_penalty": 0.5}, "frequency_penalty"), ({"presence_penalty": -1}, "presence_penalty"),
                       ({"logprobs": True}, "logprobs"), ({"stop": ["a"] * 5}, "stop"), ({"stop": ""}, "stop"),
                       ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools")]:  # fmt: skip
        status, body, _ = post(tiny_server, {"messages": QUESTION, "max_tokens": 2, **bad})
        assert status == 400 and body["error"]["param"] == param, (bad, body)
    for fine in ({"seed": -5}, {"seed": (1 << 64) - 1}, {"frequency_penalty": 0}, {"user": "someone"}):
        assert post(tiny_server, {"messages": QUESTION, "max_tokens": 2, **fine})[0] == 200, fine


def test_a_request_past_its_timeout_ends(tiny_model: Path):
    """A 2 s limit: 200 times what a 2-token answer takes on an idle 2-core machine (0.01 s), a
    seventh of what the 4,000 tokens of LONGEST take there (13.9 s)."""
    proc, url = start(["runner.train.tools.serve", str(tiny_model), "--timeout", "2"], None)
    try:
        post(url, {"messages": QUESTION, "max_tokens": 2})  # the first request's warm-up
        started = time.perf_counter()
        status, body, _ = post(url, LONGEST)
        assert status == 504 and body["error"]["code"] == "timeout"
        assert time.perf_counter() - started < 8, "the 504 came long after the 2 s limit"
        events = client(url).chat.completions.create(model="", stream=True, **LONGEST)
        with pytest.raises(openai.APIError, match="longer than"):
            list(events)
        assert settled(url) == 0
        # still serving (a loaded machine gets three tries; a server the timeouts wedged answers 504
        # every time)
        assert 200 in [post(url, {"messages": QUESTION, "max_tokens": 2})[0] for _ in range(3)]
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("engine", ["batched", "serial"])
def test_sigterm_during_a_generation_stops_the_server(tiny_model: Path, engine: str):
    proc, url = start(["runner.train.tools.serve", str(tiny_model), "--engine", engine, "--drain", "2"], None)
    streams = [open_stream(url, LONG) for _ in range(2)]
    time.sleep(0.5)
    started = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the server did not stop within 10 s of SIGTERM")
    finally:
        for s in streams:
            s.close()
    took = time.perf_counter() - started
    print(f"RELIABILITY serve ({engine}): SIGTERM during 2 generations stopped it in {took:.1f} s")
    assert code in (0, -signal.SIGTERM)


def test_the_serial_engine_survives_early_disconnects(tiny_model: Path):
    proc, url = start(["runner.train.tools.serve", str(tiny_model), "--engine", "serial"], None)
    try:
        for _ in range(3):
            open_stream(url, LONG).close()
            assert post(url, {"messages": QUESTION, "max_tokens": 3}, timeout=5)[0] == 200
        assert settled(url) == 0
    finally:
        proc.kill()
        proc.wait()
