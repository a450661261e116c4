"""BLEU-4 and ROUGE-1/2/L of generated answers against references, per sample, in percent.

Text with Chinese characters is segmented into words with jieba (as LLaMA-Factory's and
ChatGLM's evaluations do); other text is split at whitespace. BLEU-4 is NLTK's sentence BLEU
with its smoothing method 3 (zero n-gram counts become 1/2, 1/4, ...), ROUGE is Google's
rouge-score (F-measure) over the same words.
"""

from __future__ import annotations

import logging
import re
from functools import cache

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
NAMES = ("bleu-4", "rouge-1", "rouge-2", "rouge-l")


def words(text: str) -> list[str]:
    if _CJK.search(text):
        return [w for w in _jieba().cut(text) if w.strip()]
    return text.split()


@cache
def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)  # its dictionary-loading chatter
    return jieba


class _Words:
    """The tokenizer rouge-score calls: the words above, instead of its ASCII-only default."""

    def tokenize(self, text: str) -> list[str]:
        return words(text)


@cache
def _rouge():
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=_Words())


def scores(prediction: str, reference: str) -> dict[str, float]:
    """The four scores of one answer, 0 to 100."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    pred, ref = words(prediction), words(reference)
    if not pred or not ref:
        return dict.fromkeys(NAMES, 0.0)
    bleu = sentence_bleu([ref], pred, smoothing_function=SmoothingFunction().method3)
    rouge = _rouge().score(reference, prediction)  # (target, prediction)
    return {
        "bleu-4": 100 * bleu,
        "rouge-1": 100 * rouge["rouge1"].fmeasure,
        "rouge-2": 100 * rouge["rouge2"].fmeasure,
        "rouge-l": 100 * rouge["rougeL"].fmeasure,
    }


def corpus(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Each score's mean over the samples, rounded to 4 places."""
    rows = [scores(p, r) for p, r in zip(predictions, references, strict=True)]
    return {name: round(sum(row[name] for row in rows) / max(len(rows), 1), 4) for name in NAMES}
