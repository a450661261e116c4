"""BLEU-4 and ROUGE against values worked out by hand (n-gram counts written out below)."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("jieba", reason="the eval dependencies (.[train]) are not installed")

from runner.train.tools.scores import corpus, scores, words  # noqa: E402


def test_english_splits_at_whitespace_chinese_into_jieba_words():
    assert words("the cat  sat, on the mat") == ["the", "cat", "sat,", "on", "the", "mat"]
    assert words("我爱北京天安门") == ["我", "爱", "北京", "天安门"]


def test_english_by_hand():
    # pred: the cat sat on a mat / ref: the cat sat on the mat (6 words each, brevity penalty 1)
    # 1-grams 5/6 match, 2-grams 3/5 (the cat, cat sat, sat on), 3-grams 2/4, 4-grams 1/3.
    s = scores("the cat sat on a mat", "the cat sat on the mat")
    assert s["bleu-4"] == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, abs=1e-6)  # 53.73
    assert s["rouge-1"] == pytest.approx(100 * 5 / 6)  # P = R = 5/6
    assert s["rouge-2"] == pytest.approx(100 * 3 / 5)
    assert s["rouge-l"] == pytest.approx(100 * 5 / 6)  # LCS: the cat sat on mat


def test_chinese_by_hand():
    # pred 我/爱/北京 (3 words), ref 我/爱/北京/天安门 (4): every n-gram of pred is in ref;
    # pred has no 4-gram, which smoothing method 3 counts as 1/2; brevity penalty exp(1 - 4/3).
    s = scores("我爱北京", "我爱北京天安门")
    assert s["bleu-4"] == pytest.approx(100 * math.exp(1 - 4 / 3) * (1 * 1 * 1 * 0.5) ** 0.25, abs=1e-6)
    assert s["rouge-1"] == pytest.approx(100 * 2 * 1 * 0.75 / 1.75)  # P 3/3, R 3/4
    assert s["rouge-2"] == pytest.approx(100 * 2 * 1 * (2 / 3) / (1 + 2 / 3))  # P 2/2, R 2/3
    assert s["rouge-l"] == pytest.approx(100 * 2 * 1 * 0.75 / 1.75)


def test_empty_or_unrelated_answers_score_zero_and_corpus_averages():
    assert scores("", "我爱北京") == dict.fromkeys(("bleu-4", "rouge-1", "rouge-2", "rouge-l"), 0.0)
    assert scores("dog", "cat")["rouge-1"] == 0.0
    both = corpus(["the cat sat on a mat", ""], ["the cat sat on the mat", "x"])
    assert both["rouge-2"] == pytest.approx(30.0)
    assert both["rouge-1"] == pytest.approx(round(100 * 5 / 6 / 2, 4))
