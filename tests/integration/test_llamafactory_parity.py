"""Same data, same tokens: runner's input_ids and labels against LLaMA-Factory's own, recorded once
by scripts/record-llamafactory-encodings.py (LLaMA-Factory 0.9.5) and kept as data, since it is
no dependency of runner.

Every built-in template on real tokenizers shipped in PyPI packages (tests/data/tokenizers, by
scripts/reference-tokenizers.py): Qwen's byte-level BPE (dashscope) and Mistral's SentencePiece
(mistral-common), each with the control tokens of the template's model family added, over 54
conversations (identity records; answers starting with a quote, a newline, a bracket or a space
after prompts ending in a colon, a quote or a space; system prompts; multi-turn; Chinese; code;
prompts and answers longer than the cutoff) at cutoff_len 1024 and 40.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import DATA

pytestmark = pytest.mark.integration
RECORDED = json.loads((DATA / "templates" / "llamafactory_encodings.json").read_text(encoding="utf-8"))
CONVERSATIONS = json.loads((DATA / "templates" / "parity_conversations.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for source in (DATA / "tokenizers").iterdir():
        target = tmp_path_factory.mktemp(source.name)
        shutil.copy(source / "tokenizer_config.json", target)
        (target / "tokenizer.json").write_bytes(gzip.decompress((source / "tokenizer.json.gz").read_bytes()))
        out[source.name] = target
    return out


def family_tokenizer(tokenizer_dirs: dict[str, Path], pair: dict):
    """The real tokenizer with the family's control tokens, exactly as the recording had it."""
    from transformers import AddedToken, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dirs[pair["tokenizer"]]), local_files_only=True)
    tok.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in pair["special"]], special_tokens=True
    )
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in pair["added"]])
    if pair["bos"]:
        tok.add_tokens([AddedToken(pair["bos"], special=True, normalized=False)], special_tokens=True)
        tok.bos_token = pair["bos"]
    return tok


def test_every_builtin_template_is_recorded():
    from runner.core.data.templates import BUILTIN
    from runner.core.jobspec.job import TEMPLATES

    assert TEMPLATES[1:] == tuple(BUILTIN)
    assert {pair["template"] for pair in RECORDED["pairs"].values()} == set(BUILTIN)
    assert len(CONVERSATIONS) >= 50


@pytest.mark.parametrize("key", sorted(RECORDED["pairs"]))
def test_runner_encodes_as_llamafactory(key: str, tokenizer_dirs):
    from runner.core.data.templates import apply_template, encode

    pair = RECORDED["pairs"][key]
    tokenizer = family_tokenizer(tokenizer_dirs, pair)
    apply_template(tokenizer, pair["template"])
    differ = []
    for cutoff, rows in pair["rows"].items():
        for i, (conversation, (input_ids, labels)) in enumerate(zip(CONVERSATIONS, rows, strict=True)):
            row = encode(tokenizer, conversation["messages"], int(cutoff))
            if row is None or (row["input_ids"], row["labels"]) != (input_ids, labels):
                differ.append(f"conversation {i} at cutoff_len {cutoff}")
    assert not differ, differ


def test_no_trained_token_spans_a_prompt_and_its_answer(tokenizer_dirs):
    """Qwen's BPE merges ':' and '"' into one token ':"'; joined, a prompt ending in a colon and an
    answer starting with a quote would train that token, which never follows a real chat prompt."""
    from runner.core.data.templates import IGNORE, apply_template, encode

    tokenizer = family_tokenizer(tokenizer_dirs, RECORDED["pairs"]["default/qwen-bpe"])
    apply_template(tokenizer, "default")
    merged = tokenizer.convert_tokens_to_ids(':"')
    assert merged in tokenizer.encode('Assistant:"Measure', add_special_tokens=False)  # joined, they merge
    messages = [{"role": "user", "content": "Quote the motto:"},
                {"role": "assistant", "content": '"Measure twice, cut once."'}]  # fmt: skip
    row = encode(tokenizer, messages, cutoff_len=1024)
    trained = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != IGNORE]
    assert tokenizer.decode(trained).startswith('"Measure twice')
    text = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    chat_prompt = tokenizer.encode(text, add_special_tokens=False)
    assert row["input_ids"][: len(chat_prompt)] == chat_prompt  # training continues chat's prompt
    assert row["labels"][len(chat_prompt)] == row["input_ids"][len(chat_prompt)] != merged


def test_a_prompt_longer_than_cutoff_keeps_its_answer(tokenizer_dirs):
    """chatglm3 (efficient eos): the prompt gives way, the answer is trained; never a lone eos."""
    from runner.core.data.templates import IGNORE, apply_template, encode

    tokenizer = family_tokenizer(tokenizer_dirs, RECORDED["pairs"]["chatglm3/mistral-sp"])
    apply_template(tokenizer, "chatglm3")
    messages = [{"role": "user", "content": " ".join(f"word{i}" for i in range(200))},
                {"role": "assistant", "content": "Short answer."}]  # fmt: skip
    row = encode(tokenizer, messages, cutoff_len=64)
    assert len(row["input_ids"]) <= 64
    trained = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != IGNORE]
    assert tokenizer.decode(trained[:-1]).strip() == "Short answer." and trained[-1] == tokenizer.eos_token_id
    assert encode(tokenizer, messages, cutoff_len=1) is None  # no room for any answer: dropped
