"""Trainer callbacks: metrics.jsonl, plain progress lines off a terminal, the loss plot."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

from transformers import TrainerCallback

from runner.core.rundir import RunDir

log = logging.getLogger(__name__)


class MetricsCallback(TrainerCallback):
    """One JSON line per logging step; a readable line too when no progress bar is shown."""

    def __init__(self, run_dir: Path, plain: bool):
        self.run = RunDir(run_dir)
        self.path = self.run.metrics
        self.plain = plain
        self.start = time.time()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        row = {"step": state.global_step, "epoch": round(state.epoch or 0, 4), **logs,
               "elapsed_s": round(time.time() - self.start, 2)}  # fmt: skip
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self.plain:
            shown = " ".join(
                f"{k} {_fmt(v)}" for k, v in logs.items() if isinstance(v, (int, float)) and k != "epoch"
            )
            log.info("step %d/%d epoch %.2f %s", state.global_step, state.max_steps, row["epoch"], shown)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            plot_loss(self.path, self.run.plot)


def _fmt(v: float) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_loss(metrics: Path, png: Path) -> Path | None:
    rows = read_metrics(metrics)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r and math.isfinite(r["loss"])]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if not train and not evals:
        log.warning("no loss was logged; %s not written", png.name)
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display inside a container
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=False), label="train loss", color="#1f77b4")
    if evals:
        ax.plot(*zip(*evals, strict=False), "o-", label="eval loss", color="#d62728")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"loss of {metrics.parent.name}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png


class StopOnSignal(TrainerCallback):
    """SIGTERM (docker stop, runner stop, a scheduler's preemption): save a checkpoint at the end
    of the current step and stop, so `runner resume` continues from there."""

    def __init__(self):
        import signal

        self.requested = False
        signal.signal(signal.SIGTERM, self._request)

    def _request(self, signum, frame):
        self.requested = True
        log.info("stop requested: saving a checkpoint after this step")

    def on_step_end(self, args, state, control, **kwargs):
        requested = self.requested
        if args.world_size > 1:
            # Every rank must stop after the same step, or one waits forever in the next step's
            # collectives; the signal may reach them a step apart. One tiny all-reduce a step.
            import torch
            import torch.distributed as dist

            flag = torch.tensor([int(requested)], device=args.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            requested = bool(flag.item())
        if requested:
            self.requested = True
            control.should_save = True
            control.should_training_stop = True
        return control


class ShareFiles(TrainerCallback):
    """Checkpoints readable as this process's umask allows (see `share`)."""

    def on_save(self, args, state, control, **kwargs):
        share(Path(args.output_dir) / f"checkpoint-{state.global_step}")


def share(path: Path) -> None:
    """safetensors and torch write files with mode 0600; open them up to what the umask allows,
    so another uid (a container's user, a colleague, `runner bundle`) can read what this one
    saved. Files of other owners are left alone."""
    umask = os.umask(0)
    os.umask(umask)
    for root, _, files in os.walk(path):
        for name in files:
            f = os.path.join(root, name)
            try:
                if os.stat(f).st_uid == os.getuid():
                    os.chmod(f, 0o666 & ~umask)
            except OSError:
                pass
