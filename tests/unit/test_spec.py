from __future__ import annotations

from pathlib import Path

import pytest

from runner.core.errors import SpecError
from runner.core.jobspec.job import JobSpec
from runner.core.jobspec.load import load_job, resolve, to_yaml
from runner.core.jobspec.yaml_loader import dotted, load_yaml

GOOD = """\
name: ok
model:
  path: tests/data/models/fake
method:
  type: lora
  target: q_proj
data:
  datasets:
    - path: tests/data/datasets/alpaca.json
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_good_spec_gets_defaults(tmp_path):
    spec = load_job(write(tmp_path, GOOD))
    assert spec.stage == "sft"
    assert spec.method.type == "lora" and spec.method.r == 8
    assert spec.method.target == ["q_proj"]  # a single name becomes a list
    assert spec.training.learning_rate == 1e-4


def test_env_interpolation_and_default(tmp_path):
    text = GOOD.replace("tests/data/models/fake", "${MODELS}/fake").replace(
        "name: ok", "name: ${NAME:-fallback}"
    )
    spec = load_job(write(tmp_path, text), env={"MODELS": "tests/data/models"})
    assert spec.name == "fallback"
    assert spec.model.path == "tests/data/models/fake"


def test_positions_of_keys_and_values(tmp_path):
    src = load_yaml(write(tmp_path, GOOD))
    assert src.keys[("method", "target")] == (6, 3)
    assert src.values[("method", "target")] == (6, 11)
    assert src.values[("data", "datasets", 0)] == (9, 7)


def test_dotted_paths():
    assert dotted(("data", "datasets", 0, "path")) == "data.datasets[0].path"


def test_every_problem_in_one_pass(tmp_path):
    text = GOOD.replace("type: lora", "type: lora\n  r: 0").replace("name: ok", "name: ok\nstage: nope")
    with pytest.raises(SpecError) as e:
        load_job(write(tmp_path, text))
    paths = [p.path for p in e.value.problems]
    assert paths == ["stage", "method.r"]


def test_resolve_makes_paths_absolute_and_fills_alpha(tmp_path):
    spec = resolve(load_job(write(tmp_path, GOOD)), Path.cwd())
    assert Path(spec.model.path).is_absolute() and Path(spec.data.datasets[0].path).is_absolute()
    assert spec.method.alpha == 16.0


def test_resolved_yaml_round_trips(tmp_path):
    spec = resolve(load_job(write(tmp_path, GOOD)), Path.cwd())
    again = load_job(write(tmp_path, to_yaml(spec)))
    assert again == spec


def test_schema_covers_the_whole_product():
    stages = JobSpec.model_fields["stage"].annotation.__args__
    assert set(stages) == {"pt", "sft", "rm", "dpo", "kto", "ppo", "cls", "ner", "eval"}
    from runner.core.jobspec.job import METHODS

    assert set(METHODS) == {
        "full",
        "freeze",
        "lora",
        "qlora",
        "prefix",
        "ptuning",
        "prompt",
        "ia3",
        "adalora",
    }


def test_a_run_spec_keeps_what_the_user_set_apart_from_defaults(tmp_path):
    """Every default is written out and marked; reading it back, only what the user set counts
    as set (so a decision such as fp16's adam_epsilon still sees an unset epsilon)."""
    spec = resolve(load_job(write(tmp_path, GOOD)), Path.cwd())
    text = to_yaml(spec)
    assert "adam_epsilon: 1e-08 # default" in text.replace("  #", " #")
    again = load_job(write(tmp_path, text))
    assert again == spec
    assert "adam_epsilon" not in again.training.model_fields_set
    assert again.training.model_fields_set == spec.training.model_fields_set


def test_ppo_reward_model_resolves_as_model_adapter_does(tmp_path, monkeypatch):
    """ppo.reward_model names an rm run by its directory or run id and becomes its adapter/; the
    run spec marks the ppo settings left unset as defaults. A run whose adapter has no value head
    (an sft run) is refused, naming it."""
    import json

    from runner.core.rundir import RunDir, RunRecord, register

    monkeypatch.setenv("RUNNER_HOME", str(tmp_path / "home"))
    runs = {}
    for name, task in (("rm", "SEQ_CLS"), ("sft", "CAUSAL_LM")):
        run = runs[name] = RunDir.create(tmp_path / "out", name).path
        record = RunRecord(id=run.name, name=name, run_dir=str(run), spec_file="x", status="succeeded")
        record.save()
        register(record)
        (run / "adapter").mkdir()
        (run / "adapter" / "adapter_config.json").write_text(json.dumps({"task_type": task}))
    ppo = GOOD.replace("name: ok", "name: ok\nstage: ppo") + "ppo:\n  reward_model: {}\n  kl_coef: 0.1\n"
    for ref in (str(runs["rm"]), runs["rm"].name):
        spec = resolve(load_job(write(tmp_path, ppo.format(ref))), Path.cwd())
        assert spec.ppo.reward_model == str(runs["rm"] / "adapter")
    text = to_yaml(spec).replace("  #", " #")
    assert "kl_coef: 0.1\n" in text and "response_length: 128 # default" in text
    with pytest.raises(SpecError) as e:
        load_job(write(tmp_path, ppo.format(runs["sft"])))
    assert "ppo.reward_model: the adapter in" in str(e.value) and "no value head (task_type CAUSAL_LM" in str(
        e.value
    )
