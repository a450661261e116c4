"""Load a local model and tokenizer, strictly from files (never the hub)."""

from __future__ import annotations

import logging

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from runner.errors import UnsupportedError
from runner.spec.job import JobSpec

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


def load_model(spec: JobSpec):
    """The base model, quantized for qlora, in a dtype that suits method and device."""
    kwargs: dict = {"local_files_only": True, "trust_remote_code": spec.model.trust_remote_code}
    method = spec.method.type
    on_gpu = device_type() == "cuda"
    if method == "qlora":
        if not on_gpu:
            raise UnsupportedError(
                "method qlora quantizes the base with bitsandbytes, which needs a CUDA GPU; "
                "none is visible here. Use method: lora on this machine."
            )
        try:
            import bitsandbytes  # noqa: F401
            from transformers import BitsAndBytesConfig
        except ImportError:
            raise UnsupportedError("method qlora needs bitsandbytes, which this image lacks") from None
        compute = torch.bfloat16 if precision(spec) == "bf16" else torch.float16
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=spec.method.bits == 4,
            load_in_8bit=spec.method.bits == 8,
            bnb_4bit_quant_type=spec.method.quant_type,
            bnb_4bit_use_double_quant=spec.method.double_quant,
            bnb_4bit_compute_dtype=compute,
        )
        kwargs["dtype"] = compute
    elif on_gpu and method not in ("full", "freeze") and precision(spec) != "fp32":
        # Frozen base weights need no fp32 master copy; adapters stay fp32 inside PEFT.
        kwargs["dtype"] = torch.bfloat16 if precision(spec) == "bf16" else torch.float16
    else:
        kwargs["dtype"] = torch.float32
    model = AutoModelForCausalLM.from_pretrained(spec.model.path, **kwargs)
    # Training never reuses a KV cache, and an empty cache object would stop transformers from
    # reading restarting position_ids as sample boundaries: packed samples would see each other.
    model.config.use_cache = False
    return model


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
