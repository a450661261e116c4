"""Multiple-choice benchmarks from local files (MMLU, C-Eval and CMMLU as their authors ship them),
scored the way their papers and LLaMA-Factory's `llamafactory-cli eval` score them.

Each question is asked after the first `n_shot` solved questions of its subject's dev split, as
chat turns rendered with the model's chat template: the first user turn opens with the subject
line ("The following are multiple choice questions (with answers) about {subject}." or
"以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。"), each question lists its choices as
"\\nA. ..." and ends with "\\nAnswer:" (or "\\n答案："), each solved example's answer is its letter.
The model's choice is the letter whose token has the highest logit at the position after the
prompt (the answer-letter logits; nothing is generated). Accuracy per subject, per category
(where a mapping file names them) and overall, in percent.
"""

from __future__ import annotations

import csv
import json
import logging
import string
import time
from dataclasses import dataclass, field
from pathlib import Path

from runner.core import rundir
from runner.core.errors import RunnerError

log = logging.getLogger(__name__)
LAYOUTS = ("mmlu", "ceval", "cmmlu")
DEFAULT_SPLIT = {"mmlu": "test", "ceval": "val", "cmmlu": "test"}
TEMPLATES = {  # (subject line, choice, answer cue)
    "en": ("The following are multiple choice questions (with answers) about {subject}.\n\n", "\n{letter}. {text}",
           "\nAnswer:"),
    "zh": ("以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n", "\n{letter}. {text}", "\n答案："),
}  # fmt: skip


class BenchmarkError(RunnerError):
    exit_code = 2


@dataclass
class Question:
    question: str
    choices: dict[str, str]  # letter -> text, in order
    answer: str  # a letter, "" where the split publishes none


@dataclass
class Subject:
    key: str  # the file name's subject
    name: str  # how the prompt names it
    category: str | None
    shots: list[Question] = field(default_factory=list)
    questions: list[Question] = field(default_factory=list)


def detect(root: Path) -> str:
    """mmlu, ceval or cmmlu, from the file names and the header row."""
    dev = root / "dev"
    if not dev.is_dir():
        raise BenchmarkError(f"{root} has no dev/ directory; an MMLU, C-Eval or CMMLU benchmark keeps its "
                             "few-shot examples there")  # fmt: skip
    files = sorted(dev.glob("*.csv"))
    if not files:
        raise BenchmarkError(f"{dev} holds no .csv files")
    if not files[0].name.endswith("_dev.csv"):
        return "cmmlu"
    with files[0].open(encoding="utf-8-sig", newline="") as f:
        first = next(csv.reader(f), [])
    return "ceval" if [c.strip().lower() for c in first[:2]] == ["id", "question"] else "mmlu"


def _files(root: Path, layout: str, split: str) -> dict[str, Path]:
    folder = root / split
    if layout == "cmmlu":
        return {p.stem: p for p in sorted(folder.glob("*.csv"))}
    suffix = f"_{split}.csv"
    return {p.name[: -len(suffix)]: p for p in sorted(folder.glob(f"*{suffix}"))}


def _read(path: Path, layout: str) -> list[Question]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
    if layout == "mmlu":  # question, A, B, C, D, answer; no header
        letters = string.ascii_uppercase
        return [Question(r[0], {letters[i]: t for i, t in enumerate(r[1:-1])}, r[-1].strip()) for r in rows]
    header, body = rows[0], rows[1:]
    names = [h.strip() for h in header]
    lower = [n.lower() for n in names]
    if "question" not in lower:
        raise BenchmarkError(f"{path}: no question column in its header {header}")
    q = lower.index("question")
    letters = [i for i, n in enumerate(names) if len(n) == 1 and n in string.ascii_uppercase]
    a = lower.index("answer") if "answer" in lower else None
    need = max([q, *letters]) + 1
    out = []
    for line, r in enumerate(body, 2):
        if len(r) < need:
            raise BenchmarkError(f"{path}:{line}: {len(r)} columns; the question and its choices need {need}")
        answer = r[a].strip() if a is not None and a < len(r) else ""
        out.append(Question(r[q], {names[i]: r[i] for i in letters}, answer))
    return out


