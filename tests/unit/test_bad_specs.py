"""Golden error output for every bad spec under tests/data/bad_specs/.

Regenerate after an intended change of wording: UPDATE_GOLDEN=1 pytest tests/unit/test_bad_specs.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from runner.host.cli import main

BAD = Path("tests/data/bad_specs")
SPECS = sorted(p.name for p in (Path(__file__).parents[1] / "data" / "bad_specs").glob("*.yaml"))


def test_corpus_is_large_enough():
    assert len(SPECS) >= 15


@pytest.mark.parametrize("name", SPECS)
def test_bad_spec_golden(name: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("RUNNER_TEST_UNSET_MODEL_DIR", raising=False)
    result = CliRunner().invoke(main, ["validate", str(BAD / name)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stdout == ""  # problems go to stderr only
    golden = BAD / name.replace(".yaml", ".expected")
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(result.stderr, encoding="utf-8")
    assert result.stderr == golden.read_text(encoding="utf-8")
    # Every line names the file, and a line:col whenever the problem has one.
    for line in result.stderr.splitlines()[:-1]:
        assert line.startswith(str(BAD / name) + ":")


def test_submit_of_bad_spec_starts_nothing(tmp_path: Path):
    spec = tmp_path / "job.yaml"
    out = tmp_path / "outputs"
    text = (BAD / "negative_learning_rate.yaml").read_text(encoding="utf-8")
    spec.write_text(text + f"output:\n  dir: {out}\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["submit", str(spec), "--executor", "local"])
    assert result.exit_code == 2
    assert "training.learning_rate: must be > 0 (got -1)" in result.stderr
    assert not out.exists()


@pytest.mark.skipif(bool(__import__("shutil").which("nvidia-smi")), reason="this machine has GPUs")
def test_local_submit_refuses_gpus_this_machine_lacks(tmp_path: Path):
    spec = tmp_path / "job.yaml"
    out = tmp_path / "outputs"
    text = Path("tests/data/good_spec.yaml").read_text(encoding="utf-8")
    spec.write_text(text + f"resources:\n  gpus: all\noutput:\n  dir: {out}\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["submit", str(spec), "--executor", "local"])
    assert result.exit_code == 1
    assert "this machine has 0 GPU(s); set gpus: 0 to train on CPU" in result.stderr
    assert not out.exists()
