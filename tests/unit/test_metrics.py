"""BLEU and ROUGE by the field's conventions: equal to the reference methods' own figures
(tests/data/metrics/golden.json, written by bench/metric_goldens.py with LLaMA-Factory's procedure
and the sacreBLEU command line) and to values worked out by hand."""

from __future__ import annotations

import json
import math

import pytest

for needed in ("jieba", "nltk", "rouge_chinese", "sacrebleu", "rouge_score"):
    pytest.importorskip(needed, reason="the eval dependencies (.[train]) are not installed")

from runner.train.tools.scores import corpus, describe, language  # noqa: E402
from tests.conftest import DATA  # noqa: E402

GOLDEN = json.loads((DATA / "metrics" / "golden.json").read_text(encoding="utf-8"))


def _rows(name: str) -> tuple[list[str], list[str]]:
    rows = [
        json.loads(line)
        for line in (DATA / "metrics" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    return [r["predict"] for r in rows], [r["label"] for r in rows]


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_figures_equal_the_reference_methods(lang: str):
    figures = corpus(*_rows(lang))
    assert set(figures) == set(GOLDEN[lang])
    for name, expected in GOLDEN[lang].items():
        assert figures[name] == pytest.approx(expected, abs=1e-4), name


def test_chinese_bleu_is_on_characters_and_rouge_on_jieba_words():
    # pred 我爱北京 (4 characters), ref 我爱北京天安门 (7): every n-gram of pred is in ref; pred has
    # no 5-gram so all four orders count, brevity penalty exp(1 - 7/4).
    s = corpus(["我爱北京"], ["我爱北京天安门"])
    assert s["bleu-4"] == pytest.approx(round(100 * math.exp(1 - 7 / 4), 4), abs=1e-4)
    # jieba: 我/爱/北京 against 我/爱/北京/天安门: P 3/3, R 3/4
    assert s["rouge-1"] == pytest.approx(100 * 2 * 1 * 0.75 / 1.75, abs=1e-4)
    assert s["rouge-2"] == pytest.approx(100 * 2 * 1 * (2 / 3) / (1 + 2 / 3), abs=1e-4)


def test_english_is_sacrebleu_and_rouge_score():
    s = corpus(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert s == {
        "bleu-4-corpus": 100.0,
        "bleu-4-sentence": 100.0,
        "rouge-1": 100.0,
        "rouge-2": 100.0,
        "rouge-l": 100.0,
    }
    # rouge-score drops punctuation and case; sacreBLEU's 13a splits the full stop off
    s = corpus(["Hello there"], ["hello there."])
    assert s["rouge-1"] == s["rouge-2"] == s["rouge-l"] == 100.0
    assert 0 < s["bleu-4-sentence"] < 100


def test_one_language_decides_the_method_for_the_whole_set():
    assert language(["你好", "Hello", "好的"]) == "zh"
    assert language(["Hello", "there", "你好"]) == "en"
    assert language(["Hello"], "zh") == "zh"
    # the same pair scores the same whichever way round the full stop is (the example)
    one = corpus(["Hello there"], ["Hello there."])
    other = corpus(["Hello there."], ["Hello there"])
    assert one["rouge-2"] == other["rouge-2"] == 100.0
    assert describe(["你好"])["language"] == "zh" and "jieba" in describe(["你好"])["method"]
    assert "sacreBLEU" in describe(["hi"])["method"]


def test_empty_answers_score_zero():
    zh = corpus(["", "我爱北京"], ["我爱北京", "我爱北京"])
    assert zh["rouge-1"] == pytest.approx(50.0)
    en = corpus([""], ["a cat"])
    assert en["bleu-4-sentence"] == 0.0 and en["rouge-1"] == 0.0
    with pytest.raises(ValueError, match="2 predictions for 1"):
        corpus(["a", "b"], ["a"])
