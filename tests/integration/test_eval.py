"""runner eval: loss, perplexity, generated answers and their scores, of a run and of a
`stage: eval` spec."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.conftest import DATA, runner_cli
from tests.integration.trained import lora_run  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration


def only_run(parent: Path) -> Path:
    (run,) = [p for p in parent.iterdir() if (p / "run.json").exists()]
    return run


@pytest.fixture(scope="module")
def evaluated(lora_run: Path) -> Path:  # noqa: F811
    result = runner_cli(
        "eval", str(lora_run), "--executor", "local", "--max-new-tokens", "12", "--max-samples", "3"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "rouge-l" in result.stdout and "perplexity" in result.stdout  # the table, as the log has it
    return only_run(lora_run.parent.parent / "job-eval")


def test_eval_writes_predictions_and_metrics_that_agree(evaluated: Path):
    from runner.train.tools.scores import corpus

    rows = [json.loads(line) for line in (evaluated / "generated_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 3  # the first 3 (--max-samples) of the run's validation split (data.val_size: 4)
    assert all(set(r) == {"prompt", "predict", "label"} and r["label"] for r in rows)
    assert any(r["predict"] for r in rows)
    summary = json.loads((evaluated / "eval_results.json").read_text())
    assert summary["split"] == "validation" and summary["samples"] == 3 and summary["eval_tokens"] > 0
    assert summary["perplexity"] == pytest.approx(math.exp(summary["eval_loss"]), rel=1e-3)
    scores = corpus([r["predict"] for r in rows], [r["label"] for r in rows])
    assert {k: summary[k] for k in scores} == scores
    assert summary["metrics"]["language"] == "zh" and "jieba" in summary["metrics"]["method"]
    assert "perplexity" in (evaluated / "train.log").read_text()


def test_the_trained_model_has_a_lower_loss_than_its_base(evaluated: Path, lora_run: Path, tmp_path: Path):  # noqa: F811
    """The same evaluation as a `stage: eval` spec, of the untrained base."""
    from runner.core.jobspec.load import load_job

    trained = load_job(lora_run / "spec.yaml", files=False)
    spec = tmp_path / "eval.yaml"
    spec.write_text(json.dumps({
        "name": "base-eval", "stage": "eval", "model": {"path": trained.model.path},
        "data": {**trained.data.model_dump(include={"datasets", "placeholders", "cutoff_len", "val_size"})},
        "training": {"seed": trained.training.seed}, "eval": {"max_new_tokens": 4, "max_samples": 3},
        "resources": {"gpus": 0}, "output": {"dir": str(tmp_path / "out")},
    }, ensure_ascii=False))  # fmt: skip
    result = runner_cli("eval", str(spec), "--executor", "local")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    base = json.loads((only_run(tmp_path / "out" / "base-eval") / "eval_results.json").read_text())
    ours = json.loads((evaluated / "eval_results.json").read_text())
    assert base["samples"] == ours["samples"] == 3  # the same held-out rows
    labels = [
        json.loads(line)["label"]
        for line in (evaluated / "generated_predictions.jsonl").read_text().splitlines()
    ]
    base_run = only_run(tmp_path / "out" / "base-eval")
    assert [
        json.loads(line)["label"]
        for line in (base_run / "generated_predictions.jsonl").read_text().splitlines()
    ] == labels
    assert ours["eval_loss"] < base["eval_loss"] - 0.5, (ours["eval_loss"], base["eval_loss"])


def test_an_eval_set_without_references_is_refused(lora_run: Path, tmp_path: Path):  # noqa: F811
    evals = lora_run.parent.parent / "job-eval"
    before = sorted(evals.glob("*/run.json"))
    questions = tmp_path / "questions.json"
    questions.write_text(json.dumps([{"conversations": [{"from": "human", "value": "你是谁？"}]}]))
    result = runner_cli(
        "eval", str(lora_run), "--data", str(questions), "--format", "sharegpt", "--executor", "local"
    )
    assert result.returncode == 2
    # The data reader names the file and the record; it reads it before any run exists.
    assert str(questions) in result.stderr and "nothing answers" in result.stderr, result.stderr
    assert "nothing was started" in result.stderr and "Traceback" not in result.stderr
    assert sorted(evals.glob("*/run.json")) == before


def test_batched_generation_is_left_padded(lora_run: Path):  # noqa: F811
    """Greedy answers of a batch of prompts of different lengths are those of each alone."""
    from runner.train.tools.inference import Settings, generate, load

    loaded = load(lora_run)
    prompts = [
        [{"role": "user", "content": q}] for q in ("你是谁？", "Tell me who made you, please, in detail.")
    ]
    settings = Settings(max_new_tokens=8)
    assert loaded.tokenizer.padding_side == "left"
    assert generate(loaded, prompts, settings) == [generate(loaded, [p], settings)[0] for p in prompts]


def test_the_loss_is_the_trainers_on_the_rows_training_held_out(lora_run: Path):  # noqa: F811
    """The validation split is found again (same data, same seed), and its loss is the one the
    Trainer reported at the end of training (results.json)."""
    from runner.core.jobspec.load import load_job
    from runner.core.rundir import read_record
    from runner.core.target import of_spec
    from runner.host.evalspec import eval_spec_for
    from runner.train.stages import evaluate
    from runner.train.tools import inference

    spec = load_job(eval_spec_for(read_record(lora_run)))
    loaded = inference.load_target(of_spec(spec))
    _, rows = evaluate.records(spec, loaded.tokenizer)
    assert len(rows) == 4
    ours, tokens = evaluate.loss(loaded, rows, batch_size=3)  # batches of another size: the same mean
    assert tokens > 0
    assert ours == pytest.approx(json.loads((lora_run / "results.json").read_text())["eval_loss"], rel=1e-4)


def _new_run(parent: Path, before: list[Path]) -> Path:
    (run,) = [p.parent for p in sorted(parent.glob("*/run.json")) if p not in before]
    return run


def test_a_benchmark_through_runner_eval(lora_run: Path):  # noqa: F811
    """The shipped tiny C-Eval-layout benchmark: per-subject and overall accuracy from the
    answer-letter logits, which are those of the model loaded here."""
    import torch

    from runner.core.jobspec.job import BenchmarkSpec
    from runner.train.tools import benchmark
    from runner.train.tools.inference import load, prompt_ids

    evals = lora_run.parent.parent / "job-eval"
    before = sorted(evals.glob("*/run.json"))
    result = runner_cli("eval", str(lora_run), "--executor", "local", "--benchmark", str(DATA / "benchmark" / "ceval-tiny"),
                        "--n-shot", "1")  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Average" in result.stdout and "高中物理" in result.stdout  # the table, as the log has it
    run = _new_run(evals, before)
    summary = json.loads((run / "eval_results.json").read_text())
    assert summary["benchmark"] | {"path": None} == {"path": None, "layout": "ceval", "split": "val", "n_shot": 1,
                                                     "lang": "zh"}  # fmt: skip
    assert summary["questions"] == 6 and set(summary["subjects"]) == {
        "computer_network",
        "high_school_physics",
    }
    rows = [json.loads(line) for line in (run / "benchmark_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(abs(sum(r["probs"].values()) - 1) < 1e-4 for r in rows)
    correct = sum(r["answer"] == r["predict"] for r in rows)
    assert summary["accuracy"] == pytest.approx(100 * correct / 6, abs=1e-4)
    assert summary["categories"] == {"STEM": summary["accuracy"]}
    # the first question's choice, from the model loaded here
    loaded = load(lora_run)
    _, _, _, subjects = benchmark.load(BenchmarkSpec(path=str(DATA / "benchmark" / "ceval-tiny")))
    ids = torch.tensor(
        [prompt_ids(loaded, benchmark.messages(subjects[0], subjects[0].questions[0], 1, "zh"))]
    )
    with torch.no_grad():
        logits = loaded.model(input_ids=ids).logits[0, -1]
    letters = [loaded.tokenizer.encode(k, add_special_tokens=False)[-1] for k in "ABCD"]
    assert rows[0]["predict"] == "ABCD"[int(logits[letters].argmax())]


def test_a_benchmark_eval_spec_has_no_data_section(lora_run: Path, tmp_path: Path):  # noqa: F811
    from runner.core.jobspec.load import load_job

    trained = load_job(lora_run / "spec.yaml", files=False)
    spec = tmp_path / "bench.yaml"
    spec.write_text(json.dumps({
        "name": "bench", "stage": "eval", "model": {"path": trained.model.path, "adapter": str(lora_run / "adapter")},
        "eval": {"benchmark": {"path": str(DATA / "benchmark" / "mmlu-tiny"), "n_shot": 0}, "max_samples": 1},
        "resources": {"gpus": 0}, "output": {"dir": str(tmp_path / "out")},
    }))  # fmt: skip
    result = runner_cli("eval", str(spec), "--executor", "local")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((only_run(tmp_path / "out" / "bench") / "eval_results.json").read_text())
    assert summary["benchmark"]["layout"] == "mmlu" and summary["questions"] == 2  # one per subject


def test_zero_and_reward_evaluations_are_refused(lora_run: Path):  # noqa: F811
    for flag in ("--max-new-tokens", "--max-samples"):
        result = runner_cli("eval", str(lora_run), "--executor", "local", flag, "0")
        assert result.returncode == 2 and "0 is not in the range x>=1" in result.stderr, result.stderr
