"""The CPU throughput benchmark runs end to end and reports (it asserts no speed: a report, not
a timed test)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_cpu_benchmark_reports_every_arm(tmp_path):
    out = tmp_path / "throughput.md"
    result = subprocess.run(
        [sys.executable, "bench/throughput.py", "--device", "cpu", "--steps", "4", "--bs", "4",
         "--max-len", "128", "--micro-batch-tokens", "256", "--memory-cap", "4", "--write", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and "---" not in line]
    arms = [r.split("|")[1].strip() for r in rows]
    assert arms[:4] == ["arm", "plain", "runner", "runner"]
    assert arms[4] == "runner, passes of <= 256 tokens, cap 4 GiB: no checkpointing"
    for row in rows[1:]:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert float(cells[2].replace(",", "")) > 0  # real tokens/s measured
    assert [r.split("|")[2].strip() for r in rows[1:]] == ["no", "no", "yes", "yes"]


def test_data_scale_benchmark_runs_validate_and_submit_on_a_small_corpus(tmp_path, tiny_model):
    """bench/data_scale.py end to end on 2 MB corpora (its GB sizes are run by hand): both kinds
    validate and train, and the table has their tokens, times and memory."""
    out = tmp_path / "data_scale.md"
    result = subprocess.run(
        [sys.executable, "bench/data_scale.py", "--sizes", "0.002", "--kinds", "alpaca,text",
         "--work", str(tmp_path / "work"), "--model", str(tiny_model), "--write", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| after")]
    assert [r.split("|")[2].strip() for r in rows] == ["alpaca", "text"]
    for row in rows:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        # tokens, validate and submit
        assert cells[3].endswith(" M") and "GB" in cells[4] and "GB" in cells[5], row
        assert cells[6].endswith("k"), row  # tokens/s measured
    assert not list((tmp_path / "work").glob("*.jsonl")) and not list((tmp_path / "work").glob("*.txt"))
