"""Classification data: texts with their label(s) (stage cls), words with a tag each (stage ner).

    classification: {"text": "服务很好", "label": "好评"}
                    {"text": "A man sleeps.", "text_pair": "Nobody sleeps.", "label": 2}
                    {"text": "...", "label": ["sports", "politics"]}        (classification.multi_label)
    tagging:        {"tokens": ["John", "lives", "in", "Paris"], "tags": ["B-PER", "O", "O", "B-LOC"]}

`columns` maps these fields to a file's own columns (e.g. {text: review, label: stars}); a
tagging record's lists are JSON lists (json, jsonl, parquet). A label is a name (text) or an id
(a number): ids index classification.labels, or, where the spec names no labels, the label set is
0 to the largest id. Names make the label set themselves where the spec gives none (LabelSet.of).

Everything here is plain Python: `runner validate` reads labels with the same code training does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.core.data import records
from runner.core.data.records import DataError, field, kind_of, record_error, text_field
from runner.core.jobspec.job import DatasetSpec

FORMATS = ("classification", "tagging")
LABELS_FILE = "labels.json"  # beside a classifier's weights (a run's adapter/ or model/, an export)
Label = str | int
Converter = Callable[[Any, DatasetSpec, tuple, str], dict]
_BIO = re.compile(r"^([BIES])[-_](.+)$")


def converter(fmt: str) -> Converter:
    """The function turning one record of a classification format into its item."""
    return _labelled_text if fmt == "classification" else _tagged_words


def _labelled_text(record: Any, ds: DatasetSpec, origin: tuple, where: str) -> dict:
    text = text_field(record, ds, origin, where, "text")
    pair = text_field(record, ds, origin, where, "text_pair", required=False) or None
    value = field(record, ds, "label", origin, where)
    column = ds.columns.get("label", "label")
    if isinstance(value, list):
        label: Any = [_label(v, column, origin) for v in value]
    else:
        label = _label(value, column, origin)
    return {"text": text, "text_pair": pair, "label": label}


def _tagged_words(record: Any, ds: DatasetSpec, origin: tuple, where: str) -> dict:
    tokens = field(record, ds, "tokens", origin, where)
    tags = field(record, ds, "tags", origin, where)
    names = ds.columns.get("tokens", "tokens"), ds.columns.get("tags", "tags")
    for name, value in zip(names, (tokens, tags), strict=True):
        if not isinstance(value, list) or not value:
            raise record_error(origin, f"'{name}' must be a non-empty list (one entry per word), got "
                                       f"{kind_of(value)}")  # fmt: skip
    if len(tokens) != len(tags):
        raise record_error(origin, f"has {len(tokens)} words in '{names[0]}' and {len(tags)} tags in "
                                   f"'{names[1]}'; give one tag per word")  # fmt: skip
    words = []
    for i, word in enumerate(tokens, 1):
        if not isinstance(word, (str, int, float)) or isinstance(word, bool) or not str(word).strip():
            raise record_error(origin, f"word {i} of '{names[0]}' is {kind_of(word) if not isinstance(word, str) else 'empty'}; "
                                       "every word must be text")  # fmt: skip
        words.append(str(word))
    return {"tokens": words, "tags": [_label(t, names[1], origin) for t in tags]}


def _label(value: Any, column: str, origin: tuple) -> Label:
    """A label as the data gives it: a name (text) or an id (a whole number)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise record_error(origin, f"'{column}' holds {kind_of(value)}; a label is a name or a number")
    if isinstance(value, float):
        if not value.is_integer() or value < 0:
            raise record_error(origin, f"'{column}' holds {value}; a label id is a whole number from 0")
        return int(value)
    if isinstance(value, int):
        if value < 0:
            raise record_error(origin, f"'{column}' holds {value}; a label id is a whole number from 0")
        return value
    if not value.strip():
        raise record_error(origin, f"'{column}' is empty; give the record its label, or drop it")
    return value.strip()


# --- the label set -------------------------------------------------------------------------


class LabelError(ValueError):
    """A label the label set cannot take; the message says why and what to do."""


