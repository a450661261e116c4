"""The stage registry (runner/core/stages.py) is the one list of stages: the schema, the data
readers, the training entrypoint and the README's table follow it."""

from __future__ import annotations

import typing

import pytest

from runner.core import stages
from runner.core.data import records, registry
from runner.core.jobspec.job import JobSpec
from tests.conftest import DATA, ROOT

README = ROOT / "README.md"


def test_readme_stage_table_is_the_registry_s():
    text = README.read_text(encoding="utf-8")
    table = text.split("<!-- stages: begin -->\n")[1].split("<!-- stages: end -->")[0]
    assert table == stages.table(), "README's stage table differs: paste stages.table() between the markers"


def test_every_stage_has_its_module_and_every_module_a_stage():
    for stage in stages.STAGES.values():
        assert (ROOT / (stage.module.replace(".", "/") + ".py")).is_file(), stage.module
    modules = {f"runner.train.stages.{p.stem}" for p in (ROOT / "runner/train/stages").glob("*.py")}
    assert modules - {"runner.train.stages.__init__"} == {s.module for s in stages.STAGES.values()}


def test_the_schema_takes_the_registry_s_stages():
    field = JobSpec.model_fields["stage"]
    assert typing.get_args(field.annotation) == stages.NAMES
    assert field.default == stages.DEFAULT


def test_records_need_the_registry_s_fields():
    for stage in stages.STAGES.values():
        for fmt, fields in stage.data.fields.items():
            assert records.required(fmt, stage.name) == fields
    assert records.required("text", "sft") == ("text",)  # a format the stage does not read: its own


@pytest.mark.parametrize("stage", stages.NAMES)
def test_registry_entries_serve_the_stages_whose_data_they_hold(stage: str):
    """prefs is a ranking entry (pairs), identity plain samples: each goes where stages.py says."""
    data = stages.STAGES[stage].data
    for name, ranking in (("prefs", True), ("identity", False)):
        takes = data.ranking is None or data.ranking == ranking
        if data.labelled:  # no entry there is labelled
            takes = False
        try:
            registry.expand(name, DATA / "registry", stage)
            took = True
        except registry.RegistryError:
            took = False
        assert took == takes, (stage, name)
