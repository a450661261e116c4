"""Turn a loaded base model into what `method` trains, through PEFT where it applies."""

from __future__ import annotations

import logging
import re

from runner.core.errors import RunnerError
from runner.core.jobspec.job import ADAPTER_METHODS, JobSpec

log = logging.getLogger(__name__)
PEFT_METHODS = ADAPTER_METHODS


def apply_method(
    model,
    spec: JobSpec,
    *,
    train_embeddings: bool = False,
    task: str = "CAUSAL_LM",
    whole: tuple[str, ...] = (),
):
    """Returns the model to train: the same object (full, freeze) or a PeftModel.

    train_embeddings: the vocabulary grew, so its new rows must train whatever the method
    (LoRA keeps the embeddings and output head in modules_to_save, freeze trains them).
    whole: modules (dotted paths) that train in full beside an adapter and are saved with it, never
    adapted themselves: a classifier's head, and weights its checkpoint lacked (BERT's pooler
    when the base was saved as a masked LM), which start random and would be lost otherwise."""
    method = spec.method
    if spec.model.adapter:
        return _upcast_trained(_continue_adapter(model, spec))
    if method.type == "full":
        model.requires_grad_(True)
        return model
    embeddings = _embedding_names(model) if train_embeddings else []
    if method.type == "freeze":
        return _freeze(model, method.trainable_layers, [*method.extra_modules, *embeddings])
    from peft import get_peft_model

    if method.type == "qlora":
        model = _prepare_quantized(model, spec)
    if embeddings and method.type not in ("lora", "qlora", "adalora"):
        raise RunnerError(
            f"model.add_special_tokens added tokens whose embeddings must train, which method "
            f"{method.type} cannot do; use method lora (or freeze, full) with new tokens"
        )
    output = model.get_output_embeddings()
    tied = bool(embeddings) and output is not None and model.get_input_embeddings().weight is output.weight
    whole = (*(heads(model) if task != "CAUSAL_LM" else ()), *whole)
    config = peft_config(spec, embeddings, tied=tied, whole=whole, within=_within(model, whole))
    # SEQ_CLS (stages rm, cls), TOKEN_CLS (ner): PEFT trains and saves the head (`score`, `classifier`) too.
    config.task_type = task
    return _upcast_trained(_lora_forward(get_peft_model(model, config), spec))


# The heads transformers' *ForSequenceClassification and *ForTokenClassification put on a model:
# BERT's and RoBERTa's `classifier`, the decoders' `score`.
HEADS = ("classifier", "score")


def heads(model) -> list[str]:
    """The names of the model's classification heads (top-level modules)."""
    import torch

    return [name for name in HEADS if isinstance(getattr(model, name, None), torch.nn.Module)]


def _within(model, modules: tuple[str, ...]) -> list[str]:
    """Every module at or under the given dotted paths: none of them may be an adapter's target."""
    return [name for name, _ in model.named_modules() if name and any(name == m or name.startswith(f"{m}.")
                                                                       for m in modules)]  # fmt: skip


def _embedding_names(model) -> list[str]:
    """The module names of the input embeddings and of an untied output head."""
    wanted = {id(model.get_input_embeddings()), id(model.get_output_embeddings())}
    return [name.rsplit(".", 1)[-1] for name, module in model.named_modules() if id(module) in wanted]


def _upcast_trained(model):
    """Half-precision weights that train (modules_to_save copies, prompt encoders) become fp32:
    fp16 mixed precision refuses to unscale fp16 gradients, and bf16 weights would lose small
    updates to rounding. The frozen base stays in its half dtype."""
    import torch

    for param in model.parameters():
        if param.requires_grad and param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.float()
    return model


def _lora_forward(model, spec: JobSpec):
    """Two savings on PEFT's LoRA forward.

    PEFT copies each adapted layer's input to the adapter's dtype (fp32) before the adapter.
    Under mixed precision, autocast casts it straight back to bf16/fp16 for the matmul, so the
    copy changes no number, yet it is kept for the backward pass: 14% of the activations a
    Llama-3-8B-wide layer keeps. runner trains half-precision weights only under autocast, so it
    skips the copy, except for DoRA, whose norms do compute in fp32. And the scaled update joins
    the base output in one matmul (runner/train/fused.py)."""
    m = spec.method
    if m.type in ("lora", "qlora") and not m.dora and not m.upcast_adapter_inputs:
        for module in model.modules():
            if hasattr(module, "cast_input_dtype_enabled"):
                module.cast_input_dtype_enabled = False
    if m.type in ("lora", "qlora") and m.fused:
        from runner.train.fused import fuse_lora

        log.info("fused LoRA forward on %d layers", fuse_lora(model))
    return model