def _mapping(root: Path) -> dict[str, tuple[str | None, str | None, str | None]]:
    """subject -> (English name, Chinese name, category) from subject_mapping.json (C-Eval's) or
    mapping.json (LLaMA-Factory's {subject: {name, category}})."""
    out: dict[str, tuple[str | None, str | None, str | None]] = {}
    ceval, llamafactory = root / "subject_mapping.json", root / "mapping.json"
    if ceval.is_file():
        for key, v in json.loads(ceval.read_text(encoding="utf-8")).items():
            v = list(v) + [None] * 3
            out[key] = (v[0], v[1], v[2])
    elif llamafactory.is_file():
        for key, v in json.loads(llamafactory.read_text(encoding="utf-8")).items():
            out[key] = (v.get("name"), v.get("name"), v.get("category"))
    return out


def load(bench, max_per_subject: int | None = None) -> tuple[str, str, str, list[Subject]]:
    """(layout, split, lang, subjects) of a BenchmarkSpec, read from its files."""
    root = Path(bench.path)
    if not root.is_dir():
        raise BenchmarkError(f"eval.benchmark.path {root} is not a directory")
    layout = detect(root) if bench.layout == "auto" else bench.layout
    split = DEFAULT_SPLIT[layout] if bench.split == "auto" else bench.split
    lang = ("en" if layout == "mmlu" else "zh") if bench.lang == "auto" else bench.lang
    questions, shots = _files(root, layout, split), _files(root, layout, "dev")
    if not questions:
        raise BenchmarkError(f"no {split} files in {root / split} (layout {layout}); the benchmark's "
                             f"splits there: {sorted(p.name for p in root.iterdir() if p.is_dir())}")  # fmt: skip
    wanted = bench.subjects or sorted(questions)
    unknown = [s for s in wanted if s not in questions]
    if unknown:
        raise BenchmarkError(f"eval.benchmark.subjects: no {split} file for {unknown}; there are "
                             f"{sorted(questions)}")  # fmt: skip
    names = _mapping(root)
    subjects = []
    for key in wanted:
        en, zh, category = names.get(key, (None, None, None))
        name = (zh if lang == "zh" else en) or key.replace("_", " ")
        subject = Subject(key, name, category)
        subject.shots = _read(shots[key], layout) if key in shots else []
        subject.questions = _read(questions[key], layout)[:max_per_subject]
        if any(not q.answer for q in subject.questions):
            raise BenchmarkError(
                f"{questions[key]} has questions without an answer ({layout}'s {split} split publishes "
                "none" + ("; C-Eval scores its test split on its own site: use split: val" if layout == "ceval"
                          else "") + ")"
            )  # fmt: skip
        subjects.append(subject)
    return layout, split, lang, subjects


def messages(subject: Subject, question: Question, shots: int, lang: str) -> list[dict]:
    """The chat turns that ask `question` after the subject's first `shots` solved examples."""
    head, choice, cue = TEMPLATES[lang]

    def ask(q: Question) -> str:
        return q.question + "".join(choice.format(letter=k, text=v) for k, v in q.choices.items()) + cue

    turns: list[dict] = []
    for example in subject.shots[:shots]:
        turns += [{"role": "user", "content": ask(example)}, {"role": "assistant", "content": example.answer}]
    turns.append({"role": "user", "content": ask(question)})
    turns[0] = {**turns[0], "content": head.format(subject=subject.name) + turns[0]["content"]}
    return turns


