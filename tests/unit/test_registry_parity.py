"""dataset_info.json entries read as LLaMA-Factory reads them. The expected conversations were
produced by LLaMA-Factory 0.9.5's own loader (_get_merged_dataset) over tests/data/registry_parity:
an entry without `columns` leaves a record's `system` and `history` fields unread (its
DatasetAttr defaults them to None); an entry that names them reads them."""

from __future__ import annotations

import pytest

from runner.core.data.readers import load
from runner.core.data.registry import dataset
from runner.core.jobspec.job import DatasetSpec, DataSpec
from tests.conftest import DATA

REGISTRY = DATA / "registry_parity"
LLAMAFACTORY = {  # _system, _prompt + _response, as LLaMA-Factory 0.9.5 printed them
    "plain": ("", [("user", "Q2\nin"), ("assistant", "A2")]),
    "mapped": ("SYS", [("user", "Q1"), ("assistant", "A1"), ("user", "Q2\nin"), ("assistant", "A2")]),
    "sg": ("", [("user", "hi"), ("assistant", "yo")]),
    "sgsys": ("SYS", [("user", "hi"), ("assistant", "yo")]),
}


@pytest.mark.parametrize("name", sorted(LLAMAFACTORY))
def test_entry_reads_what_llamafactory_reads(name: str):
    ds = dataset(DatasetSpec(name=name), REGISTRY, "sft")
    ((messages,),) = load(DataSpec(datasets=[ds]))
    system, turns = LLAMAFACTORY[name]
    expected = ([{"role": "system", "content": system}] if system else []) + [
        {"role": role, "content": content} for role, content in turns
    ]
    assert messages == expected


def test_openai_formatting_reads_role_and_content_messages(tmp_path):
    import json

    (tmp_path / "chat.json").write_text(json.dumps([{"messages": [
        {"role": "system", "content": "S"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]))  # fmt: skip
    (tmp_path / "dataset_info.json").write_text(json.dumps({"chat": {
        "file_name": "chat.json", "formatting": "openai", "columns": {"messages": "messages"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                 "system_tag": "system"}}}))  # fmt: skip
    ds = dataset(DatasetSpec(name="chat"), tmp_path, "sft")
    ((messages,),) = load(DataSpec(datasets=[ds]))
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
