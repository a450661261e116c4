"""`runner convert` on LLaMA-Factory's own examples directory, kept in
tests/data/llamafactory/examples (release 0.9.3, and main at ff6d4d1): every config either
converts, each mapped value equal to its source and the spec free of what validate would refuse,
or is refused as what it is; every key it does not map has its own reason. The README's
conversion report is written from these conversions; after an intended change:
UPDATE_GOLDEN=1 pytest tests/unit/test_convert_examples.py
"""

from __future__ import annotations

import collections
import json
import os
import re
from pathlib import Path

import pytest
import yaml

from runner.core.jobspec import lfkeys
from runner.core.jobspec.checks import preference, stage, training
from runner.core.jobspec.checks.context import Context
from runner.core.jobspec.convert import ConvertError, Note, convert
from runner.core.jobspec.job import PREFERENCE_LOSSES, TEMPLATES, JobSpec
from tests.conftest import DATA, ROOT

EXAMPLES = DATA / "llamafactory" / "examples"
CONFIGS = sorted(EXAMPLES.rglob("*.yaml"))
README = ROOT / "README.md"
BEGIN, END = "<!-- convert-report:begin -->", "<!-- convert-report:end -->"


def _convert(path: Path) -> tuple[dict, list[Note]] | str:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    try:
        return convert(data, path.name, path.parent)
    except ConvertError as e:
        return str(e)


RESULTS = {path: _convert(path) for path in CONFIGS}
CONVERTED = {p: r for p, r in RESULTS.items() if not isinstance(r, str)}


def test_the_examples_are_all_there():
    assert len(CONFIGS) >= 130
    assert len(CONVERTED) >= 60


