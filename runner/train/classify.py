"""What the classification stages (cls, ner) share; a trained classifier is loaded by
runner/train/tools/classifier.py.

- data: the records (core/data/labels.py) -> the label set (the spec's, or the data's) -> rows.
  A text (or text pair) is tokenized as the model's tokenizer does by itself ([CLS] text [SEP] on
  BERT), cut to data.cutoff_len; its label an id, or one 0/1 per label (multi_label). A sentence's
  words are tokenized as pre-split words: the first sub-token of each word carries its tag, the
  others and the special tokens are ignored (-100), as transformers' token-classification recipe
  does with `word_ids()`. Cached like every stage's rows (OUTPUT/.cache/data), the label set in
  the cache's figures.
- model: `AutoModelForSequenceClassification` / `AutoModelForTokenClassification` with the label
  set (id2label, label2id, problem_type): a new head on an encoder (BERT, RoBERTa, Chinese BERT),
  or on a decoder (Llama, Qwen: `score` reads the last real token). The head trains with every
  method: in full beside the adapter (PEFT's modules_to_save) or with freeze's last layers.
- training: transformers' Trainer as sft's (runner/train/trainer.py), scoring the validation split
  as it goes; at the end the whole report (runner/train/tools/class_scores.py) goes to
  eval_results.json and the label set beside the weights (labels.json).
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from functools import partial
from itertools import chain
from pathlib import Path

from runner.core import atomic, stages
from runner.core.data.labels import LabelError, LabelSet, read_labels
from runner.core.data.templates import IGNORE, LENGTH
from runner.core.errors import RunnerError
from runner.core.jobspec.job import JobSpec
from runner.core.rundir import RunDir

log = logging.getLogger(__name__)
# This module's preprocessing, hashed into the cache key beside what dataset.cache_key hashes.
_CODE = ("core/data/labels.py", "train/classify.py")


def task(spec: JobSpec) -> str:
    """ "sequence" (stage cls) or "token" (stage ner)."""
    return stages.STAGES[spec.stage].data.classify


# --- the tokenizer and the data ------------------------------------------------------------------


def tokenizer_for(spec: JobSpec):
    """The model's tokenizer as it is (no chat template), with the tokens the spec adds."""
    from runner.core.data.templates import add_special_tokens
    from runner.train.model import load_tokenizer

    tokenizer = load_tokenizer(spec.model.path, spec.model.trust_remote_code)
    add_special_tokens(tokenizer, spec.model.add_special_tokens)
    if not tokenizer.is_fast:
        raise RunnerError(f"stage {spec.stage} needs a fast tokenizer (a tokenizer.json in {spec.model.path}), "
                          "which maps every token to its text; this one is a slow, Python tokenizer")  # fmt: skip
    if task(spec) == "token":
        tokenizer = _takes_words(tokenizer, spec)
    return tokenizer


def _takes_words(tokenizer, spec: JobSpec):
    """Byte-level BPE tokenizers (RoBERTa, GPT-2) take pre-split words only when told to put a space
    before each: reloaded so where they refuse."""
    try:
        tokenizer(["a", "b"], is_split_into_words=True)
        return tokenizer
    except (ValueError, AssertionError) as e:
        if "add_prefix_space" not in str(e):
            raise
    from transformers import AutoTokenizer

    log.info("the tokenizer takes pre-split words with add_prefix_space=True")
    again = AutoTokenizer.from_pretrained(spec.model.path, local_files_only=True, add_prefix_space=True,
                                          trust_remote_code=spec.model.trust_remote_code)  # fmt: skip
    again.pad_token = again.pad_token or again.eos_token
    again.padding_side = "right"
    return again


