"""Data files -> records -> conversations.

Records are read by runner itself (json, jsonl, csv, tsv, parquet, txt) so a malformed line is
reported as file:line rather than as a parser traceback. Each format maps its fields to
a list of chat messages; `columns` renames a file's columns to the format's field names.
`runner validate` reads the data with these same functions (readers.check), so whatever
training would reject is rejected there first. Everything here but parquet (pyarrow, imported when
needed) is plain Python, for the host-side CLI.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runner.core import stages
from runner.core.errors import RunnerError
from runner.core.jobspec.job import DatasetSpec

log = logging.getLogger(__name__)
SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet", ".txt")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
          "model": "assistant", "bot": "assistant", "system": "system"}  # fmt: skip
# Encodings worth suggesting when a file does not decode as the one given.
_GUESSES = ("utf-8", "gbk", "gb18030", "big5", "shift_jis")
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long documents in one cell


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
    ds: DatasetSpec, where: str, stage: str = stages.DEFAULT
) -> Iterator[tuple[tuple[Path, int | None, int], Any]]:
    """(origin, record) of every file; origin is (file, line or None, record number). A record
    that does not parse comes as a DataError in place of the record; a file that cannot be
    read on raises one (fatal)."""
    for path in files(ds):
        suffix = path.suffix
        if suffix == ".parquet":
            yield from _parquet(path)
            continue
        text = _decode(path, ds.encoding)
        if suffix == ".txt":
            if ds.format != "text":
                raise DataError(
                    f"a .txt file is plain text, one document per line, for stage pt; set format: text "
                    f"(got '{ds.format}'), or give conversations as json, jsonl or csv",
                    path, fatal=True,
                )  # fmt: skip
            column = ds.columns.get("text", "text")
            n = 0
            for lineno, line in enumerate(io.StringIO(text, newline=None), 1):
                if line.strip():
                    n += 1
                    yield (path, lineno, n), {column: line.rstrip("\n")}
        elif suffix == ".json":
            yield from _json(path, text, ds)
        elif suffix == ".jsonl":
            yield from _json_lines(path, text)
        else:
            yield from _csv(path, text, ds, where, stage)


def _decode(path: Path, encoding: str) -> str:
    """The file's text; a file that does not decode is reported with the line of the first bad
    byte and an encoding that would work, when a common one does."""
    raw = path.read_bytes()
    codec = codecs.lookup(encoding).name
    if codec == "utf-8":
        encoding = "utf-8-sig"  # a byte order mark is accepted
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        hint = ""
        works = _guess(raw, codec)
        if works:
            hint = f"; it decodes as {works}: set encoding: {works} on this dataset"
        else:
            hint = "; set this dataset's encoding: to the one the file was saved in"
        raise DataError(
            f"is not valid {codec} text (byte 0x{raw[e.start]:02x} at column {col}){hint}",
            path,
            line,
            fatal=True,
        ) from None


def _guess(raw: bytes, tried: str) -> str | None:
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    for name in _GUESSES:
        if codecs.lookup(name).name == tried:
            continue
        try:
            raw.decode("utf-8-sig" if name == "utf-8" else name)
        except UnicodeDecodeError:
            continue
        return name
    return None


def _json(path: Path, text: str, ds: DatasetSpec) -> Iterator[tuple[tuple[Path, int | None, int], Any]]:
    """A JSON list of records (each numbered with its line), a {"key": [records]} wrapper, or
    JSON Lines saved with a .json suffix."""
    start = len(text) - len(text.lstrip())
    if text[start : start + 1] == "[":
        yield from _json_array(path, text, start)
        return
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several values, one a line: JSON Lines
            yield from _json_lines(path, text)
            return
        raise DataError(
            f"invalid JSON at column {e.colno}: {plain_json(e.msg)}", path, e.lineno, fatal=True
        ) from None
    if isinstance(rows, dict):
        keys = list(rows)
        one_record = (
            bool({ds.columns.get("conversations", "conversations"), "messages"} & set(keys)) or len(keys) != 1
        )
        if not one_record and isinstance(rows[keys[0]], list):
            for n, row in enumerate(rows[keys[0]], 1):
                yield (path, None, n), row
            return
        yield (path, start_line(text, start), 1), rows  # one record (JSON Lines of one line)
        return
    raise DataError(f"expected a JSON list of records, got {kind_of(rows)}", path, fatal=True)


# The JSON decoder's words, and what they mean for a person fixing the file.
_JSON = {
    "Expecting value": "a value is missing here",
    "Expecting ',' delimiter": "a ',' is missing between two items",
    "Expecting ':' delimiter": "a ':' is missing after a key",
    "Expecting property name enclosed in double quotes": "a key must be in double quotes (or a ',' is left "
    "before a closing '}')",
    "Unterminated string starting at": "a string is never closed (a '\"' is missing)",
    "Invalid control character at": "a raw tab or line break inside a string; write it as \\t or \\n",
    "Invalid \\escape": "a backslash that starts no escape; write \\\\ for a backslash",
    "Extra data": "more text after the JSON value",
}


def plain_json(msg: str, at_end: bool = False) -> str:
    """A json.JSONDecodeError message in plain words; `at_end`: the text stops where it failed."""
    if at_end and msg in ("Expecting value", "Expecting ',' delimiter", "Expecting ':' delimiter",
                          "Expecting property name enclosed in double quotes"):  # fmt: skip
        return "the line ends before the record does (is it cut short?)"
    return next((plain for raw, plain in _JSON.items() if msg.startswith(raw)), msg)


def start_line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _json_array(path: Path, text: str, start: int) -> Iterator[tuple[tuple[Path, int | None, int], Any]]:
    decoder, n, i, line, counted = json.JSONDecoder(), 0, start + 1, 1, 0

    def ws(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    def fail(msg: str, pos: int) -> DataError:
        if pos >= len(text.rstrip()):
            msg = "the file ends before the list is closed (is it truncated?)"
        e = json.JSONDecodeError(msg, text, pos)
        return DataError(f"invalid JSON at column {e.colno}: {plain_json(e.msg)}", path, e.lineno, fatal=True)

    i = ws(i)
    if text[i : i + 1] == "]":
        i += 1
    else:
        while True:
            try:
                value, end = decoder.raw_decode(text, i)
            except json.JSONDecodeError as e:
                raise fail(e.msg, e.pos) from None
            line += text.count("\n", counted, i)
            counted = i
            n += 1
            yield (path, line, n), value
            i = ws(end)
            if text[i : i + 1] == ",":
                i = ws(i + 1)
            elif text[i : i + 1] == "]":
                i += 1
                break
            else:
                raise fail("Expecting ',' delimiter" if i < len(text) else "the list is never closed", i)
    if ws(i) < len(text):
        raise fail("Extra data after the list", ws(i))


def _json_lines(path: Path, text: str) -> Iterator[tuple[tuple[Path, int | None, int], Any]]:
    n = 0
    for lineno, line in enumerate(io.StringIO(text, newline=None), 1):
        if not line.strip():
            continue
        n += 1
        line = line.rstrip("\r\n")
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            value = DataError(
                f"invalid JSON at column {e.colno}: {plain_json(e.msg, e.pos >= len(line.rstrip()))}; fix the line "
                "or set data.on_bad_record: skip",
                path, lineno,
            )  # fmt: skip
        yield (path, lineno, n), value


def _csv(
    path: Path, text: str, ds: DatasetSpec, where: str, stage: str = stages.DEFAULT
) -> Iterator[tuple[tuple[Path, int | None, int], Any]]:
    delimiter = "\t" if path.suffix == ".tsv" else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    n = 0
    while True:
        first = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(f"unreadable {path.suffix[1:]} record: {e}", path, first, fatal=True) from None
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


def _parquet(path: Path) -> Iterator[tuple[tuple[Path, int | None, int], Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"is not a readable parquet file: {e}", path, fatal=True) from None
    for n, row in enumerate(rows, 1):
        yield (path, None, n), row


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
