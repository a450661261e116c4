"""BLEU and ROUGE of generated answers against references, computed the way the figures people
compare against are computed, in percent.

Chinese (`zh`), as LLaMA-Factory's `ComputeSimilarity` and the ChatGLM P-Tuning scripts it follows:
- bleu-4: NLTK's sentence BLEU-4 over characters (`list(text)`), smoothing method 3, per sample;
- rouge-1/2/l: rouge-chinese's F-measure over jieba's words joined by spaces, per sample (0 where
  the prediction or the reference has no word);
each per-sample figure is x100 rounded to 4 places, then averaged over the samples.

English (`en`), as machine-translation and summarization papers report them:
- bleu-4-corpus: sacreBLEU's corpus BLEU (13a tokenization, exponential smoothing, case kept);
- bleu-4-sentence: the mean of sacreBLEU's sentence BLEU (the same, with effective order);
- rouge-1/2/l: Google's rouge-score F-measure (its default tokenizer: lowercased alphanumeric
  words, no stemming), averaged over the samples.

One language decides the method for the whole set, so a prediction and its reference are always
cut the same way: `auto` is zh when at least half the references hold a Chinese character.
"""

from __future__ import annotations

import logging
import re
from functools import cache

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]")
LANGUAGES = ("auto", "zh", "en")
NAMES = {
    "zh": ("bleu-4", "rouge-1", "rouge-2", "rouge-l"),
    "en": ("bleu-4-corpus", "bleu-4-sentence", "rouge-1", "rouge-2", "rouge-l"),
}
METHODS = {
    "zh": "bleu-4: NLTK sentence BLEU-4 on characters, smoothing method 3; rouge: rouge-chinese F on jieba "
    "words; per sample x100 rounded to 4 places, mean over samples (LLaMA-Factory / ChatGLM)",
    "en": "bleu-4-corpus: sacreBLEU corpus BLEU (13a, exp smoothing); bleu-4-sentence: mean sacreBLEU "
    "sentence BLEU; rouge: rouge-score F (default tokenizer, no stemmer), mean over samples",
}


def language(references: list[str], asked: str = "auto") -> str:
    if asked != "auto":
        return asked
    chinese = sum(bool(_CJK.search(r)) for r in references)
    return "zh" if references and chinese * 2 >= len(references) else "en"


def corpus(predictions: list[str], references: list[str], lang: str = "auto") -> dict[str, float]:
    """The figures of a whole set, rounded to 4 places; `lang`: auto, zh or en."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    lang = language(references, lang)
    figures = _zh(predictions, references) if lang == "zh" else _en(predictions, references)
    return {name: round(figures[name], 4) for name in NAMES[lang]}


def describe(references: list[str], lang: str = "auto") -> dict[str, str]:
    """What eval_results.json says about how its figures were computed."""
    lang = language(references, lang)
    return {"language": lang, "method": METHODS[lang]}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _zh(predictions: list[str], references: list[str]) -> dict[str, float]:
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    rows: dict[str, list[float]] = {name: [] for name in NAMES["zh"]}
    smooth = SmoothingFunction().method3
    for pred, ref in zip(predictions, references, strict=True):
        hyp_words, ref_words = " ".join(_jieba().cut(pred)), " ".join(_jieba().cut(ref))
        if not hyp_words.split() or not ref_words.split():
            rouge = dict.fromkeys(("rouge-1", "rouge-2", "rouge-l"), 0.0)
        else:
            (found,) = _rouge_chinese().get_scores(hyp_words, ref_words)
            rouge = {k: found[k]["f"] for k in ("rouge-1", "rouge-2", "rouge-l")}
        for name, value in rouge.items():
            rows[name].append(round(value * 100, 4))
        bleu = sentence_bleu([list(ref)], list(pred), smoothing_function=smooth)
        rows["bleu-4"].append(round(bleu * 100, 4))
    return {name: _mean(values) for name, values in rows.items()}


def _en(predictions: list[str], references: list[str]) -> dict[str, float]:
    from sacrebleu.metrics import BLEU

    corpus_bleu = BLEU().corpus_score(predictions, [references]).score
    sentence = BLEU(effective_order=True)
    sentences = [sentence.sentence_score(p, [r]).score for p, r in zip(predictions, references, strict=True)]
    rouge: dict[str, list[float]] = {"rouge-1": [], "rouge-2": [], "rouge-l": []}
    for pred, ref in zip(predictions, references, strict=True):
        found = _rouge_score().score(ref, pred)  # (target, prediction)
        for name, key in (("rouge-1", "rouge1"), ("rouge-2", "rouge2"), ("rouge-l", "rougeL")):
            rouge[name].append(100 * found[key].fmeasure)
    return {"bleu-4-corpus": corpus_bleu, "bleu-4-sentence": _mean(sentences),
            **{name: _mean(values) for name, values in rouge.items()}}  # fmt: skip


@cache
def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)  # its dictionary-loading chatter
    return jieba


@cache
def _rouge_chinese():
    from rouge_chinese import Rouge

    return Rouge()


@cache
def _rouge_score():
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(["rouge1", "rouge2", "rougeL"])
