"""The board in a real browser: Debian's headless Chromium, driven by Playwright, against
`runner board` on 127.0.0.1 with a finished run of the tiny model (the LoRA run the chat, eval
and serve tests share) and a live one that the page itself submits. The list shows both; the run page draws the curves and follows the log; Stop
stops the live run (a checkpoint saved); a bad spec submitted from the page shows its line:col.

It runs twice: on the machine's own network, and with the board and the browser in a network
namespace that has nothing but loopback, so there is no route to anywhere else. Both times the
page's requests, and the browser's own network log, name no origin but the board's.
Screenshots are written to test-artifacts/board/ (or $RUNNER_TEST_ARTIFACTS).

Chromium comes from scripts/provision-browser.sh (CI runs it); without it these tests skip, and
fail under CI.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from runner.core.rundir import read_record, runs_of
from tests.conftest import ROOT, write_job
from tests.integration.trained import lora_run  # noqa: F401  (fixture: the finished run)

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
# As root Chromium needs --no-sandbox; the rest keep it from calling Google on its own.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions",
    "--no-default-browser-check", "--metrics-recording-only", "--disable-domain-reliability",
    # Autofill asks a Google service about every form a page shows, on the page's behalf: off, so
    # that what is left in the network log for a page is the page's own.
    "--disable-features=AutofillServerCommunication",
]  # fmt: skip
TOKEN = "browser-test-token-0123456789"
ARTIFACTS = Path(os.environ.get("RUNNER_TEST_ARTIFACTS") or ROOT / "test-artifacts") / "board"


def _missing(why: str):
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI must provision it: scripts/provision-browser.sh)")
    pytest.skip(why)


@pytest.fixture(scope="module")
def playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package (in .[dev]) is not installed")
    if not CHROMIUM.exists():
        _missing(f"{CHROMIUM} is missing; run scripts/provision-browser.sh")
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_model: Path) -> Path:
    """jobs/ with a long job to start live and a bad one; the live run goes to outputs/."""
    root = tmp_path_factory.mktemp("board")
    out = root / "outputs"
    jobs = root / "jobs"
    jobs.mkdir()
    # Long enough to be watched (each step is a fraction of a second); the test stops it.
    write_job(jobs / "live.yaml", tiny_model, name="live", output={"dir": str(out)},
              training={"max_steps": 3000, "logging_steps": 1, "save_steps": 100000, "learning_rate": 1e-3})  # fmt: skip
    (jobs / "bad.yaml").write_text(
        f"name: bad\nmodel:\n  path: {tiny_model}\nmethod:\n  type: lora\n  rank: 8\n"
        f"data:\n  datasets:\n    - path: {ROOT / 'data' / 'identity.json'}\ntraining:\n  learning_rate: -1\n",
        encoding="utf-8",
    )
    return root


@contextlib.contextmanager
def network(isolated: bool, tmp: Path):
    """The command prefix that puts a process in the test's network, and the Chromium to launch
    there. Isolated: a new network namespace with loopback up and nothing else."""
    if not isolated:
        yield [], str(CHROMIUM)
        return
    for tool in ("unshare", "nsenter", "ip"):
        if shutil.which(tool) is None:
            _missing(f"{tool} is missing (util-linux, iproute2); run scripts/provision-browser.sh")
    if os.geteuid() != 0:
        _missing("a network namespace of the test's own needs root (CI runs as root)")
    holder = subprocess.Popen(["unshare", "--net", "--", "sh", "-c", "ip link set lo up && exec sleep 3600"],
                              stderr=subprocess.PIPE)  # fmt: skip
    try:
        enter = ["nsenter", f"--net=/proc/{holder.pid}/ns/net", "--"]
        deadline = time.time() + 10
        while True:  # unshared, and loopback up in there (the holder does both before it sleeps)
            if holder.poll() is not None:
                _missing(f"cannot make a network namespace here: {holder.stderr.read().decode().strip()}")
            own = os.readlink(f"/proc/{holder.pid}/ns/net") != os.readlink("/proc/self/ns/net")
            lo = subprocess.run([*enter, "ip", "-o", "link", "show", "lo"], capture_output=True, text=True)
            if own and re.search(r"<[^>]*\bUP\b", lo.stdout):
                break
            if time.time() > deadline:
                pytest.fail(f"the network namespace did not come up: {lo.stdout} {lo.stderr}")
            time.sleep(0.1)
        links = subprocess.run([*enter, "ip", "-o", "link"], capture_output=True, text=True)
        # Nothing but loopback, and no route at all beyond it.
        assert [line.split(":")[1].strip() for line in links.stdout.splitlines()] == ["lo"]
        routes = subprocess.run([*enter, "ip", "route", "show"], capture_output=True, text=True).stdout
        assert routes.strip() == "", routes
        wrapper = tmp / "chromium-isolated"
        wrapper.write_text(f'#!/bin/sh\nexec {" ".join(enter)} {CHROMIUM} "$@"\n')
        wrapper.chmod(0o755)
        yield enter, str(wrapper)
    finally:
        holder.kill()
        holder.wait()


@contextlib.contextmanager
def board(prefix: list[str], workspace: Path, finished: Path, said: Path):
    """`runner board` on the live run's outputs and the finished run's, on a port of its choosing."""
    with open(said, "w") as stderr:
        proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "runner.host.cli", "board", str(workspace / "outputs"),
             str(finished.parent.parent), "--port", "0", "--jobs", str(workspace / "jobs"), "--executor", "local",
             "--token", TOKEN],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True,
        )  # fmt: skip
    try:
        line = proc.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:\d+)/\?token=(\S+)", line)
        assert m, (
            f"runner board printed {line!r}; stderr: {said.read_text() if proc.poll() is not None else ''}"
        )
        yield m[1]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stop_leftovers(out: Path) -> None:
    """A live run the test did not get to stop: stopped now, so it does not train on."""
    for record in runs_of(out, "live"):
        if record.status == "running" and record.pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(record.pid, signal.SIGTERM)


def net_log_requests(path: Path) -> list[dict[str, str]]:
    """Every URL request in Chromium's own network log (what it fetched or tried to, for a page or
    for itself): url, initiator (the origin of the page that asked, if one did) and the network
    isolation key (the site a request was made on behalf of)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        log = json.loads(text)
    except ValueError:  # cut short by a crash: the complete lines
        log = json.loads(text[: text.rfind("}") + 1].rstrip(",") + "]}")
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [
        {"url": e["params"]["url"], "initiator": e["params"].get("initiator", ""),
         "site": e["params"].get("network_isolation_key", "")}
        for e in log["events"] if e["type"] == start and "url" in (e.get("params") or {})
    ]  # fmt: skip


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else f"{parts.scheme}:"


