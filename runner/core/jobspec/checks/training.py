"""Combinations of the method, the training loop and the distributed setup that cannot run:
refused here, before the model is in memory, never dropped silently or failed at step one."""

from __future__ import annotations

import ipaddress
import re

from runner.core.jobspec.checks.context import Context, changed, unset
from runner.core.jobspec.job import PROMPT_LEARNING, JobSpec


def freeze_trains_something(spec: JobSpec, at: Context) -> None:
    method = spec.method
    if method.type == "freeze" and method.trainable_layers == 0 and not method.extra_modules:
        at.add(("method", "trainable_layers"),
               "is 0 and extra_modules is empty, so nothing would train; raise it or name modules")  # fmt: skip


def ia3_feedforward(spec: JobSpec, at: Context) -> None:
    method = spec.method
    if method.type == "ia3":
        missing = [f for f in method.feedforward if f not in method.target]
        if missing:
            at.add(("method", "feedforward"), f"{', '.join(missing)} must also be listed in method.target")


def packing_with_prompt_learning(spec: JobSpec, at: Context) -> None:
    method = spec.method.type
    if method in PROMPT_LEARNING and spec.data.packing:
        at.add(("data", "packing"), f"'{method}' prepends virtual tokens to every row, so packed samples would "
                                    "see each other; set packing: false for prompt-learning methods")  # fmt: skip


def precision(spec: JobSpec, at: Context) -> None:
    if spec.training.bf16 and spec.training.fp16:
        at.add(("training", "fp16"), "bf16 and fp16 are both true; keep one of them")


def micro_batch_tokens_fit(spec: JobSpec, at: Context) -> None:
    budget, cutoff = spec.training.micro_batch_tokens, spec.data.cutoff_len
    if budget is not None and budget < cutoff:
        at.add(("training", "micro_batch_tokens"),
               f"is {budget}, below data.cutoff_len ({cutoff}): a sample of full length could not fit in a "
               f"micro-batch; raise it to at least {cutoff}")  # fmt: skip


def micro_batch_tokens_alone(spec: JobSpec, at: Context) -> None:
    """Only one thing may size the micro-batches."""
    if spec.training.micro_batch_tokens is None:
        return
    loc = ("training", "micro_batch_tokens")
    if spec.training.train_sampling_strategy == "batch_rebalance":
        at.add(
            loc, "and train_sampling_strategy: batch_rebalance both size the micro-batches; keep one of them"
        )
    if spec.distributed.deepspeed is not None:
        at.add(loc, "does not combine with distributed.deepspeed, which counts micro-batches itself; remove "
                    "one of them")  # fmt: skip


def memory_cap(spec: JobSpec, at: Context) -> None:
    training = spec.training
    if training.memory_cap_gib is None:
        return
    for switch in ("gradient_checkpointing", "checkpoint_every_n_layers", "offload_activations"):
        if changed(training, switch):
            at.add(("training", switch), f"is chosen by memory_cap_gib; remove {switch} or memory_cap_gib")
    deepspeed = spec.distributed.deepspeed
    if deepspeed is not None and deepspeed.zero == 3:
        at.add(("training", "memory_cap_gib"), "cannot be planned under ZeRO-3, which partitions the weights; "
                                               "remove it and set gradient_checkpointing yourself")  # fmt: skip


def deepspeed(spec: JobSpec, at: Context) -> None:
    """Combinations DeepSpeed cannot run are refused here, never dropped silently."""
    ds, loc = spec.distributed.deepspeed, ("distributed", "deepspeed")
    if ds is None:
        return
    if ds.offload_params and ds.zero != 3:
        at.add(
            (*loc, "offload_params"),
            "parameter offload needs ZeRO stage 3; set zero: 3 or offload_params: false",
        )
    if ds.offload_optimizer and ds.zero == 0:
        at.add((*loc, "offload_optimizer"),
               "optimizer offload needs ZeRO stage 1, 2 or 3 (stage 0 keeps no optimizer partition to "
               "offload); raise zero or set offload_optimizer: false")  # fmt: skip
    if spec.resources.gpus == 0:
        for key in ("offload_optimizer", "offload_params"):
            if getattr(ds, key):
                at.add((*loc, key), "offload moves state from GPU to host memory; with resources.gpus: 0 "
                                    f"everything is in host memory already; set {key}: false")  # fmt: skip


