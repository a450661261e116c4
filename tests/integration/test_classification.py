"""The classification stages really train, on the project's tiny BERT on CPU: sequence
classification with one label (the English 5-star reviews), several labels (the topics set) and
token classification (the NER set), each with full fine-tuning, LoRA and AdaLoRA (freeze once).

Each run checks that every trainable tensor moved and every frozen one did not, that the score on
the held-out split beats chance by a stated margin, and that `runner export` writes a model plain
transformers reloads with the same predictions (the largest logit difference is asserted and
printed: `pytest -s` shows it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration
SETS = ROOT / "tests" / "data" / "classification"

# Each case: its spec's sections, the score it is judged by, chance, and the margin above chance.
CASES = {
    # 5 classes of 20 reviews each: guessing scores 0.2
    "single": ({"stage": "cls", "data": {"datasets": [{"path": str(SETS / "reviews_en.csv"),
                                                       "columns": {"text": "review", "label": "stars"}}]}},
               "accuracy", 0.2, 0.4),
    # any of 3 labels: the most frequent set of labels is 1/4 of the texts
    "multi": ({"stage": "cls", "classification": {"multi_label": True},
               "data": {"datasets": [{"path": str(SETS / "topics.jsonl"), "columns": {"label": "labels"}}]}},
              "exact_match", 0.25, 0.3),
    # entity-level F1: tagging every word O finds no entity and scores 0
    "ner": ({"stage": "ner", "data": {"datasets": [{"path": str(SETS / "ner.jsonl"),
                                                    "columns": {"tags": "ner_tags"}}]}},
            "f1", 0.0, 0.5),
}  # fmt: skip
METHODS = {
    "full": ({"type": "full"}, 1e-3),
    "lora": ({"type": "lora", "r": 8}, 5e-3),
    # orth_reg_weight 0.1, the AdaLoRA paper's: PEFT's 0.5 pulls rows of this tiny model's P and Q to
    # unit length in a few steps, and its features with them.
    "adalora": ({"type": "adalora", "init_r": 8, "target_r": 4, "tinit": 10, "tfinal": 10, "orth_reg_weight": 0.1},
                1e-2),
    "freeze": ({"type": "freeze", "trainable_layers": 1}, 2e-3),
    "ia3": ({"type": "ia3"}, 1e-2),
}  # fmt: skip
STEPS = {"single": 100, "multi": 200, "ner": 60}  # 8 texts a step


def _chance(case: str) -> float:
    if case != "multi":
        return CASES[case][2]
    rows = [tuple(json.loads(line)["labels"]) for line in (SETS / "topics.jsonl").read_text().splitlines()]
    return max(rows.count(r) for r in set(rows)) / len(rows)


def train(tmp_path: Path, encoder: Path, case: str, method: str, monkeypatch) -> tuple[Path, dict]:
    """A run of the case's stage, in this process: its run directory, and the model as it trained
    with a copy of every tensor before the first step."""
    import importlib

    from runner.core import stages
    from runner.core.launch import prepare
    from runner.train import classify

    sections, _, _, _ = CASES[case]
    kind, lr = METHODS[method]
    job = {"name": f"{case}-{method}", "model": {"path": str(encoder)}, "method": kind, **sections,
           "training": {"max_steps": STEPS[case], "learning_rate": lr, "per_device_train_batch_size": 8,
                        "lr_scheduler_type": "constant", "logging_steps": 10, "save_steps": 1000, "seed": 0},
           "resources": {"gpus": 0}, "output": {"dir": str(tmp_path / "out")}}  # fmt: skip
    job["data"] = {**job["data"], "cutoff_len": 64, "val_size": 20}
    spec_file = tmp_path / "job.json"
    spec_file.write_text(json.dumps(job, ensure_ascii=False), encoding="utf-8")
    seen: dict = {}
    real = classify.apply_method

    def spy(model, spec, tokenizer, kind):
        trained = real(model, spec, tokenizer, kind)
        seen["model"] = trained
        seen["before"] = {n: p.detach().clone() for n, p in trained.named_parameters()}
        return trained

    monkeypatch.setattr(classify, "apply_method", spy)
    record, spec = prepare(spec_file)
    metrics = importlib.import_module(stages.STAGES[spec.stage].module).run(spec, Path(record.run_dir))
    record.update(status="succeeded", exit_code=0)
    assert metrics["global_step"] == STEPS[case]
    return Path(record.run_dir), seen


def _moved(seen: dict) -> tuple[list[str], list[str]]:
    """(trainable tensors that did not move, frozen tensors that did). AdaLoRA's singular values
    start at 0; a matrix whose every rank it pruned holds 0 again, and counts as moved."""
    stuck, moved = [], []
    for name, param in seen["model"].named_parameters():
        changed = not param.detach().equal(seen["before"][name])
        pruned = "lora_E" in name and not param.detach().any()
        changed = changed or pruned
        if param.requires_grad and not changed:
            stuck.append(name)
        if not param.requires_grad and changed:
            moved.append(name)
    return stuck, moved


def _texts(case: str) -> list:
    if case == "ner":
        return [
            " ".join(json.loads(line)["tokens"])
            for line in (SETS / "ner.jsonl").read_text().splitlines()[:16]
        ]
    if case == "single":
        import csv

        return [row["review"] for row in csv.DictReader((SETS / "reviews_en.csv").open(encoding="utf-8"))][
            :16
        ]
    return [json.loads(line)["text"] for line in (SETS / "topics.jsonl").read_text().splitlines()[:16]]


def _export_matches(run_dir: Path, seen: dict, case: str) -> float:
    """The export, loaded by plain transformers, against the trained model: the largest logit
    difference over 16 texts (and the same predicted labels)."""
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
    )

    from runner.train.tools.export import export

    out = run_dir / "exported"
    export(run_dir, out)
    auto = AutoModelForTokenClassification if case == "ner" else AutoModelForSequenceClassification
    plain = auto.from_pretrained(out, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    trained = seen["model"].eval()
    batch = tokenizer(_texts(case), padding=True, return_tensors="pt")
    with torch.no_grad():
        a, b = plain(**batch).logits, trained(**batch).logits
    mask = batch["attention_mask"].bool() if case == "ner" else torch.ones(a.shape[0], dtype=torch.bool)
    assert plain.config.id2label == trained.config.id2label
    assert torch.equal(a.argmax(-1)[mask], b.argmax(-1)[mask])
    return (a - b).abs()[mask].max().item()


@pytest.mark.parametrize("method", ["full", "lora", "adalora"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_classifier_trains_beats_chance_and_exports(case, method, tmp_path, tiny_encoder, monkeypatch):
    run_dir, seen = train(tmp_path, tiny_encoder, case, method, monkeypatch)
    stuck, moved = _moved(seen)
    assert not stuck, f"trainable tensors that did not move: {stuck[:5]}"
    assert not moved, f"frozen tensors that moved: {moved[:5]}"
    if method != "full":  # the head trains in full beside the adapter, and is saved with it
        trained = {n for n, p in seen["model"].named_parameters() if p.requires_grad}
        assert any("classifier" in n and "modules_to_save" in n for n in trained)
    report = json.loads((run_dir / "eval_results.json").read_text())
    score, chance = report[CASES[case][1]], _chance(case)
    print(f"\n{case}/{method}: {CASES[case][1]} {score} (chance {chance:.3f})", end="")
    assert score >= chance + CASES[case][3], report
    diff = _export_matches(run_dir, seen, case)
    print(f"; export's max |logit diff| {diff:.2e}", end="")
    assert diff < 1e-4
    labels = json.loads((run_dir / ("adapter" if method != "full" else "model") / "labels.json").read_text())
    assert labels["labels"] == report["labels"] and labels["task"] == (
        "token" if case == "ner" else "sequence"
    )


def test_freeze_trains_the_last_layer_and_the_head(tmp_path, tiny_encoder, monkeypatch):
    run_dir, seen = train(tmp_path, tiny_encoder, "single", "freeze", monkeypatch)
    stuck, moved = _moved(seen)
    assert not stuck and not moved
    trained = {n for n, p in seen["model"].named_parameters() if p.requires_grad}
    assert any(n.startswith("classifier.") for n in trained)
    # the pooler: the tiny BERT is saved as a masked LM, without one, so it starts random and trains
    assert all(n.startswith(("classifier.", "bert.pooler.", "bert.encoder.layer.1.")) for n in trained), (
        sorted(trained)
    )
    report = json.loads((run_dir / "eval_results.json").read_text())
    print(f"\nsingle/freeze: accuracy {report['accuracy']}", end="")
    assert report["accuracy"] >= 0.2 + 0.3


def test_ia3_trains_its_vectors_and_the_head_and_exports_them(tmp_path, tiny_encoder, monkeypatch):
    """IA3 as well (no score asserted: its rescaling vectors learn this set slowly); the pooler the
    tiny BERT lacks trains beside the head and is saved with the adapter, so the export matches."""
    run_dir, seen = train(tmp_path, tiny_encoder, "single", "ia3", monkeypatch)
    stuck, moved = _moved(seen)
    assert not stuck and not moved
    trained = {n for n, p in seen["model"].named_parameters() if p.requires_grad}
    assert any("pooler" in n and "modules_to_save" in n for n in trained)
    diff = _export_matches(run_dir, seen, "single")
    print(f"\nsingle/ia3: export's max |logit diff| {diff:.2e}", end="")
    assert diff < 1e-4