def _source(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _typed(spec: dict) -> JobSpec:
    text = json.dumps(spec).replace("${MODEL_DIR}", "/models/m")
    return JobSpec.model_validate(json.loads(text))


@pytest.mark.parametrize("path", list(CONVERTED), ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_converted_example_means_what_its_source_meant(path: Path):
    lf = {k: v for k, v in _source(path).items() if v is not None}
    spec, notes = CONVERTED[path]
    job = _typed(spec)
    # what validate would refuse from the spec alone: nothing
    at = Context(ROOT)
    for check in (*stage.CHECKS, *training.CHECKS, preference.reference_free, preference.kto_batch):
        check(job, at)
    assert not at.found, at.found
    notes_by_key = {n.key for n in notes}
    # data
    assert job.data.cutoff_len == lf.get("cutoff_len", 2048)
    if job.stage == "sft":
        assert job.data.packing == bool(lf.get("neat_packing") or lf.get("packing"))
    template = lf.get("template")
    assert job.model.template == (template if template in TEMPLATES else "auto")
    if template is not None and template not in TEMPLATES:
        assert "template" in notes_by_key
    # method
    kind = lf.get("finetuning_type", "lora")
    if job.stage != "eval":
        assert job.method.type == {"freeze": "freeze", "full": "full"}.get(
            kind, "qlora" if lf.get("quantization_bit") in (4, 8) and lf.get("quantization_method", "bnb") == "bnb"
            else "lora")  # fmt: skip
    if job.method.type in ("lora", "qlora"):
        rank = lf.get("lora_rank", 8)
        assert job.method.r == rank
        assert (job.method.alpha or 2.0 * job.method.r) == lf.get("lora_alpha", 2 * rank)
        assert job.method.dropout == lf.get("lora_dropout", 0.0)
        target = lf.get("lora_target", "all")
        expected = ["all-linear"] if target == "all" else [t.strip() for t in str(target).split(",")]
        assert job.method.target == expected
        assert job.method.loraplus_lr_ratio == lf.get("loraplus_lr_ratio")
        if job.method.type == "qlora":
            assert job.method.bits == lf["quantization_bit"]
    # training
    t = job.training
    if job.stage != "eval":
        assert t.learning_rate == float(lf.get("learning_rate", 5e-5))
        assert t.num_train_epochs == float(lf.get("num_train_epochs", 3.0))
        batch, accumulation = (
            lf.get("per_device_train_batch_size", 8),
            lf.get("gradient_accumulation_steps", 1),
        )
        assert t.per_device_train_batch_size * t.gradient_accumulation_steps == batch * accumulation
        assert t.lr_scheduler_type == lf.get("lr_scheduler_type", "linear")
        assert t.warmup_ratio == lf.get("warmup_ratio", 0.0)
        assert t.bf16 == lf.get("bf16")
        if stage_supports(job, "gradient_checkpointing"):
            assert t.gradient_checkpointing == (not lf.get("disable_gradient_checkpointing", False))
    # deepspeed
    if "deepspeed" in lf and stage_supports(job, "deepspeed"):
        ds = json.loads(_deepspeed_json(path, lf["deepspeed"]).read_text(encoding="utf-8"))[
            "zero_optimization"
        ]
        assert job.distributed.deepspeed.zero == int(ds.get("stage", 0))
        assert job.distributed.deepspeed.offload_optimizer == ("offload_optimizer" in ds)
        assert job.distributed.deepspeed.offload_params == ("offload_param" in ds)
    # preference, kto, ppo, eval
    if job.stage in ("dpo", "kto"):
        assert job.preference.beta == lf.get("pref_beta", 0.1)
        if job.stage == "dpo" and lf.get("pref_loss", "sigmoid") in PREFERENCE_LOSSES:
            assert job.preference.loss == lf.get("pref_loss", "sigmoid")
        if job.stage == "kto":
            assert job.preference.desirable_weight == lf.get("kto_chosen_weight", 1.0)
            assert job.preference.undesirable_weight == lf.get("kto_rejected_weight", 1.0)
    if job.stage == "ppo":
        assert job.ppo.reward_model == lf["reward_model"]
        assert job.ppo.ppo_epochs == lf.get("ppo_epochs", 4)
        assert job.ppo.response_length == lf.get("max_new_tokens", 1024)
        assert job.ppo.temperature == lf.get("temperature", 0.95)
    if job.stage == "eval":
        assert job.eval.max_new_tokens == lf.get("max_new_tokens", 1024)
        assert job.eval.do_sample == lf.get("do_sample", True)
        assert job.model.adapter == lf.get("adapter_name_or_path")


def stage_supports(job: JobSpec, feature: str) -> bool:
    from runner.core import stages

    return stages.STAGES[job.stage].supports(feature)


def _deepspeed_json(config: Path, path: str) -> Path:
    return next(d / path for d in config.parents if (d / path).is_file())


def test_every_key_of_every_example_is_mapped_or_has_its_own_reason():
    for path, (_, notes) in CONVERTED.items():
        for note in notes:
            assert note.kind == "mapped" or note.kind in lfkeys.KINDS, note
            assert note.message != "runner has no such setting", f"{path.relative_to(EXAMPLES)}: {note}"


def test_the_settings_runner_has_are_never_reported_missing():
    """The issue's list: each of these was once 'runner has no such setting'."""
    spec, notes = convert({
        "model_name_or_path": "/m", "stage": "dpo", "dataset": "d", "pref_loss": "orpo", "pref_beta": 0.5,
    })  # fmt: skip
    assert spec["preference"] == {"loss": "orpo", "beta": 0.5}
    assert not notes or all(n.key not in ("pref_loss", "pref_beta") for n in notes)
    spec, notes = convert({"model_name_or_path": "/m", "stage": "kto", "dataset": "d", "kto_chosen_weight": 2.0,
                           "kto_rejected_weight": 0.5, "per_device_train_batch_size": 4})  # fmt: skip
    assert spec["preference"] == {"desirable_weight": 2.0, "undesirable_weight": 0.5}
    spec, notes = convert({"model_name_or_path": "/m", "stage": "ppo", "dataset": "d", "reward_model": "rm",
                           "reward_model_type": "full", "ppo_epochs": 2, "max_new_tokens": 64, "temperature": 0.6})  # fmt: skip
    assert spec["ppo"] == {"reward_model": "rm", "ppo_epochs": 2, "response_length": 64, "temperature": 0.6}
    assert "gradient_checkpointing" not in spec.get("training", {})
    spec, _ = convert({"model_name_or_path": "/m", "dataset": "d", "neat_packing": True})
    assert spec["data"]["packing"] is True


@pytest.mark.parametrize(
    "config, what",
    [
        ("0.9.3/examples/train_lora/llama3_lora_eval.yaml", "benchmark config"),
        ("main/examples/train_lora/qwen3_preprocess.yaml", "preprocess config"),
        ("main/examples/inference/qwen3_lora_sft.yaml", "inference config"),
        ("main/examples/merge_lora/qwen3_gptq.yaml", "export config"),
        ("main/examples/v1/train_full/train_full_deepspeed.yaml", "v1 config"),
    ],
)
def test_configs_that_train_nothing_are_refused_as_what_they_are(config: str, what: str):
    assert what in RESULTS[EXAMPLES / config]


def test_autotp_is_reported(tmp_path: Path):
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 2},
                                                  "tensor_parallel": {"autotp_size": 2}}))  # fmt: skip
    spec, notes = convert(
        {"model_name_or_path": "/m", "dataset": "d", "deepspeed": "ds.json"}, "x.yaml", tmp_path
    )
    assert spec["distributed"]["deepspeed"] == {"zero": 2}
    assert any("AutoTP" in n.message and n.at == ("distributed", "deepspeed") for n in notes)


