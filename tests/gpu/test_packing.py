"""On a GPU, packed rows go through flex attention (or flash-attention's variable-length kernels):
same loss and same gradients as padded batches, in bf16 within its rounding."""

from __future__ import annotations

import pytest


def _kernels():
    import importlib.util

    return ["sdpa", "flex_attention"] + (
        ["flash_attention_2"] if importlib.util.find_spec("flash_attn") else []
    )


@pytest.mark.parametrize("attn", _kernels())
def test_packed_equals_padded_loss_and_gradients(attn, tiny_model):
    import torch
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, DataCollatorWithFlattening

    from runner.core.data.templates import apply_template
    from runner.train.model import load_tokenizer
    from tests.integration.test_engine import _identity_rows

    tokenizer = load_tokenizer(str(tiny_model))
    apply_template(tokenizer, "auto")
    rows = _identity_rows(tokenizer, 8)
    padded = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)(rows)
    packed = DataCollatorWithFlattening(separator_id=-100)(
        [{k: r[k] for k in ("input_ids", "labels")} for r in rows]
    )
    results = []
    for batch, impl in ((padded, "sdpa"), (packed, attn)):
        model = AutoModelForCausalLM.from_pretrained(
            tiny_model, attn_implementation=impl, dtype=torch.bfloat16
        )
        model.config.use_cache = False
        model.cuda().train()
        loss = model(**{k: v.cuda() for k, v in batch.items()}).loss
        loss.backward()
        results.append((loss.item(), model.model.layers[0].self_attn.q_proj.weight.grad.float().cpu()))
    (loss_padded, grad_padded), (loss_packed, grad_packed) = results
    assert loss_packed == pytest.approx(loss_padded, rel=2e-2)
    assert torch.nn.functional.cosine_similarity(grad_padded.flatten(), grad_packed.flatten(), dim=0) > 0.99
