"""The environment that makes a process offline: every launcher sets it for the job, and every
in-container entry point enters it before any Hugging Face library loads."""

from __future__ import annotations

import os

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


def enter() -> None:
    """Make this process offline. Called first by `python -m runner.train` and by every tool's
    main(), never on import: a module that merely imports a helper changes nothing."""
    os.environ.update(OFFLINE_ENV)
    # Weight-loading progress bars say nothing useful in a job log.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
