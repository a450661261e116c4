"""NCCL policy: consumer cards hang NCCL with peer-to-peer and InfiniBand on; turn them off there.

RTX 30xx/40xx/50xx cards have no NVLink/P2P support that NCCL can rely on, and several of them
in one box hang at the first collective unless NCCL_P2P_DISABLE=1 and NCCL_IB_DISABLE=1.
"""

from __future__ import annotations

import re

from runner.render.launch import procs_per_node
from runner.spec.job import JobSpec

_CONSUMER = re.compile(r"\b(GeForce|RTX\s*[2345]0\d0|TITAN)\b", re.I)


def is_consumer(gpu_name: str) -> bool:
    return bool(_CONSUMER.search(gpu_name)) and "RTX A" not in gpu_name and "RTX PRO" not in gpu_name


def nccl_env(spec: JobSpec, gpu_names: list[str]) -> dict[str, str]:
    """The NCCL variables for this job on a machine with these GPUs."""
    nproc = procs_per_node(spec)
    several = (
        spec.resources.nodes > 1
        or nproc == "gpu"
        and len(gpu_names) > 1
        or (isinstance(nproc, int) and nproc > 1)
    )
    auto = several and any(is_consumer(n) for n in gpu_names)
    env = {}
    for key, value in (("NCCL_P2P_DISABLE", spec.distributed.nccl.p2p_disable),
                       ("NCCL_IB_DISABLE", spec.distributed.nccl.ib_disable)):  # fmt: skip
        on = auto if value == "auto" else value
        if on:
            env[key] = "1"
        elif value is False:
            env[key] = "0"
    return env
