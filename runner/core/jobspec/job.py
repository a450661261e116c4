"""The job spec: one YAML file describes one fine-tuning job, end to end.

Every field's help is written once, in `Field(description=...)`; `runner explain` and the
commented example specs reuse it. Keys under `training` are named as in transformers'
`TrainingArguments` so a user's existing flags carry over unchanged.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from runner.core import stages

StageName = Literal[stages.NAMES]  # type: ignore[valid-type]
DATA_FORMATS = ("alpaca", "sharegpt", "text", "classification", "tagging")
# Built-in chat templates (core/data/chat_formats.py), LLaMA-Factory's names; "auto" means the
# tokenizer's own chat_template.
TEMPLATES = (
    "auto", "default", "alpaca", "vicuna", "chatml", "qwen", "qwen3_nothink", "qwen3", "yi", "intern2", "llama2",
    "llama3", "mistral", "chatglm3", "glm4", "baichuan2", "deepseek", "deepseek3", "gemma", "phi",
)  # fmt: skip
_IM = ("<|im_start|>", "<|im_end|>")
# The strings each built-in template needs as single tokens of the model's vocabulary.
CONTROL_TOKENS: dict[str, tuple[str, ...]] = {
    "chatml": _IM, "qwen": _IM, "qwen3_nothink": _IM, "qwen3": _IM, "yi": _IM, "intern2": _IM,
    "llama3": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    "chatglm3": ("[gMASK]", "sop", "<|system|>", "<|user|>", "<|assistant|>"),
    "glm4": ("[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>"),
    "baichuan2": ("<reserved_106>", "<reserved_107>"),
    "deepseek3": ("<｜User｜>", "<｜Assistant｜>"),
    "gemma": ("<start_of_turn>", "<end_of_turn>"),
    "phi": ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
}  # fmt: skip
SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
    "constant_with_warmup", "inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay",
)  # fmt: skip


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _all_linear(value: Any) -> Any:
    """A single name as a list; LLaMA-Factory's 'all' as PEFT's 'all-linear'."""
    value = _as_list(value)
    return ["all-linear" if t == "all" else t for t in value] if isinstance(value, list) else value


class ModelSpec(_Spec):
    path: str = Field(
        description="Local directory of a Hugging Face model (config.json, weights, tokenizer). "
        "Nothing is ever downloaded."
    )
    template: str = Field(
        "auto",
        description="Chat template: 'auto' uses the tokenizer's own chat_template; otherwise one of "
        + ", ".join(TEMPLATES[1:])
        + ".",
    )
    default_system: str | None = Field(
        None,
        description="System prompt of every conversation that has none (LLaMA-Factory's "
        "default_system). Unset: the template's own (qwen and alpaca have one); '' for none.",
    )
    add_special_tokens: list[str] = Field(
        default_factory=list,
        description="Tokens to add to the vocabulary as special tokens, such as a template's control "
        "tokens the tokenizer lacks; the embeddings grow to match (LoRA then trains the embeddings "
        "and the output head in full).",
    )
    adapter: str | None = Field(
        None,
        description="PEFT adapter to start from: its directory, or an earlier run (its run "
        "directory or run id, as `runner ls` lists it) whose adapter/ is taken, e.g. sft before dpo or rm.",
    )
    trust_remote_code: bool = Field(
        False, description="Run Python code shipped inside the model directory (ChatGLM3 needs it)."
    )
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2", "flex_attention"] = Field(
        "auto",
        description="Attention kernel; auto: on a GPU flash_attention_2 where flash-attn is installed, "
        "else flex_attention for packed rows and sdpa for padded ones; sdpa on CPU.",
    )

    @field_validator("add_special_tokens", mode="before")
    @classmethod
    def _comma_separated(cls, v: Any) -> Any:  # LLaMA-Factory writes "<a>,<b>"
        return [t.strip() for t in v.split(",") if t.strip()] if isinstance(v, str) else v


# --- methods: a discriminated union on `type`, each with only its own fields ---------------


class FullMethod(_Spec):
    type: Literal["full"] = Field(description="Train every weight of the model.")


class FreezeMethod(_Spec):
    type: Literal["freeze"] = Field(
        description="Train only the last layers or named modules; freeze the rest."
    )
    trainable_layers: int = Field(
        2, ge=0, description="How many of the last decoder layers train (0: only extra_modules)."
    )
    extra_modules: list[str] = Field(
        default_factory=list,
        description="Module names (or name suffixes) to train as well, e.g. [embed_tokens, lm_head, mlp].",
    )

    _wrap = field_validator("extra_modules", mode="before")(_as_list)


class LoraMethod(_Spec):
    type: Literal["lora"] = Field(description="Low-rank adapters (PEFT LoRA).")
    r: int = Field(8, ge=1, description="Rank of the adapter matrices.")
    alpha: float | None = Field(None, gt=0, description="Scaling numerator; default 2 x r.")
    dropout: float = Field(
        0.0, ge=0, lt=1, description="Dropout on the adapter input; 0 spares a copy of every adapted input."
    )
    target: Annotated[list[str], Field(min_length=1)] = Field(
        default_factory=lambda: ["all-linear"],
        description="Modules to adapt: 'all-linear' (or LLaMA-Factory's 'all') or names such as [q_proj, v_proj].",
    )
    rslora: bool = Field(False, description="Rank-stabilised scaling alpha/sqrt(r).")
    dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA).")
    loraplus_lr_ratio: float | None = Field(
        None, gt=0, description="LoRA+: learning rate of B = ratio x learning rate of A."
    )
    fused: bool = Field(
        True, description="Add the scaled adapter update to the base output in one matmul (addmm) "
        "instead of PEFT's three passes over the output. Plain LoRA layers only: DoRA, dropout "
        "and quantized layers keep PEFT's forward.",
    )  # fmt: skip
    upcast_adapter_inputs: bool = Field(
        False, description="Copy each adapted layer's input to fp32 before the adapter, as PEFT does "
        "by default. Under mixed precision autocast casts it back at once: the same result, and "
        "memory kept for the backward pass (14% of a Llama-3-8B-wide layer's). DoRA always copies.",
    )  # fmt: skip
    modules_to_save: list[str] = Field(
        default_factory=list, description="Modules trained in full beside the adapter."
    )

    _wrap = field_validator("modules_to_save", mode="before")(_as_list)

    _target = field_validator("target", mode="before")(_all_linear)


class QLoraMethod(LoraMethod):
    type: Literal["qlora"] = Field(description="LoRA on a 4- or 8-bit quantized base (CUDA only).")
    bits: Literal[4, 8] = Field(4, description="Quantization width of the frozen base.")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type.")
    double_quant: bool = Field(True, description="Quantize the quantization constants too.")
    upcast_unquantized: bool | None = Field(
        None,
        description="Cast embeddings, output head and norms to fp32, as PEFT's recipe does (about 4 GiB "
        "more on an 8B Llama-3). Unset: only for fp16 training; with bf16 they stay in bf16.",
    )


class AdaLoraMethod(_Spec):
    type: Literal["adalora"] = Field(
        description="AdaLoRA (PEFT): low-rank adapters in SVD form whose rank budget is reallocated while "
        "training, from init_r per matrix down to target_r on average, to the matrices that matter most. "
        "The schedule's length (PEFT's total_step) is the run's optimizer steps: training.max_steps, or "
        "what the epochs make."
    )
    init_r: int = Field(12, ge=1, description="Rank each adapted matrix starts with.")
    target_r: int = Field(
        8, ge=1, description="Average rank per matrix once the budget schedule ends; below init_r."
    )
    tinit: int = Field(0, ge=0, description="Steps at the full budget (init_r) before ranks are pruned.")
    tfinal: int = Field(
        0, ge=0, description="Last steps, trained at the final budget with the ranks held fixed."
    )
    deltaT: int = Field(1, ge=1, description="Steps between two reallocations of the budget.")
    beta1: float = Field(0.85, gt=0, lt=1, description="Smoothing (EMA) of each weight's sensitivity.")
    beta2: float = Field(0.85, gt=0, lt=1, description="Smoothing (EMA) of its uncertainty.")
    orth_reg_weight: float | None = Field(
        None, ge=0, description="Weight of the penalty keeping the singular vectors orthogonal, added to the "
        "loss the model computes. Unset: PEFT's 0.5 where the model computes the training loss (pt, sft, "
        "cls, ner); 0 for rm, dpo and kto, whose trainers compute the loss outside the model, where it "
        "cannot be added.",
    )  # fmt: skip
    alpha: float | None = Field(None, gt=0, description="Scaling numerator; default 2 x init_r.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter input.")
    target: Annotated[list[str], Field(min_length=1)] = Field(
        default_factory=lambda: ["all-linear"],
        description="Modules to adapt: 'all-linear' (or 'all') or names such as [query, value].",
    )
    modules_to_save: list[str] = Field(
        default_factory=list, description="Modules trained in full beside the adapter (a classifier's head "
        "always is).",
    )  # fmt: skip

    _wrap = field_validator("modules_to_save", mode="before")(_as_list)
    _target = field_validator("target", mode="before")(_all_linear)


class PrefixMethod(_Spec):
    type: Literal["prefix"] = Field(description="Prefix tuning; with projection: true it is P-Tuning v2.")
    num_virtual_tokens: int = Field(20, ge=1, description="Length of the trained prefix.")
    projection: bool = Field(False, description="Reparametrize the prefix with an MLP (P-Tuning v2).")
    encoder_hidden_size: int = Field(512, ge=1, description="Hidden size of that MLP.")


class PtuningMethod(_Spec):
    type: Literal["ptuning"] = Field(description="P-Tuning: virtual tokens from a prompt encoder.")
    num_virtual_tokens: int = Field(20, ge=1, description="How many virtual tokens.")
    encoder_type: Literal["MLP", "LSTM"] = Field("MLP", description="The prompt encoder.")
    encoder_hidden_size: int = Field(128, ge=1, description="Hidden size of the prompt encoder.")


class PromptMethod(_Spec):
    type: Literal["prompt"] = Field(description="Prompt tuning: trained soft prompt embeddings.")
    num_virtual_tokens: int = Field(20, ge=1, description="Length of the soft prompt.")
    init_text: str | None = Field(None, description="Initialize the soft prompt from this text.")


class IA3Method(_Spec):
    type: Literal["ia3"] = Field(description="IA3: learned rescaling vectors.")
    target: list[str] = Field(
        default_factory=list,
        description="Modules to rescale; empty: PEFT's choice for the architecture (Llama: k_proj, v_proj, down_proj).",
    )
    feedforward: list[str] = Field(
        default_factory=list, description="Which of `target` are feed-forward (scaled on input)."
    )

    _wrap = field_validator("target", "feedforward", mode="before")(_as_list)


Method = Annotated[
    FullMethod | FreezeMethod | LoraMethod | QLoraMethod | PrefixMethod | PtuningMethod | PromptMethod | IA3Method
    | AdaLoraMethod,
    Field(discriminator="type"),
]  # fmt: skip
METHODS = ("full", "freeze", "lora", "qlora", "prefix", "ptuning", "prompt", "ia3", "adalora")
# Methods that change the model's own weights (a run saves model/); the others train an adapter.
WHOLE_MODEL_METHODS = ("full", "freeze")
ADAPTER_METHODS = tuple(m for m in METHODS if m not in WHOLE_MODEL_METHODS)
PROMPT_LEARNING = ("prefix", "ptuning", "prompt")


# --- data ---------------------------------------------------------------------------------


# The fields of each format, which `columns` maps to a file's columns. chosen, rejected and
# kto_tag are the preference fields; which of them a stage reads is its record in core/stages.py.
FORMAT_FIELDS = {
    "alpaca": ("instruction", "input", "output", "system", "history", "chosen", "rejected", "kto_tag"),
    "sharegpt": ("conversations", "system", "chosen", "rejected", "kto_tag"),
    "text": ("text",),
    # Classification (stages cls and ner, core/data/labels.py): a label (or a list of them) per text or
    # text pair; a tag per word.
    "classification": ("text", "text_pair", "label"),
    "tagging": ("tokens", "tags"),
}
# LLaMA-Factory's dataset_info.json names for the same fields, taken in `columns` as synonyms.
LLAMAFACTORY_COLUMNS = {
    "alpaca": {"prompt": "instruction", "query": "input", "response": "output"},
    "sharegpt": {"messages": "conversations"},
}
SHAREGPT_TAGS = ("role_tag", "content_tag", "user_tag", "assistant_tag", "system_tag")


class DatasetSpec(_Spec):
    name: str | None = Field(
        None, description="An entry of data.dataset_dir/dataset_info.json (LLaMA-Factory's format)."
    )
    path: str | None = Field(
        None,
        description="A json/jsonl/csv/tsv/parquet file, a .txt corpus (format text: one document per "
        "line), or a directory of them (or give name).",
    )
    format: Literal[DATA_FORMATS] = Field(  # type: ignore[valid-type]
        "alpaca", description="alpaca (instruction/input/output), sharegpt (conversations), text; for "
        "classification: classification (text, text_pair, label), tagging (tokens, tags), the only format "
        "of stages cls and ner and their default.",
    )  # fmt: skip
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Map the format's fields to your file's columns, e.g. {instruction: 问题}; '' leaves "
        "an optional field unread (a dataset_info.json entry without a system column reads none).",
    )
    tags: dict[str, str] = Field(
        default_factory=dict,
        description="sharegpt keys and role names, e.g. {role_tag: from, content_tag: value, "
        "user_tag: human, assistant_tag: gpt, system_tag: system}.",
    )
    max_samples: int | None = Field(None, ge=1, description="Use at most this many records.")
    num_samples: int | None = Field(
        None, ge=1, description="LLaMA-Factory's num_samples: this many records drawn at random "
        "(seeded by training.seed); more than the dataset holds takes every record once and draws "
        "the rest again. A registry entry's num_samples becomes this.",
    )  # fmt: skip
    encoding: str = Field(
        "utf-8",
        description="Text encoding of the file(s), e.g. gbk for a CSV saved by Excel on Chinese "
        "Windows; a UTF-8 byte order mark is accepted.",
    )

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, v: str) -> str:
        import codecs

        try:
            codecs.lookup(v)
        except LookupError:
            raise ValueError(f"unknown encoding {v!r}; e.g. utf-8, gbk, gb18030, big5, utf-16") from None
        return v

    @field_validator("columns")
    @classmethod
    def _columns(cls, v: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        fmt = info.data.get("format")
        fields = FORMAT_FIELDS.get(fmt) if isinstance(fmt, str) else None
        synonyms = LLAMAFACTORY_COLUMNS.get(fmt, {}) if isinstance(fmt, str) else {}
        v = {synonyms.get(k, k) if synonyms.get(k, k) not in v else k: c for k, c in v.items()}
        unknown = [k for k in v if fields and k not in fields]
        if unknown:
            raise ValueError(
                f"unknown field {', '.join(unknown)} for format {fmt}; the keys are the format's fields "
                f"({', '.join(fields)}), the values your file's columns, e.g. {{{fields[0]}: 问题}}"
            )
        return v

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(v) - set(SHAREGPT_TAGS))
        if unknown:
            raise ValueError(f"unknown tag {', '.join(unknown)}; valid tags: {', '.join(SHAREGPT_TAGS)}")
        return v

    @model_validator(mode="after")
    def _source(self) -> DatasetSpec:
        if not self.path and not self.name:
            raise ValueError("give the data file as path: FILE, or a registry entry as name: ENTRY")
        return self


MIXES = ("concat", "interleave_under", "interleave_over")


class DataSpec(_Spec):
    datasets: Annotated[list[DatasetSpec], Field(min_length=1)] = Field(
        description="One or more datasets, mixed as data.mix says."
    )
    dataset_dir: str | None = Field(
        None, description="Directory holding dataset_info.json, for datasets given by name."
    )
    mix: Literal[MIXES] = Field(  # type: ignore[valid-type]
        "concat",
        description="concat: one after another; interleave_under: sample until the first dataset "
        "runs out; interleave_over: until every dataset ran out (smaller ones repeat).",
    )
    mix_probs: list[float] | None = Field(
        None, description="Sampling probability of each dataset when interleaving (sums to 1)."
    )
    placeholders: dict[str, str] = Field(
        default_factory=dict,
        description="Values for {{name}}-style placeholders in the data, e.g. {name: 小R}.",
    )
    cutoff_len: int = Field(1024, ge=8, description="Truncate tokenized samples to this length.")
    packing: bool = Field(
        False,
        description="sft: each micro-batch becomes one row without padding, positions restarting per "
        "sample and no attention across samples. pt always concatenates and cuts into blocks.",
    )
    val_size: float = Field(0.0, ge=0, description="Held-out share (< 1) or count (>= 1) for evaluation.")
    max_samples: int | None = Field(None, ge=1, description="Use at most this many records in all.")
    on_bad_record: Literal["error", "skip"] = Field(
        "error", description="A malformed record stops the job (error) or is counted and skipped."
    )
    preprocessing_workers: int | None = Field(
        None,
        ge=1,
        description="Processes that tokenize; default: the job's cores (16 at most) for large data.",
    )
    cache: bool = Field(
        True, description="Keep tokenized data under OUTPUT/.cache, keyed by a hash of its inputs."
    )


# --- training: names as in transformers.TrainingArguments ----------------------------------


class TrainingSpec(_Spec):
    learning_rate: float = Field(1e-4, gt=0, description="Peak learning rate.")
    num_train_epochs: float = Field(3.0, gt=0, description="Epochs over the training data.")
    max_steps: int = Field(-1, ge=-1, description="Stop after this many optimizer steps (-1: off).")
    per_device_train_batch_size: int = Field(4, ge=1, description="Samples per device per step.")
    per_device_eval_batch_size: int = Field(4, ge=1, description="Samples per device in eval.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches per step.")
    lr_scheduler_type: Literal[SCHEDULERS] = Field("cosine", description="Learning-rate schedule.")  # type: ignore[valid-type]
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Share of steps spent warming up.")
    warmup_steps: int = Field(0, ge=0, description="Warm-up steps (overrides warmup_ratio).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    adam_epsilon: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    optim: str = Field("adamw_torch_fused", description="Optimizer name as in TrainingArguments.")
    logging_steps: int = Field(10, ge=1, description="Log metrics every N steps.")
    report_to: Literal["none", "tensorboard"] = Field(
        "none", description="Where the logged metrics go besides metrics.jsonl and train.log: "
        "tensorboard writes TensorBoard event files into the run's tensorboard/ directory (view them "
        "with `tensorboard --logdir OUTPUT_DIR`). Nothing is ever sent over a network.",
    )  # fmt: skip
    save_steps: int = Field(500, ge=1, description="Save a checkpoint every N steps.")
    save_total_limit: int | None = Field(2, ge=1, description="Keep at most N checkpoints.")
    eval_steps: int | None = Field(None, ge=1, description="Evaluate every N steps (needs val_size).")
    seed: int = Field(42, description="Random seed for weights init, shuffling and dropout.")
    bf16: bool | None = Field(
        None, description="bfloat16 mixed precision; unset: on where the GPU supports it."
    )
    fp16: bool | None = Field(
        None, description="float16 mixed precision; unset: on for GPUs without bfloat16. CPU: float32."
    )
    train_sampling_strategy: Literal["random", "sequential", "group_by_length", "batch_rebalance"] = Field(
        "random",
        description="random; group_by_length (similar lengths together, less padding); batch_rebalance "
        "(the same samples per optimizer step, split into micro-batches of balanced token cost: more "
        "short samples, fewer long ones, and balanced across GPUs).",
    )
    micro_batch_tokens: int | None = Field(
        None, ge=1, description="Token budget per forward pass: each optimizer step's "
        "per_device_train_batch_size x gradient_accumulation_steps samples are split into as few "
        "micro-batches of at most this many tokens (padding included) as fit, instead of "
        "per_device_train_batch_size samples each. The same samples, loss and gradient per step in "
        "fewer, fuller passes. At least data.cutoff_len.",
    )  # fmt: skip
    memory_cap_gib: float | None = Field(
        None, gt=0, description="Keep each device's training memory under this many GiB: a probe "
        "before the first step measures what this model keeps per token for the backward pass, and "
        "only as much checkpointing as the largest pass needs is turned on (none, 1 layer in n, every "
        "layer, then offloaded to host memory). The largest pass is micro_batch_tokens, else "
        "per_device_train_batch_size x data.cutoff_len. Replaces the three checkpointing switches.",
    )  # fmt: skip
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory.")
    checkpoint_every_n_layers: int = Field(
        1, ge=1, description="With gradient_checkpointing: recompute only every n-th layer (2: half the "
        "layers keep their activations), trading memory left unused back for speed.",
    )  # fmt: skip
    offload_activations: bool = Field(
        False, description="With gradient_checkpointing: keep the saved activations in pinned host "
        "memory, for the longest sequences; each step gets slower.",
    )  # fmt: skip
    use_liger_kernel: bool | None = Field(
        None,
        description="Liger's fused kernels (linear cross-entropy without full logits, RMSNorm, SwiGLU, "
        "RoPE); unset: on where liger-kernel is installed and a GPU is present.",
    )
    torch_compile: bool = Field(False, description="Compile the model with torch.compile.")
    logits_on_targets_only: bool = Field(
        True,
        description="Run the output layer only where a token is trained (not over prompts and "
        "padding): less compute and far less logits memory at the same loss. Off with Liger (which "
        "never materializes logits) and for prompt-learning methods.",
    )
    dataloader_num_workers: int | None = Field(
        None, ge=0, description="Worker processes that collate batches; unset: 2 on a GPU, 0 on CPU."
    )


# --- preference stages (rm, dpo, kto) ----------------------------------------------------

PREFERENCE_LOSSES = ("sigmoid", "ipo", "hinge", "orpo", "simpo")
# dpo's losses that keep no reference model (TRL's experimental ORPO and CPO trainers).
REFERENCE_FREE = ("orpo", "simpo")


class PreferenceSpec(_Spec):
    loss: Literal[PREFERENCE_LOSSES] = Field(  # type: ignore[valid-type]
        "sigmoid", description="dpo: sigmoid (DPO), ipo or hinge against a reference model; orpo and "
        "simpo need no reference.",
    )  # fmt: skip
    beta: float = Field(
        0.1,
        gt=0,
        description="dpo, kto: how far the policy may move from the reference (larger: less "
        "far); orpo: the weight of the odds-ratio term; simpo: the scale of the reward.",
    )
    reference: Literal["auto", "copy", "precomputed"] = Field(
        "auto", description="dpo, kto: auto: with an adapter method the model with the adapter switched "
        "off (a new adapter: the base; a continued model.adapter: a frozen copy of that adapter, never "
        "of the model), with full, freeze or adalora (whose PEFT model takes one adapter) a frozen copy "
        "of the model; copy: always a frozen copy of "
        "the model; precomputed: the reference's log-probs computed once before training, no copy kept.",
    )  # fmt: skip
    desirable_weight: float = Field(1.0, gt=0, description="kto: weight of the desirable examples' loss.")
    undesirable_weight: float = Field(1.0, gt=0, description="kto: weight of the undesirable examples' loss.")


class PpoSpec(_Spec):
    """Settings of stage ppo (TRL's PPO trainer; names as in its PPOConfig where they match)."""

    reward_model: str | None = Field(
        None, description="Required for stage ppo: the reward model that scores the policy's answers: "
        "an earlier rm run (its run directory or run id, as `runner ls` lists it) whose adapter/ is "
        "taken, or a directory holding a reward adapter (with its score head) or a whole reward model "
        "(a sequence classifier with one output). Its tokenizer must be the policy's.",
    )  # fmt: skip
    response_length: int = Field(128, ge=1, description="Longest generated answer, in tokens.")
    temperature: float = Field(0.7, gt=0, description="Sampling temperature of the generated answers.")
    kl_coef: float = Field(
        0.05, ge=0, description="Weight of the KL penalty that keeps the policy near the reference "
        "(the starting model).",
    )  # fmt: skip
    ppo_epochs: int = Field(4, ge=1, description="PPO passes over each batch of generated answers.")
    cliprange: float = Field(0.2, gt=0, description="Clip range of the policy's probability ratio.")
    vf_coef: float = Field(0.1, gt=0, description="Weight of the value model's loss.")
    missing_eos_penalty: float | None = Field(
        None, ge=0, description="Subtracted from the score of an answer that does not end within "
        "response_length (no end-of-turn token); unset: none.",
    )  # fmt: skip


# --- where and how it runs ------------------------------------------------------------------

_SHM = re.compile(r"^\d+(\.\d+)?[kmgKMG]?[bB]?$")


class ResourcesSpec(_Spec):
    gpus: Any = Field(
        "all", description="'all', a count (0 = CPU only), or a list of device ids like [0, 1]."
    )
    nodes: int = Field(1, ge=1, description="Machines the job spans.")
    procs_per_node: int | None = Field(
        None, ge=1, description="Processes per machine; default one per GPU (one on CPU)."
    )
    shm: str = Field("16g", description="Shared memory for the container (/dev/shm), e.g. 16g.")

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpus(cls, v: Any) -> Any:
        if v == "all" or (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
            return v
        if isinstance(v, list) and v and all(isinstance(i, int) and not isinstance(i, bool) for i in v):
            negative = [i for i in v if i < 0]
            if negative:
                raise ValueError(f"device ids are 0 or more, as nvidia-smi numbers them (got {v!r}); "
                                 f"remove {', '.join(map(str, negative))}")  # fmt: skip
            twice = sorted({i for i in v if v.count(i) > 1})
            if twice:
                distinct = sorted(set(v))
                distinct += [max(distinct) + 1 + n for n in range(len(v) - len(distinct))]
                raise ValueError(f"lists device {', '.join(map(str, twice))} more than once (got {v!r}); each "
                                 f"process needs a GPU of its own: list every id once, e.g. {distinct}")  # fmt: skip
            return v
        raise ValueError(f"must be 'all', a count >= 0, or a list of device ids (got {v!r})")

    @field_validator("shm")
    @classmethod
    def _shm(cls, v: str) -> str:
        if not _SHM.match(v):
            raise ValueError(f"must be a size such as 16g or 512m (got {v!r})")
        return v


class DeepSpeedSpec(_Spec):
    zero: Literal[0, 1, 2, 3] = Field(2, description="ZeRO stage.")
    offload_optimizer: bool = Field(False, description="Keep optimizer state in CPU memory.")
    offload_params: bool = Field(False, description="Keep parameters in CPU memory (ZeRO-3).")


class NcclSpec(_Spec):
    p2p_disable: bool | Literal["auto"] = Field(
        "auto", description="NCCL_P2P_DISABLE; auto: on for several consumer cards (RTX 30xx/40xx/50xx)."
    )
    ib_disable: bool | Literal["auto"] = Field(
        "auto", description="NCCL_IB_DISABLE; auto: on for several consumer cards."
    )


class DistributedSpec(_Spec):
    deepspeed: DeepSpeedSpec | None = Field(None, description="Train with DeepSpeed ZeRO.")
    nccl: NcclSpec = Field(default_factory=NcclSpec, description="NCCL switches for multi-GPU runs.")
    master_addr: str | None = Field(
        None, description="Multi-node: the IP address or host name of node 0, as every node reaches it "
        "(required where runner starts the nodes; `runner render --target hosts|k8s|slurm` sets it "
        "for each node). One node needs none.",
    )  # fmt: skip
    master_port: int = Field(
        29500, description="Multi-node: the TCP port node 0 listens on for the rendezvous (1024-65535)."
    )
    node_rank: int = Field(
        0, ge=0, description="This machine's rank; write ${NODE_RANK:-0} to set it per node."
    )
    rendezvous_timeout_s: int = Field(
        300, ge=10, description="Multi-node: how long the nodes wait for each other at node 0's "
        "rendezvous before the job ends with a message naming the address (torchrun's own wait is "
        "600 s and ends in a traceback).",
    )  # fmt: skip

    @field_validator("master_port", mode="before")
    @classmethod
    def _port(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool) and not 1024 <= v <= 65535:
            below = "; ports below 1024 need root, which the job does not run as" if 0 < v < 1024 else ""
            raise ValueError(f"must be a TCP port from 1024 to 65535 (got {v!r}){below}; e.g. 29500")
        return v


class BenchmarkSpec(_Spec):
    """A multiple-choice benchmark read from local files, in the layout its authors ship it."""

    path: str = Field(
        description="Directory of the benchmark: MMLU (dev/ val/ test/ of SUBJECT_dev.csv ..., no header), "
        "C-Eval (the same names, header id,question,A,B,C,D,answer) or CMMLU (dev/ test/ of SUBJECT.csv, "
        "header ,Question,A,B,C,D,Answer); an optional mapping.json or subject_mapping.json names subjects "
        "and their categories."
    )  # fmt: skip
    layout: Literal["auto", "mmlu", "ceval", "cmmlu"] = Field(
        "auto", description="mmlu, ceval or cmmlu; auto: read from the files."
    )
    split: Literal["auto", "val", "test"] = Field(
        "auto", description="The questions scored; auto: test for MMLU and CMMLU, val for C-Eval (whose "
        "test answers are not published)."
    )  # fmt: skip
    n_shot: int = Field(
        5, ge=0, description="Solved examples before each question: the first n of the subject's dev split "
        "(fewer where the prompt would not fit the model's context)."
    )  # fmt: skip
    subjects: list[str] | None = Field(
        None, description="Score only these subjects (file names); all by default."
    )
    lang: Literal["auto", "en", "zh"] = Field(
        "auto",
        description="Prompt wording: en (MMLU's 'Answer:') or zh (C-Eval's '答案：'); auto: by layout.",
    )


class EvalSpec(_Spec):
    """Settings of stage eval: generation (names as in transformers' GenerationConfig) and scoring."""

    max_new_tokens: int = Field(128, ge=1, description="Longest generated answer, in tokens.")
    do_sample: bool = Field(False, description="Sample instead of greedy decoding.")
    temperature: float = Field(0.95, gt=0, description="Sampling temperature (with do_sample).")
    top_p: float = Field(0.7, gt=0, le=1, description="Nucleus sampling share (with do_sample).")
    top_k: int = Field(50, ge=0, description="Sample among the k likeliest tokens (with do_sample).")
    num_beams: int = Field(1, ge=1, description="Beam search width (1: none).")
    repetition_penalty: float = Field(1.0, gt=0, description="Penalty on repeated tokens (1: none).")
    max_samples: int | None = Field(
        None, ge=1, description="Evaluate at most this many records (the first of the validation split); "
        "with a benchmark, this many questions per subject."
    )  # fmt: skip
    metric_language: Literal["auto", "zh", "en"] = Field(
        "auto", description="How BLEU and ROUGE are computed: zh as LLaMA-Factory and ChatGLM do (BLEU-4 on "
        "characters, ROUGE with rouge-chinese on jieba words), en with sacreBLEU and rouge-score; auto: zh "
        "when at least half the references hold Chinese."
    )  # fmt: skip
    benchmark: BenchmarkSpec | None = Field(
        None, description="Score a multiple-choice benchmark (MMLU, C-Eval, CMMLU layouts) instead of "
        "generating answers to the data; the spec then needs no data section."
    )  # fmt: skip


class ClassificationSpec(_Spec):
    """Settings of the classification stages cls and ner (core/data/labels.py reads their data)."""

    labels: Annotated[list[str], Field(min_length=1)] | None = Field(
        None, description="The label set in id order, as the data names its labels (a label the data "
        "gives as a number is its index here). Unset: read from the training data: names sorted (ner: "
        "'O' first, then each entity type's B- before its I-), or ids 0 to the largest where the data "
        "gives numbers. Saved with the model (id2label, label2id).",
    )  # fmt: skip
    multi_label: bool = Field(
        False, description="stage cls: each record has a list of labels (none, one or several; in CSV, "
        "names separated by commas), each learnt with its own sigmoid (binary cross-entropy).",
    )  # fmt: skip
    threshold: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="multi_label: a label is predicted where its probability is at least this.",
    )

    @field_validator("labels", mode="before")
    @classmethod
    def _names(cls, v: Any) -> Any:  # YAML reads [1, 2, 3] as numbers: they name the labels "1", "2", "3"
        if isinstance(v, list):
            return [str(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else x for x in v]
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        v = [str(name).strip() for name in v]
        if any(not name for name in v):
            raise ValueError("a label name is empty; give every label a name")
        repeated = sorted({name for name in v if v.count(name) > 1})
        if repeated:
            raise ValueError(f"{', '.join(repeated)} appears more than once; each label once, in id order")
        return v


class OutputSpec(_Spec):
    dir: str = Field("outputs", description="Runs are written to DIR/<name>/<run-id>/.")
    verbose: bool = Field(
        False, description="Log every line of every process and every library warning each time it "
        "comes. Off: each distinct warning once (with how often it came, at the end), and the lines "
        "every rank prints alike from rank 0 only.",
    )  # fmt: skip


class JobSpec(_Spec):
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Job name; letters, digits, '.', '_' and '-'.",
    )
    stage: StageName = Field(
        stages.DEFAULT,
        description="What the job does: "
        + "; ".join(f"{s.name}: {s.summary}" for s in stages.STAGES.values())
        + ".",
    )
    model: ModelSpec
    method: Method
    data: DataSpec
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    preference: PreferenceSpec = Field(
        default_factory=PreferenceSpec, description="Settings of the preference stages rm, dpo and kto."
    )
    ppo: PpoSpec = Field(
        default_factory=PpoSpec, description="Settings of stage ppo: its reward model, generation and PPO."
    )
    eval: EvalSpec = Field(default_factory=EvalSpec, description="Generation settings of stage eval.")
    classification: ClassificationSpec = Field(
        default_factory=ClassificationSpec, description="Settings of the classification stages cls and ner."
    )

    @model_validator(mode="before")
    @classmethod
    def _classification_format(cls, data: Any) -> Any:
        """A classification stage reads one format: its datasets given by path default to it."""
        name = data.get("stage") if isinstance(data, dict) else None
        stage = stages.STAGES.get(name) if isinstance(name, str) else None
        section = data.get("data") if isinstance(data, dict) else None
        if stage is None or not stage.data.classify or not isinstance(section, dict):
            return data
        datasets = section.get("datasets")
        if not isinstance(datasets, list):
            return data
        fmt = stage.data.formats[0]
        filled = [{**d, "format": fmt} if isinstance(d, dict) and "format" not in d and "name" not in d else d
                  for d in datasets]  # fmt: skip
        return {**data, "data": {**section, "datasets": filled}}

    @model_validator(mode="before")
    @classmethod
    def _method_optional(cls, data: Any) -> Any:
        """A stage that trains nothing (eval): its spec may leave out the method. A benchmark
        evaluation reads no data section: its directory is the data the job reads (and its
        executor mounts)."""
        name = data.get("stage") if isinstance(data, dict) else None
        stage = stages.STAGES.get(name) if isinstance(name, str) else None
        if stage is None or stage.trains:
            return data
        if "method" not in data:
            data = {**data, "method": {"type": "full"}}
        bench = (data.get("eval") or {}).get("benchmark") if isinstance(data.get("eval"), dict) else None
        if isinstance(bench, dict) and "data" not in data and bench.get("path"):
            data = {**data, "data": {"datasets": [{"path": bench["path"]}], "cache": False}}
        return data

    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    distributed: DistributedSpec = Field(default_factory=DistributedSpec)
    image: str = Field("default", description="Image spec in images/ that the job runs in.")
    output: OutputSpec = Field(default_factory=OutputSpec)
    cluster: ClusterSpec = Field(
        default_factory=lambda: ClusterSpec(),
        description="Kubernetes and Slurm (runner render --target k8s|slurm).",
    )


# --- beyond one machine: what `runner render --target k8s|slurm` needs besides the job --------

_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_REGISTRY = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:\d+)?(/[a-z0-9._-]+)*$")
# The name rule of a TrainJob (its CRD's CEL rules: an RFC 1035 label of at most 63 characters),
# which the training operator applies to a PyTorchJob too. A job's objects are named NAME-LAUNCH:
# the launch id takes 14 of the 63 characters.
K8S_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
K8S_NAME_MAX = 63 - 14
_SLURM_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
_SLURM_MEMORY = re.compile(r"^[1-9]\d*[KMGT]$")
# Slurm may send --signal up to a minute before the time it was asked for.
SLURM_SIGNAL_SLACK_S = 60


