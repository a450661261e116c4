"""Stage eval: loss and perplexity on the data (teacher-forced on its reference answers),
then a generated answer for every record, scored with BLEU and ROUGE by the conventions of the
set's language (runner/train/tools/scores.py); or, with eval.benchmark, a multiple-choice
benchmark's accuracy (runner/train/tools/benchmark.py).

A classifier (a cls or ner run's result) is scored on labelled data instead (format
classification or tagging): accuracy, F1 and the confusion matrix, or entity-level F1
(runner/train/tools/classifier.py).

With data.val_size only the held-out share is evaluated: the same rows training held out when
the data and training.seed are the same. Writes generated_predictions.jsonl (prompt, predict,
label per record), eval_results.json (the summary, also results.json) and a table in the log.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from runner.core import rundir
from runner.core.errors import RunnerError
from runner.core.jobspec.job import JobSpec

log = logging.getLogger(__name__)


class EvalDataError(RunnerError):
    exit_code = 2


def records(spec: JobSpec, tokenizer) -> tuple[list[list[dict]], list[dict]]:
    """The conversations to evaluate and their tokenized rows (input_ids, labels)."""
    from datasets import Dataset

    from runner.core.data import readers as data
    from runner.core.data.templates import encode
    from runner.train import dataset

    sources = [
        Dataset.from_list([{"item": item} for item in items])
        for items in data.load(spec.data, spec.training.seed)
    ]
    items = dataset.mix(sources, spec)["item"]
    for i, messages in enumerate(items, 1):
        last = messages[-1] if messages else {}
        if last.get("role") != "assistant" or not str(last.get("content", "")).strip():
            raise EvalDataError(
                f"the eval set has no reference answer in record {i} (its last turn is not an assistant "
                "answer); every record needs one to compare the generated answer with"
            )
    rows = []
    for i, messages in enumerate(items):
        row = encode(tokenizer, messages, spec.data.cutoff_len)
        if row is not None:
            rows.append({**row, "index": i})
    if not rows:
        raise EvalDataError(f"no record keeps an answer within data.cutoff_len={spec.data.cutoff_len}")
    table = Dataset.from_list(rows)
    if spec.data.val_size:
        _, table = dataset.split(table, spec)
    if spec.eval.max_samples:
        table = table.select(range(min(spec.eval.max_samples, len(table))))
    kept = [items[i] for i in table["index"]]
    return kept, [{k: r[k] for k in ("input_ids", "labels")} for r in table]


def loss(loaded, rows: list[dict], batch_size: int) -> tuple[float, int]:
    """Mean token loss over the answers, and how many tokens it averages."""
    import torch
    import torch.nn.functional as F

    from runner.core.data.templates import IGNORE

    pad = loaded.tokenizer.pad_token_id
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        part = rows[start : start + batch_size]
        width = max(len(r["input_ids"]) for r in part)
        ids = torch.tensor([r["input_ids"] + [pad] * (width - len(r["input_ids"])) for r in part])
        labels = torch.tensor([r["labels"] + [IGNORE] * (width - len(r["labels"])) for r in part])
        mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in part])
        device = loaded.model.device
        with torch.no_grad():
            logits = loaded.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        targets = labels[:, 1:].to(device)
        total += F.cross_entropy(
            logits[:, :-1].transpose(1, 2), targets, ignore_index=IGNORE, reduction="sum"
        ).item()
        count += int((targets != IGNORE).sum())
    return total / max(count, 1), count


def run(spec: JobSpec, run_dir: Path) -> dict:
    import os

    from runner.core.data.templates import render
    from runner.core.target import of_spec
    from runner.train.tools import inference
    from runner.train.tools import scores as metrics
    from runner.train.trainer import seed_everything

    if int(os.environ.get("RANK", "0")) != 0:
        return {}  # one process evaluates; others a launcher started have nothing to do
    seed_everything(spec)
    target = of_spec(spec)
    if target.classifier:  # labels, not generated answers: runner/train/classify.py scores them
        from runner.train.tools.classifier import evaluate

        return evaluate(spec, run_dir, target)
    loaded = inference.load_target(target, purpose="eval")
    if spec.eval.benchmark is not None:
        from runner.train.tools import benchmark

        return benchmark.run(spec, run_dir, loaded)
    conversations, rows = records(spec, loaded.tokenizer)
    batch = spec.training.per_device_eval_batch_size
    log.info("evaluating %s on %d record(s)", loaded.name, len(rows))
    started = time.time()
    eval_loss, tokens = loss(loaded, rows, batch)
    e = spec.eval
    settings = inference.Settings(
        max_new_tokens=e.max_new_tokens, do_sample=e.do_sample, temperature=e.temperature, top_p=e.top_p,
        top_k=e.top_k, num_beams=e.num_beams, repetition_penalty=e.repetition_penalty, seed=spec.training.seed,
    )  # fmt: skip
    prompts = [messages[:-1] for messages in conversations]
    references = [messages[-1]["content"] for messages in conversations]
    predictions: list[str] = []
    with open(run_dir / "generated_predictions.jsonl", "w", encoding="utf-8") as out:
        for start in range(0, len(prompts), batch):
            answers = inference.generate(loaded, prompts[start : start + batch], settings)
            for prompt, answer, label in zip(prompts[start : start + batch], answers, references[start : start + batch], strict=True):  # fmt: skip
                row = {
                    "prompt": render(loaded.tokenizer, prompt, generation_prompt=True),
                    "predict": answer,
                    "label": label,
                }
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
            predictions += answers
            log.info("generated %d/%d", len(predictions), len(prompts))
    summary = {
        "eval_loss": round(eval_loss, 4), "perplexity": round(math.exp(min(eval_loss, 50)), 4),
        "eval_tokens": tokens, "samples": len(rows), **metrics.corpus(predictions, references, e.metric_language),
        "metrics": metrics.describe(references, e.metric_language),
        "split": "validation" if spec.data.val_size else "all", "seconds": round(time.time() - started, 1),
        "model": spec.model.path, "adapter": spec.model.adapter, "generation": e.model_dump(),
    }  # fmt: skip
    rundir.RunDir(run_dir).write_evaluation(summary)
    log.info("%s", table(summary))
    return summary


def table(summary: dict) -> str:
    keys = ("eval_loss", "perplexity", *metrics_names(summary), "samples")
    width = max(map(len, keys))
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 10}"]
    lines += [f"{k:<{width}}  {summary[k]}" for k in keys]
    return "\n".join(lines)


def metrics_names(summary: dict) -> tuple[str, ...]:
    from runner.train.tools.scores import NAMES

    return NAMES[summary["metrics"]["language"]]
