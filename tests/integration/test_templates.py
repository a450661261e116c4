"""The label mask: only assistant turns (and what closes them) are trained."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path):
    from runner.train.model import load_tokenizer

    return load_tokenizer(str(tiny_model))


def trained_text(tokenizer, row) -> str:
    return tokenizer.decode(
        [t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != -100]
    )


def test_prompt_is_masked_answer_is_trained(tokenizer):
    from runner.core.data.templates import encode

    messages = [{"role": "user", "content": "你是谁？"}, {"role": "assistant", "content": "我是小R。"}]
    row = encode(tokenizer, messages, cutoff_len=512)
    full = tokenizer.decode(row["input_ids"])
    assert full == tokenizer.apply_chat_template(messages, tokenize=False)
    assert trained_text(tokenizer, row) == "我是小R。<|im_end|>\n"
    assert row["labels"][0] == -100


def test_every_assistant_turn_is_trained(tokenizer):
    from runner.core.data.templates import encode

    messages = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"},
    ]  # fmt: skip
    row = encode(tokenizer, messages, cutoff_len=512)
    assert trained_text(tokenizer, row) == "a1<|im_end|>\na2<|im_end|>\n"


def test_cutoff_cuts_the_prompt_first_and_drops_answerless_rows(tokenizer):
    """As LLaMA-Factory cuts (infer_seqlen): a short answer is kept whole and its prompt gives way;
    a row left with no answer token is dropped."""
    from runner.core.data.templates import IGNORE, encode, turn_pairs

    messages = [{"role": "user", "content": "long " * 50}, {"role": "assistant", "content": "x"}]
    ((prompt, answer),) = turn_pairs(tokenizer, messages)
    row = encode(tokenizer, messages, cutoff_len=8)
    assert row["input_ids"] == prompt[: 8 - len(answer)] + answer
    assert [t for t in row["labels"] if t != IGNORE] == answer
    assert encode(tokenizer, messages, cutoff_len=1000)["input_ids"] == prompt + answer
    assert encode(tokenizer, [messages[0], {"role": "assistant", "content": ""}][:1], cutoff_len=8) is None


def test_builtin_template_is_applied_and_saved(tiny_model, tmp_path):
    from runner.core.data.templates import BUILTIN, add_special_tokens, apply_template
    from runner.train.model import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model))  # its own copy: tokens are added
    add_special_tokens(tokenizer, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"])
    apply_template(tokenizer, "llama3")
    assert tokenizer.chat_template == BUILTIN["llama3"].jinja
    tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    text = again.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