def build(spec: JobSpec, tokenizer):
    """Training and validation rows, and the label set."""
    from datasets import disable_progress_bars

    from runner.train import dataset

    disable_progress_bars()
    directory = _cache_dir(spec, tokenizer) if spec.data.cache else None

    def make():
        rows, stats = tokenize(spec, tokenizer)
        if directory:
            dataset.save(rows, directory, stats)  # written whole or not at all
        return rows, stats

    rows, stats = dataset.cached(directory, make)
    labels = LabelSet(tuple(stats["labels"]["labels"]), stats["labels"]["task"],
                      stats["labels"]["multi_label"], stats["labels"]["threshold"])  # fmt: skip
    log.info("%d rows, %d labels: %s", len(rows), len(labels.names), ", ".join(labels.names[:20]))
    train, evaluation = dataset.split(rows, spec)
    return train, evaluation, labels


def tokenize(spec: JobSpec, tokenizer, labels: LabelSet | None = None):
    """Rows and their figures (records and skipped per dataset, the label set, words whose tag was
    cut off by cutoff_len). `labels`: a trained classifier's (stage eval), else the spec's or the data's."""
    from datasets import Dataset

    from runner.core.data import readers
    from runner.core.data.records import DataError
    from runner.train import dataset

    kind, c = labels.task if labels else task(spec), spec.classification
    skipped: list[int] = []
    loaded = readers.load(spec.data, spec.training.seed, skipped, spec.stage)
    try:
        if labels is None:
            labels = LabelSet.of(
                read_labels(chain(*loaded), kind), c.labels, kind, c.multi_label, c.threshold
            )
        sources = [Dataset.from_list([_labelled(item, labels, kind) for item in items]) for items in loaded]
    except LabelError as e:
        raise DataError(f"{e} (run `runner validate` to see the record)") from None
    mixed = dataset.mix(sources, spec)
    encode = _encode_words if kind == "token" else _encode_texts
    rows = mixed.map(encode, batched=True, remove_columns=mixed.column_names, new_fingerprint=uuid.uuid4().hex,
                     fn_kwargs={"tokenizer": tokenizer, "cutoff_len": spec.data.cutoff_len})  # fmt: skip
    cut = sum(rows["words_cut"]) if kind == "token" else 0
    if kind == "token":
        rows = rows.remove_columns(["words_cut"])
        if cut:
            log.warning("%d word(s) lost their tag: beyond data.cutoff_len=%d, or no token of their own",
                        cut, spec.data.cutoff_len)  # fmt: skip
    stats = {"records": [len(items) for items in loaded], "skipped": skipped, "labels": labels.as_json(),
             "words_cut": cut}  # fmt: skip
    return rows, stats


def _labelled(item: dict, labels: LabelSet, kind: str) -> dict:
    if kind == "token":
        return {"tokens": item["tokens"], "tags": [labels.id(t) for t in item["tags"]]}
    return {"text": item["text"], "text_pair": item["text_pair"], "label": labels.encode(item["label"])}


def _encode_texts(batch: dict, tokenizer, cutoff_len: int) -> dict:
    """Texts alone and text pairs, each tokenized in one call (a pair is [CLS] a [SEP] b [SEP])."""
    keep = [k for k in tokenizer.model_input_names if k != "labels"]
    out: dict[str, list] = {k: [None] * len(batch["text"]) for k in keep}
    for paired in (False, True):
        where = [i for i, p in enumerate(batch["text_pair"]) if bool(p) == paired]
        if not where:
            continue
        texts = [batch["text"][i] for i in where]
        pairs = [batch["text_pair"][i] for i in where] if paired else None
        enc = tokenizer(texts, pairs, truncation=True, max_length=cutoff_len)
        for k in keep:
            if k in enc:
                for j, i in enumerate(where):
                    out[k][i] = enc[k][j]
    out = {k: v for k, v in out.items() if all(x is not None for x in v)}
    out["labels"] = batch["label"]
    out[LENGTH] = [len(ids) for ids in out["input_ids"]]
    return out


