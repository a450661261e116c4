"""The stage registry (runner/core/stages.py) is the one list of stages: the schema, the checks,
the data readers, the training entrypoint and the README's table all follow it, and no other
module writes the list again."""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import pytest

from runner.core import stages
from runner.core.data import records, registry
from runner.core.errors import SpecError
from runner.core.jobspec.checks import check, reading_data
from runner.core.jobspec.checks.stage import ASKS
from runner.core.jobspec.job import JobSpec
from runner.core.jobspec.load import load_job
from runner.core.jobspec.partial import Unchecked, salvage
from tests.conftest import DATA, ROOT

README = ROOT / "README.md"
MODEL, DATASET = "tests/data/models/fake", "tests/data/datasets/alpaca.json"


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


def test_no_other_module_lists_the_stages():
    """A tuple, list, set or dict naming two stages or more is a copy of the list: it drifts."""
    names, copies = set(stages.NAMES), []
    for path in sorted((ROOT / "runner").rglob("*.py")):
        if path == ROOT / "runner/core/stages.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            items = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", None)
            if not isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)) or items is None:
                continue
            named = {i.value for i in items if isinstance(i, ast.Constant) and i.value in names}
            if len(named) >= 2:
                copies.append(f"{path.relative_to(ROOT)}:{node.lineno}: {sorted(named)}")
    assert not copies, "stage lists outside runner/core/stages.py:\n" + "\n".join(copies)


def test_every_feature_can_be_asked_for_and_every_need_is_a_key():
    assert set(ASKS) == set(stages.FEATURES)
    for stage in stages.STAGES.values():
        assert set(stage.unsupported) <= set(stages.FEATURES), stage.name
        for key in stage.needs:
            section, name = key.split(".")
            assert name in JobSpec.model_fields[section].annotation.model_fields, key


def test_records_need_the_registry_s_fields():
    for stage in stages.STAGES.values():
        for fmt, fields in stage.data.fields.items():
            assert records.required(fmt, stage.name) == fields
    assert records.required("text", "sft") == ("text",)  # a format the stage does not read: its own


# A value that asks for each feature (the schema's default asks for nothing).
ASKING = {"prompt learning": {"method": {"type": "prefix"}}, "packing": {"data": {"packing": True}},
          "val_size": {"data": {"val_size": 0.1}}, "micro_batch_tokens": {"training": {"micro_batch_tokens": 4096}},
          "memory_cap_gib": {"training": {"memory_cap_gib": 10}},
          "gradient_checkpointing": {"training": {"gradient_checkpointing": True}},
          "sequential": {"training": {"train_sampling_strategy": "sequential"}},
          "group_by_length": {"training": {"train_sampling_strategy": "group_by_length"}},
          "batch_rebalance": {"training": {"train_sampling_strategy": "batch_rebalance"}},
          "deepspeed": {"distributed": {"deepspeed": {"zero": 2}}},
          "logits_on_targets_only": {"training": {"logits_on_targets_only": True}},
          "adalora": {"method": {"type": "adalora"}}, "template": {"model": {"template": "chatml"}},
          "default_system": {"model": {"default_system": "You are helpful."}}}  # fmt: skip


def _spec(stage: str, **sections: dict) -> JobSpec:
    data = {"name": "x", "stage": stage, "model": {"path": MODEL}, "method": {"type": "lora"},
            "data": {"datasets": [{"path": DATASET}]}, "ppo": {"reward_model": MODEL}}  # fmt: skip
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if key != "method" else value
    return JobSpec.model_validate(data)


@pytest.mark.parametrize("stage", stages.NAMES)
@pytest.mark.parametrize("feature", list(stages.FEATURES))
def test_a_stage_refuses_what_it_does_without_at_the_key_and_nothing_else(stage: str, feature: str):
    with reading_data(False):
        found = check(_spec(stage, **ASKING[feature]), ROOT)
    loc = (ASKS[feature].section, ASKS[feature].key)
    refusals = [msg for at, msg in found if at == loc and f"stage '{stage}'" in msg]
    why = stages.STAGES[stage].unsupported.get(feature)
    if why is None:
        assert refusals == []
    else:
        assert len(refusals) == 1 and f"({why})" in refusals[0]


def test_the_schema_s_default_asks_for_nothing():
    """Writing a default out (as a run's resolved spec does) is no request for the feature."""
    with reading_data(False):
        assert check(_spec("dpo", data={"packing": False}, training={"micro_batch_tokens": None}), ROOT) == []


def test_a_stage_names_the_methods_and_strategies_it_takes():
    with reading_data(False):
        found = dict(check(_spec("kto", training={"train_sampling_strategy": "group_by_length"}), ROOT))
        method = dict(check(_spec("ppo", method={"type": "prompt"}), ROOT))
    assert found[("training", "train_sampling_strategy")].endswith("; use random or sequential")
    assert method[("method", "type")].endswith("; use full, freeze, lora, qlora or ia3")


def test_ppo_needs_its_reward_model():
    data = _spec("ppo").model_dump(exclude_unset=True)
    data["ppo"] = {}
    with reading_data(False):
        found = check(JobSpec.model_validate(data), ROOT)
    assert [loc for loc, _ in found] == [("stage",)]


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


# --- checks on the parts that validated ------------------------------------------------------


def test_checks_run_on_the_sections_that_validated(tmp_path: Path):
    spec = tmp_path / "job.yaml"
    spec.write_text(
        f"name: x\nstage: dpo\nmodel:\n  path: {MODEL}\nmethod:\n  type: prompt\n  num_virtual_tokens: 0\n"
        f"data:\n  datasets:\n    - path: {DATASET}\n  cutoff_len: 4\ndistributed:\n  deepspeed:\n"
        "    zero: 0\n    offload_optimizer: true\n",
        encoding="utf-8",
    )
    with pytest.raises(SpecError) as e, reading_data(False):
        load_job(spec)
    found = {(p.line, p.path): p.message for p in e.value.problems}
    assert found[(7, "method.num_virtual_tokens")].startswith("must be >= 1")  # the schema's
    assert found[(6, "method.type")].startswith("stage 'dpo' does not take 'prompt'")  # the method's part
    assert found[(11, "data.cutoff_len")].startswith("must be >= 8")
    assert found[(15, "distributed.deepspeed.offload_optimizer")].startswith("optimizer offload needs ZeRO")


def test_a_part_that_failed_is_unchecked_and_the_rest_is_typed():
    data = {"name": "x", "model": {"path": MODEL, "template": 3}, "method": {"type": "lora", "r": 0},
            "data": {"datasets": [{"path": DATASET}, {"max_samples": 1}], "cutoff_len": 4}}  # fmt: skip
    spec = salvage(
        JobSpec,
        data,
        [("model", "template"), ("method", "r"), ("data", "datasets", 1), ("data", "cutoff_len")],
    )
    assert isinstance(spec, JobSpec) and spec.stage == stages.DEFAULT and spec.model.path == MODEL
    assert spec.method.type == "lora" and spec.method.target == ["all-linear"]
    assert spec.data.datasets[0].format == "alpaca" and spec.data.mix == "concat"
    for read in (lambda: spec.model.template, lambda: spec.method.r, lambda: spec.data.cutoff_len,
                 lambda: spec.data.datasets[1].path):  # fmt: skip
        with pytest.raises(Unchecked):
            read()
