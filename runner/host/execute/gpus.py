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


def visible_names(names: list[str], spec: JobSpec) -> list[str]:
    """The names of the GPUs the job's processes will see, of the host's `names`."""
    gpus = spec.resources.gpus
    if gpus == "all":
        return names
    if isinstance(gpus, list):
        return [names[i] for i in gpus if i < len(names)]
    return names[:gpus]
