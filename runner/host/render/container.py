"""render_container(job) -> dict: how the job's container is started (docker SDK run kwargs),
and its projection as `docker run` flags for hosts that have no runner.

The launch (runner.core.launch) gives command, environment and mounts; this adds what a
container needs around them: image, user, GPUs, shared memory, limits and network, and the
lockdown (runner.host.render.lockdown) every job container runs under.
"""

from __future__ import annotations

import shlex
from pathlib import Path, PurePath
from typing import Any

from runner.core.jobspec.image import image_ref as _named_image
from runner.core.jobspec.job import JobSpec
from runner.core.launch import launch_env, mounts, read_only_paths, render_launch
from runner.host.render import lockdown

STACK = 64 * 2**20


def image_ref(spec: JobSpec) -> str:
    return _named_image(spec.image)


def gpu_request(spec: JobSpec) -> list[dict[str, Any]]:
    gpus = spec.resources.gpus
    if gpus == 0:
        return []
    request: dict[str, Any] = {"Driver": "nvidia", "Capabilities": [["gpu"]]}
    if gpus == "all":
        request["Count"] = -1
    elif isinstance(gpus, list):
        request["DeviceIDs"] = [str(i) for i in gpus]
    else:
        request["Count"] = gpus
    return [request]


def render_container(
    spec: JobSpec, run_dir: PurePath | None, uid: int, gid: int, run_id: str,
    gpu_names: list[str] | None = None, spec_file: PurePath | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Without a run directory (a Slurm job), the entrypoint makes one from `spec_file`."""
    multi_node = spec.resources.nodes > 1
    run = {"RUNNER_RUN_DIR": str(run_dir)} if run_dir else {}
    uid, gid = lockdown.job_user(uid, gid)
    return {
        "image": image_ref(spec),
        "command": render_launch(spec, run_dir, python="python", spec_file=spec_file),
        "name": f"runner-{spec.name}-{run_id}",
        "user": f"{uid}:{gid}",  # outputs belong to whoever submitted the job (root: nobody)
        "environment": {**launch_env(spec, gpu_names), "HOME": "/tmp", **run},
        "volumes": {p: {"bind": p, "mode": mode} for p, mode in mounts(spec, run_dir, spec_file).items()},
        # Multi-node rendezvous needs the host's network; a single node needs none at all.
        "network_mode": "host" if multi_node else "none",
        "shm_size": spec.resources.shm,
        # NCCL (pinned buffers, InfiniBand) needs these raised; a CPU job does not.
        "ulimits": [
            {"Name": "memlock", "Soft": -1, "Hard": -1},
            {"Name": "stack", "Soft": STACK, "Hard": STACK},
        ]
        if spec.resources.gpus != 0
        else [],
        "device_requests": gpu_request(spec),
        "labels": {
            "runner.job": spec.name,
            "runner.run-id": run_id,
            **({"runner.run-dir": str(run_dir)} if run_dir else {}),
        },  # fmt: skip
        "working_dir": str(run_dir or spec.output.dir),
        **lockdown.docker_kwargs(),
    }


def docker_run_argv(config: dict[str, Any]) -> list[str]:
    """The same container as a `docker run` command line (render_container's kwargs as flags)."""
    argv = ["docker", "run", "--rm", "--name", config["name"], "--user", config["user"],
            "--network", config["network_mode"], "--shm-size", config["shm_size"],
            "--workdir", config["working_dir"], *lockdown.docker_flags(config)]  # fmt: skip
    for u in config["ulimits"]:
        argv += ["--ulimit", f"{u['Name']}={u['Soft']}:{u['Hard']}"]
    for request in config["device_requests"]:
        if "DeviceIDs" in request:
            argv += ["--gpus", f'"device={",".join(request["DeviceIDs"])}"']  # docker's CSV quoting
        else:
            argv += ["--gpus", "all" if request["Count"] == -1 else str(request["Count"])]
    for key, value in config["environment"].items():
        argv += ["--env", f"{key}={value}"]
    for host, bind in config["volumes"].items():
        argv += ["--volume", f"{host}:{bind['bind']}:{bind['mode']}"]
    for key, value in config["labels"].items():
        argv += ["--label", f"{key}={value}"]
    return argv + [config["image"], *config["command"]]


def render_hosts(spec: JobSpec, run_dir: PurePath, hosts: list[str], uid: int, gid: int, run_id: str) -> str:
    """One `docker run` per host, node 0 first; node 0's host is the rendezvous address."""
    lines = [f"# {len(hosts)} host(s), one command each. The run directory {run_dir}, the model and "
             "the data must be on storage every host mounts at the same paths."]  # fmt: skip
    for rank, host in enumerate(hosts):
        node = spec.model_copy(deep=True)
        node.resources.nodes = len(hosts)
        node.distributed.node_rank = rank
        node.distributed.master_addr = hosts[0]
        config = render_container(node, run_dir, uid, gid, f"{run_id}-n{rank}")
        config["network_mode"] = "host"  # the rendezvous reaches node 0 over the hosts' network
        lines += [f"# node {rank}: on {host}", shlex.join(docker_run_argv(config))]
    return "\n".join(lines) + "\n"


def missing_on_host(spec: JobSpec) -> list[str]:
    """Mount sources that are missing on this host (a spec validated elsewhere, say)."""
    return [p for p in read_only_paths(spec) if not Path(p).exists()]
