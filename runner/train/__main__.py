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
from runner.train import logs


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["launch"]:
        return launch(argv[1:])
    offline.enter()
    parser = argparse.ArgumentParser(prog="python -m runner.train", description=__doc__)
    parser.add_argument("spec", help="job spec (YAML)")
    parser.add_argument("--run-dir", help="existing run directory to write into")
    args = parser.parse_args(argv)
    if args.run_dir and os.environ.get("RUNNER_TEE") == "1":
        _tee(RunDir(args.run_dir).log)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    policy = logs.LogPolicy(logs.rank())
    policy.install()
    record = None
    try:
        run_dir, record = _run_dir(args)
        policy.shared(run_dir)
        from runner.train import dataset

        dataset.use_scratch(run_dir)
        from runner.core.jobspec.load import load_job

        # Checked again here, with what this process really has: in a container, the mounts.
        spec = load_job(RunDir(run_dir).spec_file, writes=run_dir)
        if spec.output.verbose:
            policy.everything()
        _launch_env(spec)
        stage = importlib.import_module(stages.STAGES[spec.stage].module)
        metrics = stage.run(spec, run_dir)
        policy.summary()
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


def launch(argv: list[str]) -> int:
    """`python -m runner.train launch TORCHRUN-ARGS`: torchrun, for one node of a multi-node job.
    Its wait for the other nodes at node 0's rendezvous ends after `--rdzv-conf timeout=S` (the
    spec's distributed.rendezvous_timeout_s) with what to check, instead of torchrun's traceback;
    a run directory's record says so. Every other outcome is torchrun's own."""
    # While it waits, c10d logs every failed try with a C++ stack; this process's own C++ log
    # (read once, as torch loads) keeps fatal lines only. Its workers log as they would.
    own = os.environ.get("TORCH_CPP_LOG_LEVEL")
    os.environ["TORCH_CPP_LOG_LEVEL"] = "FATAL"
    import torch  # noqa: F401

    if own is None:
        del os.environ["TORCH_CPP_LOG_LEVEL"]
    else:
        os.environ["TORCH_CPP_LOG_LEVEL"] = own
    from torch.distributed import DistError
    from torch.distributed.elastic.rendezvous import RendezvousError
    from torch.distributed.run import main as torchrun
    from torch.distributed.run import parse_args

    args = parse_args(argv)
    try:
        torchrun(argv)
    except (DistError, RendezvousError, TimeoutError, ConnectionError) as e:
        if not _at_rendezvous(e):
            raise
        message = rendezvous_failure(args, e)
        print(f"error: {message}", file=sys.stderr, flush=True)
        script_args = args.training_script_args
        run_dir = next(
            (b for a, b in zip(script_args, script_args[1:], strict=False) if a == "--run-dir"), None
        )
        if run_dir and RunDir.holds_run(Path(run_dir)):
            from runner.core.rundir import read_record

            read_record(run_dir).update(status="failed", exit_code=1, ended=now(), message=message)
        return 1
    return 0


def _at_rendezvous(e: BaseException) -> bool:
    """Whether `e` was raised while this node waited at the rendezvous (no worker started yet)."""
    tb = e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name in ("_rendezvous", "next_rendezvous"):
            return True
        tb = tb.tb_next
    return False


def rendezvous_failure(args: argparse.Namespace, e: BaseException) -> str:
    """What a rendezvous that never completed means, and what to check, in the node's own terms."""
    addr, port, rank = args.master_addr, args.master_port, args.node_rank
    nodes = int(str(args.nnodes).split(":")[-1])
    others = "node_rank 1" if nodes == 2 else f"node_rank 1 to {nodes - 1}"
    timeout = dict(kv.split("=", 1) for kv in (args.rdzv_conf or "").split(",") if "=" in kv).get(
        "timeout", "600"
    )
    said = " ".join(str(e).split())[:200]
    wait = f"distributed.rendezvous_timeout_s ({timeout} s) sets how long the nodes wait"
    if rank == 0:
        return (f"the other node(s) of this {nodes}-node job did not reach the rendezvous at {addr}:{port} "
                f"within {timeout} s ({said}). Check that each was started, with {others} and this "
                f"master_addr and master_port, that they reach {addr} "
                f"(ping {addr} there), and that port {port} is open to them on this machine (nc -z {addr} "
                f"{port} from each); {wait}")  # fmt: skip
    return (f"node {rank} could not reach node 0's rendezvous at {addr}:{port} within {timeout} s ({said}). "
            f"Check that node 0 is running (node_rank 0, started at about the same time), that {addr} is "
            f"node 0's address as this machine reaches it (ping {addr}), and that port {port} is open on "
            f"node 0 (nc -z {addr} {port} from here); {wait}")  # fmt: skip


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
