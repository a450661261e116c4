"""Golden error output for every bad data set under tests/data/bad_data/: `validate` reads the
data and reports it, and `submit` says the same and starts nothing.

Regenerate after an intended change of wording: UPDATE_GOLDEN=1 pytest tests/unit/test_bad_data.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import runner_cli

BAD = Path("tests/data/bad_data")
SPECS = sorted(p.name for p in (Path(__file__).parents[1] / "data" / "bad_data").glob("*.yaml"))


def test_corpus_is_large_enough():
    assert len(SPECS) >= 25


@pytest.mark.parametrize("name", SPECS)
def test_bad_data_golden(name: str, tmp_path: Path):
    out = tmp_path / "outputs"
    env = {"RUNNER_TEST_OUT": str(out), "RUNNER_HOME": str(tmp_path / "home")}
    validate = runner_cli("validate", str(BAD / name), env=env)
    assert validate.returncode == 2, validate.stderr
    assert "Traceback" not in validate.stderr
    assert validate.stdout == ""
    golden = BAD / name.replace(".yaml", ".expected")
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(validate.stderr, encoding="utf-8")
    assert validate.stderr == golden.read_text(encoding="utf-8")
    for line in validate.stderr.splitlines()[:-1]:
        assert line.startswith(f"{BAD / name}:")
    submit = runner_cli("submit", str(BAD / name), "--executor", "local", env=env)
    assert (submit.returncode, submit.stderr) == (2, validate.stderr)
    assert not out.exists()


def test_no_data_skips_reading_the_records(tmp_path: Path):
    env = {"RUNNER_TEST_OUT": str(tmp_path / "outputs")}
    result = runner_cli("validate", "--no-data", str(BAD / "alpaca_null_output.yaml"), env=env)
    assert result.returncode == 0, result.stderr
    # files are still checked
    result = runner_cli("validate", "--no-data", str(BAD / "unknown_encoding.yaml"), env=env)
    assert result.returncode == 2
