"""render_deepspeed(job) -> dict: a DeepSpeed config from the spec's ZeRO settings.

Batch sizes, accumulation, clipping and precision are "auto": transformers fills them from
the same TrainingArguments the job uses, so the two can never disagree.
"""

from __future__ import annotations

from typing import Any

from runner.core.jobspec.job import JobSpec


def render_deepspeed(spec: JobSpec) -> dict[str, Any] | None:
    ds = spec.distributed.deepspeed
    if ds is None:
        return None
    zero: dict[str, Any] = {"stage": ds.zero}
    if ds.zero >= 1:
        zero.update({"allgather_partitions": True, "allgather_bucket_size": 5e8, "reduce_scatter": True,
                     "reduce_bucket_size": "auto", "overlap_comm": True, "contiguous_gradients": True})  # fmt: skip
    if ds.zero == 3:
        for key in ("allgather_partitions", "allgather_bucket_size", "reduce_scatter"):
            zero.pop(key)
        zero.update({"sub_group_size": 1e9, "stage3_prefetch_bucket_size": "auto",
                     "stage3_param_persistence_threshold": "auto", "stage3_max_live_parameters": 1e9,
                     "stage3_max_reuse_distance": 1e9, "stage3_gather_16bit_weights_on_model_save": True})  # fmt: skip
    if ds.offload_optimizer and ds.zero >= 1:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if ds.offload_params and ds.zero == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": "auto"},
        "fp16": {
            "enabled": "auto",
            "loss_scale": 0,
            "loss_scale_window": 1000,
            "initial_scale_power": 16,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },  # fmt: skip
        "zero_optimization": zero,
        "steps_per_print": 1e9,  # the trainer logs; DeepSpeed's own prints only add noise
        "wall_clock_breakdown": False,
    }
