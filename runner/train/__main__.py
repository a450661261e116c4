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

from runner.core import offline, stages
from runner.core.errors import RunError, RunnerError, SpecError
from runner.core.rundir import STOPPED, RunDir, RunRecord, launch_pointer, now


def main(argv: list[str] | None = None) -> int:
    offline.enter()
    parser = argparse.ArgumentParser(prog="python -m runner.train", description=__doc__)
    parser.add_argument("spec", help="job spec (YAML)")
    parser.add_argument("--run-dir", help="existing run directory to write into")
    args = parser.parse_args(argv)
    if args.run_dir and os.environ.get("RUNNER_TEE") == "1":
        _tee(RunDir(args.run_dir).log)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    record = None
    try:
        run_dir, record = _run_dir(args)
        from runner.core.jobspec.load import load_job

        # Checked again here, with what this process really has: in a container, the mounts.
        spec = load_job(RunDir(run_dir).spec_file, writes=run_dir)
        _launch_env(spec)
        stage = importlib.import_module(stages.STAGES[spec.stage].module)
        metrics = stage.run(spec, run_dir)
    except BaseException as raised:
        e = raised if isinstance(raised, (SpecError, RunnerError)) else offline_error(raised)
        if e is None:
            if record:
                record.update(status="failed", exit_code=1, ended=now())
            raise
        print(e if isinstance(e, SpecError) else f"error: {e}", file=sys.stderr)
        if record:
            record.update(status="failed", exit_code=e.exit_code, ended=now(), message=str(e))
        return e.exit_code
    if metrics.get("stopped"):
        if int(os.environ.get("RANK", "0")) == 0:
            RunDir(run_dir).stop_mark.write_text(f"{metrics['global_step']}\n", encoding="utf-8")
        if record:
            record.update(status="stopped", exit_code=STOPPED, ended=now())
        return STOPPED
    if record:
        record.update(status="succeeded", exit_code=0, ended=now())
    if (
        not metrics or not stages.STAGES[spec.stage].trains
    ):  # not the main process; an evaluation printed its table
        return 0
    loss = metrics.get("train_loss")
    print(f"done: {metrics['global_step']} steps, train_loss {loss:.4f}, saved {run_dir / metrics['output']}")
    return 0


def offline_error(e: BaseException) -> RunnerError | None:
    """What to copy in, when a library or a model's own code (trust_remote_code) reached for the
    Hugging Face hub: this process is offline, so the attempt fails at once, never retries."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    chain, seen = [], e
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    if not any(isinstance(x, (OfflineModeIsEnabled, LocalEntryNotFoundError)) for x in chain):
        return None
    wanted = next(
        (str(x) for x in chain if isinstance(x, (OfflineModeIsEnabled, LocalEntryNotFoundError))), ""
    )
    return RunnerError(
        f"the job needs a file from the Hugging Face hub, and this machine is offline ({wanted.strip()[:300]}). "
        "runner never downloads: on the connected side, download what the model (or its trust_remote_code "
        "code) loads, e.g. `huggingface-cli download REPO --local-dir DIR`, carry DIR in, and point "
        "model.path (or the model's config.json auto_map) at local files"
    )


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
    """The run directory; created (with its record, kept up to date here) when none is given.

    Under a launcher (torchrun: a compose file, a cluster) every rank runs this: rank 0 creates
    the directory and leaves its path under the launch's id for the others to read."""
    if args.run_dir:
        return Path(args.run_dir), None
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    launch_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if world > 1 and launch_id == "none":
        raise RunError("several processes without --run-dir need the launcher's run id "
                       "(torchrun --standalone or --rdzv-id) to share one run directory")  # fmt: skip
    if rank > 0:
        return _wait_for_run_dir(args.spec, launch_id), None
    from runner.core.launch import prepare

    record, spec = prepare(args.spec)
    record.update(status="running", started=now(), command=[sys.executable, *sys.orig_argv[1:]])
    if world > 1:
        launch_pointer(spec.output.dir, spec.name, launch_id).write_text(record.run_dir, encoding="utf-8")
    print(f"run directory: {record.run_dir}")
    return Path(record.run_dir), record


def _wait_for_run_dir(spec_file: str, launch_id: str, timeout: float = 600) -> Path:
    import time

    from runner.core.jobspec.load import load_job, resolve

    spec = resolve(load_job(spec_file, files=False), Path.cwd())  # rank 0 checks it whole
    pointer = launch_pointer(spec.output.dir, spec.name, launch_id)
    deadline = time.time() + timeout
    while not pointer.exists():
        if time.time() > deadline:
            raise RunError(f"rank 0 did not create the run directory within {timeout:.0f} s ({pointer})")
        time.sleep(0.2)
    return Path(pointer.read_text(encoding="utf-8"))


def _launch_env(spec) -> None:
    """The launch's environment where whatever started this process did not set it (a compose
    file or a cluster's launcher), before any library reads it; NCCL's `auto` settings from the
    GPUs this process sees. What the launch set stays."""
    import torch

    from runner.core.launch import launch_env

    names = None
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    for key, value in launch_env(spec, names).items():
        os.environ.setdefault(key, value)


if __name__ == "__main__":
    sys.exit(main())
