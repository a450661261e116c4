"""Data files -> records -> conversations.

Records are read by runner itself (json, jsonl, csv, tsv, parquet, txt) so a malformed line is
reported as file:line rather than as a parser traceback. Each format maps its fields to
a list of chat messages; `columns` renames a file's columns to the format's field names.
`runner validate` reads the data with these same functions (readers.check), so whatever
training would reject is rejected there first. Everything here but parquet (pyarrow, imported when
needed) is plain Python, for the host-side CLI.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runner.core import stages
from runner.core.data.streams import BadText, Cursor, Window, only_key, open_text, plain_json, wrapper_key
from runner.core.errors import RunnerError
from runner.core.jobspec.job import DatasetSpec

log = logging.getLogger(__name__)
SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet", ".txt")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
          "model": "assistant", "bot": "assistant", "system": "system"}  # fmt: skip
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long documents in one cell
Records = Iterator[tuple[tuple[Path, int | None, int], Any]]


class DataError(RunnerError):
    """A bad data file or record. `file`, `line` (1-based) and `record` (1-based) locate it
    when known; `fatal`: the file itself cannot be read on (skipping records cannot help)."""

    exit_code = 2

    def __init__(
        self, message: str, file: Path | str | None = None, line: int | None = None,
        record: int | None = None, fatal: bool = False,
    ) -> None:  # fmt: skip
        self.message, self.file, self.line, self.record, self.fatal = message, file, line, record, fatal
        super().__init__(self.text())

    def text(self, shown: str | None = None) -> str:
        """The message, its file shown as `shown` (the path as the user wrote it)."""
        if self.file is None:
            return self.message
        where = shown or str(self.file)
        if self.line:
            where += f":{self.line}"
        if self.record:
            where += f": record {self.record}"
        return f"{where}: {self.message}"


def files(ds: DatasetSpec) -> list[Path]:
    """The data files of one dataset: the file itself, or a directory's data files by name."""
    path = Path(ds.path or "")
    if path.is_file():
        if path.suffix not in SUFFIXES:
            raise DataError(_not_data(path), path, fatal=True)
        return [path]
    files = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES)
    if not files:
        scripts = sorted(p for p in path.iterdir() if p.suffix == ".py")
        if scripts:
            raise DataError(_not_data(scripts[0]), scripts[0], fatal=True)
        raise DataError(f"{path} holds no data files ({', '.join(SUFFIXES)})", fatal=True)
    return files


def _not_data(path: Path) -> str:
    if path.suffix == ".py":
        return (
            "is a dataset loading script: it builds the data with code, usually from the "
            "network. runner reads data files only: on the connected side run it (e.g. "
            "datasets.load_dataset(...)['train'].to_json('data.jsonl', force_ascii=False)) and give "
            "the file it writes"
        )
    hint = (
        "; save the sheet as CSV UTF-8 (or CSV, with encoding: gbk)"
        if path.suffix in (".xlsx", ".xls")
        else ""
    )
    return f"runner reads {', '.join(SUFFIXES)} files, not '{path.suffix or 'no suffix'}'{hint}"


def read_records(
    ds: DatasetSpec, where: str, stage: str = stages.DEFAULT, cursor: Cursor | None = None
) -> Records:
    """(origin, record) of every file, read as a stream; origin is (file, line or None, record
    number). A record that does not parse comes as a DataError in place of the record; a file that
    cannot be read on raises one (fatal). `cursor` follows the bytes read, for progress."""
    cursor = cursor or Cursor()
    readers = {".parquet": _parquet, ".txt": _text, ".json": _json, ".jsonl": _json_lines}
    for path in files(ds):
        try:
            yield from readers.get(path.suffix, _csv)(path, ds, where, stage, cursor)
        except BadText as e:
            raise DataError(e.message, path, e.line, fatal=True) from None
        cursor.finish(path.stat().st_size)