def slurm_seconds(limit: str) -> int | None:
    """A Slurm time limit in seconds (minutes, minutes:seconds, hours:minutes:seconds,
    days-hours[:minutes[:seconds]]); None when it is not one."""
    m = _SLURM_TIME.match(limit)
    if not m:
        return None
    days, a, b, c = (int(g) if g is not None else None for g in m.groups())
    if days is not None:  # days-hours[:minutes[:seconds]]
        return ((days * 24 + a) * 60 + (b or 0)) * 60 + (c or 0)
    if c is not None:  # hours:minutes:seconds
        return (a * 60 + b) * 60 + c
    return a * 60 + (b or 0)  # minutes[:seconds]


class ClusterSpec(_Spec):
    registry: str | None = Field(
        None, description="Kubernetes: an in-cluster registry the image was pushed to, e.g. "
        "registry.internal:5000; the image becomes REGISTRY/runner/NAME:TAG. Unset: the image of "
        "the offline bundle, loaded on every node, and never pulled.",
    )  # fmt: skip
    volumes: dict[str, str] = Field(
        default_factory=dict, description="Kubernetes: a directory of the spec's paths (model, data, "
        "output.dir) -> the PersistentVolumeClaim that holds it, e.g. {/models: models}; mounted at "
        "the same path. A path under none of them is refused, unless host_paths allows the node's own.",
    )  # fmt: skip
    host_paths: bool = Field(
        False, description="Kubernetes: mount the paths under no claim of cluster.volumes from the "
        "node's disk (hostPath), which Pod Security's baseline and restricted levels refuse.",
    )  # fmt: skip
    k8s_name: str | None = Field(
        None, description="Kubernetes: the name of the job's objects, before the launch's id: lowercase "
        f"letters, digits and '-', starting with a letter, at most {K8S_NAME_MAX} characters. Default: "
        "derived from name.",
    )  # fmt: skip
    k8s_runtime: Literal["namespace", "cluster"] = Field(
        "namespace", description="Kubernetes (TrainJob): where the training runtime runner renders lives: "
        "namespace (a TrainingRuntime, which whoever may create TrainJobs in the namespace may apply) or "
        "cluster (a ClusterTrainingRuntime shared by every namespace; applying it takes cluster-admin).",
    )  # fmt: skip
    container_runtime: Literal["docker", "enroot", "apptainer"] = Field(
        "docker", description="Slurm: what starts the container on each node: docker, enroot "
        "(pyxis' srun --container-image) or apptainer. enroot and apptainer are recommended: their "
        "containers are processes of the job, which Slurm limits, accounts for and kills.",
    )  # fmt: skip
    container_image: str | None = Field(
        None, description="Slurm with enroot or apptainer: the image file on shared storage "
        "(a .sqsh from `enroot import dockerd://REF`, a .sif from `apptainer build X.sif "
        "docker-daemon://REF`); default: OUTPUT_DIR/NAME.sqsh or .sif.",
    )  # fmt: skip
    partition: str | None = Field(None, description="Slurm: the partition (#SBATCH --partition).")
    memory_per_node: str | None = Field(
        None, description="Slurm: memory for the job on each node, e.g. 200G (#SBATCH --mem); "
        "unset: all of it (--mem=0).",
    )  # fmt: skip
    cpus_per_node: int | None = Field(
        None, ge=1, validate_default=True, description="Slurm: CPUs for each node's one task (torchrun, "
        "its ranks and their data workers), which then may share its nodes with other jobs; needs "
        "memory_per_node. Unset: whole nodes (#SBATCH --exclusive), every CPU to the task.",
    )  # fmt: skip
    time_limit: str | None = Field(
        None, description="Slurm: wall-clock limit, e.g. 24:00:00 (#SBATCH --time); ahead of it the job "
        "saves a checkpoint and is requeued (stop_before_limit).",
    )  # fmt: skip
    stop_before_limit: int = Field(
        300, ge=1, validate_default=True, description="Slurm: seconds before the time limit at which the "
        "job saves a checkpoint and stops, to be requeued and continue from it (#SBATCH --signal); "
        "Slurm may signal up to a minute earlier.",
    )  # fmt: skip

    @field_validator("registry")
    @classmethod
    def _registry(cls, v: str | None) -> str | None:
        if v is not None and not _REGISTRY.match(v):
            raise ValueError(
                f"must be a registry host[:port][/path], e.g. registry.internal:5000 (got {v!r})"
            )
        return v

    @field_validator("volumes")
    @classmethod
    def _volumes(cls, v: dict[str, str]) -> dict[str, str]:
        for path, claim in v.items():
            if not path.startswith("/"):
                raise ValueError(f"{path!r} must be an absolute directory, e.g. /models")
            if not _DNS_LABEL.match(claim):
                raise ValueError(f"{claim!r} is not a claim name: lowercase letters, digits and '-', "
                                 "e.g. {/models: models}")  # fmt: skip
        return v

    @field_validator("k8s_name")
    @classmethod
    def _k8s_name(cls, v: str | None) -> str | None:
        if v is not None and not (K8S_NAME.match(v) and len(v) <= K8S_NAME_MAX):
            raise ValueError(
                f"must be a Kubernetes name: lowercase letters, digits and '-', starting with a letter and "
                f"ending with a letter or digit, at most {K8S_NAME_MAX} characters (the launch's id makes "
                f"it 63, a TrainJob's limit) (got {v!r}); e.g. {k8s_safe_name(v)}"
            )
        return v

    @field_validator("memory_per_node")
    @classmethod
    def _memory(cls, v: str | None) -> str | None:
        if v is not None and not _SLURM_MEMORY.match(v):
            raise ValueError(f"must be a size in K, M, G or T, e.g. 200G (got {v!r})")
        return v

    @field_validator("cpus_per_node")
    @classmethod
    def _cpus_need_memory(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and info.data.get("memory_per_node") is None and "memory_per_node" in info.data:
            raise ValueError(
                f"is {v}, so the job shares its nodes, and then it needs cluster.memory_per_node too "
                "(e.g. 200G); or leave both unset to take whole nodes"
            )
        return v

    @field_validator("time_limit")
    @classmethod
    def _time_limit(cls, v: str | None) -> str | None:
        if v is not None and not slurm_seconds(v):
            raise ValueError(
                "must be a Slurm time limit: minutes, minutes:seconds, hours:minutes:seconds or "
                f"days-hours[:minutes[:seconds]], e.g. 24:00:00 (got {v!r})"
            )
        return v

    @field_validator("stop_before_limit")
    @classmethod
    def _lead(cls, v: int, info: ValidationInfo) -> int:
        limit = slurm_seconds(info.data.get("time_limit") or "") or 0
        if limit and v + SLURM_SIGNAL_SLACK_S > limit:
            raise ValueError(
                f"is {v} s, and cluster.time_limit ({limit} s) leaves no time to train before it: Slurm "
                f"may signal up to {SLURM_SIGNAL_SLACK_S} s early; lower it, or raise time_limit to at "
                f"least {v + SLURM_SIGNAL_SLACK_S} s"
            )
        return v


def k8s_safe_name(name: str) -> str:
    """A name as the start of a Kubernetes object's name (K8S_NAME): lowercase, other characters
    as '-', a letter first ('job-' is put before a digit), at most K8S_NAME_MAX characters."""
    safe = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]+", "-", name.lower())).strip("-")
    if not safe[:1].isalpha():
        safe = f"job-{safe}".rstrip("-")
    return safe[:K8S_NAME_MAX].rstrip("-")
