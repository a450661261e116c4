"""render_container(job) -> dict: how the job's container is started (docker SDK run kwargs).

Host paths are mounted at the same paths inside the container, so the resolved spec needs
no rewriting: model and data read-only; the run directory and the tokenized-data cache
writable; nothing else.
"""

from __future__ import annotations

from pathlib import Path, PurePath
from typing import Any

from runner.render.launch import OFFLINE_ENV, render_launch
from runner.spec.job import JobSpec

STACK = 64 * 2**20


def image_ref(spec: JobSpec) -> str:
    return spec.image if ":" in spec.image or "/" in spec.image else f"runner/{spec.image}:latest"


def read_only_paths(spec: JobSpec) -> list[str]:
    """Model, adapter and data: what the job reads and must never write."""
    paths = [spec.model.path, *(d.path for d in spec.data.datasets)]
    return list(dict.fromkeys(paths + ([spec.model.adapter] if spec.model.adapter else [])))


def cache_path(spec: JobSpec) -> str | None:
    """Where tokenized data is kept between runs (shared by the jobs of one output.dir)."""
    return str(PurePath(spec.output.dir) / ".cache") if spec.data.cache else None


def mounts(spec: JobSpec, run_dir: PurePath) -> dict[str, dict[str, str]]:
    volumes = {p: {"bind": p, "mode": "ro"} for p in read_only_paths(spec)}
    volumes[str(run_dir)] = {"bind": str(run_dir), "mode": "rw"}
    if cache := cache_path(spec):
        volumes[cache] = {"bind": cache, "mode": "rw"}
    return volumes


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


def render_container(spec: JobSpec, run_dir: PurePath, uid: int, gid: int, run_id: str) -> dict[str, Any]:
    multi_node = spec.resources.nodes > 1
    return {
        "image": image_ref(spec),
        "command": render_launch(spec, run_dir, python="python"),
        "name": f"runner-{spec.name}-{run_id}",
        "user": f"{uid}:{gid}",  # outputs belong to whoever submitted the job
        "environment": {**OFFLINE_ENV, "HOME": "/tmp", "RUNNER_RUN_DIR": str(run_dir)},
        "volumes": mounts(spec, run_dir),
        # Multi-node rendezvous needs the host's network; a single node needs none at all.
        "network_mode": "host" if multi_node else "none",
        "shm_size": spec.resources.shm,
        "ulimits": [
            {"Name": "memlock", "Soft": -1, "Hard": -1},
            {"Name": "stack", "Soft": STACK, "Hard": STACK},
        ],
        "device_requests": gpu_request(spec),
        "labels": {"runner.job": spec.name, "runner.run-id": run_id, "runner.run-dir": str(run_dir)},
        "working_dir": str(run_dir),
    }


def missing_on_host(spec: JobSpec) -> list[str]:
    """Mount sources that are missing on this host (a spec validated elsewhere, say)."""
    return [p for p in read_only_paths(spec) if not Path(p).exists()]