def _text(path: Path, ds: DatasetSpec, where: str, stage: str, cursor: Cursor) -> Records:
    if ds.format != "text":
        raise DataError(
            f"a .txt file is plain text, one document per line, for stage pt; set format: text "
            f"(got '{ds.format}'), or give conversations as json, jsonl or csv",
            path, fatal=True,
        )  # fmt: skip
    column = ds.columns.get("text", "text")
    n = 0
    with open_text(path, ds.encoding) as f:
        cursor.follow(f.buffer)
        for lineno, line in enumerate(f, 1):
            if line.strip():
                n += 1
                yield (path, lineno, n), {column: line.rstrip("\n")}


def _json(path: Path, ds: DatasetSpec, where: str, stage: str, cursor: Cursor) -> Records:
    """A JSON list of records (each numbered with its line), a {"key": [records]} wrapper, or
    JSON Lines saved with a .json suffix; all read as streams. One object that is none of these is
    one record."""
    conversations = {ds.columns.get("conversations", "conversations"), "messages"}
    with open_text(path, ds.encoding, newline="") as f:
        cursor.follow(f.buffer)
        w = Window(f)
        start = w.skip_ws(0)
        if w.text[start : start + 1] == "[":
            for n, (line, value) in enumerate(w.array(start), 1):
                yield (path, line, n), value
            if (extra := w.skip_ws(w.end)) < len(w.text):
                raise w.error("Extra data after the list", extra)
            return
        wrapper = wrapper_key(w, start)
        wrapped = wrapper is not None and wrapper[0] not in conversations and only_key(w, wrapper[1])
    if wrapped:  # {"key": [records]}: its list
        with open_text(path, ds.encoding, newline="") as f:
            cursor.follow(f.buffer)
            for n, (_, value) in enumerate(Window(f).array(wrapper[1]), 1):
                yield (path, None, n), value
        return
    with open_text(path, ds.encoding, newline="") as f:
        w = Window(f)
        try:
            lines = w.skip_ws(w.value(start)[1]) < len(w.text)  # several values: JSON Lines
        except json.JSONDecodeError:
            lines = False  # reported below, as the whole file's error
    if lines:
        yield from _json_lines(path, ds, where, stage, cursor)
        return
    with open_text(path, ds.encoding, newline="") as f:  # one value, or one that does not parse: read whole
        text = f.read()
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(
            f"invalid JSON at column {e.colno}: {plain_json(e.msg)}", path, e.lineno, fatal=True
        ) from None
    if isinstance(rows, dict):
        keys = list(rows)
        one_record = bool(conversations & set(keys)) or len(keys) != 1
        if not one_record and isinstance(rows[keys[0]], list):
            for n, row in enumerate(rows[keys[0]], 1):
                yield (path, None, n), row
            return
        yield (path, text.count("\n", 0, start) + 1, 1), rows  # one record (JSON Lines of one line)
        return
    raise DataError(f"expected a JSON list of records, got {kind_of(rows)}", path, fatal=True)


def _json_lines(path: Path, ds: DatasetSpec, where: str, stage: str, cursor: Cursor) -> Records:
    n = 0
    with open_text(path, ds.encoding) as f:
        cursor.follow(f.buffer)
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            n += 1
            line = line.rstrip("\r\n")
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                value = DataError(
                    f"invalid JSON at column {e.colno}: {plain_json(e.msg, e.pos >= len(line.rstrip()))}; fix "
                    "the line or set data.on_bad_record: skip",
                    path, lineno,
                )  # fmt: skip
            yield (path, lineno, n), value


