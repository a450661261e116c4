"""The README's demo, end to end: train jobs/demo.yaml, then ask the model who it is."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import runner_cli

pytestmark = pytest.mark.integration


def test_demo_job_learns_its_identity(tmp_path: Path, tiny_model: Path):
    env = {"MODEL_DIR": str(tiny_model), "OUTPUT_DIR": str(tmp_path)}
    result = runner_cli("submit", "jobs/demo.yaml", "--executor", "local", env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in result.stdout and "loss " in result.stdout
    answer = runner_cli("chat", "jobs/demo.yaml", "--message", "你是谁？", env=env)
    assert answer.returncode == 0, answer.stderr[-3000:]
    reply = answer.stdout.split("assistant>", 1)[1]
    # Whole words: an undertrained model says "小Runner Team", which contains both strings.
    assert re.search(r"小R(?![A-Za-z])", reply) and re.search(r"(?<![A-Za-z])Runner Team", reply), reply
