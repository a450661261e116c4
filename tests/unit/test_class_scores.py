"""Goldens of a classifier's scores (runner/train/tools/class_scores.py), worked out by hand below
(and agreeing with scikit-learn 1.x and seqeval 1.2 on the same inputs, which runner does not ship)."""

from __future__ import annotations

import numpy as np
import pytest

from runner.core.data.labels import entities
from runner.train.tools.class_scores import headline, multi_label, single_label, table, tagging

# 10 texts, labels a, b, c. Pairs (true, predicted):
#   a: (a,a) (a,b) (a,a) (a,a)     -> row a: 3 a, 1 b
#   b: (b,b) (b,c)                 -> row b: 1 b, 1 c
#   c: (c,c) (c,c) (c,a) (c,c)     -> row c: 1 a, 3 c
TRUE = [0, 0, 0, 1, 1, 2, 2, 2, 2, 0]
PRED = [0, 1, 0, 1, 2, 2, 2, 0, 2, 0]


def test_one_label_each_against_a_hand_made_confusion_matrix():
    report = single_label(TRUE, PRED, ["a", "b", "c"])
    assert report["confusion_matrix"]["counts"] == [[3, 1, 0], [0, 1, 1], [1, 0, 3]]
    assert report["accuracy"] == 0.7  # 7 on the diagonal of 10
    # a: 3 right of 4 predicted a (column a: 3 + 0 + 1) and of 4 true a; b: 1 of 2, 1 of 2; c: 3 of 4, 3 of 4
    assert report["per_class"] == {
        "a": {"precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4},
        "b": {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2},
        "c": {"precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4},
    }
    assert report["macro_f1"] == 0.6667  # (0.75 + 0.5 + 0.75) / 3
    assert report["micro_f1"] == 0.7  # one label each: equals accuracy
    assert report["weighted_f1"] == 0.7  # (0.75 * 4 + 0.5 * 2 + 0.75 * 4) / 10
    assert report["samples"] == 10


def test_a_label_nobody_used_does_not_drag_the_macro_average():
    """As scikit-learn averages without labels=: over the classes in the truth or the predictions."""
    report = single_label(TRUE, PRED, ["a", "b", "c", "d"])
    assert report["macro_f1"] == 0.6667
    assert report["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert report["confusion_matrix"]["counts"][3] == [0, 0, 0, 0]


def test_several_labels_each():
    # x: true 1 1 0 0, predicted 1 1 1 0 -> tp 2, fp 1, fn 0, tn 1: P 2/3, R 1, F1 0.8
    # y: true 0 1 1 0, predicted 0 0 1 0 -> tp 1, fp 0, fn 1, tn 2: P 1, R 1/2, F1 2/3
    true = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    pred = np.array([[1, 0], [1, 0], [1, 1], [0, 0]])
    report = multi_label(true, pred, ["x", "y"])
    assert report["per_class"]["x"] == {"precision": 0.6667, "recall": 1.0, "f1": 0.8, "support": 2, "tp": 2,
                                        "fp": 1, "fn": 0, "tn": 1}  # fmt: skip
    assert report["per_class"]["y"]["f1"] == 0.6667 and report["per_class"]["y"]["tn"] == 2
    assert report["micro_f1"] == 0.75  # tp 3, fp 1, fn 1
    assert report["macro_f1"] == 0.7333  # (0.8 + 2/3) / 2
    assert report["exact_match"] == 0.5  # rows 1 and 4


def test_entity_level_f1_of_seqeval_s_own_example():
    """seqeval's README case: the MISC entity starts one word early, so it is wrong as a whole,
    though 3 of its 4 tags are right; PER is right. 1 of 2 entities: precision, recall, F1 0.5;
    8 of 10 tags right."""
    true = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    pred = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    report = tagging(true, pred)
    assert (report["precision"], report["recall"], report["f1"], report["token_accuracy"]) == (
        0.5,
        0.5,
        0.5,
        0.8,
    )
    assert report["per_type"]["MISC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert report["per_type"]["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert report["entities"] == 2


def test_entity_rules_read_lenient_bio_and_iobes_as_conlleval_does():
    tags = ["I-PER", "I-PER", "O", "B-LOC", "I-ORG", "S-LOC", "B-PER", "E-PER", "O", "I-ORG", "B-ORG"]
    # I- after O starts an entity; I- of another type starts a new one; S- is one word; E- ends one
    assert entities(tags) == [("PER", 0, 1), ("LOC", 3, 3), ("ORG", 4, 4), ("LOC", 5, 5), ("PER", 6, 7),
                              ("ORG", 9, 9), ("ORG", 10, 10)]  # fmt: skip
    pred = ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "S-LOC", "B-PER", "I-PER", "O", "O", "B-ORG"]
    report = tagging([tags], [pred])
    # found 5, right 4 (PER 0-1, LOC 5, PER 6-7, ORG 10; not LOC 3-4); of 7 true
    assert (report["precision"], report["recall"], report["f1"]) == (0.8, 0.5714, 0.6667)
    assert entities(["O", "O"]) == [] and entities(["B-X"]) == [("X", 0, 0)]


def test_tags_that_name_no_entities_get_token_accuracy_only():
    report = tagging([["NN", "VB"]], [["NN", "NN"]], bio=False)
    assert report == {"samples": 1, "words": 2, "token_accuracy": 0.5}


def test_nothing_to_score_scores_zero_not_a_division_error():
    assert tagging([["O", "O"]], [["O", "O"]])["f1"] == 0.0
    assert single_label([], [], ["a", "b"])["accuracy"] == 0.0


@pytest.mark.parametrize("report", [single_label(TRUE, PRED, ["a", "b", "c"]), tagging([["B-X"]], [["B-X"]])])
def test_the_log_table_shows_the_scores(report):
    text = table(report)
    for key, value in headline(report).items():
        assert f"{key}" in text and f"{value}" in text
