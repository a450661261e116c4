"""Goldens: each built-in template's exact rendering and trained text; each data format's
conversion (alpaca with history, sharegpt both spellings, CSV with a column mapping)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from runner.core.jobspec.job import DataSpec
from tests.conftest import ROOT

pytestmark = pytest.mark.integration
GOLDEN = ROOT / "tests" / "golden"
CONVERSATION = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "你好"},
    {"role": "assistant", "content": "你好！"},
    {"role": "user", "content": "Who are you?"},
    {"role": "assistant", "content": "I am 小R."},
]


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path):
    from runner.train.model import load_tokenizer

    return load_tokenizer(str(tiny_model))


def test_every_builtin_template_renders_and_masks(tiny_model):
    """Each built-in on a tokenizer with its model family's special tokens (test data); labels
    that differ from their token (efficient eos) show as <label:eos>."""
    from runner.core.data.templates import BUILTIN, IGNORE, apply_template, encode
    from tests.integration.test_template_parity import MODELS, family_tokenizer

    out = []
    for family in sorted(MODELS, key=lambda f: MODELS[f]["template"]):
        name = MODELS[family]["template"]
        tokenizer = family_tokenizer(tiny_model, MODELS[family])
        apply_template(tokenizer, name)
        row = encode(tokenizer, CONVERSATION, cutoff_len=4096, efficient_eos=BUILTIN[name].efficient_eos)
        full = tokenizer.decode(row["input_ids"])
        trained = "".join(
            tokenizer.decode([t]) if label == t else f"<label:{tokenizer.decode([label])}>"
            for t, label in zip(row["input_ids"], row["labels"], strict=True)
            if label != IGNORE
        )
        assert "你好！" in trained and "I am 小R." in trained and "Who are you?" not in trained
        out.append(f"== {name} ({family} tokens)\n-- rendered\n{full}\n-- trained\n{trained}\n")
    golden("templates.txt", "\n".join(out))


def _convert(tmp_path: Path, filename: str, content: str, dataset: dict) -> list:
    from runner.core.data.readers import load

    (tmp_path / filename).write_text(content, encoding="utf-8")
    spec = DataSpec.model_validate({"datasets": [{"path": str(tmp_path / filename), **dataset}]})
    (items,) = load(spec)
    return items


def test_data_formats_golden(tmp_path: Path):
    cases = {
        "alpaca-history": _convert(
            tmp_path,
            "a.json",
            json.dumps(
                [
                    {
                        "instruction": "翻译",
                        "input": "hello",
                        "output": "你好",
                        "system": "You translate.",
                        "history": [["1+1", "2"]],
                    }
                ],
                ensure_ascii=False,
            ),
            {"format": "alpaca"},
        ),  # fmt: skip
        "sharegpt-from-value": _convert(
            tmp_path,
            "s.jsonl",
            json.dumps(
                {
                    "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}],
                    "system": "sys",
                }
            )
            + "\n",
            {"format": "sharegpt"},
        ),  # fmt: skip
        "sharegpt-role-content": _convert(
            tmp_path,
            "m.jsonl",
            json.dumps(
                {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
            )
            + "\n",
            {"format": "sharegpt", "columns": {"conversations": "messages"}},
        ),  # fmt: skip
        # OpenAI's and TRL's messages, read as conversations with no mapping; one line, no wrapper
        "messages-unmapped": _convert(
            tmp_path,
            "o.jsonl",
            json.dumps(
                {
                    "messages": [
                        {"role": "system", "content": "sys"},
                        {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "hello"},
                    ]
                }
            )
            + "\n",
            {"format": "sharegpt"},
        ),  # fmt: skip
        # LLaMA-Factory's own column names (dataset_info.json's) as synonyms in `columns`
        "llamafactory-column-names": _convert(
            tmp_path,
            "l.json",
            json.dumps([{"q": "翻译", "ctx": "hello", "a": "你好"}], ensure_ascii=False),
            {"format": "alpaca", "columns": {"prompt": "q", "query": "ctx", "response": "a"}},
        ),  # fmt: skip
        "llamafactory-messages-column": _convert(
            tmp_path,
            "lm.jsonl",
            json.dumps({"chat": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]})
            + "\n",
            {"format": "sharegpt", "columns": {"messages": "chat"}},
        ),  # fmt: skip
        "csv-columns": _convert(
            tmp_path,
            "c.csv",
            "行动,问题,回答\n查询,余额多少？,您的余额是100元。\n",
            {"format": "alpaca", "columns": {"instruction": "问题", "input": "行动", "output": "回答"}},
        ),  # fmt: skip
        "advertise-gen": _convert(
            tmp_path,
            "ad.json",
            json.dumps([{"content": "类型#裙", "summary": "一条裙子"}], ensure_ascii=False),
            {"format": "alpaca", "columns": {"instruction": "content", "output": "summary"}},
        ),  # fmt: skip
    }
    golden("data_formats.json", json.dumps(cases, ensure_ascii=False, indent=1) + "\n")


def test_bad_jsonl_line_is_named_or_skipped(tmp_path: Path, caplog):
    from runner.core.data.readers import DataError

    content = '{"instruction": "a", "output": "b"}\n{broken\n{"instruction": "c", "output": "d"}\n'
    with pytest.raises(DataError, match=r"bad\.jsonl:2: invalid JSON"):
        _convert(tmp_path, "bad.jsonl", content, {"format": "alpaca"})
    from runner.core.data.readers import load

    spec = DataSpec.model_validate(
        {"datasets": [{"path": str(tmp_path / "bad.jsonl")}], "on_bad_record": "skip"}
    )
    with caplog.at_level("WARNING"):
        (items,) = load(spec)
    assert [m[0]["content"] for m in items] == ["a", "c"]
    assert "skipped 1 bad record(s)" in caplog.text


def test_chat_turns_in_format_alpaca_point_to_sharegpt(tmp_path: Path):
    from runner.core.data.readers import DataError

    line = json.dumps(
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    )
    with pytest.raises(DataError, match=r"its records hold chat turns \('messages'\), which format alpaca does not "
                                        r"read: set format: sharegpt on data\.datasets\[0\]"):  # fmt: skip
        _convert(tmp_path, "m.jsonl", line + "\n", {})


def test_missing_column_names_the_record_and_the_fix(tmp_path: Path):
    from runner.core.data.readers import DataError

    with pytest.raises(
        DataError,
        match=r"no column 'instruction' \(it has: 问题, 回答\); map it in data\.datasets\[0\]\.columns",
    ):
        _convert(tmp_path, "x.csv", "问题,回答\n甲,乙\n", {"format": "alpaca"})
