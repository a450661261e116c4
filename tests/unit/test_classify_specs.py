"""What the spec checks say about the classification stages and AdaLoRA, beyond the bad-spec
goldens (tests/data/bad_specs/classifier_*, adalora_schedule, labels_*)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.core.jobspec.checks import check, reading_data
from runner.core.jobspec.job import JobSpec
from tests.conftest import DATA, ROOT

SETS = "tests/data/classification"


def _spec(**sections) -> JobSpec:
    data = {"name": "x", "model": {"path": "tests/data/models/fake"}, "method": {"type": "lora"},
            "data": {"datasets": [{"path": f"{SETS}/sentiment_zh.jsonl"}]}, **sections}  # fmt: skip
    return JobSpec.model_validate(data)


def test_a_classification_stage_reads_its_own_format_by_default():
    spec = _spec(
        stage="ner", data={"datasets": [{"path": f"{SETS}/ner.jsonl", "columns": {"tags": "ner_tags"}}]}
    )
    assert spec.data.datasets[0].format == "tagging"
    assert _spec(stage="sft").data.datasets[0].format == "alpaca"
    with reading_data(True):
        assert check(spec, ROOT) == []
        assert check(_spec(stage="cls", classification={"labels": ["好评", "差评"]}), ROOT) == []


def test_a_registry_entry_is_refused_for_a_classifier():
    spec = _spec(stage="cls", data={"dataset_dir": "data", "datasets": [{"name": "identity"}]})
    with reading_data(False):
        found = dict(check(spec, ROOT))
    assert (
        "stage 'cls' reads texts with their label(s): give the file as path"
        in found[("data", "datasets", 0, "name")]
    )


def _model(path: Path, config: dict, labels: dict | None = None) -> str:
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    (path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ x }}"}))
    if labels:
        (path / "labels.json").write_text(json.dumps(labels))
    return str(path)


def test_stage_eval_pairs_a_classifier_with_labelled_data(tmp_path: Path):
    classifier = _model(tmp_path / "cls", {"architectures": ["BertForSequenceClassification"], "id2label":
                                           {"0": "a", "1": "b", "2": "c"}})  # fmt: skip
    tagger = _model(tmp_path / "ner", {"architectures": ["BertForTokenClassification"]})
    lm = str(DATA / "models" / "fake")
    texts = {"path": f"{SETS}/sentiment_zh.jsonl", "format": "classification"}
    cases = [
        (lm, texts, "'classification' is a classifier's test set, and the model is a language model"),
        (classifier, {"path": "tests/data/datasets/alpaca.json"}, "a classifier that labels whole texts: evaluate "
                                                                  "it on data in format classification"),
        (tagger, texts, "a classifier that tags words: evaluate it on data in format tagging"),
        (classifier, texts, None),
    ]  # fmt: skip
    for model, dataset, message in cases:
        spec = JobSpec.model_validate({"name": "x", "stage": "eval", "model": {"path": model},
                                       "data": {"datasets": [dataset]}})  # fmt: skip
        with reading_data(False):
            found = [m for loc, m in check(spec, ROOT) if loc == ("data", "datasets", 0, "format")]
        if message is None:
            assert found == [], found
        else:
            assert len(found) == 1 and message in found[0], (model, found)


def test_adalora_s_penalty_where_the_model_computes_the_loss_and_its_provisional_length():
    pytest.importorskip("peft", reason="the in-container dependencies (.[train]) are not installed")
    from runner.train.adalora import config

    sft = _spec(stage="sft", method={"type": "adalora"}, data={"datasets": [{"path": "data/identity.json"}]})
    dpo = _spec(stage="dpo", method={"type": "adalora", "tinit": 5, "tfinal": 3},
                data={"datasets": [{"path": "data/preference.json"}]})  # fmt: skip
    fixed = _spec(stage="cls", method={"type": "adalora", "orth_reg_weight": 0.1}, training={"max_steps": 40})
    assert config(sft).orth_reg_weight == 0.5 and config(dpo).orth_reg_weight == 0.0
    assert config(fixed).orth_reg_weight == 0.1 and config(fixed).total_step == 40
    assert config(dpo).total_step == 9  # tinit + tfinal + 1, until RankBudget reads the Trainer's count
    assert config(sft).lora_alpha == 24  # 2 x init_r


def test_rank_budget_refuses_a_run_too_short_for_its_schedule():
    pytest.importorskip("peft", reason="the in-container dependencies (.[train]) are not installed")
    import torch
    from peft import get_peft_model

    from runner.core.errors import RunnerError
    from runner.train.adalora import RankBudget, config

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)

    spec = _spec(stage="cls", method={"type": "adalora", "init_r": 2, "target_r": 1, "tinit": 3, "tfinal": 3,
                                      "target": ["a"]})  # fmt: skip
    made = config(spec)
    made.task_type = None  # a plain module: PEFT's base wrapper
    model = get_peft_model(Tiny(), made)

    class State:
        max_steps = 6

    with pytest.raises(
        RunnerError, match="makes 6 optimizer steps, and tinit \\(3\\) \\+ tfinal \\(3\\) leave none"
    ):
        RankBudget().on_train_begin(None, State(), None, model=model)
    State.max_steps = 50
    RankBudget().on_train_begin(None, State(), None, model=model)
    assert model.peft_config["default"].total_step == 50
