"""Argument mistakes of eval, export and serve: one clear message, nothing started or written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from runner.host.cli import main


def test_eval_options_for_a_run_are_refused_with_an_eval_spec(tmp_path: Path):
    spec = tmp_path / "eval.yaml"
    spec.write_text("name: e\nstage: eval\nmodel: {path: models/tiny}\ndata: {datasets: [{path: x.json}]}\n")
    result = CliRunner().invoke(main, ["eval", str(spec), "--max-samples", "3"])
    assert result.exit_code == 1
    assert "apply to a run" in result.stderr and "eval section" in result.stderr


def test_export_serve_and_eval_name_what_is_not_a_run(tmp_path: Path):
    for args in (["export", str(tmp_path / "nothing")], ["serve", "no-such-run"], ["eval", "no-such-run"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, args  # a mistake in the arguments
        assert "no run" in result.stderr and "runner ls" in result.stderr, (args, result.stderr)


def test_export_refuses_a_file_as_its_directory(tmp_path: Path):
    from runner.core.errors import RunnerError
    from runner.train.tools.export import check_out

    target = tmp_path / "model.bin"
    target.write_text("x")
    with pytest.raises(RunnerError, match="not a directory"):
        check_out(target, force=True)
    assert target.read_text() == "x"


def test_an_adapter_whose_base_is_missing_is_named(tmp_path: Path):
    from runner.core.errors import RunnerError
    from runner.core.target import resolve

    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/nowhere/base"}))
    with pytest.raises(RunnerError, match=r"base model \('/nowhere/base'\) is not on this machine"):
        resolve(tmp_path)


def test_zero_and_empty_values_are_refused_before_anything_runs(tmp_path: Path):
    cases = [
        (["eval", "some-run", "--max-new-tokens", "0"], "x>=1"),
        (["eval", "some-run", "--max-samples", "0"], "x>=1"),
        (["chat", "some-run", "-m", ""], "the message is empty"),
        (["chat", "some-run", "--max-new-tokens", "0"], "x>=1"),
        (["serve", "some-run", "--max-batch", "0"], "x>=1"),
        (["serve", "some-run", "--timeout", "0"], "x>0"),
    ]
    for args, says in cases:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2 and says in result.stderr, (args, result.stderr)
    bench = tmp_path / "bench"
    bench.mkdir()
    data = tmp_path / "d.json"
    data.write_text("[]")
    result = CliRunner().invoke(main, ["eval", "some-run", "--data", str(data), "--benchmark", str(bench)])
    assert result.exit_code == 2 and "give one" in result.stderr
