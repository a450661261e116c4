"""Scores of a classifier, computed here with numpy (no metric script is ever fetched):

- one label per text: accuracy, macro and micro F1 (micro F1 equals accuracy), weighted F1, each
  class's precision, recall, F1 and support, and the confusion matrix (rows: the true label,
  columns: the predicted one);
- several labels per text (multi_label): exact-match accuracy, micro and macro precision, recall
  and F1, and each label's counts (tp, fp, fn, tn);
- a tag per word: token accuracy and, for BIO tags, entity-level precision, recall and F1 as
  seqeval reports them by default (an entity counts when its type and its first and last word
  match; conlleval's rules read the tags), overall (micro) and per entity type.

A ratio whose denominator is 0 is 0 (scikit-learn's zero_division=0). Macro averages run over the
classes that occur in the truth or the predictions, as scikit-learn's do when given no labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from runner.core.data.labels import entities


def _ratio(a: float, b: float) -> float:
    return float(a) / float(b) if b else 0.0


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


def _round(x: float) -> float:
    return round(float(x), 4)


def confusion(true: Sequence[int], pred: Sequence[int], n: int) -> np.ndarray:
    """counts[t, p]: how many texts of true label t were predicted p."""
    counts = np.zeros((n, n), dtype=np.int64)
    np.add.at(counts, (np.asarray(true, dtype=np.int64), np.asarray(pred, dtype=np.int64)), 1)
    return counts


def single_label(true: Sequence[int], pred: Sequence[int], names: Sequence[str]) -> dict:
    counts = confusion(true, pred, len(names))
    tp = np.diag(counts)
    support, predicted = counts.sum(axis=1), counts.sum(axis=0)
    per_class, f1s, present = {}, [], []
    for i, name in enumerate(names):
        p, r = _ratio(tp[i], predicted[i]), _ratio(tp[i], support[i])
        f1 = _f1(p, r)
        per_class[name] = {
            "precision": _round(p),
            "recall": _round(r),
            "f1": _round(f1),
            "support": int(support[i]),
        }
        f1s.append(f1)
        present.append(support[i] > 0 or predicted[i] > 0)
    f1s_arr, present_arr = np.asarray(f1s), np.asarray(present)
    total = int(counts.sum())
    accuracy = _ratio(tp.sum(), total)
    return {
        "samples": total,
        "accuracy": _round(accuracy),
        "macro_f1": _round(f1s_arr[present_arr].mean() if present_arr.any() else 0.0),
        "micro_f1": _round(
            accuracy
        ),  # one label each: every miss is one false positive and one false negative
        "weighted_f1": _round(_ratio((f1s_arr * support).sum(), support.sum())),
        "per_class": per_class,
        "confusion_matrix": {
            "labels": list(names),
            "rows": "true label",
            "columns": "predicted label",
            "counts": counts.tolist(),
        },  # fmt: skip
    }


def multi_label(true: np.ndarray, pred: np.ndarray, names: Sequence[str]) -> dict:
    """true, pred: [texts, labels] of 0/1."""
    true, pred = np.asarray(true).astype(bool), np.asarray(pred).astype(bool)
    tp = (true & pred).sum(axis=0)
    fp = (~true & pred).sum(axis=0)
    fn = (true & ~pred).sum(axis=0)
    tn = (~true & ~pred).sum(axis=0)
    per_class, f1s, present = {}, [], []
    for i, name in enumerate(names):
        p, r = _ratio(tp[i], tp[i] + fp[i]), _ratio(tp[i], tp[i] + fn[i])
        f1s.append(_f1(p, r))
        present.append(tp[i] + fp[i] + fn[i] > 0)
        per_class[name] = {"precision": _round(p), "recall": _round(r), "f1": _round(f1s[-1]),
                           "support": int(tp[i] + fn[i]), "tp": int(tp[i]), "fp": int(fp[i]), "fn": int(fn[i]),
                           "tn": int(tn[i])}  # fmt: skip
    micro_p, micro_r = _ratio(tp.sum(), tp.sum() + fp.sum()), _ratio(tp.sum(), tp.sum() + fn.sum())
    kept = np.asarray(f1s)[np.asarray(present)] if any(present) else np.zeros(1)
    return {
        "samples": int(true.shape[0]),
        "exact_match": _round((true == pred).all(axis=1).mean() if len(true) else 0.0),
        "micro_precision": _round(micro_p), "micro_recall": _round(micro_r), "micro_f1": _round(_f1(micro_p, micro_r)),
        "macro_f1": _round(kept.mean()),
        "per_class": per_class,
    }  # fmt: skip


def tagging(true: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], bio: bool = True) -> dict:
    """true, pred: each sentence's tags, word by word (the same lengths)."""
    words = sum(len(t) for t in true)
    right = sum(a == b for t, p in zip(true, pred, strict=True) for a, b in zip(t, p, strict=True))
    out = {"samples": len(true), "words": words, "token_accuracy": _round(_ratio(right, words))}
    if not bio:
        return out
    gold, found = set(), set()
    for i, (t, p) in enumerate(zip(true, pred, strict=True)):
        gold |= {(i, *e) for e in entities(list(t))}
        found |= {(i, *e) for e in entities(list(p))}
    hit = gold & found
    precision, recall = _ratio(len(hit), len(found)), _ratio(len(hit), len(gold))
    per_type = {}
    for kind in sorted({e[1] for e in gold | found}):
        g = {e for e in gold if e[1] == kind}
        f = {e for e in found if e[1] == kind}
        h = g & f
        p, r = _ratio(len(h), len(f)), _ratio(len(h), len(g))
        per_type[kind] = {
            "precision": _round(p),
            "recall": _round(r),
            "f1": _round(_f1(p, r)),
            "support": len(g),
        }
    return {**out, "precision": _round(precision), "recall": _round(recall), "f1": _round(_f1(precision, recall)),
            "entities": len(gold), "per_type": per_type}  # fmt: skip


def headline(report: dict) -> dict[str, float]:
    """The report's scalar scores, for the training log and results.json."""
    keys = ("accuracy", "macro_f1", "micro_f1", "weighted_f1", "exact_match", "token_accuracy", "precision",
            "recall", "f1")  # fmt: skip
    return {k: report[k] for k in keys if k in report}


def table(report: dict) -> str:
    """The report as lines for the log: the scores, then per class (or entity type)."""
    lines = [f"{k:<16} {v}" for k, v in headline(report).items()]
    rows = report.get("per_class") or report.get("per_type") or {}
    if rows:
        width = max(8, *(len(str(n)) for n in rows))
        lines.append(f"{'label':<{width}}  precision  recall  f1      support")
        for name, r in rows.items():
            lines.append(
                f"{name:<{width}}  {r['precision']:<9}  {r['recall']:<6}  {r['f1']:<6}  {r['support']}"
            )
    matrix = report.get("confusion_matrix")
    if matrix:
        names = matrix["labels"]
        width = max(6, *(len(n) for n in names))
        lines.append("confusion (rows: true, columns: predicted)")
        lines.append(" " * width + "  " + "  ".join(f"{n:>{width}}" for n in names))
        for name, row in zip(names, matrix["counts"], strict=True):
            lines.append(f"{name:>{width}}  " + "  ".join(f"{c:>{width}}" for c in row))
    return "\n".join(lines)
