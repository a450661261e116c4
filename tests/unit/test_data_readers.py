"""The record readers of runner/core/data/readers.py: encodings, byte order marks, .txt corpora,
JSON Lines in a .json file, and the same reading for validate as for training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.core.data.readers import DataError, load
from runner.core.jobspec.job import DataSpec


def _load(path: Path, **dataset) -> list:
    (items,) = load(DataSpec.model_validate({"datasets": [{"path": str(path), **dataset}]}))
    return items


def test_gbk_csv_reads_with_encoding_gbk(tmp_path: Path):
    path = tmp_path / "faq.csv"
    path.write_bytes("问题,回答\n余额多少？,您的余额是100元。\n".encode("gbk"))
    with pytest.raises(DataError, match="it decodes as gbk: set encoding: gbk"):
        _load(path, columns={"instruction": "问题", "output": "回答"})
    items = _load(path, columns={"instruction": "问题", "output": "回答"}, encoding="gbk")
    assert items == [
        [{"role": "user", "content": "余额多少？"}, {"role": "assistant", "content": "您的余额是100元。"}]
    ]


@pytest.mark.parametrize("suffix", [".csv", ".json", ".jsonl"])
def test_utf8_byte_order_mark_is_accepted(tmp_path: Path, suffix: str):
    text = {
        ".csv": "instruction,output\n你好,您好\n",
        ".json": json.dumps([{"instruction": "你好", "output": "您好"}], ensure_ascii=False),
        ".jsonl": json.dumps({"instruction": "你好", "output": "您好"}, ensure_ascii=False) + "\n",
    }[suffix]
    path = tmp_path / f"a{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert _load(path)[0][0] == {"role": "user", "content": "你好"}


def test_utf16_with_bom_reads_with_encoding_utf16(tmp_path: Path):
    path = tmp_path / "a.json"
    path.write_bytes(
        json.dumps([{"instruction": "你好", "output": "您好"}], ensure_ascii=False).encode("utf-16")
    )
    with pytest.raises(DataError, match="set encoding: utf-16"):
        _load(path)
    assert _load(path, encoding="utf-16")[0][1]["content"] == "您好"


def test_txt_corpus_is_one_document_per_line(tmp_path: Path):
    path = tmp_path / "corpus.txt"
    path.write_text("第一篇。\n\n第二篇，\r\n还是第三篇。\n", encoding="utf-8")
    assert _load(path, format="text") == ["第一篇。", "第二篇，", "还是第三篇。"]
    with pytest.raises(DataError, match=r"a \.txt file is plain text.*set format: text"):
        _load(path)


def test_json_lines_in_a_json_file(tmp_path: Path):
    path = tmp_path / "a.json"
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert [m[0]["content"] for m in _load(path)] == ["q0", "q1", "q2"]


def test_json_list_records_are_named_by_line(tmp_path: Path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"instruction": "q", "output": "a"}, {"instruction": "q"}], indent=1))
    with pytest.raises(DataError, match=r"a\.json:6: record 2: no column 'output'"):
        _load(path)


def test_csv_error_is_at_the_records_first_line(tmp_path: Path):
    path = tmp_path / "a.csv"
    path.write_text('instruction,output\n"multi\nline",ok\nx,y,z\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"a\.csv:4: record 2: has 3 fields where the header has 2"):
        _load(path)
    items = load(DataSpec.model_validate({"datasets": [{"path": str(path)}], "on_bad_record": "skip"}))
    assert items == [[[{"role": "user", "content": "multi\nline"}, {"role": "assistant", "content": "ok"}]]]


def test_sharegpt_out_of_order_is_skipped_with_skip(tmp_path: Path):
    path = tmp_path / "c.jsonl"
    good = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    bad = {"conversations": [{"from": "gpt", "value": "hello"}, {"from": "human", "value": "hi"}]}
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="turn 1 is from the assistant"):
        _load(path, format="sharegpt")
    spec = {"datasets": [{"path": str(path), "format": "sharegpt"}], "on_bad_record": "skip"}
    assert len(load(DataSpec.model_validate(spec))[0]) == 1


def test_columns_keys_must_be_the_formats_fields():
    with pytest.raises(ValueError, match="unknown field question for format alpaca"):
        DataSpec.model_validate({"datasets": [{"path": "x.csv", "columns": {"question": "问题"}}]})
    # LLaMA-Factory's own names for the fields (dataset_info.json's) are taken as synonyms
    spec = DataSpec.model_validate({"datasets": [{"path": "x.csv", "columns": {"prompt": "问题"}}]})
    assert spec.datasets[0].columns == {"instruction": "问题"}