def _csv(path: Path, ds: DatasetSpec, where: str, stage: str, cursor: Cursor) -> Records:
    delimiter = "\t" if path.suffix == ".tsv" else ","
    with open_text(path, ds.encoding, newline="") as f:
        cursor.follow(f.buffer)
        reader = csv.reader(f, delimiter=delimiter)
        header: list[str] | None = None
        n = 0
        while True:
            first = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise DataError(
                    f"unreadable {path.suffix[1:]} record: {e}", path, first, fatal=True
                ) from None
            if not row or not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = row
                _check_header(header, ds, (path, first, 0), where, stage)
                continue
            n += 1
            if len(row) != len(header) and any("\n" in cell or "\r" in cell for cell in row):
                yield (path, first, n), DataError(
                    f"a double quote opened in this record is never closed, so it runs on to line "
                    f"{reader.line_num}; close the quote, or write a quote inside a value as \"\"",
                    path, first, n,
                )  # fmt: skip
                continue
            if len(row) != len(header):
                quote = "a tab" if delimiter == "\t" else "a comma"
                yield (path, first, n), DataError(
                    f"has {len(row)} fields where the header has {len(header)}; a value holding {quote}, "
                    'a quote or a line break must be in double quotes ("...", a quote inside written "")',
                    path, first, n,
                )  # fmt: skip
                continue
            yield (path, first, n), dict(zip(header, row, strict=True))


def _parquet(path: Path, ds: DatasetSpec, where: str, stage: str, cursor: Cursor) -> Records:
    """Batch by batch (1024 rows at most), never the whole table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 0
    try:
        table = pq.ParquetFile(path)
        size, total = path.stat().st_size, max(1, table.metadata.num_rows)
        for batch in table.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                n += 1
                yield (path, None, n), row
            cursor.at(size * n / total)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"is not a readable parquet file: {e}", path, fatal=True) from None


def fill_placeholders(value: Any, placeholders: dict[str, str]) -> Any:
    if not placeholders:
        return value
    if isinstance(value, str):
        return _PLACEHOLDER.sub(lambda m: placeholders.get(m.group(1), m.group(0)), value)
    if isinstance(value, list):
        return [fill_placeholders(v, placeholders) for v in value]
    if isinstance(value, dict):
        return {k: fill_placeholders(v, placeholders) for k, v in value.items()}
    return value


# --- records -> conversations -------------------------------------------------------------


def required(fmt: str, stage: str = stages.DEFAULT) -> tuple[str, ...]:
    """The fields a record of format `fmt` must have for `stage` (its record in core/stages.py)."""
    return stages.STAGES[stage].data.required(fmt)


def kind_of(value: Any) -> str:
    return "null" if value is None else {dict: "an object", list: "a list", str: "a string",
                                          bool: "true/false"}.get(type(value), type(value).__name__)  # fmt: skip


def missing_columns(
    ds: DatasetSpec, have: list[str], where: str, stage: str = stages.DEFAULT
) -> tuple[list[str], str]:
    """The format's required fields whose column is missing, and the fix."""
    fields = required(ds.format, stage)
    missing = [f for f in fields if ds.columns.get(f, f) not in have]
    used = set(ds.columns.values()) | set(fields) | {"input", "system", "history"}
    spare = [c for c in have if c not in used]
    own = [f for f in missing if f in have]  # mapped away from a column that has the field's own name
    rest = [f for f in missing if f not in own]
    if len(spare) >= len(rest):
        mapping = {**{k: v for k, v in ds.columns.items() if v}, **{f: f for f in own},
                   **dict(zip(rest, spare[: len(rest)], strict=False))}  # fmt: skip
    else:
        mapping = {missing[0]: "<your column>"} if missing else {}
    chat = [c for c in ("messages", "conversations") if c in have]
    if ds.format == "alpaca" and chat and "instruction" in missing:
        return missing, (f"its records hold chat turns ('{chat[0]}'), which format alpaca does not read: set "
                         f"format: sharegpt on {where}")  # fmt: skip
    if ds.name:  # a registry entry: the fix belongs in dataset_info.json, in its own key names
        from runner.core.data.registry import REGISTRY, columns_as_registry

        entry = json.dumps(columns_as_registry(ds.format, mapping), ensure_ascii=False)
        return missing, f"fix the columns of '{ds.name}' in {REGISTRY}" + (
            f", e.g. {entry}" if mapping else ""
        )
    fix = ", e.g. {" + ", ".join(f"{k}: {v}" for k, v in mapping.items()) + "}" if mapping else ""
    return missing, f"map it in {where}.columns{fix}"