@pytest.mark.parametrize("isolated", [False, True], ids=["loopback", "no-route-but-loopback"])
def test_the_board_in_a_browser(playwright, workspace: Path, lora_run: Path, tmp_path: Path, isolated: bool):  # noqa: F811
    shots = ARTIFACTS / ("isolated" if isolated else "loopback")
    shots.mkdir(parents=True, exist_ok=True)
    out = workspace / "outputs"
    finished = read_record(lora_run)
    net_log = tmp_path / "netlog.json"
    with (
        network(isolated, tmp_path) as (prefix, chromium),
        board(prefix, workspace, lora_run, shots / "board.log") as base,
    ):
        browser = playwright.chromium.launch(
            executable_path=chromium,
            args=[*CHROMIUM_ARGS, f"--log-net-log={net_log}", "--net-log-capture-mode=Default"],
        )
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        requests, failures, errors = [], [], []
        context.on("request", lambda r: requests.append(r.url))
        context.on("requestfailed", lambda r: failures.append(f"{r.url}: {r.failure}"))
        page = context.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.set_default_timeout(60_000)
        try:
            exercise(page, base, finished.id, out, shots)
        finally:
            stop_leftovers(out)
            with contextlib.suppress(Exception):
                page.screenshot(path=str(shots / "last.png"), full_page=True)
            context.close()
            browser.close()

    assert not errors, f"the page's scripts failed: {errors}"
    assert requests, "the page made no request at all"
    others = sorted({_origin(u) for u in requests} - {base, "data:"})
    assert not others, f"the page requested other origins: {others}"
    # A request cut short because the test moved to the next page (a followed log, an icon) is no
    # failure; one the board or the network refused is.
    unexpected = [f for f in failures if not f.endswith("net::ERR_ABORTED")]
    assert not unexpected, unexpected
    # The browser's own log: every request made for the board's pages (asked by the page, or made
    # on its behalf: the isolation key names the board's site) went to the board.
    logged = net_log_requests(net_log)
    site = "http://127.0.0.1"
    for_page = [r for r in logged if r["initiator"].startswith("http") or r["site"].startswith(site)]
    assert {_origin(r["url"]) for r in for_page} == {base}, sorted({r["url"] for r in for_page})
    # Chromium's requests for itself (update checks, its account list) are no page's: they are
    # written beside the screenshots; in the namespace there is no route for them to take.
    own = sorted({_origin(r["url"]) for r in logged if r not in for_page})
    (shots / "browser-own-requests.txt").write_text("".join(f"{o}\n" for o in own))


