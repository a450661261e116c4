"""Property-based fuzzing: no input makes the spec loaders or a data reader raise anything but
their own clear error (SpecError, DataError), let alone print a traceback."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from runner.core.data import readers as data
from runner.core.errors import SpecError
from runner.core.jobspec.job import DatasetSpec, DataSpec
from runner.core.jobspec.load import load_image, load_job

EXAMPLES = int(os.environ.get("RUNNER_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RESULTS: dict[str, int] = {}

# Keys a job spec really has, so the fuzzer reaches past the first unknown key.
KEYS = ["name", "stage", "model", "path", "template", "method", "type", "r", "alpha", "target", "data",
        "datasets", "format", "columns", "cutoff_len", "training", "learning_rate", "max_steps",
        "resources", "gpus", "distributed", "deepspeed", "output", "dir", "image", "lora", "sft",
        "default_system", "add_special_tokens", "num_samples", "encoding", "placeholders"]  # fmt: skip
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
    st.text(max_size=20), st.sampled_from(["lora", "sft", "pt", "auto", "${X}", "${MODEL_DIR:-m}", "all", "~"]),
)  # fmt: skip
trees = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), children, max_size=5),
    ),
    max_leaves=25,
)


def _count(kind: str) -> None:
    RESULTS[kind] = RESULTS.get(kind, 0) + 1


def _loads_or_refuses(write) -> None:
    """The loader either returns a spec or raises SpecError: nothing else."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "job.yaml"
        write(path)
        try:
            load_job(path, base=Path(tmp))
        except SpecError as e:
            assert e.problems and str(e)


@FUZZ
@given(st.text(max_size=400))
def test_job_spec_from_any_text(text: str):
    _loads_or_refuses(lambda p: p.write_text(text, encoding="utf-8"))
    _count("job spec (text)")


@FUZZ
@given(st.binary(max_size=400))
def test_job_spec_from_any_bytes(raw: bytes):
    _loads_or_refuses(lambda p: p.write_bytes(raw))
    _count("job spec (bytes)")


@FUZZ
@given(st.dictionaries(st.sampled_from(KEYS), trees, max_size=8))
def test_job_spec_from_any_structure(tree: dict):
    def write(path: Path) -> None:
        with path.open("w", encoding="utf-8") as f:
            YAML().dump(tree, f)

    _loads_or_refuses(write)
    _count("job spec (structure)")


@FUZZ
@given(st.text(max_size=300))
def test_image_spec_from_any_text(text: str):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "img.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            load_image(path)
        except SpecError as e:
            assert e.problems
    _count("image spec")


# --- data readers -----------------------------------------------------------------------------

records = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.sampled_from(
                [
                    "instruction",
                    "input",
                    "output",
                    "system",
                    "history",
                    "conversations",
                    "from",
                    "value",
                    "role",
                    "content",
                    "text",
                    "messages",
                ]
            ),  # fmt: skip
            children,
            max_size=5,
        ),
    ),
    max_leaves=20,
)


def _reads_or_reports(suffix: str, payload: bytes, fmt: str) -> None:
    """Every record read, or the bad ones reported as DataError: nothing else escapes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"data{suffix}"
        path.write_bytes(payload)
        ds = DatasetSpec(path=str(path), format=fmt)
        errors, total = data.check(ds, DataSpec(datasets=[ds]), "data.datasets[0]")
        assert all(isinstance(e, data.DataError) and e.text(None) for e in errors)
        assert total >= len(errors)


@FUZZ
@given(st.sampled_from([".json", ".jsonl", ".csv", ".tsv", ".txt"]), st.binary(max_size=300),
       st.sampled_from(["alpaca", "sharegpt", "text"]))  # fmt: skip
def test_data_reader_on_any_bytes(suffix: str, payload: bytes, fmt: str):
    _reads_or_reports(suffix, payload, fmt)
    _count(f"data file (bytes, {suffix})")


@FUZZ
@given(st.lists(records, max_size=6), st.sampled_from(["alpaca", "sharegpt"]), st.booleans())
def test_data_reader_on_any_json_records(items: list, fmt: str, lines: bool):
    if lines:
        payload = "\n".join(json.dumps(i, ensure_ascii=False) for i in items)
    else:
        payload = json.dumps(items, ensure_ascii=False)
    _reads_or_reports(".jsonl" if lines else ".json", payload.encode(), fmt)
    _count("data file (json records)")


@FUZZ
@given(
    st.lists(st.lists(st.text(max_size=12), max_size=4), max_size=6), st.sampled_from(["alpaca", "sharegpt"])
)
def test_data_reader_on_any_table(rows: list, fmt: str):
    pytest.importorskip("pyarrow")
    import csv
    import io

    out = io.StringIO()
    csv.writer(out).writerows(
        [["instruction", "output", "extra"][: max(1, len(rows[0]) if rows else 1)], *rows]
    )
    _reads_or_reports(".csv", out.getvalue().encode(), fmt)
    _count("data file (csv tables)")


@FUZZ
@given(st.binary(max_size=300))
def test_parquet_reader_on_any_bytes(payload: bytes):
    pytest.importorskip("pyarrow")
    _reads_or_reports(".parquet", payload, "alpaca")
    _count("data file (parquet bytes)")


def test_report_figures():
    """Runs last in this file: the figure for the reliability table."""
    total = sum(RESULTS.values())
    print(f"RELIABILITY fuzzing: {total} generated inputs to the spec loaders and data readers, 0 tracebacks")
    assert total == 0 or total >= EXAMPLES
