"""Stage ner: token classification, a tag for each word (named entities in BIO tags: B-PER, I-PER,
O, ...), on an encoder (BERT, Chinese BERT with one character per word) or a decoder.

The words come pre-split (the tagging format's `tokens`); each is tokenized into sub-tokens and
its tag is learnt on the first of them, the others ignored, as transformers' token-classification
recipe aligns labels with `word_ids()`. model.path gets a new head for the tag set
(AutoModelForTokenClassification), which trains with every method. With data.val_size the
held-out split is scored while training and at its end: token accuracy and, for BIO tags,
entity-level precision, recall and F1 (seqeval's rules), overall and per entity type, in
eval_results.json. The tag set is saved beside the weights (labels.json; id2label in the config).
"""

from __future__ import annotations

from pathlib import Path

from runner.core.jobspec.job import JobSpec
from runner.train import classify


def run(spec: JobSpec, run_dir: Path) -> dict:
    return classify.run(spec, run_dir, "token")
