"""A trained classifier (a cls or ner run's result, or its export): loaded as export, serve and
eval use it, its predictions (labels and their probabilities; tags, words and entities with their
character spans), and stage eval's scores of it on labelled data."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from runner.core import atomic
from runner.core.data.labels import LabelSet
from runner.core.data.templates import IGNORE, LENGTH
from runner.core.jobspec.job import JobSpec
from runner.core.rundir import RunDir
from runner.core.target import Target
from runner.train.classify import auto_class, collator, head_config, predictions, scores, tokenize

log = logging.getLogger(__name__)


@dataclass
class Classifier:
    model: object
    tokenizer: object
    labels: LabelSet
    name: str
    context: int  # the longest input the model takes, in tokens


def labels_of(target: Target) -> LabelSet:
    """The label set saved beside the classifier (labels.json), else its config's id2label."""
    for where in (target.adapter, target.base):
        if where and (found := LabelSet.load(where)):
            return found
    config = json.loads(Path(target.base, "config.json").read_text(encoding="utf-8"))
    id2label = config.get("id2label") or {"0": "LABEL_0", "1": "LABEL_1"}
    names = tuple(id2label[k] for k in sorted(id2label, key=int))
    multi = config.get("problem_type") == "multi_label_classification"
    return LabelSet(names, target.classifier or "sequence", multi)


def load_classifier(target: Target, dtype=None) -> Classifier:
    """The classifier a target holds, in eval mode: base with the head, the adapter on top."""
    import torch

    from runner.train.model import load_tokenizer
    from runner.train.tools.inference import ready

    labels = labels_of(target)
    tokenizer = load_tokenizer(target.tokenizer, target.trust_remote_code)
    model = auto_class(labels.task).from_pretrained(
        target.base, local_files_only=True, trust_remote_code=target.trust_remote_code,
        dtype=dtype or torch.float32, pad_token_id=tokenizer.pad_token_id, ignore_mismatched_sizes=True,
        **head_config(labels),
    )  # fmt: skip
    model = ready(model, tokenizer, target.adapter)
    config = getattr(model, "config", None)
    context = getattr(config, "max_position_embeddings", None) or tokenizer.model_max_length
    return Classifier(model, tokenizer, labels, target.name, int(min(context, tokenizer.model_max_length)))


def classify(loaded: Classifier, texts: list[str], pairs: list[str] | None = None) -> list[dict]:
    """Each text's label (multi_label: labels) and every label's probability."""
    import torch

    enc = loaded.tokenizer(texts, pairs, truncation=True, max_length=loaded.context, padding=True,
                           return_tensors="pt").to(loaded.model.device)  # fmt: skip
    with torch.no_grad():
        logits = loaded.model(**enc).logits.float()
    names, out = loaded.labels.names, []
    probs = torch.sigmoid(logits) if loaded.labels.multi_label else torch.softmax(logits, -1)
    for row in probs.tolist():
        scores = {names[i]: round(p, 6) for i, p in enumerate(row)}
        if loaded.labels.multi_label:
            chosen = [names[i] for i, p in enumerate(row) if p >= loaded.labels.threshold]
            out.append({"labels": chosen, "scores": scores})
        else:
            best = max(range(len(row)), key=row.__getitem__)
            out.append({"label": names[best], "score": round(row[best], 6), "scores": scores})
    return out


def tag(loaded: Classifier, texts: list[str]) -> list[dict]:
    """Each text's words (as the tokenizer splits them) with their tags, and the entities they make,
    with their character spans in the text."""
    import torch

    from runner.core.data.labels import entities

    enc = loaded.tokenizer(texts, truncation=True, max_length=loaded.context, padding=True,
                           return_offsets_mapping=True, return_tensors="pt")  # fmt: skip
    offsets = enc.pop("offset_mapping").tolist()
    with torch.no_grad():
        probs = torch.softmax(loaded.model(**enc.to(loaded.model.device)).logits.float(), -1).tolist()
    names, out = loaded.labels.names, []
    for i, text in enumerate(texts):
        words, spans, tags, conf, previous = [], [], [], [], None
        for k, word in enumerate(enc.word_ids(i)):
            start, end = offsets[i][k]
            if word is None:
                continue
            if word != previous:  # the word's first sub-token carries its tag
                best = max(range(len(names)), key=probs[i][k].__getitem__)
                words.append([start, end])
                tags.append(names[best])
                conf.append(probs[i][k][best])
            else:
                words[-1][1] = end
            previous = word
        found = []
        if loaded.labels.bio:
            for kind, first, last in entities(tags):
                start, end = words[first][0], words[last][1]
                score = min(conf[first : last + 1])
                found.append({"type": kind, "text": text[start:end], "start": start, "end": end,
                              "score": round(score, 6)})  # fmt: skip
        spans = [{"word": text[s:e], "tag": t, "start": s, "end": e, "score": round(c, 6)}
                 for (s, e), t, c in zip(words, tags, conf, strict=True)]  # fmt: skip
        out.append({"entities": found, "words": spans})
    return out


def evaluate(spec: JobSpec, run_dir: Path, target: Target) -> dict:
    """Stage eval of a classifier: its scores on the data (the held-out split where data.val_size is
    set: the rows its training held out, for the same data and seed), in eval_results.json."""
    import time

    import torch

    from runner.train import dataset
    from runner.train.tools.class_scores import table

    started = time.time()
    loaded = load_classifier(target)
    rows, _ = tokenize(spec, loaded.tokenizer, loaded.labels)
    _, held = dataset.split(rows, spec)
    rows = held if held is not None else rows
    if spec.eval.max_samples:
        rows = rows.select(range(min(spec.eval.max_samples, len(rows))))
    rows = rows.remove_columns([LENGTH])
    log.info("evaluating %s on %d record(s)", loaded.name, len(rows))
    collate, batch = collator(loaded.tokenizer, loaded.labels.task), spec.training.per_device_eval_batch_size
    found, truth = [], []
    for start in range(0, len(rows), batch):
        inputs = collate([rows[i] for i in range(start, min(start + batch, len(rows)))])
        true = inputs.pop("labels")
        with torch.no_grad():
            logits = loaded.model(**{k: v.to(loaded.model.device) for k, v in inputs.items()}).logits
        found += list(predictions(loaded.labels, logits).cpu().numpy())
        truth += list(true.numpy())
    if loaded.labels.task == "token":  # rows of different lengths: pad as the Trainer does
        width = max(len(r) for r in truth)
        truth = [list(r) + [IGNORE] * (width - len(r)) for r in truth]
        found = [list(r) + [IGNORE] * (width - len(r)) for r in found]
    report = scores(loaded.labels, found, truth)
    summary = {"stage": spec.stage, "split": "validation" if spec.data.val_size else "all",
               "labels": list(loaded.labels.names), **report, "seconds": round(time.time() - started, 1),
               "model": spec.model.path, "adapter": spec.model.adapter}  # fmt: skip
    run = RunDir(run_dir)
    for path in (run.eval_results, run.results):
        atomic.write_text(path, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    log.info("%s", table(report))
    return summary
