"""GPUs on this host (from nvidia-smi: the host side never imports torch) and the check that a
job asks for no more than there are."""

from __future__ import annotations

import shutil
import subprocess

from runner.core.errors import RunError
from runner.core.jobspec.job import JobSpec


def host_gpu_names() -> list[str]:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def require_gpus(spec: JobSpec, have: list[str], where: str) -> None:
    """Refuse, before anything is created, a job that wants GPUs `where` does not have."""
    wanted = spec.resources.gpus
    if wanted == 0:
        return
    if isinstance(wanted, list):
        absent = [i for i in wanted if i >= len(have)]
        if absent:
            ids = f"ids 0-{len(have) - 1}" if have else "set gpus: 0 to train on CPU"
            raise RunError(
                f"resources.gpus asks for device(s) {absent} but {where} has {len(have)} GPU(s) ({ids})"
            )
        return
    need = 1 if wanted == "all" else wanted
    if len(have) < need:
        raise RunError(
            f"resources.gpus asks for {wanted!r} but {where} has {len(have)} GPU(s); "
            "set gpus: 0 to train on CPU, or ask for fewer"
        )
    procs = spec.resources.procs_per_node
    if wanted == "all" and procs is not None and procs > len(have):
        # A count or a list was checked against procs_per_node with the spec; 'all' only here.
        raise RunError(
            f"resources.procs_per_node is {procs}, but gpus: all gives the job the {len(have)} GPU(s) {where} "
            f"has, and every process needs a GPU of its own; set procs_per_node: {len(have)} or leave it out"
        )


def visible_names(names: list[str], spec: JobSpec) -> list[str]:
    """The names of the GPUs the job's processes will see, of the host's `names`."""
    gpus = spec.resources.gpus
    if gpus == "all":
        return names
    if isinstance(gpus, list):
        return [names[i] for i in gpus if i < len(names)]
    return names[:gpus]
