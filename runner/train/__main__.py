"""Training entrypoint: `python -m runner.train JOB.yaml [--run-dir DIR]`.

Inside a container this is the whole job. Without --run-dir it creates a fresh run
directory itself, so it also works on its own.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from runner.errors import RunnerError, SpecError

STAGES = {"sft": "runner.train.sft", "pt": "runner.train.pt"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.train", description=__doc__)
    parser.add_argument("spec", help="job spec (YAML)")
    parser.add_argument("--run-dir", help="existing run directory to write into")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        run_dir = _run_dir(args)
        from runner.spec import load_job

        spec = load_job(run_dir / "spec.yaml")
        stage = importlib.import_module(STAGES[spec.stage])
        metrics = stage.run(spec, run_dir)
    except SpecError as e:
        print(e, file=sys.stderr)
        return e.exit_code
    except RunnerError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    loss = metrics.get("train_loss")
    print(f"done: {metrics['global_step']} steps, train_loss {loss:.4f}, saved {run_dir / metrics['output']}")
    return 0


def _run_dir(args: argparse.Namespace) -> Path:
    if args.run_dir:
        return Path(args.run_dir)
    from runner.execute.submit import prepare

    record, _ = prepare(args.spec)
    print(f"run directory: {record.run_dir}")
    return Path(record.run_dir)


if __name__ == "__main__":
    sys.exit(main())
