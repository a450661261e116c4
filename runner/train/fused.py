"""LoRA's update added to the base layer's output in one matmul.

PEFT computes `result + lora_B(lora_A(x)) * scaling`: the adapter's output is written, scaled
into a second tensor and added into a third, three passes over a tensor as large as the
layer's output for an update of rank r. `torch.addmm(result, lora_A(x), B^T, alpha=scaling)`
writes the sum once, and its backward scales the small rank-r gradient instead of the full one.
The weights, the saved adapter and every other path stay PEFT's: a layer in any state this
forward does not handle (merged, disabled, several adapters, dropout, DoRA and the other
variants, a bias on B, ZeRO-3 partitioned weights) runs PEFT's own forward.
"""

from __future__ import annotations

import types

import torch


def fuse_lora(model) -> int:
    """Give every plain LoRA linear layer the fused forward; returns how many."""
    from peft.tuners.lora.layer import Linear

    layers = [m for m in model.modules() if type(m) is Linear]  # not the quantized subclasses
    for layer in layers:
        layer.forward = types.MethodType(_forward, layer)
    return len(layers)


def _forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    from peft.tuners.lora.layer import Linear

    if args or kwargs or not _plain(self):
        return Linear.forward(self, x, *args, **kwargs)
    name = self.active_adapters[0]
    result = self.base_layer(x)
    lora_a = self.lora_A[name]
    low_rank = lora_a(self._cast_input_dtype(x, lora_a.weight.dtype))  # unless runner turned it off
    out = torch.addmm(
        result.reshape(-1, result.shape[-1]),
        low_rank.reshape(-1, low_rank.shape[-1]),
        self.lora_B[name].weight.t(),
        alpha=self.scaling[name],
    )
    return out.view(result.shape)


def _plain(layer) -> bool:
    if layer.disable_adapters or layer.merged or len(layer.active_adapters) != 1:
        return False
    name = layer.active_adapters[0]
    if name not in layer.lora_A or name in layer.lora_variant:
        return False
    b = layer.lora_B[name]
    return (
        isinstance(layer.lora_dropout[name], torch.nn.Identity)
        and b.bias is None
        and not hasattr(b.weight, "ds_id")
    )
