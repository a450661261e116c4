"""runner chat, interactive, through a pseudo-terminal as a user types it: streamed answers,
the conversation kept, a system prompt, /reset."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.integration.trained import lora_run  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration


class Terminal:
    """A child process on a pseudo-terminal: type lines, read until a prompt shows."""

    def __init__(self, argv: list[str]):
        self.fd, child = pty.openpty()
        self.proc = subprocess.Popen(argv, stdin=child, stdout=child, stderr=child, cwd=ROOT, close_fds=True,
                                     env={**os.environ, "TERM": "dumb"})  # fmt: skip
        os.close(child)
        self.seen = ""

    def until(self, text: str, timeout: float = 120) -> str:
        """Everything printed up to and including the next `text`."""
        deadline = time.time() + timeout
        while text not in self.seen:
            left = deadline - time.time()
            if left <= 0 or self.proc.poll() is not None and not select.select([self.fd], [], [], 0)[0]:
                raise AssertionError(f"no {text!r} on the terminal; it shows:\n{self.seen[-3000:]}")
            if select.select([self.fd], [], [], min(left, 1))[0]:
                try:
                    self.seen += os.read(self.fd, 4096).decode("utf-8", "replace").replace("\r\n", "\n")
                except OSError:  # the child closed the terminal
                    pass
        upto = self.seen.index(text) + len(text)
        out, self.seen = self.seen[:upto], self.seen[upto:]
        return out

    def type(self, line: str) -> None:
        os.write(self.fd, (line + "\n").encode())


def test_an_interactive_chat_on_a_terminal(lora_run: Path):  # noqa: F811
    from runner.train.tools.inference import Settings, generate, load

    loaded = load(lora_run)
    settings = Settings(max_new_tokens=128)
    first = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "你是谁？"}]
    alone = generate(loaded, [first], settings)[0]
    # A follow-up the model answers differently after the first turn than on its own, so the
    # terminal shows whether the chat kept the conversation.
    for follow_up in ("hi", "What?", "ok", "and?", "Who are you?"):
        second = [*first, {"role": "assistant", "content": alone}, {"role": "user", "content": follow_up}]
        with_history = generate(loaded, [second], settings)[0]
        fresh = generate(loaded, [[first[0], second[-1]]], settings)[0]
        if with_history != fresh:
            break
    else:
        pytest.fail("the trained model answers every follow-up the same with and without the history")

    term = Terminal([sys.executable, "-m", "runner.host.cli", "chat", str(lora_run), "--system", "Be brief.",
                     "--executor", "local"])  # fmt: skip
    try:
        assert "/reset" in term.until("user> ")  # the help line comes first
        term.type("你是谁？")
        assert term.until("user> ").split("assistant> ", 1)[1].split("\n")[0].strip() == alone
        term.type(follow_up)  # answered with the first turn in the conversation
        assert term.until("user> ").split("assistant> ", 1)[1].split("\n")[0].strip() == with_history
        term.type("/reset")
        assert "conversation reset" in term.until("user> ")
        term.type(follow_up)  # answered as the first question again
        assert term.until("user> ").split("assistant> ", 1)[1].split("\n")[0].strip() == fresh
        term.type("/exit")
        assert term.proc.wait(timeout=30) == 0
    finally:
        term.proc.kill()
        os.close(term.fd)


def _context(model: Path) -> int:
    return json.loads((model / "config.json").read_text())["max_position_embeddings"]


def test_bare_words_are_messages_and_only_slash_commands_are_commands(tiny_model: Path, tmp_path: Path):
    from runner.train.tools.inference import Settings, generate, load

    # A terminal line holds at most 4095 bytes: a copy of the model with a context that one line
    # can overflow.
    model = tmp_path / "model"
    model.mkdir()
    for f in tiny_model.iterdir():
        (model / f.name).symlink_to(f)
    config = json.loads((tiny_model / "config.json").read_text())
    (model / "config.json").unlink()
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 512}))
    tiny_model = model
    loaded = load(tiny_model)
    expected = {w: generate(loaded, [[{"role": "user", "content": w}]], Settings(max_new_tokens=6))[0]
                for w in ("clear", "exit")}  # fmt: skip
    term = Terminal(
        [sys.executable, "-m", "runner.host.cli", "chat", str(tiny_model), "--max-new-tokens", "6"]
    )
    try:
        term.until("user> ")
        for word in ("clear", "exit"):  # asked as they are, each after a /reset
            term.type(word)
            assert term.until("user> ").split("assistant> ", 1)[1].split("\n")[0].strip() == expected[word]
            term.type("/reset")
            term.until("user> ")
        context = _context(tiny_model)
        term.type("你好 " * 500)  # longer than the model's context: refused, the chat goes on
        shown = term.until("user> ")
        assert "not sent" in shown and f"context is {context} tokens" in shown and "assistant> " not in shown
        term.type("/exit")
        assert term.proc.wait(timeout=30) == 0
    finally:
        term.proc.kill()
        os.close(term.fd)


def test_one_question_is_checked_like_a_request_to_serve(tiny_model: Path):
    from runner.train.tools.inference import Settings, generate, load
    from tests.conftest import runner_cli

    empty = runner_cli("chat", str(tiny_model), "-m", " ")
    assert empty.returncode == 2 and "empty" in empty.stderr
    context = _context(tiny_model)
    long = runner_cli("chat", str(tiny_model), "-m", "你好 " * (context + 10))
    assert (
        long.returncode == 2
        and f"context is {context} tokens" in long.stderr
        and "Traceback" not in long.stderr
    )
    short = runner_cli("chat", str(tiny_model), "-m", "你好", "--max-new-tokens", "3")
    assert short.returncode == 0, short.stderr[-2000:]
    expected = generate(
        load(tiny_model), [[{"role": "user", "content": "你好"}]], Settings(max_new_tokens=3)
    )[0]
    assert short.stdout.rstrip("\n").endswith(f"assistant> {expected}")
    zero = runner_cli("chat", str(tiny_model), "-m", "你好", "--max-new-tokens", "0")
    assert zero.returncode == 2 and "x>=1" in zero.stderr
