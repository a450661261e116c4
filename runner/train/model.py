"""Load a local model and tokenizer, strictly from files (never the hub)."""

from __future__ import annotations

import logging

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from runner.core.errors import UnsupportedError
from runner.core.jobspec.job import JobSpec

log = logging.getLogger(__name__)
hf_logging.disable_progress_bar()  # weight-loading bars only clutter job logs


def device_type() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def precision(spec: JobSpec) -> str:
    """bf16, fp16 or fp32 for this device: what the spec asks where the device can do it;
    unset, bf16 where the GPU supports it, else fp16; always fp32 on CPU."""
    t = spec.training
    if device_type() == "cpu":
        if t.bf16 or t.fp16:
            log.warning("no CUDA device: training in float32 instead of %s", "bf16" if t.bf16 else "fp16")
        return "fp32"
    bf16_ok = torch.cuda.is_bf16_supported()
    if t.bf16 and not bf16_ok:
        log.warning("this GPU has no bfloat16; training in fp16 instead")
        return "fp16"
    if t.bf16 or (t.bf16 is None and not t.fp16 and bf16_ok):
        return "bf16"
    return "fp16" if t.fp16 is not False else "fp32"


def load_tokenizer(path: str, trust_remote_code: bool = False):
    tokenizer = AutoTokenizer.from_pretrained(
        path, local_files_only=True, trust_remote_code=trust_remote_code
    )
    if tokenizer.pad_token is None:
        # Many base models ship without a pad token; eos is the safe stand-in (labels mask it).
        tokenizer.pad_token = tokenizer.eos_token
        log.info("tokenizer has no pad token; using eos %r", tokenizer.eos_token)
    tokenizer.padding_side = "right"
    return tokenizer


def tokenizer_for(spec: JobSpec):
    """The job's tokenizer: special tokens the spec adds, and (except for pt) its chat template."""
    from runner.core.data.templates import add_special_tokens, apply_template

    tokenizer = load_tokenizer(spec.model.path, spec.model.trust_remote_code)
    added = add_special_tokens(tokenizer, spec.model.add_special_tokens)
    if added:
        log.info("added special tokens %s: vocabulary of %d", ", ".join(added), len(tokenizer))
    if spec.stage != "pt":
        apply_template(tokenizer, spec.model.template, spec.model.default_system)
    return tokenizer


def fit_vocab(model, tokenizer) -> bool:
    """Grow the embeddings (and an untied head) to the tokenizer's vocabulary; new rows start at
    the mean of the old ones. True when they grew."""
    weight = model.get_input_embeddings().weight
    if len(tokenizer) <= getattr(weight, "ds_shape", weight.shape)[0]:  # ZeRO-3: the whole shape
        return False
    model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    log.info("embeddings resized to %d tokens", len(tokenizer))
    return True


def attention(spec: JobSpec) -> str:
    """The attention kernel. Packed rows must never meet a dense T x T mask on a GPU, so auto
    picks flash-attention's variable-length kernels where installed, else flex attention with a
    block mask built from the restarting positions; sdpa otherwise (and on CPU, where flex
    attention cannot run backward)."""
    chosen = spec.model.attn_implementation
    if chosen != "auto":
        return chosen
    if device_type() != "cuda":
        return "sdpa"
    if _installed("flash_attn"):
        return "flash_attention_2"
    return "flex_attention" if spec.data.packing else "sdpa"


def liger(spec: JobSpec) -> bool:
    wanted = spec.training.use_liger_kernel
    available = device_type() == "cuda" and _installed("liger_kernel")
    if wanted and not available:
        log.warning(
            "use_liger_kernel: liger-kernel needs a GPU and the liger-kernel package; training without"
        )
    return available if wanted is None else bool(wanted and available)


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def weight_dtype(spec: JobSpec) -> torch.dtype:
    """Frozen base weights need no fp32 master copy: LoRA-style methods load them in the training
    precision (adapters stay fp32 inside PEFT). Trained weights (full, freeze) load in fp32."""
    dtype = precision(spec)
    if spec.method.type in ("full", "freeze") or dtype == "fp32":
        return torch.float32
    return torch.bfloat16 if dtype == "bf16" else torch.float16


def load_model(spec: JobSpec):
    """The base model, quantized for qlora, in a dtype that suits method and device."""
    kwargs: dict = {"local_files_only": True, "trust_remote_code": spec.model.trust_remote_code}
    if spec.method.type == "qlora":
        kwargs["quantization_config"] = quantization(spec)
    kwargs["dtype"] = weight_dtype(spec)
    kwargs["attn_implementation"] = attention(spec)
    model = AutoModelForCausalLM.from_pretrained(spec.model.path, **kwargs)
    # Training never reuses a KV cache, and an empty cache object would stop transformers from
    # reading restarting position_ids as sample boundaries: packed samples would see each other.
    model.config.use_cache = False
    return model


def quantization(spec: JobSpec):
    """bitsandbytes settings for qlora; refuses a machine without CUDA or bitsandbytes."""
    if device_type() != "cuda":
        raise UnsupportedError(
            "method qlora quantizes the base with bitsandbytes, which needs a CUDA GPU; "
            "none is visible here. Use method: lora on this machine."
        )
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise UnsupportedError("method qlora needs bitsandbytes, which this image lacks") from None
    m = spec.method
    return BitsAndBytesConfig(
        load_in_4bit=m.bits == 4, load_in_8bit=m.bits == 8, bnb_4bit_quant_type=m.quant_type,
        bnb_4bit_use_double_quant=m.double_quant, bnb_4bit_compute_dtype=weight_dtype(spec),
        **quant_storage(spec),
    )  # fmt: skip


def quant_storage(spec: JobSpec) -> dict:
    """Under ZeRO-3 the packed 4-bit weights are stored in the training dtype, so that ZeRO can
    partition them with the model's other weights (one flat buffer of one dtype); the spec checks
    refuse 8-bit weights and parameter offload there. Elsewhere bitsandbytes' own uint8."""
    ds = spec.distributed.deepspeed
    if spec.method.type != "qlora" or spec.method.bits != 4 or ds is None or ds.zero != 3:
        return {}
    return {"bnb_4bit_quant_storage": weight_dtype(spec)}


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total); a ZeRO-3 partitioned parameter counts whole (ds_numel), not its
    empty local placeholder."""
    counts = [(getattr(p, "ds_numel", p.numel()), p.requires_grad) for p in model.parameters()]
    return sum(n for n, grad in counts if grad), sum(n for n, _ in counts)
