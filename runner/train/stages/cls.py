"""Stage cls: sequence classification, the Hugging Face walkthrough's BERT fine-tuning.

Each record's text (or text pair) gets one label of the label set, or with
classification.multi_label any number of them. model.path gets a new head for the label set
(AutoModelForSequenceClassification: `classifier` on BERT and RoBERTa, `score` on a decoder), which
trains with every method: in full beside a LoRA or AdaLoRA adapter, with the last layers under
freeze. With data.val_size the held-out split is scored while training and at its end: accuracy,
macro and micro F1, per-class precision and recall and the confusion matrix, in eval_results.json.
The label set is saved beside the weights (labels.json; id2label in the config).
"""

from __future__ import annotations

from pathlib import Path

from runner.core.jobspec.job import JobSpec
from runner.train import classify


def run(spec: JobSpec, run_dir: Path) -> dict:
    return classify.run(spec, run_dir, "sequence")
