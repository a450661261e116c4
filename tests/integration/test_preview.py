"""`runner preview`: what training will see, from the same code path and cache as training
(golden output for alpaca, a sharegpt multi-turn set with a system prompt, a column-mapped CSV);
its figures also go into results.json and survive a cache hit."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT, runner_cli

pytestmark = pytest.mark.integration
GOLDEN = ROOT / "tests" / "golden"

JOBS = {
    "alpaca": {"datasets": [{"path": "data/identity.json"}], "placeholders": {"name": "小R", "author": "Runner"}},
    "sharegpt": {"dataset_dir": "data", "datasets": [{"name": "chats"}]},
    "csv": {"datasets": [{"path": "data/faq.csv", "columns": {"instruction": "问题", "input": "行动",
                                                              "output": "回答"}}]},
}  # fmt: skip


def job(tmp_path: Path, tiny_model: Path, kind: str) -> str:
    """A job in tmp_path with its data copied beside it, named relatively as a user writes it."""
    if not (tmp_path / "data").exists():
        shutil.copytree(ROOT / "tests" / "data" / "registry", tmp_path / "data")
        shutil.copy(ROOT / "data" / "identity.json", tmp_path / "data" / "identity.json")
    spec = {"name": kind, "model": {"path": str(tiny_model)}, "method": {"type": "lora"},
            "data": {**JOBS[kind], "cutoff_len": 96}, "training": {"max_steps": 1},
            "resources": {"gpus": 0}, "output": {"dir": "out"}}  # fmt: skip
    (tmp_path / f"{kind}.yaml").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    return f"{kind}.yaml"


@pytest.mark.parametrize("kind", list(JOBS))
def test_preview_golden(kind: str, tmp_path: Path, tiny_model: Path):
    result = runner_cli("preview", job(tmp_path, tiny_model, kind), "-n", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    golden = GOLDEN / f"preview-{kind}.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(result.stdout, encoding="utf-8")
    assert result.stdout == golden.read_text(encoding="utf-8")
    assert "[[" in result.stdout and "\x1b[" not in result.stdout  # markers off a terminal


def test_the_figures_go_into_results_and_survive_a_cache_hit(tmp_path: Path, tiny_model: Path):
    spec = job(tmp_path, tiny_model, "csv")
    rows = sum(1 for _ in open(tmp_path / "data" / "faq.csv", encoding="utf-8")) - 1
    with open(tmp_path / "data" / "faq.csv", "a", encoding="utf-8") as f:
        f.write("没有回答的问题,,\n")  # a record without an answer, skipped as bad
    written = json.loads((tmp_path / spec).read_text(encoding="utf-8"))
    written["data"]["on_bad_record"] = "skip"
    (tmp_path / spec).write_text(json.dumps(written, ensure_ascii=False), encoding="utf-8")
    preview = runner_cli("preview", spec, "-n", "0", cwd=tmp_path)
    assert f"data/faq.csv: {rows} records, 1 bad skipped" in preview.stdout, preview.stderr[-2000:]
    figures = []
    for _ in range(2):  # the second run reads the tokenized data from the cache
        result = runner_cli("submit", spec, "--executor", "local", cwd=tmp_path)
        assert result.returncode == 0, result.stdout[-3000:]
        run_dir = sorted((tmp_path / "out" / "csv").iterdir())[-1]
        figures.append(json.loads((run_dir / "results.json").read_text())["data"])
    assert "tokenized data from cache" in (run_dir / "train.log").read_text()
    assert figures[0] == figures[1]  # the cache keeps the figures of the run that tokenized
    assert {k: figures[0][k] for k in ("records", "skipped", "dropped")} == {"records": [rows], "skipped": [1],
                                                                            "dropped": 0}  # fmt: skip
    assert figures[0]["rows"] == rows and figures[0]["tokens"] > 0 and figures[0]["workers"] >= 1


def test_a_bad_spec_is_refused_before_anything_loads(tmp_path: Path):
    (tmp_path / "bad.yaml").write_text("name: x\nmodel: {path: nowhere}\nmethod: {type: lora}\n")
    result = runner_cli("preview", "bad.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "model.path: no such directory" in result.stderr
    assert "Traceback" not in result.stderr
