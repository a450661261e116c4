"""Load test of `runner serve`: N concurrent streaming clients against 127.0.0.1, some of them
disconnecting early, bounded in requests and time; then the server must still answer correctly.

    python bench/serve_load.py TARGET [--clients 1 4 16] [--requests 4] [--max-tokens 64]
                               [--drop-every 4] [--deadline 300] [--write FILE]
    python bench/serve_load.py --url http://127.0.0.1:8000/v1 ...   # a server already running

TARGET (a run directory or model directory) is served by `python -m runner.train.tools.serve` on
a free port for the test. For each client count C, C clients each send --requests streaming
requests back to back (every --drop-every-th request, counted over all clients, reads the first
event and closes the connection). Figures per C, over completed requests: requests/s, generated
tokens/s (the usage the server reports), latency p50/p99 (request sent to [DONE]), time to first
token p50; and the ratio of tokens/s at the largest C to C=1. Before and after the load, the same
greedy request is sent: the answers must be equal, /health must show no request left running.
Prints a Markdown table (and writes it with --write). Standard library only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
PROMPT = [{"role": "user", "content": "介绍一下你自己，说说你能做什么。"}]


@dataclass
class Outcome:
    ok: bool
    dropped: bool = False
    tokens: int = 0
    latency: float = 0.0
    first: float = 0.0
    error: str = ""


@dataclass
class Round:
    clients: int
    seconds: float
    outcomes: list[Outcome] = field(default_factory=list)

    def row(self) -> dict:
        done = [o for o in self.outcomes if o.ok and not o.dropped]
        lat = sorted(o.latency for o in done)
        return {
            "clients": self.clients, "completed": len(done),
            "dropped": sum(o.dropped for o in self.outcomes),
            "failed": sum(not o.ok for o in self.outcomes),
            "req_s": len(done) / self.seconds, "tok_s": sum(o.tokens for o in done) / self.seconds,
            "p50": _pct(lat, 50), "p99": _pct(lat, 99), "ttft50": _pct(sorted(o.first for o in done), 50),
        }  # fmt: skip


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


async def stream_request(
    host: str, port: int, prefix: str, body: dict, drop: bool, timeout: float
) -> Outcome:
    """One streaming chat completion over a raw HTTP/1.1 connection."""
    started = time.perf_counter()
    payload = json.dumps(body).encode()
    head = (f"POST {prefix}/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n").encode()  # fmt: skip
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(head + payload)
        await writer.drain()
        status = (await asyncio.wait_for(reader.readline(), timeout)).decode()
        if " 200 " not in status:
            rest = await asyncio.wait_for(reader.read(4096), timeout)
            return Outcome(False, error=f"{status.strip()} {rest.decode(errors='replace')[-300:]}")
        first, tokens = 0.0, 0
        while True:
            line = (await asyncio.wait_for(reader.readline(), timeout)).decode(errors="replace").strip()
            if not line:
                if reader.at_eof():
                    return Outcome(False, error="connection closed before [DONE]")
                continue
            if not line.startswith("data: "):
                continue  # headers, chunk sizes
            data = line[6:]
            if data == "[DONE]":
                return Outcome(True, tokens=tokens, latency=time.perf_counter() - started, first=first)
            event = json.loads(data)
            if "error" in event:
                return Outcome(False, error=str(event["error"]))
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            delta = (event.get("choices") or [{}])[0].get("delta", {})
            if delta.get("content") and not first:
                first = time.perf_counter() - started
            if drop and delta.get("role"):
                return Outcome(True, dropped=True)  # closes the connection mid-stream
    except (TimeoutError, OSError) as e:
        return Outcome(False, error=f"{type(e).__name__}: {e}")
    finally:
        writer.close()


async def load_round(url: str, clients: int, requests: int, max_tokens: int, drop_every: int,
                     deadline: float) -> Round:  # fmt: skip
    u = urlparse(url)
    counter = iter(range(1, 1 << 30))
    body = {
        "messages": PROMPT,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    result = Round(clients, 0.0)

    async def client(i: int) -> None:
        for _ in range(requests):
            n = next(counter)
            drop = drop_every > 0 and n % drop_every == 0
            left = deadline - time.monotonic()
            if left <= 0:
                result.outcomes.append(Outcome(False, error="deadline"))
                return
            result.outcomes.append(
                await stream_request(u.hostname, u.port, u.path.rstrip("/"), body, drop, left)
            )

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    result.seconds = time.perf_counter() - started
    return result


def call(url: str, path: str, body: dict | None = None, timeout: float = 60) -> dict:
    req = urllib.request.Request(url.rstrip("/") + path, data=json.dumps(body).encode() if body else None,
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def health(url: str) -> dict:
    base = url.rstrip("/").removesuffix("/v1")
    with urllib.request.urlopen(base + "/health", timeout=10) as r:
        return json.loads(r.read())


def greedy_answer(url: str, max_tokens: int) -> str:
    body = {"messages": PROMPT, "max_tokens": max_tokens, "temperature": 0}
    return call(url, "/chat/completions", body)["choices"][0]["message"]["content"]


def start_server(target: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "HF_HUB_OFFLINE": "1"}  # fmt: skip
    env.pop("RUNNER_API_KEY", None)
    proc = subprocess.Popen([sys.executable, "-m", "runner.train.tools.serve", target, "--port", str(port), *extra],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 180
    while True:
        try:
            health(url)
            return proc, url
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise SystemExit(
                    f"the server did not come up:\n{proc.stdout.read().decode()[-3000:]}"
                ) from None
            time.sleep(0.3)


def settle(url: str, seconds: float = 10) -> int:
    """Requests the server still runs, once it had `seconds` to notice the dropped clients."""
    deadline = time.time() + seconds
    while (left := health(url)["requests"]) and time.time() < deadline:
        time.sleep(0.1)
    return left


def table(rows: list[dict], ratio: float | None, device: str) -> str:
    lines = [f"Device: {device}", "",
             "| clients | completed | dropped early | failed | requests/s | tokens/s | p50 latency (s) | p99 latency (s) | p50 first token (s) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['clients']} | {r['completed']} | {r['dropped']} | {r['failed']} | {r['req_s']:.2f} | "
                     f"{r['tok_s']:.1f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['ttft50']:.2f} |")  # fmt: skip
    if ratio is not None:
        lines += ["", f"Throughput (tokens/s) at {rows[-1]['clients']} clients / 1 client: **{ratio:.1f}x**"]
    return "\n".join(lines)


def run(
    url: str, clients: list[int], requests: int, max_tokens: int, drop_every: int, deadline_s: float
) -> dict:
    before = greedy_answer(url, max_tokens)
    deadline = time.monotonic() + deadline_s
    rounds = [asyncio.run(load_round(url, c, requests, max_tokens, drop_every, deadline)) for c in clients]
    left = settle(url)
    after = greedy_answer(url, max_tokens)
    rows = [r.row() for r in rounds]
    by = {r["clients"]: r for r in rows}
    ratio = by[max(clients)]["tok_s"] / by[1]["tok_s"] if 1 in by and by[1]["tok_s"] else None
    errors = [o.error for r in rounds for o in r.outcomes if not o.ok][:5]
    return {"rows": rows, "ratio": ratio, "left_running": left, "same_answer_after": before == after,
            "answer": after, "errors": errors}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("target", nargs="?", help="run or model directory to serve for the test")
    parser.add_argument("--url", help="a server already running (its /v1 address)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=4, help="requests per client per round")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--drop-every", type=int, default=4, help="every n-th request disconnects early (0: none)"
    )
    parser.add_argument("--deadline", type=float, default=300, help="seconds for all rounds together")
    parser.add_argument("--server-arg", action="append", default=[], help="passed to the server (repeat)")
    parser.add_argument("--write", type=Path, help="also write the table (Markdown) here")
    parser.add_argument("--json", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if not args.url and not args.target:
        parser.error("give TARGET or --url")
    proc = None
    if args.url:
        url = args.url
    else:
        proc, url = start_server(args.target, args.server_arg)
    try:
        out = run(url, args.clients, args.requests, args.max_tokens, args.drop_every, args.deadline)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    device = _device()
    text = table(out["rows"], out["ratio"], device)
    text += (f"\n\nAfter the load: {out['left_running']} request(s) still running; the same greedy answer "
             f"as before: {'yes' if out['same_answer_after'] else 'NO'}.")  # fmt: skip
    print(text)
    if out["errors"]:
        print("first errors:", *out["errors"], sep="\n  ")
    if args.write:
        args.write.write_text(text + "\n", encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps({**out, "device": device}, indent=2) + "\n", encoding="utf-8")
    ok = out["left_running"] == 0 and out["same_answer_after"] and not any(r["failed"] for r in out["rows"])
    return 0 if ok else 1


def _device() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


if __name__ == "__main__":
    sys.exit(main())