def run(spec, run_dir: Path, loaded) -> dict:
    """Score the benchmark of spec.eval.benchmark; writes benchmark_predictions.jsonl and
    eval_results.json (also results.json)."""
    import torch

    from runner.train.tools.inference import prompt_ids

    bench = spec.eval.benchmark
    layout, split, lang, subjects = load(bench, spec.eval.max_samples)
    tok = loaded.tokenizer
    limit = loaded.context  # the model's own: data.cutoff_len is about training rows, not these prompts
    started = time.time()
    rows, per_subject, too_long = [], {}, 0
    batch = spec.training.per_device_eval_batch_size
    for subject in subjects:
        letters = sorted({k for q in subject.questions for k in q.choices})
        letter_ids = [tok.encode(k, add_special_tokens=False)[-1] for k in letters]
        prompts = []
        for q in subject.questions:
            shots = min(bench.n_shot, len(subject.shots))
            ids = prompt_ids(loaded, messages(subject, q, shots, lang))
            while len(ids) > limit and shots > 0:  # fewer examples where the prompt would not fit
                shots -= 1
                ids = prompt_ids(loaded, messages(subject, q, shots, lang))
            if len(ids) > limit:
                too_long += 1
                ids = ids[-limit:]
            prompts.append(ids)
        correct = 0
        for start in range(0, len(prompts), batch):
            part = prompts[start : start + batch]
            padded = tok.pad({"input_ids": part}, padding=True, return_tensors="pt").to(loaded.model.device)
            with torch.no_grad():
                logits = loaded.model(**padded).logits[:, -1, :].float()  # left padding: the last position
            probs = torch.softmax(logits[:, letter_ids], dim=-1).cpu()
            for offset, row in enumerate(probs):
                q = subject.questions[start + offset]
                predict = letters[int(row.argmax())]
                correct += predict == q.answer
                rows.append({"subject": subject.key, "index": start + offset, "answer": q.answer, "predict": predict,
                             "probs": {k: round(float(p), 6) for k, p in zip(letters, row, strict=True)}})  # fmt: skip
        per_subject[subject.key] = {
            "name": subject.name, "category": subject.category, "questions": len(subject.questions),
            "correct": correct, "accuracy": round(100 * correct / max(len(subject.questions), 1), 4),
        }  # fmt: skip
        log.info("%s: %d/%d", subject.key, correct, len(subject.questions))
    total = sum(s["questions"] for s in per_subject.values())
    categories: dict[str, list[int]] = {}
    for s in per_subject.values():
        if s["category"]:
            seen = categories.setdefault(s["category"], [0, 0])
            seen[0], seen[1] = seen[0] + s["correct"], seen[1] + s["questions"]
    summary = {
        "benchmark": {"path": bench.path, "layout": layout, "split": split, "n_shot": bench.n_shot, "lang": lang},
        "accuracy": round(100 * sum(s["correct"] for s in per_subject.values()) / max(total, 1), 4),
        "questions": total, "subjects": per_subject,
        "categories": {c: round(100 * k / max(n, 1), 4) for c, (k, n) in sorted(categories.items())},
        "too_long": too_long,
        "method": "the choice whose letter token has the highest logit after the prompt (chat template, "
                  f"first {bench.n_shot} dev examples as solved turns); accuracy in percent",
        "seconds": round(time.time() - started, 1), "model": spec.model.path, "adapter": spec.model.adapter,
    }  # fmt: skip
    with open(run_dir / "benchmark_predictions.jsonl", "w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    rundir.RunDir(run_dir).write_evaluation(summary)
    log.info("%s", table(summary))
    return summary


def table(summary: dict) -> str:
    rows = [(s["name"], f"{s['accuracy']:.2f}", str(s["questions"])) for s in summary["subjects"].values()]
    rows += [(f"[{c}]", f"{a:.2f}", "") for c, a in summary["categories"].items()]
    rows.append(("Average", f"{summary['accuracy']:.2f}", str(summary["questions"])))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'subject':<{width}}  accuracy  questions", f"{'-' * width}  --------  ---------"]
    lines += [f"{n:<{width}}  {a:>8}  {q:>9}" for n, a, q in rows]
    return "\n".join(lines)
