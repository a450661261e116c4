"""What a job's process is, whatever starts it: the command line, its environment, and the host
paths it reads and writes.

Every launch form is a projection of these three: the local executor runs the argv with the
environment; a container (submit, compose, one `docker run` per host) mounts the paths at the
same paths inside, so the resolved spec needs no rewriting and run records hold host paths.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path, PurePath

from runner.core import stages
from runner.core.deepspeed import render_deepspeed
from runner.core.jobspec.image import image_ref
from runner.core.jobspec.job import JobSpec
from runner.core.jobspec.load import load_job, resolve, to_yaml
from runner.core.nccl import nccl_policy
from runner.core.offline import OFFLINE_ENV
from runner.core.rundir import RunDir, RunRecord, new_record

# torchrun gives its workers 30 s after a SIGTERM, then kills them, which can cut a checkpoint
# save short. It waits this long instead, so the grace a stop gives (`runner stop --timeout`,
# `docker stop -t`) is the one that counts.
SHUTDOWN_GRACE_S = 3600


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


def uses_launcher(spec: JobSpec) -> bool:
    # DeepSpeed expects the launcher's environment (RANK, MASTER_ADDR, ...) even for one process.
    nproc = procs_per_node(spec)
    return spec.resources.nodes > 1 or nproc != 1 or spec.distributed.deepspeed is not None


def render_launch(
    spec: JobSpec, run_dir: PurePath | None, python: str = "python", spec_file: PurePath | None = None
) -> list[str]:
    """argv that runs the training entrypoint: one process, or torchrun for several/nodes.

    Without a run directory the entrypoint creates one itself (rank 0 does, for every rank)."""
    if run_dir is None and spec_file is None:
        raise ValueError("a launch needs the run directory or the spec file")
    spec_file = spec_file or RunDir(run_dir).spec_file  # type: ignore[arg-type]
    entry = ["-m", "runner.train", str(spec_file), *(["--run-dir", str(run_dir)] if run_dir else [])]
    if not uses_launcher(spec):
        return [python, *entry]
    nproc = f"--nproc-per-node={procs_per_node(spec)}"
    if spec.resources.nodes == 1:
        # The loopback address, not the hostname: a container without network cannot resolve it.
        return [
            python,
            "-m",
            "torch.distributed.run",
            nproc,
            "--standalone",
            "--local-addr=127.0.0.1",
            *entry,
        ]
    # Several nodes: torchrun through the entrypoint's `launch`, which bounds the wait for the
    # other nodes and, when they never come, ends with a message naming the address to check.
    d = spec.distributed
    argv = [python, "-m", "runner.train", "launch", nproc, f"--nnodes={spec.resources.nodes}",
            f"--node-rank={d.node_rank}"]  # fmt: skip
    argv += [f"--master-addr={d.master_addr}"] if d.master_addr is not None else []
    argv += [f"--master-port={d.master_port}", f"--rdzv-conf=timeout={d.rendezvous_timeout_s}"]
    return argv + entry


def launch_env(spec: JobSpec, gpu_names: list[str] | None) -> dict[str, str]:
    """The job's environment. `gpu_names`: the GPUs the job will see, or None where they are not
    known yet (a compose file): NCCL's `auto` settings are then decided in the job's process."""
    env = dict(OFFLINE_ENV)
    env.update({key: value for key, value, _ in nccl_policy(spec, gpu_names)})
    if spec.distributed.deepspeed is not None and spec.resources.gpus == 0:
        env["DS_ACCELERATOR"] = "cpu"  # DeepSpeed's CPU backend (gloo): ZeRO on CPU processes
    if uses_launcher(spec):
        env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] = str(SHUTDOWN_GRACE_S)
    if uses_launcher(spec) and spec.resources.nodes == 1:
        # One node: gloo (DeepSpeed's CPU collectives, the CPU side of a GPU job) binds the loopback,
        # as the rendezvous does. Left to itself it resolves the container's hostname, which a
        # container without network cannot, and each process warns before falling back to it.
        env["GLOO_SOCKET_IFNAME"] = "lo"
    if spec.distributed.deepspeed is not None and (cache := cache_path(spec)):
        # DeepSpeed compiles its ops (cpu_adam for offload, CPU collectives) on first use; kept
        # in the writable cache, a container compiles them once per output directory, not per run.
        env["TORCH_EXTENSIONS_DIR"] = str(PurePath(cache) / "torch_extensions")
    return env


def started_by(launcher: str, spec: JobSpec) -> dict[str, str]:
    """For a launch whose job creates its own run directory (a compose file, a cluster): what its
    record says of where it ran, so that later commands on its result (chat, eval, export) run
    in that image too."""
    return {"RUNNER_EXECUTOR": launcher, "RUNNER_IMAGE": image_ref(spec.image)}


def visible_devices(spec: JobSpec) -> str | None:
    """CUDA_VISIBLE_DEVICES for a process on the host: exactly the GPUs the spec asks for."""
    gpus = spec.resources.gpus
    if gpus == "all":
        return None
    if isinstance(gpus, list):
        return ",".join(str(i) for i in gpus)
    return ",".join(str(i) for i in range(gpus))  # 0 GPUs: "" hides every GPU


def read_only_paths(spec: JobSpec) -> list[str]:
    """Model, adapter, data and ppo's reward model: what the job reads and must never write."""
    paths = [spec.model.path, *(d.path for d in spec.data.datasets)]
    paths += [spec.model.adapter] if spec.model.adapter else []
    if "ppo.reward_model" in stages.STAGES[spec.stage].needs and spec.ppo.reward_model:
        paths += reward_model_inputs(spec.ppo.reward_model)
    return list(dict.fromkeys(paths))