def _encode_words(batch: dict, tokenizer, cutoff_len: int) -> dict:
    enc = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=cutoff_len)
    out = {k: enc[k] for k in tokenizer.model_input_names if k in enc}
    out["labels"], out["words_cut"] = [], []
    for i, tags in enumerate(batch["tags"]):
        labels, previous, seen = [], None, set()
        for word in enc.word_ids(i):
            if word is None or word == previous:
                labels.append(IGNORE)  # a special token, or a word's later sub-token
            else:
                labels.append(tags[word])
                seen.add(word)
            previous = word
        out["labels"].append(labels)
        out["words_cut"].append(len(tags) - len(seen))
    out[LENGTH] = [len(ids) for ids in out["input_ids"]]
    return out


def _cache_dir(spec: JobSpec, tokenizer) -> Path:
    from runner.train import dataset

    h = hashlib.sha256(dataset.cache_key(spec, tokenizer).encode())
    h.update(json.dumps(spec.classification.model_dump(mode="json"), sort_keys=True).encode())
    here = Path(__file__).parents[1]
    for name in _CODE:
        h.update((here / name).read_bytes())
    return dataset.cache_dir(spec, tokenizer).with_name(h.hexdigest()[:32])


def collator(tokenizer, kind: str):
    from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding

    from runner.train.dataset import WithoutLength

    if kind == "token":
        return WithoutLength(DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORE))
    return WithoutLength(DataCollatorWithPadding(tokenizer))


# --- the model -----------------------------------------------------------------------------------


def auto_class(kind: str):
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    return AutoModelForTokenClassification if kind == "token" else AutoModelForSequenceClassification


def head_config(labels: LabelSet) -> dict:
    """The config a model needs to carry the label set."""
    config = {"num_labels": len(labels.names), "id2label": labels.id2label, "label2id": labels.label2id}
    if labels.task == "sequence":
        config["problem_type"] = (
            "multi_label_classification" if labels.multi_label else "single_label_classification"
        )
    return config


def load_model(spec: JobSpec, labels: LabelSet, tokenizer):
    """model.path with a new head for the label set (a head of another size is replaced). The
    modules whose weights the checkpoint lacks besides the head (BERT's pooler, where the base was
    saved as a masked LM) start random: they are named in `model.runner_fresh`, to train and be
    saved with the head."""
    from runner.train.model import quantization, weight_dtype

    kwargs: dict = {"local_files_only": True, "trust_remote_code": spec.model.trust_remote_code,
                    "dtype": weight_dtype(spec), "pad_token_id": tokenizer.pad_token_id,
                    "ignore_mismatched_sizes": True, **head_config(labels)}  # fmt: skip
    if spec.model.attn_implementation != "auto":
        kwargs["attn_implementation"] = spec.model.attn_implementation
    if spec.method.type == "qlora":
        kwargs["quantization_config"] = quantization(spec)
    model, info = auto_class(labels.task).from_pretrained(spec.model.path, output_loading_info=True, **kwargs)
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    from runner.train.methods import heads

    params = dict(model.named_parameters())
    fresh = {key.rsplit(".", 1)[0] for key in info.get("missing_keys") or () if key in params and "." in key}
    model.runner_fresh = tuple(sorted(m for m in fresh if m.split(".")[0] not in heads(model)))
    if model.runner_fresh:
        log.info("%s: no weights in the checkpoint; they start random and train with the head",
                 ", ".join(model.runner_fresh))  # fmt: skip
    return model


def apply_method(model, spec: JobSpec, tokenizer, kind: str):
    """The method on the model; the head always trains."""
    from runner.train.methods import PEFT_METHODS, heads
    from runner.train.methods import apply_method as apply
    from runner.train.model import fit_vocab

    grew = fit_vocab(model, tokenizer)
    fresh = getattr(model, "runner_fresh", ())
    if spec.method.type in PEFT_METHODS:
        task_type = "TOKEN_CLS" if kind == "token" else "SEQ_CLS"
        return apply(model, spec, train_embeddings=grew, task=task_type, whole=fresh)
    model = apply(model, spec, train_embeddings=grew)
    for name in [*heads(model), *fresh]:  # freeze: the head and what starts random must learn
        model.get_submodule(name).requires_grad_(True)
    return model


