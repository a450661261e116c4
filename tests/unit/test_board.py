"""`runner board`, without a browser: what it lists and shows, who may use it (a token off
loopback, and on loopback by default), what it refuses (paths outside the runs, other sites'
requests, actions on a read-only board), and a spec's problems with their line:col."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runner.host.board import Access, AccessError, Board
from runner.host.board.actions import Jobs
from runner.host.board.runs import Runs
from tests.board_helpers import Client, make_run, serving
from tests.conftest import ROOT, runner_cli

TOKEN = "t0ken-for-the-board-tests"


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    out = tmp_path / "outputs"
    out.mkdir()
    return out


@pytest.fixture
def jobs(tmp_path: Path) -> Path:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "bad.yaml").write_text(
        "name: bad\nmodel:\n  path: models/none\nmethod:\n  type: lora\n  rank: 8\n"
        "data:\n  datasets:\n    - path: data/identity.json\ntraining:\n  learning_rate: -1\n",
        encoding="utf-8",
    )
    return jobs


def make_board(outputs: Path, jobs: Path, token: str | None = TOKEN, read_only: bool = False,
               host: str = "127.0.0.1") -> Board:  # fmt: skip
    access = Access.configure(host, 0, token, no_token=token is None, read_only=read_only)
    return Board(runs=Runs([outputs]), jobs=Jobs(jobs), access=access, base=ROOT, executor="local",
                 state_dir=outputs.parent / "state", poll_s=0.05)  # fmt: skip


@pytest.fixture
def board(outputs: Path, jobs: Path):
    finished = make_run(outputs, "demo")
    with serving(make_board(outputs, jobs)) as server:
        yield Client(server.server_address[1], TOKEN), finished


# --- the settings ------------------------------------------------------------------------------


def test_off_loopback_a_token_is_required_or_the_board_is_read_only():
    with pytest.raises(AccessError, match="--no-token on 0.0.0.0"):
        Access.configure("0.0.0.0", 8765, None, no_token=True, read_only=False)
    assert Access.configure("0.0.0.0", 8765, None, no_token=True, read_only=True).token is None
    made = Access.configure("0.0.0.0", 8765, None, no_token=False, read_only=False)
    assert made.token and len(made.token) >= 24  # made when none is given
    assert made.url().endswith(f"?token={made.token}")
    for bad in ("short", "sixteen chars; path=/x"):
        with pytest.raises(AccessError, match="at least 16"):
            Access.configure("127.0.0.1", 8765, bad, no_token=False, read_only=False)
    # On loopback too by default: every user of a shared server reaches its loopback.
    assert Access.configure("127.0.0.1", 8765, None, no_token=False, read_only=False).token
    assert Access.configure("127.0.0.1", 8765, None, no_token=True, read_only=False).token is None


def test_the_command_refuses_an_open_board_off_loopback():
    result = runner_cli("board", "--host", "0.0.0.0", "--no-token", "--port", "0")
    assert result.returncode == 2
    assert "--no-token on 0.0.0.0" in result.stderr


def test_the_cli_loads_no_web_framework():
    """`runner --help` and importing the CLI stay light: the board loads only when it is asked for."""
    code = (
        "import sys, runner.host.cli\n"
        "from click.testing import CliRunner\n"
        "assert CliRunner().invoke(runner.host.cli.main, ['--help']).exit_code == 0\n"
        "loaded = [m for m in ('http.server', 'socketserver', 'runner.host.board', 'jinja2', 'starlette', "
        "'fastapi', 'uvicorn', 'flask', 'werkzeug', 'aiohttp', 'tornado', 'playwright') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# --- who may use it ------------------------------------------------------------------------------


def test_token_required(board):
    client, _ = board
    for path in ("/", "/api/runs", f"/runs/{board[1].id}", "/jobs"):
        status, _, body = client.get(path, token=False)
        assert status == 401, path
        assert b"demo" not in body
    status, _, _ = client.get(
        "/api/runs", token=False, headers={"Authorization": "Bearer wrong-token-of-length"}
    )
    assert status == 401
    assert client.get("/api/runs")[0] == 200  # Authorization: Bearer TOKEN


def test_the_token_in_the_address_becomes_a_cookie(board):
    client, _ = board
    status, headers, _ = client.get(f"/?token={TOKEN}&x=1", token=False)
    assert status == 303 and headers["location"] == "/?x=1"  # the token leaves the address bar
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    status, _, body = client.get("/", token=False, headers={"Cookie": cookie.split(";")[0]})
    assert status == 200 and b"runner board" in body
    assert client.get(f"/?token=not-{TOKEN}", token=False)[0] == 401


def test_the_token_guards_a_board_off_loopback(outputs: Path, jobs: Path):
    make_run(outputs, "demo")
    with serving(make_board(outputs, jobs, host="0.0.0.0")) as server:
        client = Client(server.server_address[1], TOKEN)
        assert client.get("/api/runs", token=False)[0] == 401
        assert client.get("/", token=False)[0] == 401
        assert "demo" in [r["name"] for r in client.json("/api/runs")["runs"]]


def test_a_page_on_another_name_for_loopback_gets_nothing(board):
    """DNS rebinding: a site whose name resolves to 127.0.0.1 sends its own name as Host."""
    client, _ = board
    evil = Client(client.port, TOKEN, host_header="evil.example:80")
    assert evil.get("/api/runs")[0] == 421
    assert Client(client.port, TOKEN, host_header=f"localhost:{client.port}").get("/api/runs")[0] == 200


def test_actions_only_from_the_boards_own_pages(board):
    client, finished = board
    path = f"/api/runs/{finished.id}/stop"
    status, _, body = client.post(path, headers={"Origin": "http://evil.example"})
    assert status == 403 and b"own pages" in body
    status, _, _ = client.post(path, headers={"Sec-Fetch-Site": "cross-site"})
    assert status == 403
    status, _, _ = client.post(path, b"a=1", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415  # a plain HTML form cannot send JSON
    status, _, body = client.post(path, headers={"Origin": f"http://127.0.0.1:{client.port}"})
    assert status == 409 and b"not running" in body  # admitted; refused as `runner stop` refuses it


def test_a_read_only_board_shows_but_does_not_act(outputs: Path, jobs: Path):
    run = make_run(outputs, "demo")
    with serving(make_board(outputs, jobs, token=None, read_only=True)) as server:
        client = Client(server.server_address[1])
        assert client.json("/api/runs")["read_only"] is True
        for path in (f"/api/runs/{run.id}/stop", f"/api/runs/{run.id}/resume", f"/api/runs/{run.id}/chat",
                     "/api/jobs/submit", "/api/jobs/validate"):  # fmt: skip
            status, _, body = client.post(path, {"job": "bad.yaml"})
            assert status == 403 and b"read-only" in body, path
        status, _, page = client.get(f"/runs/{run.id}")
        assert status == 200 and b'id="stop"' not in page and b"Submit a job" not in page
        for path in ("/jobs", "/api/jobs", "/api/jobs/bad.yaml"):  # nothing to submit, no spec shown
            assert client.get(path)[0] == 404, path


# --- no path outside the runs' directories -------------------------------------------------------

TRAVERSALS = [
    "/runs/{id}/files/../../../../../../etc/passwd",
    "/runs/{id}/files/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/runs/{id}/files/..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/runs/{id}/files//etc/passwd",
    "/runs/{id}/files/%2fetc%2fpasswd",
    "/runs/{id}/files/..\\..\\..\\etc\\passwd",
    "/runs/{id}/files/train.log%00.png",
    "/runs/{id}/files/outside-link",
    "/runs/{id}/files/secret-dir-link/secret.txt",
    "/runs/..%2f..%2f..%2fetc/files/passwd",
    "/runs/%2fetc/files/passwd",
    "/static/../server.py",
    "/static/%2e%2e/access.py",
    "/static/..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/static//etc/passwd",
    "/api/jobs/../../etc/passwd",
    "/api/jobs/%2e%2e/outside.yaml",
    "/api/jobs//etc/passwd",
    "/api/jobs/link-out.yaml",
]


def test_path_traversal_is_refused(board, outputs: Path, jobs: Path, tmp_path: Path):
    client, finished = board
    secret = tmp_path / "secret-dir"
    secret.mkdir()
    (secret / "secret.txt").write_text("SECRET-OUTSIDE")
    (tmp_path / "outside.yaml").write_text("name: SECRET-OUTSIDE\n")
    os.symlink("/etc/passwd", finished.path / "outside-link")
    os.symlink(secret, finished.path / "secret-dir-link")
    os.symlink(tmp_path / "outside.yaml", jobs / "link-out.yaml")
    for template in TRAVERSALS:
        path = template.format(id=finished.id)
        status, _, body = client.get(path)
        assert status in (400, 404), (path, status)
        assert b"root:" not in body and b"SECRET-OUTSIDE" not in body and b"import" not in body, path
    # What is inside is served, as text or a download, never as a page of the board's origin.
    status, headers, body = client.get(f"/runs/{finished.id}/files/train.log")
    assert status == 200 and body.startswith(b"step 1/5")
    assert (
        headers["content-type"].startswith("text/plain") and "sandbox" in headers["content-security-policy"]
    )
    (finished.path / "page.html").write_text("<script>alert(1)</script>")
    status, headers, _ = client.get(f"/runs/{finished.id}/files/page.html")
    assert status == 200 and headers["content-disposition"].startswith("attachment")
    assert client.get(f"/runs/{finished.id}/files/adapter/adapter_config.json")[0] == 200


def test_only_the_boards_own_runs(board, tmp_path: Path):
    client, _ = board
    elsewhere = make_run(tmp_path / "elsewhere", "other")  # indexed, but not under the board's outputs
    listed = {r["id"] for r in client.json("/api/runs")["runs"]}
    assert elsewhere.id in listed  # the run index is the user's, as `runner ls` shows it
    assert client.get(f"/api/runs/{elsewhere.id}x")[0] == 404
    assert client.get(f"/api/runs/{str(elsewhere.path).replace('/', '%2f')}")[0] == 404


# --- what it shows -------------------------------------------------------------------------------


def test_the_runs_list(board, outputs: Path):
    client, finished = board
    live = make_run(outputs, "live", status="running", steps=3, gpus=2)
    rows = {r["id"]: r for r in client.json("/api/runs")["runs"]}
    done = rows[finished.id]
    assert (done["name"], done["stage"], done["method"], done["model"], done["state"]) == (
        "demo", "sft", "lora", "qwen-tiny", "succeeded")  # fmt: skip
    assert (done["step"], done["total"], done["gpus"]) == (5, 5, "cpu")
    assert done["loss"] == pytest.approx(1.5)
    assert done["duration_s"] == 0
    running = rows[live.id]
    assert (running["state"], running["step"], running["total"], running["gpus"]) == ("running", 3, 3, "2")
    assert running["duration_s"] is not None


def test_the_run_page_data(board):
    client, finished = board
    detail = client.json(f"/api/runs/{finished.id}")
    assert "learning_rate: 0.001\n" in detail["spec"] and "seed: 42  # default" in detail["spec"]
    assert detail["command"] == f"python -m runner.train {finished.spec_file} --run-dir {finished.path}"
    assert detail["results"]["train_loss"] == 2.4
    assert {"path": "train.log", "size": finished.log.stat().st_size} in detail["files"]
    assert detail["result"] == "adapter"
    metrics = client.json(f"/api/runs/{finished.id}/metrics")
    assert [r["step"] for r in metrics["rows"] if "loss" in r] == [1, 2, 3, 4, 5]
    assert metrics["next"] == finished.metrics.stat().st_size


def test_the_log_follows_as_events(board, outputs: Path):
    client, finished = board
    status, headers, body = client.get(f"/api/runs/{finished.id}/events?metrics=0")
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = [(block.split("\n")[0][7:], json.loads(block.split("\n")[1][6:]))
              for block in body.decode().strip().split("\n\n") if block.startswith("event:")]  # fmt: skip
    names = [name for name, _ in events]
    assert names[0] == "hello" and names[-1] == "end"
    assert "".join(d["text"] for n, d in events if n == "log") == finished.log.read_text()
    assert sum(len(d["rows"]) for n, d in events if n == "metrics") == 6
    assert [d["state"] for n, d in events if n == "state"] == ["succeeded"]
    # From an offset: only what came after it.
    _, _, body = client.get(
        f"/api/runs/{finished.id}/events?log=10&metrics={finished.metrics.stat().st_size}"
    )
    assert body.count(b"event: metrics") == 0
    assert (
        json.loads(body.split(b"event: log\ndata: ")[1].split(b"\n")[0])["text"]
        == finished.log.read_text()[10:]
    )


def test_a_bad_spec_shows_its_line_and_column(board):
    client, _ = board
    assert client.json("/api/jobs")["jobs"] == ["bad.yaml"]
    for action in ("validate", "submit"):
        status, _, body = client.post(f"/api/jobs/{action}", {"job": "bad.yaml"})
        result = json.loads(body)
        assert status == (200 if action == "validate" else 422) and result["ok"] is False
        texts = [p["text"] for p in result["problems"]]
        assert any(t.endswith("bad.yaml:6:3 method.rank: unknown key; did you mean 'r'?") for t in texts), (
            texts
        )
        assert any("bad.yaml:11:18 training.learning_rate: must be > 0 (got -1)" in t for t in texts), texts
    assert client.post("/api/jobs/submit", {"job": "../bad.yaml"})[0] == 404


def test_pages_render_and_carry_a_content_security_policy(board):
    client, finished = board
    for path in ("/", f"/runs/{finished.id}", "/compare?runs=" + finished.id, "/jobs"):
        status, headers, body = client.get(path)
        assert status == 200, path
        assert "default-src 'self'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        assert b'<script src="/static/board.js"' in body
    assert client.get("/runs/no-such-run")[0] == 404
    assert client.get("/nothing-here")[0] == 404


def test_stop_checks_the_users_own_permission(tmp_path: Path):
    """The board acts as the user who runs it: another user's run is refused, as `kill` refuses it."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to run the board as another user")
    import signal
    import socket
    import tempfile
    import urllib.error
    import urllib.request

    from tests.conftest import as_user, user_home

    shared = Path(tempfile.mkdtemp(prefix="runner-board-perm-"))
    try:
        run = make_run(shared / "out", "theirs", status="running")
        theirs = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", str(run.path)],
                                  start_new_session=True)  # fmt: skip
        run.record().update(pid=theirs.pid, host=socket.gethostname())
        subprocess.run(["chmod", "-R", "a+rX", str(shared)], check=True)
        uid, gid, switch = as_user((1234, 1234))
        home = user_home(uid, gid)
        board = subprocess.Popen(
            [*switch, sys.executable, "-m", "runner.host.cli", "board", str(shared / "out"), "--no-token",
             "--port", "0", "--jobs", str(shared)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "HOME": str(home), "RUNNER_HOME": str(home / "runner")},
        )  # fmt: skip
        try:
            line = board.stdout.readline()
            assert "http://127.0.0.1:" in line, (
                line,
                board.stderr.read() if board.poll() is not None else "",
            )
            base = line.split()[-1].rstrip("/")
            req = urllib.request.Request(f"{base}/api/runs/{run.id}/stop", data=b"{}", method="POST",
                                         headers={"Content-Type": "application/json"})  # fmt: skip
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(req, timeout=30)
            assert refused.value.code == 409
            assert "belongs to another user" in json.loads(refused.value.read())["error"]
            assert theirs.poll() is None, "the other user's run was stopped"
        finally:
            board.send_signal(signal.SIGINT)
            board.wait(timeout=20)
            theirs.kill()
            theirs.wait()
    finally:
        shutil.rmtree(shared, ignore_errors=True)
