"""Checkpointing only as much as memory requires (training.memory_cap_gib).

Before the first step a probe runs two forward passes of the model as it will train, at two
lengths, and records every tensor autograd keeps for the backward pass: per decoder layer and
outside the layers (embeddings, head, loss). Two lengths tell the part that grows with the
length from the part that grows with its square (an attention that keeps a T x T matrix).
Weights, gradients and optimizer moments are counted from the parameters. From these the
fastest checkpointing that keeps the largest pass under the cap is chosen: none, every n-th
layer (n from the number of layers down to 2), every layer, every layer with its kept inputs
offloaded to host memory (GPU only).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

import torch

from runner.core.errors import UnsupportedError
from runner.core.jobspec.job import JobSpec
from runner.train.model import device_type, precision

log = logging.getLogger(__name__)
GIB = 2**30
RESERVE = GIB // 2  # allocator fragmentation and kernel workspaces beyond what is counted
SLACK = 1.15  # activations are measured; the gradients flowing through them are only bounded


@dataclass(frozen=True)
class Checkpointing:
    on: bool
    every_n_layers: int = 1
    offload: bool = False

    def describe(self, layers: int) -> str:
        if not self.on:
            return "no checkpointing"
        kept = " with its inputs offloaded to host memory" if self.offload else ""
        if self.every_n_layers == 1:
            return f"checkpointing every layer{kept}"
        return f"checkpointing 1 layer in {self.every_n_layers} ({_checkpointed(layers, self.every_n_layers)} of {layers})"


@dataclass(frozen=True)
class Profile:
    """Bytes autograd keeps for a pass of T tokens: a*T + b*T^2 per layer and outside them."""

    layers: list[tuple[float, float]]
    rest: tuple[float, float]
    layer_input: float  # bytes per token of a layer's input: all a checkpointed layer keeps
    static: int  # weights, gradients and optimizer moments

    def estimate(self, tokens: int, policy: Checkpointing) -> int:
        per_layer = [a * tokens + b * tokens**2 for a, b in self.layers]
        rest = self.rest[0] * tokens + self.rest[1] * tokens**2
        checkpointed = (
            [i % policy.every_n_layers == 0 for i in range(len(per_layer))]
            if policy.on
            else [False] * len(per_layer)
        )
        kept = sum(m for m, c in zip(per_layer, checkpointed, strict=True) if not c)
        if not policy.offload:
            kept += self.layer_input * tokens * sum(checkpointed)
        # The backward pass recomputes one checkpointed layer at a time, and the loss's
        # gradient is as large as the logits it keeps: the largest of these comes on top.
        transient = max([rest] + [m for m, c in zip(per_layer, checkpointed, strict=True) if c])
        return int(self.static + SLACK * (kept + rest + transient) + RESERVE)


def candidates(layers: int, offload: bool) -> list[Checkpointing]:
    """From fastest to leanest."""
    plans = [Checkpointing(False)]
    seen = set()
    for n in range(layers, 0, -1):  # n = layers checkpoints one layer, n = 1 all of them
        if _checkpointed(layers, n) not in seen:
            seen.add(_checkpointed(layers, n))
            plans.append(Checkpointing(True, n))
    return plans + ([Checkpointing(True, 1, offload=True)] if offload else [])


def choose(profile: Profile, tokens: int, cap: int, offload: bool) -> tuple[Checkpointing, int]:
    """The fastest checkpointing whose estimate fits `cap` bytes, and that estimate."""
    plans = candidates(len(profile.layers), offload)
    for plan in plans:
        if (need := profile.estimate(tokens, plan)) <= cap:
            return plan, need
    least = profile.estimate(tokens, plans[-1])
    raise UnsupportedError(
        f"training.memory_cap_gib: {cap / GIB:g} GiB cannot hold a pass of {tokens:,} tokens: "
        f"weights, gradients and optimizer state take {_size(profile.static)}, and with "
        f"{plans[-1].describe(len(profile.layers))} the pass needs {_size(least)} in all. "
        "Raise the cap, lower training.micro_batch_tokens (or per_device_train_batch_size x "
        "data.cutoff_len), or train with method qlora."
    )


def plan(spec: JobSpec, model) -> Checkpointing:
    """The checkpointing for this job under its memory cap, measured on `model`."""
    t = spec.training
    tokens = t.micro_batch_tokens or t.per_device_train_batch_size * spec.data.cutoff_len
    device = _device()
    if not getattr(model, "hf_device_map", None):
        model.to(device)
    profile = measure(model, spec, min(256, max(16, tokens // 4)), device)
    cap = int(t.memory_cap_gib * GIB)
    chosen, need = choose(profile, tokens, cap, offload=device.type == "cuda")
    log.info(
        "memory_cap_gib %g: weights, gradients and optimizer state %s, activations %.1f KiB per "
        "token; a pass of %s tokens with %s: about %s",
        t.memory_cap_gib, _size(profile.static), _per_token(profile) / 1024, f"{tokens:,}",
        chosen.describe(len(profile.layers)), _size(need),
    )  # fmt: skip
    return chosen


def measure(model, spec: JobSpec, tokens: int, device: torch.device) -> Profile:
    """Saved-for-backward bytes at `tokens` and twice that, fitted to a*T + b*T^2."""
    (l1, r1, x1), (l2, r2, _) = (_saved(model, spec, n, device) for n in (tokens, 2 * tokens))
    return Profile(
        layers=[_fit(a, b, tokens) for a, b in zip(l1, l2, strict=True)],
        rest=_fit(r1, r2, tokens),
        layer_input=x1 / tokens,
        static=static_bytes(model, spec, int(os.environ.get("WORLD_SIZE", "1"))),
    )


def static_bytes(model, spec: JobSpec, world_size: int = 1) -> int:
    """Weights and buffers as stored, plus a gradient and the optimizer state of every trained
    weight. Plain training: the gradient and AdamW's two moments in the weight's dtype, as
    torch keeps them. DeepSpeed: an fp32 master copy and two fp32 moments (12 bytes a weight),
    split over the GPUs from ZeRO-1 on (none on the GPU when offloaded), and the gradients
    split too from ZeRO-2 on."""
    weights = sum(t.numel() * t.element_size() for t in _unique(model.parameters()))
    buffers = sum(t.numel() * t.element_size() for t in _unique(model.buffers()))
    trained = [p for p in model.parameters() if p.requires_grad]
    grads = sum(p.numel() * p.element_size() for p in trained)
    ds = spec.distributed.deepspeed
    if ds is None:
        return weights + buffers + 3 * grads
    optimizer = 0 if ds.offload_optimizer else 12 * sum(p.numel() for p in trained)
    optimizer //= world_size if ds.zero >= 1 else 1
    grads //= world_size if ds.zero >= 2 else 1
    return weights + buffers + grads + optimizer


def decoder_layers(model) -> list[torch.nn.Module]:
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def _saved(model, spec: JobSpec, tokens: int, device: torch.device) -> tuple[list[int], int, int]:
    """Bytes kept for backward by each decoder layer and outside them, and the size of one
    layer's input, for one packed row of `tokens` random tokens, everything trained."""
    layers = decoder_layers(model)
    if not layers:
        raise UnsupportedError(
            "training.memory_cap_gib: this model has no decoder layers runner can checkpoint"
        )
    held = {p.untyped_storage().data_ptr() for p in model.parameters()}
    per_layer, rest, current, layer_input = [0] * len(layers), [0], [None], [0]

    def enter(index):
        def hook(module, args, kwargs):
            current[0] = index
            hidden = args[0] if args else kwargs.get("hidden_states")
            if index == 0 and isinstance(hidden, torch.Tensor):
                layer_input[0] = hidden.numel() * hidden.element_size()

        return hook

    def leave(module, args, output):
        current[0] = None

    def pack(t: torch.Tensor):
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return t
        if storage.data_ptr() not in held:
            held.add(storage.data_ptr())
            if current[0] is None:
                rest[0] += storage.nbytes()
            else:
                per_layer[current[0]] += storage.nbytes()
        return t

    handles = [layer.register_forward_pre_hook(enter(i), with_kwargs=True) for i, layer in enumerate(layers)]
    handles += [layer.register_forward_hook(leave) for layer in layers]
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (1, tokens), generator=torch.Generator().manual_seed(0)).to(device)
    dtype = precision(spec)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16 if dtype == "bf16" else torch.float16)
        if dtype != "fp32"
        else contextlib.nullcontext()
    )
    was_training = model.training
    model.train()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
            out = model(input_ids=ids, labels=ids)
        del out
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return per_layer, rest[0], layer_input[0]


def _fit(b1: float, b2: float, t: int) -> tuple[float, float]:
    """a, b with a*t + b*t^2 = b1 and a*2t + b*4t^2 = b2 (b clamped at 0 against noise)."""
    quadratic = max(0.0, (b2 - 2 * b1) / (2 * t * t))
    return max(b1 / t - quadratic * t, b2 / (2 * t) - quadratic * 2 * t), quadratic


def _checkpointed(layers: int, n: int) -> int:
    return len(range(0, layers, n))


def _size(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB / 10 else f"{n / 2**20:.1f} MiB"


def _per_token(profile: Profile) -> float:
    return sum(a for a, _ in profile.layers) + profile.rest[0]


def _unique(tensors):
    seen = set()
    for t in tensors:
        if t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            yield t


def _device() -> torch.device:
    if device_type() == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")
