"""What the rest of runner does with a classifier, through the real CLI: status shows its scores,
eval scores it again (the same held-out rows) or on a test set, preview shows the labels and the
tag alignment, serve answers POST /v1/classify and refuses chat, chat refuses it. And AdaLoRA on the
language-model stages that train through transformers' Trainer loop (pt, sft, rm, dpo, kto)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, runner_cli, write_job
from tests.integration.test_serve import start

pytestmark = pytest.mark.integration
SETS = ROOT / "tests" / "data" / "classification"


def _submit(directory: Path, base: Path, **sections) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    spec = write_job(directory / "job.json", base, **sections)
    result = runner_cli("submit", str(spec), "--executor", "local")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_dir,) = (directory / "out" / sections.get("name", "job")).glob("2*")
    return run_dir


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Path) -> Path:
    """LoRA on the Chinese reviews, 16 held out."""
    return _submit(
        tmp_path_factory.mktemp("cls-run"), tiny_encoder, name="sentiment", stage="cls",
        method={"type": "lora", "r": 8},
        data={"datasets": [{"path": str(SETS / "sentiment_zh.jsonl")}], "cutoff_len": 64, "val_size": 16},
        training={"max_steps": 40, "learning_rate": 5e-3, "per_device_train_batch_size": 8,
                  "lr_scheduler_type": "constant", "logging_steps": 10, "seed": 0},
    )  # fmt: skip


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Path) -> Path:
    return _submit(
        tmp_path_factory.mktemp("ner-run"), tiny_encoder, name="entities", stage="ner", method={"type": "full"},
        data={"datasets": [{"path": str(SETS / "ner.jsonl"), "columns": {"tags": "ner_tags"}}], "cutoff_len": 64,
              "val_size": 16},
        training={"max_steps": 60, "learning_rate": 1e-3, "per_device_train_batch_size": 8,
                  "lr_scheduler_type": "constant", "logging_steps": 10, "seed": 0},
    )  # fmt: skip


def test_status_shows_the_validation_scores(cls_run: Path):
    result = runner_cli("status", str(cls_run))
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)["eval_results"]
    saved = json.loads((cls_run / "eval_results.json").read_text())
    assert shown["accuracy"] == saved["accuracy"] and shown["samples"] == 16
    assert shown["confusion_matrix"]["labels"] == ["好评", "差评"]
    assert sum(map(sum, shown["confusion_matrix"]["counts"])) == 16


def test_eval_scores_the_same_held_out_rows_and_a_test_set(cls_run: Path, tmp_path: Path):
    result = runner_cli("eval", str(cls_run), "--executor", "local")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (again,) = [d for d in (cls_run.parent.parent / "sentiment-eval").glob("2*") if d.is_dir()]
    scored, trained = (json.loads((d / "eval_results.json").read_text()) for d in (again, cls_run))
    assert scored["split"] == "validation"
    assert scored["confusion_matrix"] == trained["confusion_matrix"]  # the rows its training held out
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({"text": t, "label": lab}, ensure_ascii=False) + "\n"
                            for t, lab in (("菜很好。", "好评"), ("服务太差了！", "差评"), ("环境值得推荐。", "好评"))),
                    encoding="utf-8")  # fmt: skip
    result = runner_cli("eval", str(cls_run), "--data", str(test), "--executor", "local")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    newest = sorted(d for d in (cls_run.parent.parent / "sentiment-eval").glob("2*") if d.is_dir())[-1]
    report = json.loads((newest / "eval_results.json").read_text())
    assert report["samples"] == 3 and report["split"] == "all" and "accuracy" in report


def test_preview_shows_each_sub_token_and_the_tag_it_learns(tmp_path: Path, tiny_encoder: Path):
    spec = write_job(tmp_path / "ner.json", tiny_encoder, stage="ner",
                     data={"datasets": [{"path": str(SETS / "ner.jsonl"), "columns": {"tags": "ner_tags"}}],
                           "cutoff_len": 64})  # fmt: skip
    result = runner_cli("preview", str(spec), "-n", "80")
    assert result.returncode == 0, result.stderr
    assert (
        "7 labels (read from the data), by id: 0=O, 1=B-LOC, 2=I-LOC, 3=B-ORG, 4=I-ORG, 5=B-PER, 6=I-PER"
        in result.stdout
    )
    assert "[CLS]/· John/B-PER Smith/I-PER" in result.stdout  # words whole: their one token learns the tag
    assert "张/B-PER" in result.stdout or "王/B-PER" in result.stdout or "李/B-PER" in result.stdout
    # a word the vocabulary spells out: its first piece learns the tag, the rest nothing
    assert "G/B-ORG ##l/· ##o/· ##b/· ##e/· ##x/·" in result.stdout or "Globex/B-ORG" in result.stdout


def _post(url: str, body: dict, headers: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_serve_labels_text_and_refuses_chat(cls_run: Path, ner_run: Path):
    for run, task in ((cls_run, "text-classification"), (ner_run, "token-classification")):
        proc, url = start(["runner.train.tools.serve", str(run), "--name", "m"], key="k")
        try:
            headers = {"Authorization": "Bearer k", "Content-Type": "application/json"}

            models = json.loads(
                urllib.request.urlopen(urllib.request.Request(f"{url}/models", headers=headers)).read()
            )
            assert models["data"][0]["task"] == task
            code, body = _post(
                f"{url}/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, headers
            )
            assert code == 400 and body["error"]["code"] == "model_not_generative"
            assert "POST /v1/classify" in body["error"]["message"]
            if task == "text-classification":
                code, body = _post(f"{url}/classify", {"input": ["菜很好。", "服务太差了！"]}, headers)
                assert code == 200, body
                assert [set(d) for d in body["data"]] == [{"index", "label", "score", "scores"}] * 2
                assert set(body["data"][0]["scores"]) == {"好评", "差评"}
            else:
                code, body = _post(f"{url}/classify", {"input": "John Smith lives in Paris."}, headers)
                assert code == 200, body
                words = body["data"][0]["words"]
                assert [w["word"] for w in words] == ["John", "Smith", "lives", "in", "Paris", "."]
                found = {(e["type"], e["text"]) for e in body["data"][0]["entities"]}
                assert ("PER", "John Smith") in found, body  # the full run learnt the set
            code, body = _post(f"{url}/classify", {"input": ""}, headers)
            assert code == 400 and body["error"]["param"] == "input"
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def test_chat_refuses_a_classifier(cls_run: Path):
    result = runner_cli("chat", str(cls_run), "-m", "你好", "--executor", "local")
    assert result.returncode == 2
    assert "is a text classifier (stage cls" in result.stderr and "POST /v1/classify" in result.stderr


@pytest.mark.parametrize(
    ("stage", "data"),
    [("pt", "pretrain.jsonl"), ("sft", "identity.json"), ("rm", "preference.json"), ("dpo", "preference.json"),
     ("kto", "kto.json")],
    ids=["pt", "sft", "rm", "dpo", "kto"],
)  # fmt: skip
def test_adalora_trains_a_language_model_stage(stage: str, data: str, tmp_path: Path, tiny_model: Path):
    """The rank budget moves (rank_pattern saved, ranks pruned to the target) on the Trainer's loop."""
    from safetensors import safe_open

    fmt = {"pt": "text", "kto": "sharegpt"}.get(stage, "alpaca")
    dataset = {"path": str(ROOT / "data" / data), "format": fmt}
    run = _submit(tmp_path, tiny_model, stage=stage, data={"datasets": [dataset], "cutoff_len": 64},
                  method={"type": "adalora", "init_r": 4, "target_r": 2, "tinit": 2, "tfinal": 2},
                  training={"max_steps": 8, "logging_steps": 1, "learning_rate": 1e-3})  # fmt: skip
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "ADALORA" and config["total_step"] == 8 and config["rank_pattern"]
    assert config["orth_reg_weight"] == (
        0.5 if stage in ("pt", "sft") else 0.0
    )  # where the model computes the loss
    with safe_open(str(run / "adapter" / "adapter_model.safetensors"), "pt") as f:
        ranks = [f.get_tensor(k).shape[0] for k in f.keys() if k.endswith("lora_E")]  # noqa: SIM118 (no dict)
    assert sum(ranks) <= 2 * len(ranks)  # saved at the budget: target_r per matrix on average
