"""Shared fixtures. The whole suite is offline: no test may reach a model hub."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# Runs the suite submits are indexed here, not in the user's own ~/.local/state/runner.
os.environ["RUNNER_HOME"] = tempfile.mkdtemp(prefix="runner-test-home-")

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Specs name paths relative to the project root, as a user's commands do."""
    monkeypatch.chdir(ROOT)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's own tiny Llama model, built once per session (no download)."""
    pytest.importorskip("torch", reason="the in-container dependencies (.[train]) are not installed")
    out = tmp_path_factory.mktemp("models") / "tiny"
    subprocess.run([sys.executable, "-m", "runner.train.tiny", str(out)], check=True, cwd=ROOT)
    return out


def runner_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess:
    """The real `runner` command in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "runner.cli", *args],
        capture_output=True, text=True, cwd=cwd, env={**os.environ, **(env or {})},
    )  # fmt: skip


def write_job(path: Path, model_dir: Path, **sections) -> Path:
    """A small LoRA job on the identity data, CPU only; keyword sections replace or extend it.

    Written as JSON, which every YAML reader accepts.
    """
    import json

    job = {
        "name": "job",
        "model": {"path": str(model_dir)},
        "method": {"type": "lora"},
        "data": {"datasets": [{"path": str(ROOT / "data" / "identity.json")}], "cutoff_len": 64},
        "training": {"max_steps": 3, "logging_steps": 1},
        "resources": {"gpus": 0},
        "output": {"dir": str(path.parent / "out")},
    }
    for key, value in sections.items():
        job[key] = (
            {**job[key], **value} if isinstance(value, dict) and isinstance(job.get(key), dict) else value
        )
    path.write_text(json.dumps(job, ensure_ascii=False, indent=1), encoding="utf-8")
    return path