def _prepare_quantized(model, spec: JobSpec):
    """PEFT's k-bit preparation upcasts every unquantized weight to fp32. Under bf16 that buys
    nothing (RMSNorm computes in fp32 anyway) and costs 2 x vocab x hidden x 2 bytes for
    embeddings and head, so by default only fp16 training upcasts."""
    from runner.train.model import precision

    upcast = spec.method.upcast_unquantized
    if upcast is None:
        upcast = precision(spec) != "bf16"
    if upcast:
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=spec.training.gradient_checkpointing
        )
    model.requires_grad_(False)
    if spec.training.gradient_checkpointing:
        model.enable_input_require_grads()
    return model


def peft_config(
    spec: JobSpec, embeddings: list[str] = (), *, tied: bool = False, whole: tuple[str, ...] = (),
    within: list[str] = (),
):  # fmt: skip
    """`whole`: modules trained in full beside the adapter (modules_to_save); `within`: every module
    under them, which no adapter may target ('all-linear' would: a token classifier's head, a
    pooler)."""
    import peft

    m = spec.method
    task = peft.TaskType.CAUSAL_LM
    if m.type == "adalora":
        from runner.train.adalora import config

        return config(spec, [*embeddings, *whole], within)
    if m.type in ("lora", "qlora"):
        return peft.LoraConfig(
            task_type=task, r=m.r, lora_alpha=m.alpha or 2 * m.r, lora_dropout=m.dropout,
            target_modules=_targets(m.target), use_rslora=m.rslora, use_dora=m.dora,
            modules_to_save=list(dict.fromkeys([*m.modules_to_save, *embeddings, *whole])) or None,
            ensure_weight_tying=tied, exclude_modules=list(within) or None,
        )  # fmt: skip
    if m.type == "prefix":
        return peft.PrefixTuningConfig(
            task_type=task, num_virtual_tokens=m.num_virtual_tokens,
            prefix_projection=m.projection, encoder_hidden_size=m.encoder_hidden_size,
        )  # fmt: skip
    if m.type == "ptuning":
        return peft.PromptEncoderConfig(
            task_type=task, num_virtual_tokens=m.num_virtual_tokens,
            encoder_reparameterization_type=m.encoder_type, encoder_hidden_size=m.encoder_hidden_size,
        )  # fmt: skip
    if m.type == "prompt":
        if m.init_text:
            return peft.PromptTuningConfig(
                task_type=task, num_virtual_tokens=m.num_virtual_tokens,
                prompt_tuning_init=peft.PromptTuningInit.TEXT, prompt_tuning_init_text=m.init_text,
                tokenizer_name_or_path=spec.model.path,
            )  # fmt: skip
        return peft.PromptTuningConfig(task_type=task, num_virtual_tokens=m.num_virtual_tokens)
    if m.type == "ia3":
        # Both empty: PEFT's per-architecture defaults, which pair targets with feed-forward layers.
        return peft.IA3Config(
            task_type=task,
            target_modules=m.target or None,
            feedforward_modules=m.feedforward or None,
            modules_to_save=list(whole) or None,
            exclude_modules=list(within) or None,
        )
    raise RunnerError(f"method {m.type} has no PEFT config")


def _targets(target: list[str]) -> str | list[str]:
    return "all-linear" if target == ["all-linear"] else target


def _freeze(model, n_layers: int, extra: list[str]):
    """Train the last n decoder layers and every module named in extra; freeze the rest."""
    total = getattr(model.config, "num_hidden_layers", None)
    if not total:
        raise RunnerError("method freeze: the model config has no num_hidden_layers")
    if n_layers > total:
        raise RunnerError(f"method.trainable_layers is {n_layers} but the model has {total} layers")
    first = total - n_layers
    layer = re.compile(r"\.(?:layers|layer|h|blocks|encoder\.layers)\.(\d+)\.")  # BERT's: encoder.layer.N
    matched: set[str] = set()
    for name, param in model.named_parameters():
        m = layer.search(f".{name}")
        named = [e for e in extra if f".{e}." in f".{name}"]
        matched.update(named)
        param.requires_grad_(bool(m and int(m.group(1)) >= first) or bool(named))
    unknown = [e for e in extra if e not in matched]
    if unknown:
        raise RunnerError(
            f"method.extra_modules: no parameter of the model is under {', '.join(unknown)}; "
            f"top-level modules: {', '.join(n for n, _ in model.named_children())}"
        )
    return model


def _continue_adapter(model, spec: JobSpec):
    from peft import PeftModel

    if spec.method.type not in PEFT_METHODS:
        raise RunnerError(f"model.adapter is a PEFT adapter; method {spec.method.type} cannot continue it")
    log.info("continuing training of adapter %s", spec.model.adapter)
    return _lora_forward(PeftModel.from_pretrained(model, spec.model.adapter, is_trainable=True), spec)
