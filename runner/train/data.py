"""Datasets -> conversations -> tokenized rows.

Records are read by runner itself (json, jsonl, csv, tsv, parquet) so a malformed line is
reported as file:line rather than as a parser traceback. Each format maps its fields to
a list of chat messages; `columns` renames a file's columns to the format's field names.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path
from typing import Any

from runner.errors import RunnerError
from runner.spec.job import DatasetSpec, DataSpec

log = logging.getLogger(__name__)
SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
          "model": "assistant", "bot": "assistant", "system": "system"}  # fmt: skip


class DataError(RunnerError):
    exit_code = 2


def load(data: DataSpec) -> list[list[Any]]:
    """Each dataset's items in file order: conversations (lists of messages) or texts.

    Placeholders are filled and each dataset's max_samples applied; mixing and the overall
    max_samples happen later, on the Dataset objects.
    """
    sources, skipped = [], 0
    for i, ds in enumerate(data.datasets):
        where = f"data.datasets[{i}]"
        bad = [0]
        items: list[Any] = []
        for origin, record in _records(ds, data.on_bad_record, bad):
            if ds.max_samples and len(items) >= ds.max_samples:
                break
            record = _fill(record, data.placeholders)
            try:
                if ds.format == "text":
                    items.append(str(_field(record, ds, "text", origin, where)))
                else:
                    convert = _alpaca if ds.format == "alpaca" else _sharegpt
                    items.append(convert(record, ds, origin, where))
            except DataError:
                if data.on_bad_record == "error":
                    raise
                bad[0] += 1
        if not items:
            raise DataError(
                f"{where} ({ds.name or ds.path}) has no usable record"
                + (f": all {bad[0]} were bad and skipped" if bad[0] else "; is the file empty?")
            )
        skipped += bad[0]
        sources.append(items)
    if skipped:
        log.warning("skipped %d bad record(s) (data.on_bad_record: skip)", skipped)
    return sources


def files(ds: DatasetSpec) -> list[Path]:
    """The data files of one dataset: the file itself, or a directory's data files by name."""
    path = Path(ds.path or "")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES)
    if not files:
        raise DataError(f"{path} holds no data files ({', '.join(SUFFIXES)})")
    return files


def _records(ds: DatasetSpec, on_bad: str, bad: list[int]):
    for path in files(ds):
        suffix = path.suffix
        if suffix == ".json":
            try:
                rows = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
            if isinstance(rows, dict) and len(rows) == 1 and isinstance(next(iter(rows.values())), list):
                rows = next(iter(rows.values()))
            if not isinstance(rows, list):
                raise DataError(f"{path}: expected a JSON list of records")
            for n, row in enumerate(rows):
                yield f"{path} record {n}", row
        elif suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        yield f"{path}:{n}", json.loads(line)
                    except json.JSONDecodeError as e:
                        if on_bad == "error":
                            raise DataError(
                                f"{path}:{n}: invalid JSON ({e.msg}); fix the line or set "
                                "data.on_bad_record: skip"
                            ) from None
                        bad[0] += 1
        elif suffix in (".csv", ".tsv"):
            with open(path, encoding="utf-8-sig", newline="") as f:
                reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
                for row in reader:
                    yield f"{path}:{reader.line_num}", row
        else:
            import pyarrow.parquet as pq

            for n, row in enumerate(pq.read_table(path).to_pylist()):
                yield f"{path} row {n}", row


def _fill(value: Any, placeholders: dict[str, str]) -> Any:
    if not placeholders:
        return value
    if isinstance(value, str):
        return _PLACEHOLDER.sub(lambda m: placeholders.get(m.group(1), m.group(0)), value)
    if isinstance(value, list):
        return [_fill(v, placeholders) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, placeholders) for k, v in value.items()}
    return value


def _field(record: Any, ds: DatasetSpec, name: str, origin: str, where: str, required: bool = True) -> Any:
    column = ds.columns.get(name, name)
    if not isinstance(record, dict):
        raise DataError(f"{origin}: expected an object with keys, got {type(record).__name__}")
    if column not in record or record[column] is None:
        if not required:
            return None
        raise DataError(
            f"{origin}: no column '{column}' (it has: {', '.join(map(str, record))}); "
            f"map it in {where}.columns, e.g. {{{name}: <your column>}}"
        )
    return record[column]


def _alpaca(record: Any, ds: DatasetSpec, origin: str, where: str) -> list[dict[str, str]]:
    instruction = str(_field(record, ds, "instruction", origin, where))
    query = _field(record, ds, "input", origin, where, required=False)
    output = str(_field(record, ds, "output", origin, where))
    system = _field(record, ds, "system", origin, where, required=False)
    history = _field(record, ds, "history", origin, where, required=False) or []
    messages = [{"role": "system", "content": str(system)}] if system else []
    for turn in history:
        if not (isinstance(turn, (list, tuple)) and len(turn) == 2):
            raise DataError(f"{origin}: history must be a list of [question, answer] pairs")
        messages += [
            {"role": "user", "content": str(turn[0])},
            {"role": "assistant", "content": str(turn[1])},
        ]
    prompt = f"{instruction}\n{query}" if query else instruction
    return messages + [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]


def _sharegpt(record: Any, ds: DatasetSpec, origin: str, where: str) -> list[dict[str, str]]:
    turns = _field(record, ds, "conversations", origin, where)
    system = _field(record, ds, "system", origin, where, required=False)
    messages = [{"role": "system", "content": str(system)}] if system else []
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{origin}: conversations must be a non-empty list")
    tags = ds.tags
    roles = dict(_ROLES)
    for tag, role in (("user_tag", "user"), ("assistant_tag", "assistant"), ("system_tag", "system")):
        if tag in tags:
            roles[tags[tag]] = role
    role_keys = (tags["role_tag"],) if "role_tag" in tags else ("from", "role")
    content_keys = (tags["content_tag"],) if "content_tag" in tags else ("value", "content")
    for turn in turns:
        role = next((turn[k] for k in role_keys if k in turn), None) if isinstance(turn, dict) else None
        content = next((turn[k] for k in content_keys if k in turn), None) if isinstance(turn, dict) else None
        if role not in roles or content is None:
            raise DataError(
                f"{origin}: each turn needs {'/'.join(role_keys)} and {'/'.join(content_keys)} with a role "
                f"among {', '.join(roles)} (got {turn!r:.80}); map other names in {where}.tags"
            )
        messages.append({"role": roles[role], "content": str(content)})
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{origin}: the conversation has no assistant turn to train on")
    return messages
