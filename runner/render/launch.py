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


def procs_per_node(spec: JobSpec) -> int | str:
    """Processes on each machine: as asked, else one per GPU ('gpu' lets torchrun count them)."""
    r = spec.resources
    if r.procs_per_node:
        return r.procs_per_node
    if r.gpus == "all":
        return "gpu"
    if isinstance(r.gpus, list):
        return len(r.gpus)
    return max(r.gpus, 1)


def render_launch(spec: JobSpec, run_dir: PurePath, python: str = "python") -> list[str]:
    """argv that runs the training entrypoint: one process, or torchrun for several/nodes."""
    entry = ["-m", "runner.train", str(run_dir / "spec.yaml"), "--run-dir", str(run_dir)]
    nproc, nodes = procs_per_node(spec), spec.resources.nodes
    # DeepSpeed expects the launcher's environment (RANK, MASTER_ADDR, ...) even for one process.
    if nodes == 1 and nproc == 1 and spec.distributed.deepspeed is None:
        return [python, *entry]
    argv = [python, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    if nodes == 1:
        # The loopback address, not the hostname: a container without network cannot resolve it.
        argv += ["--standalone", "--local-addr=127.0.0.1"]
    else:
        d = spec.distributed
        argv += [f"--nnodes={nodes}", f"--node-rank={d.node_rank}",
                 f"--master-addr={d.master_addr}", f"--master-port={d.master_port}"]  # fmt: skip
    return argv + entry


def render_chat(run_dir: PurePath, message: str | None) -> list[str]:
    """Module and arguments of a chat with a run's result (run as `python -m` + these)."""
    argv = ["runner.train.chat", str(run_dir)]
    return argv + (["--message", message] if message is not None else [])
