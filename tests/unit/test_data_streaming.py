"""Data read as a stream (runner/core/data/streams.py, records.py) and tokenized rows written as they
come (runner/train/encode.py): the same records, lines and messages as reading a file whole, in
memory that does not grow with the file."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from runner.core.data import readers, streams
from runner.core.data.readers import DataError
from runner.core.jobspec.job import DataSpec

RECORD = {
    "instruction": "explain the balance of the account",
    "input": "",
    "output": "it is what is left " * 4,
}


def _spec(path: Path, **data) -> DataSpec:
    return DataSpec.model_validate({"datasets": [{"path": str(path)}], **data})


def _first_error(spec: DataSpec) -> DataError:
    (errors, total) = readers.check(spec.datasets[0], spec, "data.datasets[0]")
    assert errors, "the bad record was not found"
    return errors[0]


@pytest.fixture
def small_chunks(monkeypatch):
    """The JSON parser reads 4 KiB at a time: every value in a file of a few hundred KiB crosses
    reads, as the values of a file of gigabytes do with the real 1 Mi characters."""
    monkeypatch.setattr(streams, "CHUNK", 4096)


def test_a_json_list_read_in_pieces_gives_every_record_with_its_line(tmp_path: Path, small_chunks):
    path = tmp_path / "big.json"
    records = [{**RECORD, "instruction": f"question {i} " + "字" * (i % 50)} for i in range(3000)]
    path.write_text("[\n" + ",\n".join(json.dumps(r, ensure_ascii=False, indent=1) for r in records) + "\n]\n",
                    encoding="utf-8")  # fmt: skip
    (items,) = readers.load(_spec(path))
    assert len(items) == 3000
    assert items[2999][0] == {"role": "user", "content": records[2999]["instruction"]}
    lines = [line for (_, line, _), _ in readers.read_records(_spec(path).datasets[0], "data.datasets[0]")]
    per_record = len(json.dumps(records[0], indent=1).splitlines())
    assert lines[:3] == [2, 2 + per_record, 2 + 2 * per_record]
    assert lines[-1] == 2 + 2999 * per_record


def test_a_broken_value_deep_in_a_json_list_is_reported_where_the_whole_file_parser_finds_it(
    tmp_path: Path, small_chunks
):
    path = tmp_path / "big.json"
    good = ",\n".join(json.dumps(RECORD) for _ in range(2000))
    text = "[\n" + good + ',\n{"instruction": "q", "output": "a" "oops"},\n' + good + "\n]\n"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(json.JSONDecodeError) as whole:
        json.loads(text)
    error = _first_error(_spec(path))
    assert error.line == whole.value.lineno == 2002
    assert f"invalid JSON at column {whole.value.colno}: a ',' is missing between two items" in str(error)


def test_a_json_list_cut_short_says_so(tmp_path: Path, small_chunks):
    path = tmp_path / "cut.json"
    path.write_text(
        "[\n" + ",\n".join(json.dumps(RECORD) for _ in range(500)) + ",\n" + '{"instruction": "q", '
    )
    assert "the file ends before the list is closed (is it truncated?)" in str(_first_error(_spec(path)))


def test_bad_json_lines_keep_their_line_numbers_and_are_skipped_when_asked(tmp_path: Path):
    path = tmp_path / "big.jsonl"
    lines = [json.dumps(RECORD)] * 5000
    lines[1233] = '{"instruction": "q", "output": '  # line 1234: cut short
    lines[4001] = "{broken"  # line 4002
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    errors, total = readers.check(_spec(path).datasets[0], _spec(path), "data.datasets[0]")
    assert total == 2 and [e.line for e in errors] == [1234, 4002]
    assert "the line ends before the record does (is it cut short?)" in str(errors[0])
    skipped: list[int] = []
    (items,) = readers.load(_spec(path, on_bad_record="skip"), skipped_per_dataset=skipped)
    assert len(items) == 4998 and skipped == [2]


def test_a_bad_byte_far_into_a_file_is_found_by_line_with_the_encoding_that_works(tmp_path: Path):
    path = tmp_path / "faq.csv"
    rows = "".join(f"question {i},answer {i}\n" for i in range(20000))
    path.write_bytes(b"instruction,output\n" + rows.encode() + "最后,一行\n".encode("gbk"))
    with pytest.raises(DataError, match="is not valid utf-8 text.*it decodes as gbk: set encoding: gbk") as e:
        readers.load(_spec(path))
    assert e.value.line == 20002


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".txt"])
def test_reading_a_large_file_holds_a_bounded_amount_of_memory(tmp_path: Path, suffix: str):
    """About 24 MB of records read through (as validate does): Python's allocations stay a few MB,
    not a multiple of the file."""
    path = tmp_path / f"big{suffix}"
    record = {**RECORD, "output": "it is what is left of the money " * 20}
    n = 24_000_000 // len(json.dumps(record))
    with path.open("w", encoding="utf-8") as f:
        if suffix == ".jsonl":
            f.writelines(json.dumps(record) + "\n" for _ in range(n))
        elif suffix == ".json":
            f.write("[\n" + ",\n".join(json.dumps(record) for _ in range(n)) + "\n]\n")
        elif suffix == ".csv":
            f.write("instruction,output\n")
            f.writelines(f"{record['instruction']},{record['output']}\n" for _ in range(n))
        else:
            f.writelines(record["output"] + "\n" for _ in range(n))
    assert path.stat().st_size > 20_000_000
    spec = DataSpec.model_validate({"datasets": [{"path": str(path), "format": "text" if suffix == ".txt" else "alpaca"}],
                                    "cutoff_len": 1024})  # fmt: skip
    counted = [0]
    tracemalloc.start()
    try:
        errors, total = readers.check(spec.datasets[0], spec, "data.datasets[0]",
                                      tick=lambda: counted.__setitem__(0, counted[0] + 1))  # fmt: skip
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (errors, total) == ([], 0) and counted[0] == n
    assert peak < 12_000_000, f"{peak / 1e6:.1f} MB held to read {path.stat().st_size / 1e6:.0f} MB"


def test_the_cursor_follows_the_bytes_read(tmp_path: Path):
    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps(RECORD) + "\n" for _ in range(20000)), encoding="utf-8")
    spec = _spec(path)
    cursor = readers.Cursor(path.stat().st_size)
    seen = []
    for i, _ in enumerate(readers.items_of(spec.datasets[0], spec, "data.datasets[0]", [0], cursor=cursor)):
        if i % 5000 == 0:
            seen.append(cursor.fraction())
    assert seen[0] < seen[-1] < 1 and cursor.fraction() == 1.0


# --- tokenized rows written as they come ---------------------------------------------------------


def _fake_tokens(batch: dict, tokenizer) -> dict:
    """A stand-in for a tokenizer: a record's tokens are its words' lengths."""
    ids = [[len(w) for w in text.split()] for text in batch["item"]]
    return {"input_ids": ids, "labels": ids, "length": [len(i) for i in ids]}


def _fake_stream(batch: dict, tokenizer) -> dict:
    return {"stream": [len(w) for text in batch["item"] for w in [*text.split(), "EOS"]]}


pyarrow = pytest.importorskip("pyarrow")


@pytest.mark.parametrize("workers", [1, 2])
def test_rows_are_written_in_order_with_any_number_of_workers(tmp_path: Path, workers: int):
    from datasets import Dataset

    from runner.core.data.progress import Meter
    from runner.train import encode

    texts = [" ".join("w" * (1 + (i + j) % 7) for j in range(1 + i % 5)) for i in range(3500)]
    written = encode.write(iter(texts), encode.Job(_fake_tokens), None, tmp_path, workers, Meter())
    rows = Dataset.from_file(str(tmp_path / encode.FILE))
    assert written.records == written.rows == len(rows) == 3500
    assert rows["input_ids"] == [[len(w) for w in t.split()] for t in texts]
    assert written.tokens == sum(rows["length"])


def test_pt_blocks_run_on_across_batches(tmp_path: Path):
    """Every block is cutoff_len long but the very last, whatever the batches were."""
    from datasets import Dataset

    from runner.core.data.progress import Meter
    from runner.train import encode

    texts = ["aa bbb c dddd"] * 2500  # 5 tokens a record with EOS: batches of 1000 end mid-block
    written = encode.write(iter(texts), encode.Job(_fake_stream, block=64), None, tmp_path, 2, Meter())
    rows = Dataset.from_file(str(tmp_path / encode.FILE))
    stream = [2, 3, 1, 4, 3] * 2500
    assert [t for row in rows["input_ids"] for t in row] == stream
    assert set(rows["length"][:-1]) == {64} and rows["length"][-1] == len(stream) % 64
    assert written.tokens == len(stream) and written.records == 2500
