"""Training entrypoint: `python -m runner.train JOB.yaml [--run-dir DIR]`.

Inside a container this is the whole job. Without --run-dir it creates a fresh run
directory itself, so it also works on its own.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

from runner.errors import RunnerError, SpecError
from runner.execute.runs import RunRecord, now

STOPPED = 143  # 128 + SIGTERM: stopped on request, checkpoint saved
STAGES = {"sft": "runner.train.sft", "pt": "runner.train.pt"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.train", description=__doc__)
    parser.add_argument("spec", help="job spec (YAML)")
    parser.add_argument("--run-dir", help="existing run directory to write into")
    args = parser.parse_args(argv)
    if args.run_dir and os.environ.get("RUNNER_TEE") == "1":
        _tee(Path(args.run_dir) / "train.log")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    record = None
    try:
        run_dir, record = _run_dir(args)
        from runner.spec import load_job

        spec = load_job(run_dir / "spec.yaml")
        stage = importlib.import_module(STAGES[spec.stage])
        metrics = stage.run(spec, run_dir)
    except (SpecError, RunnerError) as e:
        print(e if isinstance(e, SpecError) else f"error: {e}", file=sys.stderr)
        if record:
            record.update(status="failed", exit_code=e.exit_code, ended=now(), message=str(e))
        return e.exit_code
    except BaseException:
        if record:
            record.update(status="failed", exit_code=1, ended=now())
        raise
    if metrics.get("stopped"):
        if record:
            record.update(status="stopped", exit_code=STOPPED, ended=now())
        return STOPPED
    if record:
        record.update(status="succeeded", exit_code=0, ended=now())
    if not metrics:  # not the main process of a distributed run
        return 0
    loss = metrics.get("train_loss")
    print(f"done: {metrics['global_step']} steps, train_loss {loss:.4f}, saved {run_dir / metrics['output']}")
    return 0


def _tee(path: Path) -> None:
    """Copy this process's output into the run's log (detached runs have no one streaming it)."""
    log = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115  (lives as long as the process)

    class Tee:
        def __init__(self, stream):
            self.stream = stream

        def write(self, text):
            log.write(text)
            return self.stream.write(text)

        def flush(self):
            log.flush()
            self.stream.flush()

        def __getattr__(self, name):
            return getattr(self.stream, name)

    sys.stdout, sys.stderr = Tee(sys.stdout), Tee(sys.stderr)


def _run_dir(args: argparse.Namespace) -> tuple[Path, RunRecord | None]:
    """The run directory; created (with its record, kept up to date here) when none is given."""
    if args.run_dir:
        return Path(args.run_dir), None
    from runner.execute.submit import prepare

    record, _ = prepare(args.spec)
    record.update(
        status="running",
        started=now(),
        command=[sys.executable, "-m", "runner.train", args.spec],
    )
    print(f"run directory: {record.run_dir}")
    return Path(record.run_dir), record


if __name__ == "__main__":
    sys.exit(main())
