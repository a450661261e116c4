"""What the board's tests share: run directories made by hand (no training), and a board served
in a thread of the test."""

from __future__ import annotations

import http.client
import json
import threading
from contextlib import contextmanager
from pathlib import Path

from runner.core.rundir import RunDir, new_record

SPEC = """\
# resolved spec: every key written out; those marked `# default` were not set
name: {name}
stage: sft  # default
model:
  path: /models/qwen-tiny
  template: auto  # default
method:
  type: lora
  r: 8  # default
training:
  learning_rate: 0.001
  seed: 42  # default
resources:
  gpus: {gpus}
output:
  dir: {out}
"""


def make_run(output_dir: Path, name: str = "demo", status: str = "succeeded", steps: int = 5,
             gpus: int = 0) -> RunDir:  # fmt: skip
    """A run directory as a finished (or running) run leaves it: record, spec, log, metrics, results."""
    run = RunDir.create(output_dir, name)
    run.spec_file.write_text(SPEC.format(name=name, gpus=gpus, out=output_dir), encoding="utf-8")
    rows = [{"step": s, "epoch": s / steps, "loss": 3.0 - 0.3 * s, "grad_norm": 1.0 + 0.1 * s,
             "learning_rate": 1e-3 * (1 - s / steps)} for s in range(1, steps + 1)]  # fmt: skip
    rows.append({"step": steps, "eval_loss": 2.1, "elapsed_s": 1.0})
    run.metrics.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    run.log.write_text("".join(f"step {s}/{steps} loss {3.0 - 0.3 * s:.3f}\n" for s in range(1, steps + 1)),
                       encoding="utf-8")  # fmt: skip
    if status == "succeeded":
        run.results.write_text(json.dumps({"train_loss": 2.4, "eval_loss": 2.1, "global_step": steps}))
        (run.path / "adapter").mkdir()
        (run.path / "adapter" / "adapter_config.json").write_text("{}")
    record = new_record(run, name, str(output_dir / f"{name}.yaml"),
                        ["python", "-m", "runner.train", str(run.spec_file), "--run-dir", str(run.path)],
                        "local", None)  # fmt: skip
    record.update(status=status, started=record.created, exit_code=0 if status == "succeeded" else None,
                  ended=record.created if status != "running" else None)  # fmt: skip
    return run


@contextmanager
def serving(board):
    """The board on its (loopback) address, in a thread; yields the server."""
    from runner.host.board.server import serve

    ready = threading.Event()
    holder = {}

    def on_ready(server) -> None:
        holder["server"] = server
        ready.set()

    thread = threading.Thread(target=serve, args=(board, on_ready), daemon=True)
    thread.start()
    assert ready.wait(10), "the board did not start"
    try:
        yield holder["server"]
    finally:
        holder["server"].shutdown()
        thread.join(10)


class Client:
    """Raw HTTP to the board: paths are sent exactly as given (no client-side normalising)."""

    def __init__(self, port: int, token: str | None = None, host_header: str | None = None):
        self.port, self.token, self.host_header = port, token, host_header

    def request(self, method: str, path: str, body: bytes | dict | None = None, headers: dict | None = None,
                token: bool = True) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        sent = dict(headers or {})
        if token and self.token:
            sent.setdefault("Authorization", f"Bearer {self.token}")
        if isinstance(body, dict):
            body = json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        if self.host_header:
            sent["Host"] = self.host_header
        conn.putrequest(method, path, skip_host=bool(self.host_header), skip_accept_encoding=True)
        for key, value in sent.items():
            conn.putheader(key, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data

    def get(self, path: str, **kwargs):
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: dict | bytes | None = None, **kwargs):
        return self.request("POST", path, body if body is not None else {}, **kwargs)

    def json(self, path: str):
        status, _, data = self.get(path)
        assert status == 200, (status, data[:500])
        return json.loads(data)
