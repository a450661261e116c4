"""NCCL policy: consumer cards hang NCCL with peer-to-peer and InfiniBand on; turn them off there.

RTX 30xx/40xx/50xx cards have no NVLink/P2P support that NCCL can rely on, and several of them
in one box hang at the first collective unless NCCL_P2P_DISABLE=1 and NCCL_IB_DISABLE=1.
"""

from __future__ import annotations

import re

from runner.core.jobspec.job import JobSpec

_CONSUMER = re.compile(r"\b(GeForce|RTX\s*[2345]0\d0|TITAN)\b", re.I)
SWITCHES = (("NCCL_P2P_DISABLE", "p2p_disable"), ("NCCL_IB_DISABLE", "ib_disable"))


def is_consumer(gpu_name: str) -> bool:
    return bool(_CONSUMER.search(gpu_name)) and "RTX A" not in gpu_name and "RTX PRO" not in gpu_name


def _several(spec: JobSpec, gpu_names: list[str]) -> bool:
    """Whether NCCL will run collectives: several processes on GPUs, or several nodes."""
    r = spec.resources
    if r.nodes > 1:
        return True
    if r.procs_per_node:
        return r.procs_per_node > 1
    if r.gpus == "all":
        return len(gpu_names) > 1
    return (len(r.gpus) if isinstance(r.gpus, list) else r.gpus) > 1


def nccl_policy(spec: JobSpec, gpu_names: list[str] | None) -> list[tuple[str, str, str]]:
    """(variable, value, why) for this job on GPUs with these names. `gpu_names` None: not known
    here (a compose file); `auto` settings are then left to the job's own process."""
    out = []
    auto_on = None
    if gpu_names is not None:
        consumer = sorted({n for n in gpu_names if is_consumer(n)})
        auto_on = bool(consumer) and _several(spec, gpu_names)
        reason = (
            f"auto: several processes on consumer cards ({', '.join(consumer)})"
            if auto_on
            else "auto: " + ("no consumer cards" if not consumer else "a single process")
        )
    for key, field in SWITCHES:
        value = getattr(spec.distributed.nccl, field)
        if value != "auto":
            out.append((key, "1" if value else "0", f"distributed.nccl.{field}: {str(value).lower()}"))
        elif auto_on:
            out.append((key, "1", reason))
    return out


def nccl_env(spec: JobSpec, gpu_names: list[str]) -> dict[str, str]:
    """The NCCL variables for this job on a machine with these GPUs."""
    return {key: value for key, value, _ in nccl_policy(spec, gpu_names)}


def explain(spec: JobSpec, gpu_names: list[str] | None) -> list[str]:
    """What `runner plan` and `runner compose` say about NCCL."""
    lines = [f"{key}={value}  # {why}" for key, value, why in nccl_policy(spec, gpu_names)]
    auto = [f for _, f in SWITCHES if getattr(spec.distributed.nccl, f) == "auto"]
    if gpu_names is None and auto:
        lines.append(f"# distributed.nccl {', '.join(auto)}: auto; the GPUs are not known here, so the "
                     "job's process decides from the GPUs it finds")  # fmt: skip
    elif not lines:
        lines.append(
            f"# no NCCL variables: {'no GPUs here' if not gpu_names else 'auto found nothing to turn off'}"
        )
    return lines
