"""render_compose(job) -> str: a compose file that runs one job, for hosts without runner.

A projection of the job's launch (runner.core.launch): the same command (torchrun with one
process per GPU of the spec where it asks for several), environment and mounts as `runner
submit`, with the host paths mounted at the same paths. The entrypoint creates the run
directory under output.dir, so every `up` is a new run. Valid for Compose v2 and
docker-compose v1 (YAML 1.1: strings such as 1000:50 are quoted, or v1 reads a number).
"""

from __future__ import annotations

import io
from pathlib import PurePath
from typing import Any

from runner.core.jobspec.job import JobSpec
from runner.core.launch import launch_env, mounts, render_launch, started_by
from runner.host.render import lockdown
from runner.host.render.container import STACK, gpu_request, image_ref


def compose_service(spec: JobSpec, spec_file: PurePath, uid: int, gid: int) -> dict[str, Any]:
    uid, gid = lockdown.job_user(uid, gid)
    service: dict[str, Any] = {
        "image": image_ref(spec),
        "pull_policy": "never",
        "command": render_launch(spec, None, python="python", spec_file=spec_file),
        "user": f"{uid}:{gid}",
        "network_mode": "none",
        "shm_size": spec.resources.shm,
        "working_dir": spec.output.dir,
        "environment": {**launch_env(spec, None), **started_by("compose", spec), "HOME": "/tmp"},
        "volumes": [f"{p}:{p}:{mode}" for p, mode in mounts(spec, None, spec_file).items()],
        "labels": {"runner.job": spec.name},
        **lockdown.compose_keys(),
    }
    for request in gpu_request(spec):
        device: dict[str, Any] = {"driver": "nvidia", "capabilities": ["gpu"]}
        if "DeviceIDs" in request:
            device["device_ids"] = request["DeviceIDs"]
        else:
            device["count"] = "all" if request["Count"] == -1 else request["Count"]
        service["ulimits"] = {"memlock": -1, "stack": STACK}
        service["deploy"] = {"resources": {"reservations": {"devices": [device]}}}
    return service


def render_compose(spec: JobSpec, spec_file: PurePath, uid: int, gid: int) -> str:
    from ruamel.yaml import YAML
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString as Quoted

    service = compose_service(spec, spec_file, uid, gid)
    service["user"] = Quoted(service["user"])
    service["environment"] = {k: Quoted(v) for k, v in service["environment"].items()}
    service["volumes"] = [Quoted(v) for v in service["volumes"]]
    service["tmpfs"] = [Quoted(v) for v in service["tmpfs"]]
    yaml = YAML()
    yaml.default_flow_style = False
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096
    out = io.StringIO()
    out.write(f"# Rendered by `runner compose` for job '{spec.name}'. Each `up` is a new run under "
              f"{spec.output.dir}/{spec.name}/:\n#   docker compose up --exit-code-from {spec.name}\n")  # fmt: skip
    yaml.dump({"services": {spec.name: service}}, out)
    return out.getvalue()
