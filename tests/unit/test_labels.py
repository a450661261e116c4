"""Classification data (runner/core/data/labels.py): records -> items, the label set, and what a
saved model directory says it labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.core.data import readers
from runner.core.data.labels import LabelError, LabelSet, classifier_kind, classifier_of, converter
from runner.core.data.records import DataError
from runner.core.jobspec.job import DatasetSpec, DataSpec
from tests.conftest import DATA

SETS = DATA / "classification"


def _items(path: Path, stage: str, **ds) -> list:
    spec = DatasetSpec(path=str(path), **ds)
    return readers.load(DataSpec(datasets=[spec]), stage=stage)[0]


def test_the_sets_read_as_their_stages_read_them():
    zh = _items(SETS / "sentiment_zh.jsonl", "cls", format="classification")
    assert len(zh) == 80 and {i["label"] for i in zh} == {"好评", "差评"} and zh[0]["text_pair"] is None
    stars = _items(
        SETS / "reviews_en.csv", "cls", format="classification", columns={"text": "review", "label": "stars"}
    )
    assert {i["label"] for i in stars} == {"1", "2", "3", "4", "5"}  # CSV holds text: names, not ids
    ner = _items(SETS / "ner.jsonl", "ner", format="tagging", columns={"tags": "ner_tags"})
    assert all(len(i["tokens"]) == len(i["tags"]) for i in ner)
    assert any(i["tokens"][0] in "张王李" for i in ner)  # Chinese, a character a word


def test_names_sort_as_people_expect_and_tags_put_o_and_b_first():
    assert LabelSet.of(["10", "2", "1", "2"], None, "sequence").names == ("1", "2", "10")
    tags = ["I-PER", "O", "B-PER", "B-LOC", "I-LOC", "O"]
    assert LabelSet.of(tags, None, "token").names == ("O", "B-LOC", "I-LOC", "B-PER", "I-PER")
    assert LabelSet.of([4, 0, 2], None, "sequence").names == (
        "0",
        "1",
        "2",
        "3",
        "4",
    )  # ids: 0 to the largest


def test_ids_and_names_mixed_need_the_spec_to_name_the_ids():
    with pytest.raises(LabelError, match="some labels as names .* and some as ids"):
        LabelSet.of(["good", 1], None, "sequence")
    labels = LabelSet.of(["good", 1], ["bad", "good"], "sequence")
    assert labels.encode("good") == 1 and labels.encode(1) == 1 and labels.encode(0) == 0


def test_a_label_outside_the_set_is_refused_with_the_closest_name():
    labels = LabelSet(("negative", "positive"), "sequence")
    with pytest.raises(LabelError, match="'postive' is not one of the labels .*did you mean 'positive'"):
        labels.encode("postive")
    with pytest.raises(LabelError, match="label id 2 is beyond the 2 labels"):
        labels.encode(2)
    with pytest.raises(LabelError, match="unless classification.multi_label is true"):
        labels.encode(["negative"])


def test_several_labels_become_one_zero_or_one_per_label():
    labels = LabelSet.of([["food"], "price, service", []], None, "sequence", multi_label=True)
    assert labels.names == ("food", "price", "service")
    assert labels.encode("price, service") == [0.0, 1.0, 1.0]  # a CSV cell: names separated by commas
    assert labels.encode([]) == [0.0, 0.0, 0.0] and labels.encode(["food", 2]) == [1.0, 0.0, 1.0]


def test_the_label_set_is_saved_beside_the_weights(tmp_path: Path):
    labels = LabelSet(("O", "B-PER", "I-PER"), "token")
    labels.save(tmp_path)
    assert LabelSet.load(tmp_path) == labels and labels.bio
    assert labels.id2label == {0: "O", 1: "B-PER", 2: "I-PER"} and labels.label2id["I-PER"] == 2
    assert not LabelSet(("NN", "VB"), "token").bio
    assert LabelSet.load(tmp_path / "nothing") is None


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (
            {"tokens": ["a", "b"], "tags": ["O"]},
            "has 2 words in 'tokens' and 1 tags in 'tags'; give one tag per word",
        ),
        ({"tokens": "a b", "tags": ["O", "O"]}, "'tokens' must be a non-empty list"),
        ({"tokens": ["a", ""], "tags": ["O", "O"]}, "word 2 of 'tokens' is empty"),
        ({"tokens": ["a"], "tags": [["O"]]}, "'tags' holds a list; a label is a name or a number"),
    ],
)
def test_a_tagged_record_is_refused_with_its_place(record: dict, message: str):
    ds = DatasetSpec(path="x.jsonl", format="tagging")
    with pytest.raises(DataError, match=message) as e:
        converter("tagging")(record, ds, (Path("x.jsonl"), 3, 2), "data.datasets[0]")
    assert e.value.text().startswith("x.jsonl:3: record 2:")


@pytest.mark.parametrize(
    ("value", "message"),
    [(True, "holds true/false"), (1.5, "a label id is a whole number"), ("  ", "is empty")],
)
def test_a_label_must_be_a_name_or_an_id(value, message):
    ds = DatasetSpec(path="x.jsonl", format="classification")
    with pytest.raises(DataError, match=message):
        converter("classification")({"text": "t", "label": value}, ds, (Path("x.jsonl"), 1, 1), "w")
    item = converter("classification")(
        {"text": "t", "label": 2.0, "text_pair": "u"}, ds, (Path("x"), 1, 1), "w"
    )
    assert item == {"text": "t", "text_pair": "u", "label": 2}


def _model_dir(
    path: Path, architectures: list[str], id2label: dict | None = None, labels: dict | None = None
) -> Path:
    path.mkdir()
    config = {"architectures": architectures, **({"id2label": id2label} if id2label else {})}
    (path / "config.json").write_text(json.dumps(config))
    if labels:
        (path / "labels.json").write_text(json.dumps(labels))
    return path


def test_what_a_saved_model_labels(tmp_path: Path):
    """labels.json says it; else the architecture: token classifiers, and sequence classifiers of two
    labels or more (one label is a reward model's value head)."""
    from runner.core.target import resolve

    bert = _model_dir(
        tmp_path / "bert", ["BertForSequenceClassification"], {"0": "neg", "1": "pos", "2": "mid"}
    )
    ner = _model_dir(tmp_path / "ner", ["BertForTokenClassification"])
    reward = _model_dir(tmp_path / "rm", ["LlamaForSequenceClassification"], {"0": "LABEL_0"})
    two = _model_dir(tmp_path / "two", ["BertForSequenceClassification"])  # 2 labels: id2label left out
    saved = _model_dir(tmp_path / "saved", ["LlamaForSequenceClassification"], {"0": "x"},
                       {"task": "sequence", "labels": ["x"], "multi_label": True})  # fmt: skip
    lm = _model_dir(tmp_path / "lm", ["LlamaForCausalLM"])
    assert [classifier_kind(p) for p in (bert, ner, reward, two, saved, lm)] == [
        "sequence", "token", None, "sequence", "sequence", None,
    ]  # fmt: skip
    assert resolve(reward).reward and not resolve(reward).classifier
    assert resolve(saved).classifier == "sequence" and not resolve(saved).reward
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"task_type": "TOKEN_CLS", "base_model_name_or_path": str(lm)})
    )
    assert classifier_of(lm, adapter) == "token" and resolve(adapter).classifier == "token"


def test_chat_refuses_a_classifier_saying_what_it_offers(tmp_path: Path):
    from runner.core.target import ClassifierError, resolve

    target = resolve(
        _model_dir(tmp_path / "bert", ["BertForSequenceClassification"], {"0": "a", "1": "b", "2": "c"})
    )
    with pytest.raises(
        ClassifierError, match="is a text classifier \\(stage cls.*cannot chat.*POST /v1/classify"
    ):
        target.refuse_not_generative("chat")