def qlora(spec: JobSpec, at: Context) -> None:
    """qlora quantizes with bitsandbytes on CUDA; under ZeRO-3 only 4-bit weights stored in the
    compute dtype can be partitioned (train/model.py sets that storage), and never offloaded."""
    method = spec.method
    if method.type != "qlora":
        return
    if spec.resources.gpus == 0:
        at.add(("method", "type"), "qlora quantizes the base with bitsandbytes, which runs on CUDA GPUs, and "
                                   "resources.gpus is 0; use type: lora on CPU, or give the job GPUs")  # fmt: skip
    ds = spec.distributed.deepspeed
    if ds is None or ds.zero != 3:
        return  # ZeRO 0-2 partition optimizer state and gradients, never the quantized weights
    if method.bits != 4:
        at.add(("method", "bits"), "ZeRO-3 partitions the weights, and bitsandbytes' 8-bit weights cannot be "
                                   "partitioned (4-bit ones can, stored in the training dtype); set bits: 4, "
                                   "or distributed.deepspeed.zero: 2")  # fmt: skip
    if ds.offload_params:
        at.add(("distributed", "deepspeed", "offload_params"),
               "qlora under ZeRO-3 keeps the 4-bit weights on the GPUs: transformers and PEFT partition "
               "them across GPUs but cannot offload them to host memory, where bitsandbytes does not "
               "compute; set offload_params: false (offload_optimizer: true still moves the optimizer "
               "state out)")  # fmt: skip


def node_rank(spec: JobSpec, at: Context) -> None:
    rank, nodes = spec.distributed.node_rank, spec.resources.nodes
    if rank >= nodes:
        at.add(("distributed", "node_rank"),
               f"must be < resources.nodes ({nodes}) (got {rank}): ranks run 0 to {nodes - 1}, 0 on the node "
               "at master_addr")  # fmt: skip


def processes(spec: JobSpec, at: Context) -> None:
    """Every process trains on a GPU of its own: no more processes on a node than the GPUs it is
    given (the host's count, for gpus: all, is checked at submit). On CPU any count runs."""
    r = spec.resources
    if r.procs_per_node is None or r.gpus in (0, "all"):
        return
    devices = len(r.gpus) if isinstance(r.gpus, list) else r.gpus
    if r.procs_per_node > devices:
        at.add(("resources", "procs_per_node"),
               f"is {r.procs_per_node}, but resources.gpus gives each node {devices} GPU(s), and every "
               f"process needs a GPU of its own; set procs_per_node: {devices} (or leave it out: one per "
               "GPU), or give more GPUs")  # fmt: skip


_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?$")  # RFC 1123 host names


def rendezvous(spec: JobSpec, at: Context) -> None:
    """node 0's address: an IP or a host name; on several nodes one the others can reach, and, where
    runner starts the node itself (validate, submit), written in the spec: unset, torchrun would
    wait at 127.0.0.1, which no other machine reaches."""
    d, nodes, loc = spec.distributed, spec.resources.nodes, ("distributed", "master_addr")
    addr = d.master_addr
    if addr is not None and not unset(addr):
        ip = _ip(addr)
        if ip is None and not _HOST.match(addr):
            at.add(loc, f"is not an IP address or host name (got {addr!r}); write node 0's address alone, "
                        "e.g. 10.0.0.1 or node0.cluster (the port is master_port)")  # fmt: skip
        elif nodes > 1 and _local(addr, ip):
            at.add(loc, f"is {addr}, which no other machine reaches, and the job spans {nodes} nodes; set it "
                        "to node 0's address on the network the nodes share, e.g. 10.0.0.1")  # fmt: skip
    elif addr is None and nodes > 1 and at.launched_here:
        at.add(("resources", "nodes"),
               f"is {nodes}, and distributed.master_addr is not set: every node must reach node 0's "
               "rendezvous at an address other machines can reach (unset, torchrun would wait at "
               "127.0.0.1); set distributed.master_addr to node 0's IP or host name, e.g. 10.0.0.1. "
               "A scheduler sets it for each node (submit --executor slurm, render --target "
               "hosts|k8s|slurm): validate such a spec with --on-cluster")  # fmt: skip


def _local(addr: str, ip) -> bool:
    """An address that names this machine only, whichever machine reads it."""
    if ip is not None:
        return ip.is_loopback or ip.is_unspecified
    return addr.lower().rstrip(".") == "localhost"


def _ip(addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(addr.strip("[]"))
    except ValueError:
        return None


CHECKS = (
    freeze_trains_something, ia3_feedforward, packing_with_prompt_learning, precision,
    micro_batch_tokens_fit, micro_batch_tokens_alone, memory_cap, deepspeed, qlora, node_rank,
    processes, rendezvous,
)  # fmt: skip
