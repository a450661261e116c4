"""The load test of `runner serve` runs end to end (bench/serve_load.py: concurrent streaming
clients, some closing early, bounded in requests and time) and the server answers correctly
afterwards. A report, not a timed test: it asserts no speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_the_load_test_reports_and_the_server_survives_it(tiny_model: Path, tmp_path: Path):
    figures = tmp_path / "load.json"
    result = subprocess.run(
        [sys.executable, "bench/serve_load.py", str(tiny_model), "--clients", "1", "4", "--requests", "3",
         "--max-tokens", "16", "--drop-every", "3", "--deadline", "240", "--json", str(figures)],
        capture_output=True, text=True, cwd=ROOT, timeout=400,
        # one OpenMP thread: on a CPU other tests share, spinning OpenMP threads stall the server
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = json.loads(figures.read_text())
    assert out["left_running"] == 0 and out["same_answer_after"]
    rows = {r["clients"]: r for r in out["rows"]}
    assert rows[1]["completed"] == 2 and rows[1]["dropped"] == 1  # 3 requests, every third dropped
    assert rows[4]["completed"] + rows[4]["dropped"] == 12 and rows[4]["failed"] == 0
    assert all(r["tok_s"] > 0 and r["p99"] >= r["p50"] > 0 for r in out["rows"])
    assert out["ratio"] > 0 and "Throughput (tokens/s) at 4 clients / 1 client" in result.stdout
