"""Where the logged metrics go besides metrics.jsonl: `training.report_to`.

TensorBoard's event files are written into the run directory (RunDir.tensorboard) by a callback
of our own rather than by transformers' `report_to="tensorboard"`, which puts them under
checkpoints/runs/<date>_<host>/ unless an environment variable says otherwise: here every run
has them in one known place, which `tensorboard --logdir OUTPUT_DIR` and the board find.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from transformers import TrainerCallback

from runner.core.errors import UnsupportedError
from runner.core.jobspec.job import JobSpec
from runner.core.rundir import RunDir

log = logging.getLogger(__name__)


def reporters(spec: JobSpec, run_dir: Path) -> list[TrainerCallback]:
    """The callbacks `training.report_to` asks for; refused before training if a library is missing."""
    if spec.training.report_to != "tensorboard":
        return []
    if importlib.util.find_spec("tensorboard") is None:
        raise UnsupportedError(
            "training.report_to: tensorboard needs the tensorboard package, which this environment "
            "lacks; the training image carries it (pip install 'runner[train]'), or set report_to: none"
        )
    return [TensorBoardEvents(RunDir(run_dir).tensorboard)]


def tag(key: str) -> str:
    """TensorBoard's grouping, as transformers names it: eval_loss -> eval/loss, loss -> train/loss."""
    for prefix in ("eval_", "test_"):
        if key.startswith(prefix):
            return f"{prefix[:-1]}/{key[len(prefix) :]}"
    return f"train/{key}"


class TensorBoardEvents(TrainerCallback):
    """Every number logged, as a scalar at its global step, from the main process only."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.writer = None
        self.resumed_at: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        # A run resumed from a checkpoint logs the steps after it again: TensorBoard drops what
        # the interrupted run had written beyond it (purge_step), so each step has one value.
        self.resumed_at = state.global_step or None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.log_dir.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=self.resumed_at)
            log.info("TensorBoard event files: %s", self.log_dir)
        for key, value in logs.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(tag(key), value, state.global_step)
        self.writer.flush()

    def on_train_end(self, args, state, control, **kwargs):
        if self.writer is not None:
            self.writer.close()
            self.writer = None