def _check_header(
    header: list[str], ds: DatasetSpec, origin: tuple, where: str, stage: str = stages.DEFAULT
) -> None:
    missing, fix = missing_columns(ds, header, where, stage)
    if missing:
        column = ds.columns.get(missing[0], missing[0])
        raise DataError(
            f"no column '{column}' (it has: {', '.join(header)}); {fix}", origin[0], origin[1], fatal=True
        )


def record_error(origin: tuple, message: str) -> DataError:
    return DataError(message, origin[0], origin[1], origin[2])


def field(
    record: Any,
    ds: DatasetSpec,
    name: str,
    origin: tuple,
    where: str,
    required: bool = True,
    stage: str = stages.DEFAULT,
) -> Any:
    column = ds.columns.get(name, name)
    if not isinstance(record, dict):
        raise record_error(origin, f"expected an object with keys, got {kind_of(record)}")
    if column == "" and not required:  # a field mapped to no column: not read (a registry entry's system)
        return None
    if column not in record:
        if not required:
            return None
        _, fix = missing_columns(ds, [str(k) for k in record], where, stage)
        raise record_error(origin, f"no column '{column}' (it has: {', '.join(map(str, record))}); {fix}")
    if record[column] is None and required:
        raise record_error(origin, f"'{column}' is null; give it a value, or drop the record")
    return record[column]


def text_field(
    record: Any,
    ds: DatasetSpec,
    origin: tuple,
    where: str,
    name: str,
    required: bool = True,
    stage: str = stages.DEFAULT,
) -> str:
    """A text field: a string or number; required ones must not be blank."""
    value = field(record, ds, name, origin, where, required, stage)
    if value is None:
        return ""
    column = ds.columns.get(name, name)
    if isinstance(value, (dict, list)):
        raise record_error(origin, f"'{column}' must be text, got {kind_of(value)}")
    value = str(value)
    if required and not value.strip():
        raise record_error(origin, f"'{column}' is empty; give it text, or drop the record")
    return value


def alpaca_conversation(record: Any, ds: DatasetSpec, origin: tuple, where: str) -> list[dict[str, str]]:
    prompt = alpaca_prompt(record, ds, origin, where)
    return prompt + [{"role": "assistant", "content": text_field(record, ds, origin, where, "output")}]


def alpaca_prompt(
    record: Any, ds: DatasetSpec, origin: tuple, where: str, stage: str = stages.DEFAULT
) -> list[dict[str, str]]:
    """An alpaca record's messages up to and including the user's question."""
    instruction = text_field(record, ds, origin, where, "instruction", stage=stage)
    query = text_field(record, ds, origin, where, "input", required=False)
    system = text_field(record, ds, origin, where, "system", required=False)
    history = field(record, ds, "history", origin, where, required=False) or []
    messages = [{"role": "system", "content": system}] if system else []
    if not isinstance(history, list):
        raise record_error(
            origin, f"history must be a list of [question, answer] pairs, got {kind_of(history)}"
        )
    for turn in history:
        if not (isinstance(turn, (list, tuple)) and len(turn) == 2):
            raise record_error(origin, "history must be a list of [question, answer] pairs")
        messages += [
            {"role": "user", "content": str(turn[0])},
            {"role": "assistant", "content": str(turn[1])},
        ]
    prompt = f"{instruction}\n{query}" if query else instruction
    return messages + [{"role": "user", "content": prompt}]


def sharegpt_conversation(record: Any, ds: DatasetSpec, origin: tuple, where: str) -> list[dict[str, str]]:
    return sharegpt_messages(record, ds, origin, where)