@dataclass(frozen=True)
class LabelSet:
    """The labels a classifier predicts, in id order, and how it predicts them."""

    names: tuple[str, ...]
    task: str  # "sequence" (stage cls) or "token" (stage ner)
    multi_label: bool = False
    threshold: float = 0.5

    @classmethod
    def of(cls, values: Iterable[Any], given: list[str] | None, task: str, multi_label: bool = False,
           threshold: float = 0.5) -> LabelSet:  # fmt: skip
        """The spec's labels (`given`), or those the data's values make: sorted names, or ids 0 to
        the largest. Raises LabelError for data that mixes names with ids and names no set."""
        if given is not None:
            return cls(tuple(given), task, multi_label, threshold)
        seen = set()
        for value in values:
            seen.update(_split(value) if multi_label else [value])
        names = {v for v in seen if isinstance(v, str)}
        ids = {v for v in seen if isinstance(v, int)}
        if names and ids:
            raise LabelError(
                f"the data gives some labels as names ({', '.join(sorted(names)[:3])}) and some as ids "
                f"({', '.join(map(str, sorted(ids)[:3]))}); an id needs classification.labels to say which "
                "name it stands for: set it, or write every label the same way"
            )
        if ids:
            found = tuple(str(i) for i in range(max(ids) + 1))
        else:
            found = tuple(sorted(names, key=_tag_order if task == "token" else _natural))
        return cls(found, task, multi_label, threshold)

    def id(self, value: Label) -> int:
        if isinstance(value, int):
            if value >= len(self.names):
                hint = (f"; a number in the data is an id (0-based), not the name '{value}': write the label as "
                        "text" if str(value) in self.names else "")  # fmt: skip
                raise LabelError(f"label id {value} is beyond the {len(self.names)} labels "
                                 f"({_shown(self.names)}); ids run from 0 to {len(self.names) - 1}{hint}")  # fmt: skip
            return value
        try:
            return self.names.index(value)
        except ValueError:
            import difflib

            close = difflib.get_close_matches(value, self.names, n=1, cutoff=0.75)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise LabelError(f"label '{value}' is not one of the labels ({_shown(self.names)}); {hint}add it to "
                             "classification.labels, or fix the record") from None  # fmt: skip

    def encode(self, value: Any) -> int | list[float]:
        """A record's label as training takes it: an id, or (multi_label) one 0/1 per label."""
        if not self.multi_label:
            if isinstance(value, list):
                raise LabelError(f"has a list of labels ({_shown(value)}); a record has one label unless "
                                 "classification.multi_label is true")  # fmt: skip
            return self.id(value)
        hot = [0.0] * len(self.names)
        for one in _split(value):
            hot[self.id(one)] = 1.0
        return hot

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    @property
    def bio(self) -> bool:
        """Whether the tags name entities (O, B-TYPE, I-TYPE; E- and S- too), so entity-level
        scores apply."""
        return self.task == "token" and all(n == "O" or _BIO.match(n) for n in self.names)

    def as_json(self) -> dict:
        return {"task": self.task, "labels": list(self.names), "multi_label": self.multi_label,
                "threshold": self.threshold}  # fmt: skip

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / LABELS_FILE
        path.write_text(json.dumps(self.as_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> LabelSet | None:
        """The label set saved beside a classifier; None where there is none."""
        try:
            data = json.loads((Path(directory) / LABELS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return cls(tuple(data["labels"]), data["task"], bool(data.get("multi_label")),
                   float(data.get("threshold", 0.5)))  # fmt: skip


def _split(value: Any) -> list[Label]:
    """The labels of a multi-label record: a list, or names separated by commas (CSV); an empty
    text is no label."""
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [value]


def _shown(values: Iterable[Any], most: int = 8) -> str:
    values = [str(v) for v in values]
    return ", ".join(values[:most]) + (f", ... ({len(values)} in all)" if len(values) > most else "")


def _natural(name: str) -> tuple:
    """'2' before '10': numbers inside names compare as numbers."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p)


def _tag_order(name: str) -> tuple:
    """O first, then by entity type, B- before I- (then E-, S-); other tags by name."""
    if name == "O":
        return (0, "", 0, "")
    m = _BIO.match(name)
    if m:
        return (1, m.group(2), "BIES".index(m.group(1)), name)
    return (2, name, 0, name)


def read_labels(items: Iterable[dict], task: str) -> Iterator[Any]:
    """Every label value of the items (a record's label or list of labels, or each tag)."""
    for item in items:
        if task == "token":
            yield from item["tags"]
        else:
            yield item["label"]


# --- a saved classifier: what it labels ---------------------------------------------------


def classifier_kind(model_dir: str | Path) -> str | None:
    """ "sequence" or "token" for a model directory holding a classifier that labels text: one with
    runner's labels.json beside it, a token classifier, or a sequence classifier of two labels or
    more (one of one label is a reward model); None otherwise."""
    saved = _labels_task(Path(model_dir))
    if saved:
        return saved
    config = model_config(model_dir)
    if any(a.endswith("ForTokenClassification") for a in architectures(config)):
        return "token"
    if any(a.endswith("ForSequenceClassification") for a in architectures(config)):
        return "sequence" if len(config.get("id2label") or {"0": "", "1": ""}) > 1 else None
    return None


def model_config(model_dir: str | Path) -> dict:
    """A model directory's config.json; {} where it has none (or not a JSON object)."""
    try:
        config = json.loads(Path(model_dir, "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def architectures(config: dict) -> list[str]:
    return [a for a in config.get("architectures") or [] if isinstance(a, str)]


def _labels_task(directory: Path) -> str | None:
    try:
        task = json.loads((directory / LABELS_FILE).read_text(encoding="utf-8")).get("task")
    except (OSError, ValueError, AttributeError):
        return None
    return task if task in ("sequence", "token") else None


def adapter_classifier(adapter: Path, task_type: str) -> str | None:
    """A classifier's adapter: labels.json beside it, or PEFT's TOKEN_CLS (SEQ_CLS without labels.json
    is a reward model's)."""
    return _labels_task(adapter) or ("token" if task_type == "TOKEN_CLS" else None)


def classifier_of(model_dir: str | Path, adapter: str | Path | None = None) -> str | None:
    """What a model directory, with an adapter on top, labels: "sequence", "token" or None."""
    if adapter is not None:
        found = adapter_classifier(Path(adapter), adapter_task(adapter) or "")
        if found:
            return found
    return classifier_kind(model_dir)


def adapter_task(adapter: str | Path) -> str | None:
    """PEFT's task_type in an adapter's adapter_config.json (SEQ_CLS, TOKEN_CLS, CAUSAL_LM...); None
    where it names none or the file cannot be read."""
    try:
        config = json.loads(Path(adapter, "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config.get("task_type") if isinstance(config, dict) else None


# --- entities (seqeval's rules, as conlleval counts them) -----------------------------------


def entities(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, first word, last word) of every entity in a tag sequence, by seqeval's default
    (conlleval) rules: B- starts one, I- continues one of its type and starts one after O or
    another type, E- and S- end one; a tag with no prefix is read as I-."""
    found, prev_tag, prev_type, begin = [], "O", "", 0
    for i, tag in enumerate([*tags, "O"]):
        kind, type_ = _parts(tag)
        if _ends(prev_tag, kind, prev_type, type_):
            found.append((prev_type, begin, i - 1))
        if _starts(prev_tag, kind, prev_type, type_):
            begin = i
        prev_tag, prev_type = kind, type_
    return found


def _parts(tag: str) -> tuple[str, str]:
    if tag == "O":
        return "O", ""
    m = _BIO.match(tag)
    return (m.group(1), m.group(2)) if m else ("I", tag)


def _ends(prev: str, tag: str, prev_type: str, type_: str) -> bool:
    if prev in ("E", "S"):
        return True
    if prev in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev != "O" and prev_type != type_


def _starts(prev: str, tag: str, prev_type: str, type_: str) -> bool:
    if tag in ("B", "S"):
        return True
    if prev in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag != "O" and prev_type != type_


# --- validate: every record's label against the label set ----------------------------------


def check(ds: DatasetSpec, where: str, given: list[str] | None, task: str, multi_label: bool,
          stage: str, limit: int = 3) -> tuple[list[DataError], int]:  # fmt: skip
    """The labels of one dataset's records that training would refuse: the first `limit` errors
    and how many there are. Records that do not read at all are the readers' to report."""
    convert, items, errors, total = converter(ds.format), [], [], 0
    try:
        for origin, record in records.read_records(ds, where, stage):
            if isinstance(record, DataError):
                continue
            try:
                items.append((origin, convert(record, ds, origin, where)))
            except DataError:
                continue
    except DataError:
        return [], 0  # a file that cannot be read: reported by the readers
    try:
        labelset = LabelSet.of(read_labels((i for _, i in items), task), given, task, multi_label)
    except LabelError as e:
        return [DataError(str(e), ds.path)], 1
    for origin, item in items:
        values = item["tags"] if task == "token" else [item["label"]]
        for value in values:
            try:
                labelset.encode(value) if task == "sequence" else labelset.id(value)
            except LabelError as e:
                total += 1
                if len(errors) < limit:
                    errors.append(record_error(origin, str(e)))
                break
    return errors, total