# --- the README's conversion report ------------------------------------------------------


def report() -> str:
    """Summary, refused configs by reason, and every key not carried over with its reason."""
    clean = [
        p for p, (_, notes) in CONVERTED.items() if all(n.at or n.kind == lfkeys.NOT_NEEDED for n in notes)
    ]
    refused: dict[str, list[Path]] = collections.defaultdict(list)
    for path, result in RESULTS.items():
        if isinstance(result, str):
            refused[re.split(r"[:;(]", result)[0].strip()].append(path)
    keys: dict[tuple[str, str, str], set[Path]] = collections.defaultdict(set)
    for path, (_, notes) in CONVERTED.items():
        for note in notes:
            if note.at is None and note.kind != lfkeys.NOT_NEEDED:
                keys[note.key, note.kind, note.message].add(path)
    lines = [
        f"Of the {len(CONFIGS)} YAML files under `examples/` (release 0.9.3 and main at ff6d4d1, kept in "
        "`tests/data/llamafactory/examples/`), runner converts "
        f"{len(CONVERTED)}: {len(clean)} map cleanly (every key mapped to the same meaning, or not needed), "
        f"{len(CONVERTED) - len(clean)} carry keys runner does not support or means differently, each listed "
        f"with its reason; {sum(map(len, refused.values()))} are refused as what they are:",
        "",
        "| refused | configs | e.g. |",
        "| --- | --- | --- |",
    ]
    for why, paths in sorted(refused.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"| {why} | {len(paths)} | `{paths[0].relative_to(EXAMPLES)}` |")
    lines += ["", "| key not carried over | kind | why | configs |", "| --- | --- | --- | --- |"]
    for (key, kind, why), paths in sorted(
        keys.items(), key=lambda kv: (lfkeys.KINDS.index(kv[0][1]), -len(kv[1]), kv[0][0])
    ):
        lines.append(f"| `{key}` | {kind} | {why} | {len(paths)} |")
    return "\n".join(lines) + "\n"


def test_readme_holds_the_conversion_report():
    text = README.read_text(encoding="utf-8")
    table = report()
    if os.environ.get("UPDATE_GOLDEN"):
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        README.write_text(f"{head}{BEGIN}\n{table}{END}{tail}", encoding="utf-8")
        text = README.read_text(encoding="utf-8")
    assert f"{BEGIN}\n{table}{END}" in text
