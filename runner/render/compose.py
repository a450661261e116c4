"""render_compose(job) -> str: a compose file that runs one job, for hosts without runner.

The job's resolved spec is mounted read-only beside it; model, adapter and data read-only at
their own paths; the output directory writable. Valid for Compose v2 and docker-compose v1.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

from runner.render.container import gpu_request, image_ref, read_only_paths
from runner.render.launch import OFFLINE_ENV
from runner.spec.job import JobSpec


def compose_service(spec: JobSpec, spec_file: PurePath, uid: int, gid: int) -> dict[str, Any]:
    volumes = [f"{p}:{p}:ro" for p in read_only_paths(spec)]
    volumes += [f"{spec_file}:/job/spec.yaml:ro", f"{spec.output.dir}:{spec.output.dir}"]
    service: dict[str, Any] = {
        "image": image_ref(spec),
        "pull_policy": "never",
        "command": ["python", "-m", "runner.train", "/job/spec.yaml"],
        "user": f"{uid}:{gid}",
        "network_mode": "none",
        "shm_size": spec.resources.shm,
        "environment": {**OFFLINE_ENV, "HOME": "/tmp"},
        "volumes": volumes,
        "labels": {"runner.job": spec.name},
    }
    for request in gpu_request(spec):
        device: dict[str, Any] = {"driver": "nvidia", "capabilities": ["gpu"]}
        if "DeviceIDs" in request:
            device["device_ids"] = request["DeviceIDs"]
        else:
            device["count"] = "all" if request["Count"] == -1 else request["Count"]
        service["ulimits"] = {"memlock": -1, "stack": 67108864}
        service["deploy"] = {"resources": {"reservations": {"devices": [device]}}}
    return service


def render_compose(spec: JobSpec, spec_file: PurePath, uid: int, gid: int) -> str:
    import io

    from ruamel.yaml import YAML

    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.sort_base_mapping_type_on_output = False
    out = io.StringIO()
    out.write(f"# Rendered by `runner compose` for job '{spec.name}'; run with: docker compose up\n")
    yaml.dump({"services": {spec.name: compose_service(spec, spec_file, uid, gid)}}, out)
    return out.getvalue()
