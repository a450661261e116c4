"""Every LLaMA-Factory key that `runner convert` does not map to a runner key, with why.

Three kinds of reason, as the conversion report shows them:
- not needed: runner does the same without a setting (or the key only steers LLaMA-Factory's
  own bookkeeping), so the converted job trains as the original would;
- not supported: runner has no such feature; the job trains without it;
- different semantics: runner has a near setting that means something else, so nothing is
  carried over silently and the reason says what runner does instead.

Keys convert maps (model, method, data, training, preference, ppo, eval, deepspeed) live in
convert.py; a key in neither place is reported as not supported, by name.
"""

from __future__ import annotations

NOT_NEEDED = "not needed"
NOT_SUPPORTED = "not supported"
DIFFERENT = "different semantics"
KINDS = (NOT_NEEDED, NOT_SUPPORTED, DIFFERENT)

_TEXT_ONLY = "runner trains text-only models; image and video inputs are not read"
_OPTIMIZER = "runner trains with the optimizers of transformers' TrainingArguments (training.optim); this one is not among them"
_PARALLEL = "runner parallelizes with DDP and DeepSpeed ZeRO; there is no tensor, pipeline, expert or sequence parallelism"

KEYS: dict[str, tuple[str, str]] = {
    # LLaMA-Factory's bookkeeping, which runner does by itself
    "do_train": (NOT_NEEDED, "runner always trains (stage eval evaluates instead)"),
    "overwrite_cache": (NOT_NEEDED, "runner keys its tokenized-data cache by a hash of the inputs; a change re-tokenizes"),
    "overwrite_output_dir": (NOT_NEEDED, "every run gets a new directory (output.dir/NAME/RUN-ID); nothing is overwritten"),
    "plot_loss": (NOT_NEEDED, "runner always plots the loss (loss.png in the run directory)"),
    "report_to": (NOT_NEEDED, "runner logs metrics into the run directory (metrics.jsonl, and TensorBoard files with "
                  "training.report_to: tensorboard) and reaches no tracking service offline"),
    "logging_dir": (NOT_NEEDED, "logs are written inside the run directory"),
    "run_name": (NOT_NEEDED, "the run is named by `name` and a run id"),
    "resume_from_checkpoint": (NOT_NEEDED, "continue a run with `runner resume RUN-ID`"),
    "save_strategy": (NOT_NEEDED, "runner saves every training.save_steps steps"),
    "tokenized_path": (NOT_NEEDED, "runner caches tokenized data under OUTPUT/.cache itself, keyed by its inputs"),
    "predict_with_generate": (NOT_NEEDED, "stage eval always generates its answers"),
    "gradient_checkpointing_kwargs": (NOT_NEEDED, "runner picks the checkpointing variant itself"),
    "use_reentrant_gc": (NOT_NEEDED, "runner picks the checkpointing variant itself"),
    "export_hf_on_finish": (NOT_NEEDED, "runner saves the adapter or model in Hugging Face format at the end"),
    "do_sample": (NOT_NEEDED, "mapped with the generation settings of stage eval"),
    "infer_dtype": (NOT_NEEDED, "runner loads in the training precision"),
    "dataloader_pin_memory": (NOT_NEEDED, "runner sets it from the device"),
    # training-loop settings runner does not have
    "ddp_timeout": (NOT_NEEDED, "LLaMA-Factory raises it so that the other ranks outwait rank 0's tokenizing; runner's ranks each tokenize (or read the cache), and torch's 30-minute timeout holds for the collectives"),
    "save_only_model": (DIFFERENT, "runner's checkpoints always hold the optimizer state, which `runner resume` reads"),
    "eval_strategy": (DIFFERENT, "runner evaluates every training.eval_steps steps when data.val_size is set"),
    "evaluation_strategy": (DIFFERENT, "runner evaluates every training.eval_steps steps when data.val_size is set"),
    "adam_beta1": (NOT_SUPPORTED, "runner keeps AdamW's betas (0.9, 0.999)"),
    "adam_beta2": (NOT_SUPPORTED, "runner keeps AdamW's betas (0.9, 0.999)"),
    "pure_bf16": (DIFFERENT, "runner keeps trained weights in fp32 under bf16 autocast (training.bf16); it never trains pure bf16 weights"),
    "fp8": (NOT_SUPPORTED, "runner trains in bf16, fp16 or fp32"),
    "fp8_backend": (NOT_SUPPORTED, "runner trains in bf16, fp16 or fp32"),
    "fp8_enable_fsdp_float8_all_gather": (NOT_SUPPORTED, "runner trains in bf16, fp16 or fp32"),
    "mixed_precision": (NOT_SUPPORTED, "runner's precision is training.bf16 / training.fp16"),
    "use_v1_kernels": (NOT_SUPPORTED, "runner's fused kernels are Liger's (training.use_liger_kernel)"),
    "use_packed_sequences": (NOT_SUPPORTED, "runner packs with data.packing"),
    "upcast_layernorm": (NOT_SUPPORTED, "runner keeps norms in the training precision (qlora: method.upcast_unquantized)"),
    "upcast_lmhead_output": (NOT_SUPPORTED, "runner computes the loss from the logits in the training precision"),
    "shift_attn": (NOT_SUPPORTED, "runner has no shifted sparse attention (LongLoRA)"),
    "rope_scaling": (NOT_SUPPORTED, "runner trains within the model's own positions (data.cutoff_len is checked against them)"),
    "use_unsloth": (NOT_SUPPORTED, "runner's fused kernels are Liger's (training.use_liger_kernel)"),
    # methods and losses runner does not have
    "use_llama_pro": (NOT_SUPPORTED, "runner's freeze trains the last layers; LLaMA Pro's expanded blocks are not told apart"),
    "mixture_of_depths": (NOT_SUPPORTED, "runner has no mixture-of-depths conversion"),
    "use_dft_loss": (NOT_SUPPORTED, "runner trains with cross-entropy (no DFT loss)"),
    "use_asft_loss": (NOT_SUPPORTED, "runner trains with cross-entropy (no ASFT loss)"),
    "asft_alpha": (NOT_SUPPORTED, "runner trains with cross-entropy (no ASFT loss)"),
    "use_eaft_loss": (NOT_SUPPORTED, "runner trains with cross-entropy (no EAFT loss)"),
    "train_on_prompt": (NOT_SUPPORTED, "runner trains the answers only"),
    "mask_history": (NOT_SUPPORTED, "runner trains every answer of a conversation"),
    "create_new_adapter": (NOT_SUPPORTED, "runner continues model.adapter itself; merge it first for a new one"),
    "pref_ftx": (NOT_SUPPORTED, "runner's dpo adds no supervised loss term"),
    "pref_bco_weight": (NOT_SUPPORTED, "runner's dpo adds no BCO term"),
    "dpo_label_smoothing": (NOT_SUPPORTED, "runner's dpo uses no label smoothing"),
    "ld_alpha": (NOT_SUPPORTED, "runner's dpo weighs every answer token alike (no LD-DPO)"),
    "simpo_gamma": (DIFFERENT, "runner's simpo keeps TRL's target margin, 0.5, LLaMA-Factory's default too"),
    "ref_model": (DIFFERENT, "runner's reference is the model itself with the adapter off, or a frozen copy (preference.reference)"),
    "ref_model_adapters": (DIFFERENT, "runner's reference is the model itself with the adapter off, or a frozen copy (preference.reference)"),
    "ref_model_quantization_bit": (NOT_SUPPORTED, "runner's reference is never quantized apart from the model"),
    "reward_model_adapters": (NOT_SUPPORTED, "ppo.reward_model names one reward model or rm run"),
    "reward_model_quantization_bit": (NOT_SUPPORTED, "runner's reward model loads in the training precision"),
    "ppo_buffer_size": (NOT_SUPPORTED, "runner's ppo (TRL's PPO trainer) optimizes each batch as it is generated"),
    "ppo_score_norm": (NOT_SUPPORTED, "runner's ppo does not normalize the scores"),
    "ppo_whiten_rewards": (NOT_SUPPORTED, "runner's ppo does not whiten the rewards"),
    "ppo_target": (DIFFERENT, "runner's ppo keeps a fixed KL weight (ppo.kl_coef), where LLaMA-Factory adapts it toward this target KL"),
    # optimizers
    "use_galore": (NOT_SUPPORTED, _OPTIMIZER),
    "use_badam": (NOT_SUPPORTED, _OPTIMIZER),
    "use_apollo": (NOT_SUPPORTED, _OPTIMIZER),
    "use_adam_mini": (NOT_SUPPORTED, _OPTIMIZER),
    "use_muon": (NOT_SUPPORTED, _OPTIMIZER),
    # parallelism and launchers
    "fsdp": (NOT_SUPPORTED, "runner shards with DeepSpeed ZeRO (distributed.deepspeed), not FSDP"),
    "fsdp_transformer_layer_cls_to_wrap": (NOT_SUPPORTED, "runner shards with DeepSpeed ZeRO, not FSDP"),
    "tensor_model_parallel_size": (NOT_SUPPORTED, _PARALLEL),
    "pipeline_model_parallel_size": (NOT_SUPPORTED, _PARALLEL),
    "expert_model_parallel_size": (NOT_SUPPORTED, _PARALLEL),
    "context_parallel_size": (NOT_SUPPORTED, _PARALLEL),
    "sequence_parallel": (NOT_SUPPORTED, _PARALLEL),
    "use_distributed_optimizer": (NOT_SUPPORTED, "Megatron's; runner shards optimizer state with ZeRO 1-3"),
    "overlap_grad_reduce": (NOT_SUPPORTED, "Megatron's; DeepSpeed overlaps communication itself"),
    "overlap_param_gather": (NOT_SUPPORTED, "Megatron's; DeepSpeed overlaps communication itself"),
    "bias_activation_fusion": (NOT_SUPPORTED, "Megatron's fused kernels are not in runner"),
    "apply_rope_fusion": (NOT_SUPPORTED, "Megatron's fused kernels are not in runner"),
    "moe_grouped_gemm": (NOT_SUPPORTED, "Megatron's fused kernels are not in runner"),
    "moe_token_dispatcher_type": (NOT_SUPPORTED, "Megatron's MoE dispatch is not in runner"),
    "recompute_granularity": (NOT_SUPPORTED, "runner checkpoints whole layers (training.gradient_checkpointing)"),
    "use_kt": (NOT_SUPPORTED, "runner has no KTransformers offload of MoE experts"),
    "ray_num_workers": (NOT_SUPPORTED, "runner launches with torchrun (resources.nodes, procs_per_node), not Ray"),
    "ray_run_name": (NOT_SUPPORTED, "runner launches with torchrun, not Ray"),
    "ray_storage_path": (NOT_SUPPORTED, "runner launches with torchrun, not Ray"),
    "resources_per_worker": (NOT_SUPPORTED, "runner launches with torchrun, not Ray"),
    "placement_strategy": (NOT_SUPPORTED, "runner launches with torchrun, not Ray"),
    # data
    "streaming": (NOT_SUPPORTED, "runner reads its datasets whole (and checks every record first)"),
    "buffer_size": (NOT_SUPPORTED, "runner reads its datasets whole"),
    "tool_format": (NOT_SUPPORTED, "runner's templates render no tool calls"),
    "enable_thinking": (NOT_SUPPORTED, "runner's templates have no thinking switch"),
    "eval_dataset": (DIFFERENT, "runner holds out data.val_size of the training data instead"),
    "eval_on_each_dataset": (NOT_SUPPORTED, "runner evaluates the held-out split as one"),
    "image_max_pixels": (NOT_SUPPORTED, _TEXT_ONLY),
    "image_min_pixels": (NOT_SUPPORTED, _TEXT_ONLY),
    "video_max_pixels": (NOT_SUPPORTED, _TEXT_ONLY),
    "video_min_pixels": (NOT_SUPPORTED, _TEXT_ONLY),
    "video_fps": (NOT_SUPPORTED, _TEXT_ONLY),
    "video_maxlen": (NOT_SUPPORTED, _TEXT_ONLY),
    "freeze_vision_tower": (NOT_SUPPORTED, _TEXT_ONLY),
    "freeze_multi_modal_projector": (NOT_SUPPORTED, _TEXT_ONLY),
    "freeze_language_model": (NOT_SUPPORTED, _TEXT_ONLY),
}  # fmt: skip

