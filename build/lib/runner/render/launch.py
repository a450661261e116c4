"""What runs inside the job's process: the command line and its environment."""

from __future__ import annotations

from pathlib import PurePath

from runner.spec.job import JobSpec

# Nothing in a job may reach the network: hub downloads, dataset scripts, telemetry.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_UPDATE_CHECK": "1",
    "DO_NOT_TRACK": "1",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
}


def render_launch(spec: JobSpec, run_dir: PurePath, python: str = "python") -> list[str]:
    """argv of the training entrypoint for one process on one machine."""
    del spec  # multi-process launches (torchrun, deepspeed) will read resources from it
    return [python, "-m", "runner.train", str(run_dir / "spec.yaml"), "--run-dir", str(run_dir)]


def render_chat(run_dir: PurePath, message: str | None, python: str = "python") -> list[str]:
    argv = [python, "-m", "runner.train.chat", str(run_dir)]
    return argv + (["--message", message] if message is not None else [])
