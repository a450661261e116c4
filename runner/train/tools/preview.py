"""What training will see: `python -m runner.train.tools.preview JOB [-n N]`.

The rows come from the same code path and cache as training (dataset.build): N examples
decoded with their trained spans marked (green on a terminal, [[...]] otherwise), their token
counts, and the figures of the whole set. A classification stage's rows (classify.build) show
each text with its label, or each sub-token with the tag it learns (runner/train/classify.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runner.core import offline, stages
from runner.core.errors import RunnerError, SpecError

GREEN, RESET = "\033[32m", "\033[0m"


def spans(tokenizer, input_ids: list[int], labels: list[int]) -> list[tuple[bool, str]]:
    """(trained, text) for each run of consecutive positions that are trained or not."""
    from runner.core.data.templates import IGNORE

    out: list[tuple[bool, list[int]]] = []
    for token, label in zip(input_ids, labels, strict=True):
        trained = label != IGNORE
        if out and out[-1][0] == trained:
            out[-1][1].append(token)
        else:
            out.append((trained, [token]))
    return [(trained, tokenizer.decode(ids, skip_special_tokens=False)) for trained, ids in out]


def render(tokenizer, row: dict, color: bool) -> str:
    parts = []
    for trained, text in spans(tokenizer, row["input_ids"], row["labels"]):
        if not trained:
            parts.append(text)
        else:
            parts.append(f"{GREEN}{text}{RESET}" if color else f"[[{text}]]")
    return "".join(parts)


def preview(spec_file: str, n: int, color: bool) -> str:
    from runner.core.data.templates import IGNORE
    from runner.core.jobspec.load import load_job, resolve
    from runner.train import dataset
    from runner.train.model import tokenizer_for

    written = load_job(spec_file)  # its paths as the user wrote them, for the figures
    spec = resolve(written, Path.cwd())
    if stages.STAGES[spec.stage].data.classify:  # labels, not trained spans
        return labelled(spec_file, written, spec, n, color)
    tokenizer = tokenizer_for(spec)
    train, evaluation = dataset.build(spec, tokenizer)
    stats = dataset.last_stats
    lines = figures(spec_file, written, train, evaluation, stats)
    if spec.stage != "pt":
        lines.append(f"  dropped: {stats.get('dropped', 0)} (no answer left within cutoff_len="
                     f"{spec.data.cutoff_len})")  # fmt: skip
    lines.append("  trained tokens are " + ("green" if color else "marked [[ ]]"))
    for i in range(min(n, len(train))):
        row = train[i]
        trained = sum(1 for label in row["labels"] if label != IGNORE)
        lines.append(
            f"--- example {i + 1} of {len(train)}: {len(row['input_ids'])} tokens, {trained} trained"
        )
        lines.append(render(tokenizer, row, color))
    return "\n".join(lines) + "\n"


def figures(spec_file: str, written, train, evaluation, stats: dict) -> list[str]:
    """The rows and tokens of the set, then each dataset's records and bad records skipped."""
    from runner.train import dataset

    lines = [f"{spec_file}: {len(train)} training rows, {dataset.tokens(train):,} tokens"
             + (f"; {len(evaluation)} held out for evaluation" if evaluation is not None else "")]  # fmt: skip
    skipped = stats.get("skipped") or [0] * len(stats.get("records", []))
    for ds, count, bad in zip(written.data.datasets, stats.get("records", []), skipped, strict=False):
        lines.append(f"  {ds.path or ds.name}: {count} records" + (f", {bad} bad skipped" if bad else ""))
    return lines


def labelled(spec_file: str, written, spec, n: int, color: bool) -> str:
    """`runner preview` of a classification job: the label set, then N rows as training sees them:
    a text with its label(s), or every sub-token with the tag it learns (· where it learns none: a
    special token, or a word's later sub-token)."""
    from runner.core.data.templates import IGNORE
    from runner.train import dataset
    from runner.train.classify import build, tokenizer_for

    green, reset = ("\033[32m", "\033[0m") if color else ("", "")
    tokenizer = tokenizer_for(spec)
    train_ds, evaluation, labels = build(spec, tokenizer)
    stats = dataset.last_stats
    lines = figures(spec_file, written, train_ds, evaluation, stats)
    origin = "classification.labels" if spec.classification.labels else "read from the data"
    lines.append(f"  {len(labels.names)} labels ({origin}), by id: "
                 + ", ".join(f"{i}={name}" for i, name in enumerate(labels.names)))  # fmt: skip
    if labels.task == "token":
        lines.append(
            f"  words whose tag was lost (beyond cutoff_len={spec.data.cutoff_len}): {stats.get('words_cut', 0)}"
        )
        lines.append("  each sub-token/the tag it learns; · learns none (special tokens, later sub-tokens)")
    for i in range(min(n, len(train_ds))):
        row = train_ds[i]
        tokens = tokenizer.convert_ids_to_tokens(row["input_ids"])
        if labels.task == "token":
            learnt = sum(1 for t in row["labels"] if t != IGNORE)
            lines.append(f"--- example {i + 1} of {len(train_ds)}: {len(tokens)} tokens, {learnt} tagged")
            lines.append(" ".join(f"{tok}/{green}{labels.names[t]}{reset}" if t != IGNORE else f"{tok}/·"
                                  for tok, t in zip(tokens, row["labels"], strict=True)))  # fmt: skip
            continue
        value = row["labels"]
        if labels.multi_label:
            shown = ", ".join(labels.names[k] for k, on in enumerate(value) if on) or "(none)"
        else:
            shown = labels.names[value]
        lines.append(
            f"--- example {i + 1} of {len(train_ds)}: {len(tokens)} tokens, label: {green}{shown}{reset}"
        )
        lines.append(tokenizer.decode(row["input_ids"], skip_special_tokens=False))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    offline.enter()
    parser = argparse.ArgumentParser(prog="python -m runner.train.tools.preview", description=__doc__)
    parser.add_argument("spec", help="job spec (YAML)")
    parser.add_argument("-n", type=int, default=3, help="examples to show")
    parser.add_argument("--color", choices=["auto", "always", "never"], default="auto")
    args = parser.parse_args(argv)
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    import logging

    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    try:
        sys.stdout.write(preview(args.spec, args.n, color))
    except SpecError as e:
        print(e, file=sys.stderr)
        return e.exit_code
    except RunnerError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
