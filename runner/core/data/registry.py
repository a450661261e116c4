"""Datasets by name: a `dataset_info.json` registry, as LLaMA-Factory users already keep one.

An entry such as

    "identity": {"file_name": "identity.json"}
    "chats": {"file_name": "chats.jsonl", "formatting": "sharegpt",
              "columns": {"messages": "conversations"},
              "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human"}}
    "c4": {"file_name": "c4.jsonl", "columns": {"prompt": "text"}}

becomes an explicit dataset (path, format, columns, tags) when the spec is resolved, so the
training side only ever sees files. Entries that point at a hub or a script cannot work
offline and are refused by name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runner.core import stages
from runner.core.jobspec.job import SHAREGPT_TAGS, DatasetSpec

REGISTRY = "dataset_info.json"
_ONLINE = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
# LLaMA-Factory column names -> the fields of runner's formats.
_PREFERENCE = {"chosen": "chosen", "rejected": "rejected", "kto_tag": "kto_tag"}
_ALPACA = {"prompt": "instruction", "query": "input", "response": "output", "system": "system",
           "history": "history", **_PREFERENCE}  # fmt: skip
_SHAREGPT = {"messages": "conversations", "system": "system", **_PREFERENCE}
# What LLaMA-Factory's columns and tags mean that runner does not implement: such an entry is
# refused, never trained with that meaning dropped.
_NOT_IMPLEMENTED = {
    "images": "images for a multimodal model",
    "videos": "videos for a multimodal model",
    "audios": "audio for a multimodal model",
    "tools": "tool definitions for function calling",
    "observation_tag": "tool results for function calling",
    "function_tag": "tool calls for function calling",
}


def columns_as_registry(formatting: str, columns: dict[str, str]) -> dict[str, str]:
    """runner's column mapping in dataset_info.json's own key names (prompt, response, ...)."""
    names = {v: k for k, v in (_ALPACA if formatting == "alpaca" else _SHAREGPT).items()}
    return {names.get(k, k): v for k, v in columns.items()}


class RegistryError(ValueError):
    """A problem with the registry file or one entry; the message says what to fix."""


def read(dataset_dir: Path) -> dict[str, Any]:
    path = dataset_dir / REGISTRY
    if not path.is_file():
        raise RegistryError(f"'{dataset_dir}' holds no {REGISTRY}; create it or give datasets by path")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RegistryError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
    if not isinstance(entries, dict):
        raise RegistryError(f"{path}: expected a JSON object of named datasets")
    return entries


def expand(name: str, dataset_dir: Path, stage: str, shown: str | None = None) -> dict[str, Any]:
    """The registry entry `name` as DatasetSpec fields (path absolute, format, columns, tags).

    `shown` is the directory as the user wrote it, for messages."""
    entries = read(dataset_dir)
    where = f"{Path(shown) / REGISTRY if shown else dataset_dir / REGISTRY}"
    if name not in entries:
        import difflib

        close = difflib.get_close_matches(name, list(entries), n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'?" if close else f"it has: {', '.join(entries) or 'nothing'}"
        raise RegistryError(f"no dataset '{name}' in {where}; {hint}")
    entry = entries[name]
    if not isinstance(entry, dict):
        raise RegistryError(f"{where}: entry '{name}' must be an object")
    online = [k for k in _ONLINE if entry.get(k)]
    if online and not entry.get("file_name"):
        raise RegistryError(
            f"{where}: '{name}' is fetched from {online[0]}, which an offline machine cannot reach; "
            "download it on the connected side and set file_name"
        )
    if not entry.get("file_name"):
        raise RegistryError(f"{where}: '{name}' has no file_name")
    _fits(entry, name, stages.STAGES[stage], where)
    path = dataset_dir / entry["file_name"]
    if not path.exists():
        raise RegistryError(f"{where}: '{name}' names file_name '{entry['file_name']}', which does not exist")
    columns = entry.get("columns") or {}
    tags = entry.get("tags") or {}
    formatting = entry.get("formatting", "alpaca")
    if formatting == "openai":  # role/content messages: runner's sharegpt reader takes them as they are
        formatting = "sharegpt"
    if formatting not in ("alpaca", "sharegpt"):
        raise RegistryError(
            f"{where}: '{name}' has formatting '{formatting}'; runner reads alpaca, sharegpt and openai"
        )
    if not isinstance(columns, dict) or not isinstance(tags, dict):
        raise RegistryError(f"{where}: '{name}' must give columns and tags as objects")
    fields = _ALPACA if formatting == "alpaca" else _SHAREGPT
    for kind, keys, known in (("columns", columns, fields), ("tags", tags, SHAREGPT_TAGS)):
        for key in keys:
            if key in _NOT_IMPLEMENTED:
                raise RegistryError(
                    f"{where}: '{name}' has {kind}.{key}: {_NOT_IMPLEMENTED[key]}, which runner does not "
                    f"implement; training without it would change what the data means; remove "
                    f"{kind}.{key} from the entry or choose another dataset"
                )
            if key not in known:
                raise RegistryError(
                    f"{where}: '{name}' has {kind}.{key}, which runner does not know for formatting "
                    f"'{formatting}' (known: {', '.join(known)}); remove it from the entry"
                )
    out: dict[str, Any] = {"name": name, "path": str(path.resolve())}
    if entry.get("num_samples"):
        out["num_samples"] = int(entry["num_samples"])  # drawn at random, as LLaMA-Factory does
    if stages.STAGES[stage].data is stages.TEXT:
        # LLaMA-Factory trains pt on the prompt column.
        return {**out, "format": "text", "columns": {"text": columns.get("prompt", "instruction")}}
    mapped = {fields[k]: v for k, v in columns.items() if k in fields and v and fields[k] != v}
    # LLaMA-Factory reads a record's system prompt and history only from the columns its entry
    # names (DatasetAttr: system and history default to None): an entry without them leaves a
    # `system` or `history` field of the file unread, and so does runner ('' reads no column).
    unread = ("system", "history") if formatting == "alpaca" else ("system",)
    mapped.update({field: "" for field in unread if field not in columns})
    out.update(format=formatting, columns=mapped)
    if formatting == "sharegpt":
        out["tags"] = {k: v for k, v in tags.items() if k in SHAREGPT_TAGS and v}
    return out


def _fits(entry: dict[str, Any], name: str, stage: stages.Stage, where: str) -> None:
    """An entry of pairs ("ranking": true) or labelled answers (columns.kto_tag) serves the stages
    whose data they are (core/stages.py); other data, the stages that read conversations or text."""
    ranking = bool(entry.get("ranking"))
    columns = entry.get("columns") or {}
    labelled = isinstance(columns, dict) and "kto_tag" in columns
    if ranking and stage.data.ranking is False:
        raise RegistryError(
            f"{where}: '{name}' is a ranking (preference) dataset, for stages {_by(ranking=True)}; "
            f"stage '{stage.name}' needs plain samples"
        )
    if stage.data.ranking and not ranking:
        raise RegistryError(
            f"{where}: stage '{stage.name}' trains on {stage.data.what}, and '{name}' is no ranking dataset; "
            'choose one with "ranking": true and chosen/rejected columns, or add them to this entry'
        )
    if labelled and stage.data.labelled is False:
        raise RegistryError(
            f"{where}: '{name}' labels its answers desirable or not (columns.kto_tag), for stage "
            f"{_by(labelled=True)}; stage '{stage.name}' would train on the undesirable ones too; choose "
            "another dataset"
        )
    if stage.data.labelled and not labelled:
        raise RegistryError(
            f"{where}: stage {stage.name} needs {stage.data.what}, and '{name}' has no columns.kto_tag; add "
            "it to the entry, or choose a dataset that has one"
        )


def _by(**wanted: bool) -> str:
    """The stages whose data wants what the entry holds, e.g. rm/dpo for pairs."""
    return "/".join(
        s.name for s in stages.STAGES.values() if all(getattr(s.data, k) is v for k, v in wanted.items())
    )


def dataset(ds: DatasetSpec, dataset_dir: Path, stage: str, shown: str | None = None) -> DatasetSpec:
    """A dataset given by name, as the explicit one it stands for: the entry's file, format, columns
    and tags; the spec's max_samples, num_samples (else the entry's) and encoding (an entry has none)."""
    fields = expand(ds.name or "", dataset_dir, stage, shown)
    fields["max_samples"] = ds.max_samples or fields.get("max_samples")
    fields["num_samples"] = ds.num_samples or fields.get("num_samples")
    fields["encoding"] = ds.encoding
    return DatasetSpec(**fields)
