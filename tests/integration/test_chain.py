"""The chain in jobs/chain/ really trains: sft, then dpo and rm each starting from the sft run,
named by its run directory or its run id, then ppo from the sft run scored by the rm run, through
`runner submit --executor local`.

Each spec is used as shipped except what keeps the suite short (two steps, CPU, short rows). A
run that cannot be continued is refused in one message naming the file, line and field.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from runner.core.rundir import read_record
from tests.conftest import ROOT, runner_cli

pytestmark = pytest.mark.integration
CHAIN = ROOT / "jobs" / "chain"


def _short(step: str, tmp_path: Path, **ppo) -> Path:
    """The shipped spec, two steps on CPU; everything else (method, data, template) unchanged but
    `ppo`'s settings (a shorter answer)."""
    yaml = YAML()
    spec = yaml.load((CHAIN / step).read_text(encoding="utf-8"))
    spec["training"].update(max_steps=2, logging_steps=1, per_device_train_batch_size=2)
    spec["data"]["cutoff_len"] = 64
    if ppo:
        spec["ppo"].update(ppo)
    spec["resources"] = {"gpus": 0}
    out = tmp_path / step
    with out.open("w", encoding="utf-8") as f:
        yaml.dump(spec, f)
    return out


def _submit(spec: Path, env: dict[str, str]) -> Path:
    result = runner_cli("submit", str(spec), "--executor", "local", env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_dir,) = (Path(env["OUTPUT_DIR"]) / YAML(typ="safe").load(spec.read_text())["name"]).glob("2*")
    return run_dir


def _adapter_weights(adapter: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(adapter / "adapter_model.safetensors")


def test_sft_then_dpo_and_rm_from_the_sft_run(tmp_path, tiny_model):
    import torch

    env = {"MODEL_DIR": str(tiny_model), "OUTPUT_DIR": str(tmp_path / "out")}
    sft = _submit(_short("1-sft.yaml", tmp_path), env)
    assert read_record(sft).status == "succeeded"
    sft_weights = _adapter_weights(sft / "adapter")

    # dpo names the sft run by its directory, rm by its run id (as `runner ls` shows it).
    runs = {}
    for step, ref in (("2-dpo.yaml", str(sft)), ("3-rm.yaml", sft.name)):
        run = runs[step] = _submit(_short(step, tmp_path), {**env, "SFT": ref})
        resolved = YAML(typ="safe").load((run / "spec.yaml").read_text())
        assert resolved["model"]["adapter"] == str(sft / "adapter"), step
        assert json.loads((run / "results.json").read_text())["global_step"] == 2
        trained = _adapter_weights(run / "adapter")
        if step == "2-dpo.yaml":  # dpo continues the sft adapter: same tensors, moved by training
            shared = [k for k in sft_weights if k in trained]
            assert shared and set(shared) == set(sft_weights)
            moved = [k for k in shared if not torch.equal(sft_weights[k], trained[k])]
            assert moved, "dpo left the sft adapter unchanged"
        else:  # rm merges the sft adapter into the base and trains a new adapter with a value head
            assert any("score" in k for k in trained), sorted(trained)[:5]

    # ppo continues the sft adapter, scored by the rm run (named by its run id).
    rm = runs["3-rm.yaml"]
    run = _submit(_short("4-ppo.yaml", tmp_path, response_length=8), {**env, "SFT": str(sft), "RM": rm.name})
    resolved = YAML(typ="safe").load((run / "spec.yaml").read_text())
    assert resolved["ppo"]["reward_model"] == str(rm / "adapter")
    assert json.loads((run / "results.json").read_text())["global_step"] == 2
    trained = _adapter_weights(run / "adapter")
    assert set(trained) == set(sft_weights)  # the sft adapter, trained on; its frozen copy is not saved
    assert any(not torch.equal(sft_weights[k], trained[k]) for k in trained), (
        "ppo left the sft adapter unchanged"
    )


def test_a_run_that_cannot_be_continued_is_refused(tmp_path, tiny_model):
    from runner.core.rundir import RunDir, RunRecord

    out = tmp_path / "out"
    env = {"MODEL_DIR": str(tiny_model), "OUTPUT_DIR": str(out)}
    failed = RunDir.create(out, "chain-sft").path
    RunRecord(id=failed.name, name="chain-sft", run_dir=str(failed), spec_file="x", status="failed").save()
    full = RunDir.create(out, "full-sft").path
    RunRecord(id=full.name, name="full-sft", run_dir=str(full), spec_file="x", status="succeeded").save()
    (full / "model").mkdir()
    (full / "model" / "config.json").write_text("{}")
    spec = _short("2-dpo.yaml", tmp_path)
    for ref, message in (
        (str(failed), f"run {failed.name} of job 'chain-sft' ({failed}) failed, see its train.log; "
                      "name a run that succeeded (`runner ls`), or an adapter directory"),
        (str(full), f"saved no adapter ({full / 'adapter'} is missing); it saved a whole model: set "
                    f"model.path to {full / 'model'} and leave out model.adapter"),
    ):  # fmt: skip
        result = runner_cli("submit", str(spec), "--executor", "local", env={**env, "SFT": ref})
        assert result.returncode == 2, result.stderr
        assert f"{spec}:4:" in result.stderr and "model.adapter" in result.stderr, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr
    assert not (out / "chain-dpo").exists()
