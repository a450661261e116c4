"""Combinations of the method, the training loop and the distributed setup that cannot run:
refused here, before the model is in memory, never dropped silently or failed at step one."""

from __future__ import annotations

from runner.core.jobspec.checks.context import Context, changed
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


def node_rank(spec: JobSpec, at: Context) -> None:
    rank, nodes = spec.distributed.node_rank, spec.resources.nodes
    if rank >= nodes:
        at.add(("distributed", "node_rank"), f"must be < resources.nodes ({nodes}) (got {rank})")


CHECKS = (
    freeze_trains_something, ia3_feedforward, packing_with_prompt_learning, precision,
    micro_batch_tokens_fit, micro_batch_tokens_alone, memory_cap, deepspeed, node_rank,
)  # fmt: skip
