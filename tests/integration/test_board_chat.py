"""Chat from the board: the question goes to `runner serve` for the run, started on demand by
the board; the answer is the one `runner serve` gives (greedy); the server is kept for the next
question and stopped with the board."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.core.rundir import read_record
from runner.host.board import Access, Board
from runner.host.board.actions import Jobs
from runner.host.board.runs import Runs
from tests.board_helpers import Client, make_run, serving
from tests.conftest import ROOT
from tests.integration.trained import lora_run  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration
QUESTION = [{"role": "user", "content": "你是谁？"}]


def test_chat_with_a_finished_run(lora_run: Path, tmp_path: Path):  # noqa: F811
    outputs = lora_run.parent.parent
    unfinished = make_run(outputs, "unfinished", status="stopped")
    (unfinished.path / "adapter" / "adapter_config.json").unlink(missing_ok=True)
    access = Access.configure("127.0.0.1", 0, None, no_token=True, read_only=False)
    board = Board(runs=Runs([outputs]), jobs=Jobs(tmp_path), access=access, base=ROOT, executor="local",
                  state_dir=tmp_path / "state")  # fmt: skip
    run_id = read_record(lora_run).id
    with serving(board) as server:
        client = Client(server.server_address[1])
        status, _, body = client.post(f"/api/runs/{run_id}/chat", {"messages": QUESTION, "max_tokens": 12})
        assert status == 200, body
        first = json.loads(body)
        assert first["answer"] and first["usage"]["completion_tokens"] <= 12
        serving_proc = board.chats._server.proc
        # The same conversation again: the same (greedy) answer, from the same server.
        status, _, body = client.post(f"/api/runs/{run_id}/chat", {"messages": QUESTION, "max_tokens": 12})
        assert json.loads(body)["answer"] == first["answer"]
        assert board.chats._server.proc is serving_proc
        status, _, body = client.post(f"/api/runs/{unfinished.id}/chat", {"messages": QUESTION})
        assert status == 409 and b"saved no result" in body
        status, _, body = client.post(
            f"/api/runs/{run_id}/chat", {"messages": [{"role": "robot", "content": 1}]}
        )
        assert status == 409 and b"messages" in body
    assert serving_proc.poll() is not None, "the chat server outlived the board"