# Families of keys, by prefix.
PREFIXES: dict[str, tuple[str, str]] = {
    "galore_": KEYS["use_galore"],
    "badam_": KEYS["use_badam"],
    "apollo_": KEYS["use_apollo"],
    "kt_": KEYS["use_kt"],
    "pissa_": (NOT_SUPPORTED, "runner initializes LoRA as PEFT does by default (no PiSSA)"),
    "oft_": (NOT_SUPPORTED, "runner has no OFT; the adapter is LoRA"),
}


# Values that ask for what runner does anyway: not needed, whatever the key's reason otherwise.
SAME: dict[str, tuple[object, str]] = {
    "save_only_model": (False, "false: runner's checkpoints hold the optimizer state too"),
    "do_train": (True, "runner always trains"),
    "report_to": ("none", "none: runner reports to no tracking service"),
    "use_reentrant_gc": (True, "runner picks the checkpointing variant itself"),
    "pure_bf16": (False, "false: runner keeps trained weights in fp32"),
    "streaming": (False, "false: runner reads its datasets whole"),
    "train_on_prompt": (False, "false: runner trains the answers only"),
    "mask_history": (False, "false: runner trains every answer"),
    "enable_thinking": (True, "runner's templates leave thinking to the data"),
    "use_kt": (False, "false"),
    "fp8": (False, "false"),
    "dpo_label_smoothing": (0.0, "0: none, as runner's dpo"),
    "pref_ftx": (0.0, "0: no supervised term, as runner's dpo"),
    "simpo_gamma": (0.5, "0.5, as runner's simpo"),
    "freeze_vision_tower": (True, "runner trains no vision tower"),
    "freeze_multi_modal_projector": (True, "runner trains no projector"),
    "freeze_language_model": (False, "false: the language model trains"),
}


def reason(key: str, value: object = None) -> tuple[str, str]:
    """(kind, reason) of a key convert does not map; an unknown key is not supported, by name."""
    if key in SAME and _same(value, SAME[key][0]):
        return NOT_NEEDED, SAME[key][1]
    if key in KEYS:
        return KEYS[key]
    for prefix, found in PREFIXES.items():
        if key.startswith(prefix):
            return found
    return NOT_SUPPORTED, "runner has no such setting"


def _same(value: object, runner_does: object) -> bool:
    """Equal, with a number never taken for a switch (0 is not false here)."""
    if isinstance(value, bool) or isinstance(runner_does, bool):
        return isinstance(value, bool) and value is runner_does
    return value == runner_does
