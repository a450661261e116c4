"""Chat with a finished run from the board: `runner serve RUN` started on demand in a child
process, on a loopback port with a key of its own, and asked over its OpenAI-style API. The model
answers through the same code as `runner chat` and `runner serve` (in the run's image when it
trained in one); the board only forwards the conversation.

One model is kept loaded at a time (a GPU server's memory is for training); a server idle for
`idle_s` seconds, or one for another run, is stopped.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.core.errors import RunError
from runner.core.rundir import RunRecord

log = logging.getLogger(__name__)


@dataclass
class _Server:
    run_id: str
    proc: subprocess.Popen
    port: int
    key: str
    output: Path
    used: float = field(default_factory=time.monotonic)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def request(self, path: str, body: dict | None = None, timeout: float = 10) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.url + path, data=data, method="POST" if data is not None else "GET",
            headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # `runner serve` stops cleanly on it (a container too)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Chats:
    def __init__(self, base: Path, state_dir: Path, idle_s: float = 600, load_timeout_s: float = 600,
                 answer_timeout_s: float = 600):  # fmt: skip
        self.base = base
        self.state_dir = state_dir
        self.idle_s = idle_s
        self.load_timeout_s = load_timeout_s
        self.answer_timeout_s = answer_timeout_s
        self._lock = threading.Lock()
        self._server: _Server | None = None

    def ask(self, record: RunRecord, messages: list[dict[str, str]], max_tokens: int | None = None) -> dict:
        """The model's answer to a conversation (OpenAI messages), from the run's own server."""
        if record.dir.result() is None:
            raise RunError(f"run {record.id} saved no result (adapter/ or model/) to chat with")
        if not messages or not all(
            isinstance(m, dict)
            and m.get("role") in ("system", "user", "assistant")
            and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise RunError("a chat is a list of {role: system|user|assistant, content: text} messages")
        with self._lock:  # one question at a time: the server answers one at a time anyway
            server = self._serving(record)
            body: dict[str, Any] = {"messages": messages}
            if max_tokens:
                body["max_tokens"] = int(max_tokens)
            try:
                reply = server.request("/chat/completions", body, timeout=self.answer_timeout_s)
            except urllib.error.HTTPError as e:
                raise RunError(f"the model server refused: {_error_of(e)}") from None
            except OSError as e:
                raise RunError(f"the model server did not answer: {e}; {self._said(server)}") from None
            server.used = time.monotonic()
        choice = (reply.get("choices") or [{}])[0]
        return {"answer": (choice.get("message") or {}).get("content", ""), "finish": choice.get("finish_reason"),
                "usage": reply.get("usage")}  # fmt: skip

    def stop_idle(self) -> None:
        with self._lock:
            if self._server and time.monotonic() - self._server.used > self.idle_s:
                log.info("chat server of run %s idle: stopped", self._server.run_id)
                self._server.stop()
                self._server = None

    def close(self) -> None:
        with self._lock:
            if self._server:
                self._server.stop()
                self._server = None

    def _serving(self, record: RunRecord) -> _Server:
        server = self._server
        if server and server.run_id == record.id and server.proc.poll() is None:
            return server
        if server:
            server.stop()
            self._server = None
        self._server = self._start(record)
        return self._server

    def _start(self, record: RunRecord) -> _Server:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        port, key = _free_port(), secrets.token_urlsafe(24)
        output = self.state_dir / f"serve-{record.id}.log"
        argv = [sys.executable, "-m", "runner.host.cli", "serve", record.run_dir, "--host", "127.0.0.1",
                "--port", str(port)]  # fmt: skip
        env = {**os.environ, "RUNNER_API_KEY": key}
        with open(output, "wb") as out:
            proc = subprocess.Popen(argv, cwd=self.base, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT)  # fmt: skip
        server = _Server(record.id, proc, port, key, output)
        log.info("loading run %s for chat (runner serve on 127.0.0.1:%d)", record.id, port)
        deadline = time.monotonic() + self.load_timeout_s
        while True:
            try:
                server.request("/models", timeout=5)
                return server
            except urllib.error.HTTPError as e:
                server.stop()
                raise RunError(f"the model server refused the board: {_error_of(e)}") from None
            except OSError:
                if proc.poll() is not None:
                    raise RunError(
                        f"runner serve ended (exit {proc.returncode}); {self._said(server)}"
                    ) from None
                if time.monotonic() > deadline:
                    server.stop()
                    raise RunError(f"the model did not load within {self.load_timeout_s:.0f}s; "
                                   f"{self._said(server)}") from None  # fmt: skip
                time.sleep(0.3)

    @staticmethod
    def _said(server: _Server) -> str:
        try:
            tail = server.output.read_text(encoding="utf-8", errors="replace").strip()[-2000:]
        except OSError:
            tail = ""
        return f"it said:\n{tail}" if tail else f"see {server.output}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _error_of(e: urllib.error.HTTPError) -> str:
    try:
        return json.loads(e.read())["error"]["message"]
    except Exception:
        return f"HTTP {e.code}"