def exercise(page, base: str, finished_id: str, out: Path, shots: Path) -> None:
    # The token in the address becomes a cookie; every later page needs none.
    page.goto(f"{base}/?token={TOKEN}")
    page.wait_for_selector(f'tr[data-run="{finished_id}"] .state.succeeded')

    # Submit the long job from the page: it becomes the live run.
    page.goto(f"{base}/jobs?job=live.yaml")
    page.wait_for_selector("#job-text .line")
    page.click("#submit")
    live_id = page.wait_for_selector("#started-run").text_content().strip()

    # The list shows both, the live one running.
    page.goto(f"{base}/")
    page.wait_for_selector(f'tr[data-run="{live_id}"] .state.running')
    page.wait_for_selector(f'tr[data-run="{finished_id}"] .state.succeeded')
    page.wait_for_function(  # the list refreshes itself: the live run's step moves on
        f"""() => /^\\d+\\/3000$/.test(document.querySelector('tr[data-run="{live_id}"] td.num').textContent)""",
        timeout=120_000,
    )
    page.screenshot(path=str(shots / "runs.png"))

    # The finished run: its curves, drawn in the browser from metrics.jsonl.
    page.goto(f"{base}/runs/{finished_id}")
    page.wait_for_selector("#chart-loss canvas")
    page.wait_for_selector("#run-state.succeeded")
    assert "done: 20 steps" in page.text_content("#log")
    # The spec: what the job set in bold, runner's defaults dimmed.
    assert "max_steps: 20" in [line.strip() for line in page.locator("#spec .set").all_text_contents()]
    assert page.locator("#spec .default").count() > 10
    page.screenshot(path=str(shots / "run-finished.png"), full_page=True)

    # The live run: its log follows, its curve grows.
    page.goto(f"{base}/runs/{live_id}")
    page.wait_for_selector("#run-state.running")
    page.wait_for_selector("#chart-loss canvas", timeout=120_000)
    first = _last_step(page.text_content("#log"))
    page.wait_for_function(
        f"""() => {{ const m = [...document.querySelector('#log').textContent.matchAll(/step (\\d+)\\/3000/g)];
                    return m.length && Number(m[m.length - 1][1]) >= {first + 3}; }}""",
        timeout=60_000,
    )
    page.screenshot(path=str(shots / "run-live.png"), full_page=False)

    # Stop: the run saves a checkpoint after its step and ends as stopped.
    page.click("#stop")
    page.wait_for_selector("#run-state.stopped", timeout=120_000)
    page.wait_for_function("() => document.querySelector('#log').textContent.includes('checkpoint saved')")
    record = read_record(next(r.run_dir for r in runs_of(out, "live") if r.id == live_id))
    assert record.status == "stopped", record
    assert list(Path(record.run_dir, "checkpoints").glob("checkpoint-*")), "no checkpoint was saved"
    page.screenshot(path=str(shots / "run-stopped.png"), full_page=False)

    # Two runs on one chart.
    page.goto(f"{base}/compare?runs={finished_id},{live_id}")
    page.wait_for_selector("#chart-compare canvas")
    assert page.locator("#chart-compare .u-legend .u-series").count() == 3  # step + two runs
    page.screenshot(path=str(shots / "compare.png"))

    # A bad spec submitted from the page: its problems with line:col, nothing started.
    page.goto(f"{base}/jobs?job=bad.yaml")
    page.wait_for_selector("#job-text .line")
    page.click("#submit")
    page.wait_for_selector("#problems li")
    problems = page.text_content("#problems")
    assert "bad.yaml:6:3 method.rank: unknown key; did you mean 'r'?" in problems, problems
    assert "bad.yaml:11:18 training.learning_rate: must be > 0 (got -1)" in problems, problems
    assert "nothing was started" in page.text_content("#verdict")
    assert page.locator("#job-text .line.bad").count() == 2
    assert not runs_of(out, "bad")
    page.screenshot(path=str(shots / "bad-spec.png"))


def _last_step(log: str) -> int:
    steps = re.findall(r"step (\d+)/3000", log)
    return int(steps[-1]) if steps else 0
