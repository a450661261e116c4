"""Reference figures for the metric goldens, computed by the reference methods themselves (not by
runner's runner/train/tools/scores.py), on tests/data/metrics/{zh,en}.jsonl:

- zh: LLaMA-Factory's ComputeSimilarity procedure (src/llamafactory/train/sft/metric.py), written
  out step by step: jieba words + rouge_chinese.Rouge F, NLTK sentence_bleu on characters with
  smoothing method 3, each x100 rounded to 4 places, numpy mean.
- en: the sacreBLEU command line (`python -m sacrebleu REF -i HYP -m bleu -b -w 6`) for the corpus
  BLEU; sacrebleu.sentence_bleu averaged for the sentence figure; rouge_score's RougeScorer F,
  averaged.

    python bench/metric_goldens.py            # prints them
    python bench/metric_goldens.py --write    # writes tests/data/metrics/golden.json

Needs jieba, nltk, rouge-chinese, sacrebleu, rouge-score and numpy.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "metrics"


def rows(name: str) -> tuple[list[str], list[str]]:
    lines = [json.loads(line) for line in (DATA / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]
    return [r["predict"] for r in lines], [r["label"] for r in lines]


def llamafactory_zh(preds: list[str], labels: list[str]) -> dict[str, float]:
    import jieba
    import numpy as np
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    score_dict = {"rouge-1": [], "rouge-2": [], "rouge-l": [], "bleu-4": []}
    for pred, label in zip(preds, labels, strict=True):
        hypothesis = list(jieba.cut(pred))
        reference = list(jieba.cut(label))
        if len(" ".join(hypothesis).split()) == 0 or len(" ".join(reference).split()) == 0:
            result = {"rouge-1": {"f": 0.0}, "rouge-2": {"f": 0.0}, "rouge-l": {"f": 0.0}}
        else:
            result = Rouge().get_scores(" ".join(hypothesis), " ".join(reference))[0]
        for k, v in result.items():
            score_dict[k].append(round(v["f"] * 100, 4))
        bleu = sentence_bleu([list(label)], list(pred), smoothing_function=SmoothingFunction().method3)
        score_dict["bleu-4"].append(round(bleu * 100, 4))
    return {k: float(np.mean(v)) for k, v in score_dict.items()}


def sacrebleu_en(preds: list[str], labels: list[str]) -> dict[str, float]:
    import sacrebleu
    from rouge_score.rouge_scorer import RougeScorer

    with tempfile.TemporaryDirectory() as tmp:
        hyp, ref = Path(tmp, "hyp.txt"), Path(tmp, "ref.txt")
        hyp.write_text("\n".join(preds) + "\n", encoding="utf-8")
        ref.write_text("\n".join(labels) + "\n", encoding="utf-8")
        out = subprocess.run([sys.executable, "-m", "sacrebleu", str(ref), "-i", str(hyp), "-m", "bleu", "-b", "-w", "6"],
                             capture_output=True, text=True, check=True)  # fmt: skip
    corpus = float(out.stdout.strip())
    sentence = sum(sacrebleu.sentence_bleu(p, [r]).score for p, r in zip(preds, labels, strict=True)) / len(
        preds
    )
    scorer = RougeScorer(["rouge1", "rouge2", "rougeL"])
    found = [scorer.score(r, p) for p, r in zip(preds, labels, strict=True)]
    rouge = {name: 100 * sum(f[key].fmeasure for f in found) / len(found)
             for name, key in (("rouge-1", "rouge1"), ("rouge-2", "rouge2"), ("rouge-l", "rougeL"))}  # fmt: skip
    return {"bleu-4-corpus": corpus, "bleu-4-sentence": sentence, **rouge}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--write", action="store_true", help="write tests/data/metrics/golden.json")
    args = parser.parse_args()
    import importlib.metadata as md

    golden = {
        "zh": llamafactory_zh(*rows("zh")),
        "en": sacrebleu_en(*rows("en")),
        "computed_with": {
            p: md.version(p) for p in ("jieba", "nltk", "rouge-chinese", "sacrebleu", "rouge-score")
        },
    }
    text = json.dumps(golden, indent=2, ensure_ascii=False) + "\n"
    print(text, end="")
    if args.write:
        (DATA / "golden.json").write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
