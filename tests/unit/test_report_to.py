"""training.report_to: `tensorboard` or `none`; anything that would report over a network is refused
with its line:col, and LLaMA-Factory's report_to converts to what carries over."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.core.errors import SpecError
from runner.core.jobspec.convert import convert
from runner.core.jobspec.load import load_job
from tests.conftest import write_job


def test_defaults_to_none_and_takes_tensorboard(tmp_path: Path):
    model = tmp_path / "m"
    assert load_job(write_job(tmp_path / "a.yaml", model), files=False).training.report_to == "none"
    spec = write_job(tmp_path / "b.yaml", model, training={"report_to": "tensorboard"})
    assert load_job(spec, files=False).training.report_to == "tensorboard"


def test_a_network_reporter_is_refused_where_it_is_written(tmp_path: Path):
    spec = tmp_path / "job.yaml"
    spec.write_text("name: j\nmodel:\n  path: m\nmethod:\n  type: lora\ndata:\n  datasets:\n    - path: d.json\n"
                    "training:\n  report_to: wandb\n", encoding="utf-8")  # fmt: skip
    with pytest.raises(SpecError) as e:
        load_job(spec, files=False)
    (problem,) = e.value.problems
    assert (problem.line, problem.col, problem.path) == (10, 14, "training.report_to")
    assert "none, tensorboard" in problem.message


@pytest.mark.parametrize(
    ("value", "carried", "noted"),
    [("tensorboard", "tensorboard", False), (["wandb", "tensorboard"], "tensorboard", True),
     ("wandb", None, True), ("none", None, True)],
)  # fmt: skip
def test_llamafactory_report_to(value, carried, noted: bool):
    spec, notes = convert(
        {"model_name_or_path": "m", "finetuning_type": "lora", "dataset": "a", "report_to": value}
    )
    assert spec.get("training", {}).get("report_to") == carried
    assert any(n.key == "report_to" for n in notes) is noted
