"""GPUs on this host (from nvidia-smi: the host side never imports torch) and the check that a
job asks for no more than there are."""

from __future__ import annotations

import shutil
import subprocess

from runner.errors import RunError
from runner.spec.job import JobSpec


def host_gpu_names() -> list[str]:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def require_gpus(spec: JobSpec, have: int, where: str) -> None:
    """Refuse, before anything is created, a job that wants more GPUs than `where` has."""
    wanted = spec.resources.gpus
    if wanted == 0:
        return
    need = len(wanted) if isinstance(wanted, list) else (1 if wanted == "all" else wanted)
    if have < need:
        raise RunError(
            f"resources.gpus asks for {wanted!r} but {where} has {have} GPU(s); "
            "set gpus: 0 to train on CPU, or ask for fewer"
        )