# --- training and its report ---------------------------------------------------------------------


def train(spec: JobSpec, run_dir: Path, model, tokenizer, train_ds, eval_ds, labels: LabelSet) -> dict:
    """Train as every stage does; then score the validation split and save the label set."""
    from runner.train import trainer as loop
    from runner.train.callbacks import share

    made = []

    def make(spec_, run_dir_, model_, tokenizer_, train_, eval_, collate):
        # sft's logits at trained positions only: a classifier has no vocabulary logits to spare.
        plain = spec_.model_copy(
            update={"training": spec_.training.model_copy(update={"logits_on_targets_only": False})}
        )
        trainer = loop.make_trainer(plain, run_dir_, model_, tokenizer_, train_, eval_, collate)
        trainer.compute_metrics = partial(_scores, labels)
        trainer.preprocess_logits_for_metrics = partial(predictions, labels)
        made.append(trainer)
        return trainer

    metrics = loop.train(
        spec, run_dir, model, tokenizer, train_ds, eval_ds, collator(tokenizer, labels.task), make=make
    )
    if metrics.get("stopped"):
        return metrics
    report = None
    if eval_ds is not None:  # every process takes part in the prediction; the first writes
        out = made[0].predict(eval_ds, metric_key_prefix="eval")
        report = scores(labels, out.predictions, out.label_ids)
    if not metrics:
        return metrics
    run = RunDir(run_dir)
    saved = run.path / metrics["output"]
    labels.save(saved)
    share(saved)
    if report is not None:
        summary = {"stage": spec.stage, "split": "validation", "labels": list(labels.names), **report,
                   "model": str(saved)}  # fmt: skip
        atomic.write_text(run.eval_results, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        from runner.train.tools.class_scores import table

        log.info("validation split (%s):\n%s", run.eval_results.name, table(report))
    return metrics


def predictions(labels: LabelSet, logits, _labels=None):
    """What the Trainer keeps of each evaluation batch: predicted ids (0/1 per label for
    multi_label), not the logits."""
    import torch

    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    if labels.multi_label:
        return (torch.sigmoid(logits.float()) >= labels.threshold).long()
    return logits.argmax(-1)


def scores(labels: LabelSet, predicted, true) -> dict:
    """The whole report (class_scores) of predictions against the truth, as the Trainer gathers them."""
    import numpy as np

    from runner.train.tools import class_scores

    predicted, true = np.asarray(predicted), np.asarray(true)
    if labels.task == "token":
        names = labels.names
        gold, found = [], []
        for p_row, t_row in zip(predicted, true, strict=True):
            keep = t_row != IGNORE
            gold.append([names[i] for i in t_row[keep]])
            found.append([names[i] if 0 <= i < len(names) else "O" for i in p_row[keep]])
        return class_scores.tagging(gold, found, labels.bio)
    if labels.multi_label:
        return class_scores.multi_label(true.round().astype(int), predicted, labels.names)
    return class_scores.single_label(true.astype(int), predicted.astype(int), labels.names)


def _scores(labels: LabelSet, eval_pred) -> dict:
    from runner.train.tools.class_scores import headline

    return headline(scores(labels, eval_pred.predictions, eval_pred.label_ids))


def run(spec: JobSpec, run_dir: Path, kind: str) -> dict:
    """Stage cls ("sequence") or ner ("token"): the tokenizer, the rows, the model with its head
    and method, then training."""
    from runner.train import trainer as loop

    loop.seed_everything(spec)
    tokenizer = tokenizer_for(spec)
    train_ds, eval_ds, labels = build(spec, tokenizer)
    with loop.model_loading(spec, run_dir):
        model = load_model(spec, labels, tokenizer)
        model = apply_method(model, spec, tokenizer, kind)
    return train(spec, run_dir, model, tokenizer, train_ds, eval_ds, labels)