def sharegpt_messages(
    record: Any,
    ds: DatasetSpec,
    origin: tuple,
    where: str,
    stage: str = stages.DEFAULT,
    ends_with: str = "assistant",
) -> list[dict[str, str]]:
    """A sharegpt record's messages, checked to alternate and to end with `ends_with`'s turn."""
    if (
        "conversations" not in ds.columns
        and isinstance(record, dict)
        and "conversations" not in record
        and "messages" in record
    ):  # OpenAI's and TRL's name for the turns, taken as they are
        ds = ds.model_copy(update={"columns": {**ds.columns, "conversations": "messages"}})
    turns = field(record, ds, "conversations", origin, where, stage=stage)
    system = text_field(record, ds, origin, where, "system", required=False)
    messages = [{"role": "system", "content": system}] if system else []
    if not isinstance(turns, list) or not turns:
        raise record_error(origin, f"conversations must be a non-empty list of turns, got {kind_of(turns)}")
    roles = role_names(ds)
    role_keys, content_keys = turn_keys(ds)
    for n, turn in enumerate(turns, 1):
        role = next((turn[k] for k in role_keys if k in turn), None) if isinstance(turn, dict) else None
        content = next((turn[k] for k in content_keys if k in turn), None) if isinstance(turn, dict) else None
        if role not in roles or content is None or isinstance(content, (dict, list)):
            raise record_error(
                origin,
                f"turn {n}: each turn needs {'/'.join(role_keys)} and {'/'.join(content_keys)} (text) with "
                f"a role among {', '.join(roles)} (got {turn!r:.80}); map other names in {where}.tags",
            )
        role = roles[role]
        if role == "system":
            if n > 1:
                raise record_error(origin, f"turn {n} is a system turn; only the first turn may be one")
            if system:
                raise record_error(origin, "has a system column and a system turn; keep one of them")
        elif not str(content).strip():
            raise record_error(origin, f"turn {n} ({role}) is empty; give it text, or drop the record")
        messages.append({"role": role, "content": str(content)})
    _check_order([(n, m["role"]) for n, m in enumerate(messages[1 if system else 0 :], 1)], origin, ends_with)
    return messages


def turn_keys(ds: DatasetSpec) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The keys a sharegpt turn may name its role and its content with."""
    tags = ds.tags
    role_keys = (tags["role_tag"],) if "role_tag" in tags else ("from", "role")
    return role_keys, (tags["content_tag"],) if "content_tag" in tags else ("value", "content")


def role_names(ds: DatasetSpec) -> dict[str, str]:
    """The role names of a sharegpt dataset (its tags included) -> user, assistant, system."""
    roles = dict(_ROLES)
    for tag, role in (("user_tag", "user"), ("assistant_tag", "assistant"), ("system_tag", "system")):
        if tag in ds.tags:
            roles[ds.tags[tag]] = role
    return roles


def _check_order(numbered: list[tuple[int, str]], origin: tuple, ends_with: str = "assistant") -> None:
    """user, assistant, user, assistant, ... after an optional system turn: what every chat
    template renders and what sft learns from."""
    turns = [(n, role) for n, role in numbered if role != "system"]
    for k, (n, role) in enumerate(turns):
        if role != ("user" if k % 2 == 0 else "assistant"):
            if k == 0:
                raise record_error(origin, f"turn {n} is from the assistant; a conversation starts with the user "
                                     "(after an optional system turn)")  # fmt: skip
            raise record_error(origin, f"turns {turns[k - 1][0]} and {n} are both from the {role}; user and "
                                 "assistant turns must alternate")  # fmt: skip
    # ends_with "either": a prompt (stage ppo), whose last answer, if any, is dropped.
    if turns and turns[-1][1] == "user" and ends_with == "assistant":
        raise record_error(origin, f"ends on a user turn (turn {turns[-1][0]}) that nothing answers; end with "
                             "the assistant's answer, or drop that turn")  # fmt: skip
    if turns and turns[-1][1] == "assistant" and ends_with == "user":
        raise record_error(origin, f"ends on an assistant turn (turn {turns[-1][0]}); in a preference pair the "
                             "conversation ends with the user's question, and chosen and rejected are the "
                             "two answers to it")  # fmt: skip