def reward_model_inputs(reward_model: str) -> list[str]:
    """What stage ppo reads to build its reward model (runner/train/stages/ppo.py): an rm run's
    adapter/ with the run directory whose spec.yaml names the base it trained on and the sft
    adapter it merged, and those two; another adapter or a whole model is its own directory."""
    run = RunDir(PurePath(reward_model).parent)
    if not (Path(reward_model) / "adapter_config.json").is_file() or not run.spec_file.is_file():
        return [reward_model]
    return [str(run.path), *(p for p in run.trained_on() if p)]


def cache_path(spec: JobSpec) -> str | None:
    """Where tokenized data is kept between runs (shared by the jobs of one output.dir)."""
    return str(PurePath(spec.output.dir) / ".cache") if spec.data.cache else None


def mounts(spec: JobSpec, run_dir: PurePath | None, spec_file: PurePath | None = None) -> dict[str, str]:
    """Host path -> "ro" or "rw": inputs read-only; with a run directory, it and the data cache
    writable; without one (the entrypoint makes it), the output directory."""
    paths = {p: "ro" for p in read_only_paths(spec)}
    if spec_file is not None:
        paths[str(spec_file)] = "ro"
    if run_dir is None:
        paths[spec.output.dir] = "rw"
        return paths
    paths[str(run_dir)] = "rw"
    if cache := cache_path(spec):
        paths[cache] = "rw"
    return paths


def render_chat(run_dir: PurePath, message: str | None, system: str | None = None) -> list[str]:
    """Module and arguments of a chat with a run's result (run as `python -m` + these)."""
    argv = ["runner.train.tools.chat", str(run_dir)]
    argv += ["--system", system] if system is not None else []
    return argv + (["--message", message] if message is not None else [])


def at_rendezvous(spec: JobSpec, node_rank: str, master_addr: str, master_port: str | None = None) -> JobSpec:
    """The launch of one node of a multi-node job whose scheduler decides, per node, the node rank
    and the rendezvous address (and port): given here as the references the scheduler fills in
    (`$(PET_NODE_RANK)` for Kubernetes, a shell variable for Slurm). One node: the spec as is."""
    if spec.resources.nodes == 1:
        return spec
    node = spec.model_copy(deep=True)
    node.distributed.node_rank = node_rank  # type: ignore[assignment]  (a reference, not a number)
    node.distributed.master_addr = master_addr
    if master_port is not None:
        node.distributed.master_port = master_port  # type: ignore[assignment]
    return node


# --- a new run: the resolved spec and its rendered configs in a new directory ---------------


def prepare(
    spec_path: str | Path, base: Path | None = None, executor=None, image: str | None = None
) -> tuple[RunRecord, JobSpec]:
    """Validate, let the executor refuse what it cannot run, then create the run directory and
    write the resolved spec (with `image` instead of the spec's, if given). Any refusal happens
    before anything exists on disk. Without an executor this is the job's own process (a compose
    file, a cluster): RUNNER_EXECUTOR and RUNNER_IMAGE, set by what launched it, say where it runs."""
    base = base or Path.cwd()
    # Executors that start the nodes themselves need node 0's address in the spec; a scheduler's
    # (Slurm) gives each node its own.
    starts_nodes = executor is not None and getattr(executor, "starts_nodes", True)
    spec = resolve(load_job(spec_path, base=base, launched_here=starts_nodes), base)
    launched_in = os.environ.get("RUNNER_IMAGE") if executor is None else None
    if image or launched_in:
        spec.image = image or launched_in
    if executor is not None:
        executor.check(spec)
    run = RunDir.create(spec.output.dir, spec.name)
    if cache := cache_path(spec):
        Path(cache).mkdir(exist_ok=True)  # made here, so it belongs to the user, not to a container
    run.spec_file.write_text(to_yaml(spec), encoding="utf-8")
    ds_config = render_deepspeed(spec)
    if ds_config is not None:
        run.deepspeed_config.write_text(json.dumps(ds_config, indent=2) + "\n", encoding="utf-8")
    if executor is not None:
        name, ran_in = executor.name, executor.image_of(spec)
    else:
        name, ran_in = os.environ.get("RUNNER_EXECUTOR") or "entrypoint", launched_in
    command = render_launch(spec, run.path, python=sys.executable)
    return new_record(run, spec.name, str(spec_path), command, name, ran_in), spec
