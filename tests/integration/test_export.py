"""runner export: an adapter merged into its base, loaded back by plain transformers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import runner_cli
from tests.integration.trained import lora_run, train  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration
PROMPT = "Human: 你是谁？\nAssistant: "


def logits(model, tokenizer):
    import torch

    ids = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


def test_merged_export_reloads_with_the_same_logits(lora_run: Path, tmp_path: Path):  # noqa: F811
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from runner.core.jobspec.load import load_job

    out = tmp_path / "exported"
    result = runner_cli("export", str(lora_run), "--out", str(out), "--executor", "local")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "merged" in result.stdout
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    assert not list(tmp_path.glob(".exported.export-*"))  # the work directory is gone
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template  # the template travels with the model
    assert GenerationConfig.from_pretrained(out).eos_token_id  # stops where a turn ends

    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    base_dir = load_job(lora_run / "spec.yaml", files=False).model.path
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    plain = logits(base, tokenizer)
    adapted = logits(PeftModel.from_pretrained(base, str(lora_run / "adapter")).eval(), tokenizer)
    merged = logits(exported, tokenizer)
    assert (adapted - plain).abs().max() > 1e-2  # the adapter matters, so the comparison can fail
    torch.testing.assert_close(merged, adapted, atol=1e-4, rtol=1e-4)

    chat = runner_cli("chat", str(out), "-m", "你是谁？")  # the exported directory, as it is
    assert chat.returncode == 0, chat.stderr[-3000:]
    assert "user> 你是谁？\nassistant> " in chat.stdout


def test_export_refuses_a_non_empty_directory_and_force_replaces_it(lora_run: Path, tmp_path: Path):  # noqa: F811
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = runner_cli("export", str(lora_run), "--out", str(out), "--executor", "local")
    assert result.returncode == 2
    assert "is not empty" in result.stderr and "--force" in result.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    result = runner_cli(
        "export", str(lora_run), "--out", str(out), "--force", "--dtype", "bf16", "--executor", "local"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()
    from safetensors import safe_open

    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.bfloat16"}  # noqa: SIM118


def test_a_run_without_a_result_is_refused_by_export_eval_serve_and_chat(lora_run: Path, tmp_path: Path):  # noqa: F811
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    for name in ("run.json", "spec.yaml"):
        shutil.copy(lora_run / name, unfinished / name)
    for command in (["export", "--out", str(tmp_path / "x")], ["eval"], ["serve"], ["chat", "-m", "hi"]):
        result = runner_cli(command[0], str(unfinished), *command[1:], "--executor", "local")
        assert result.returncode != 0, command
        assert "has no result" in result.stderr and "Traceback" not in result.stderr, (command, result.stderr)
    assert not (tmp_path / "x").exists()


def test_a_quantized_base_is_refused_before_anything_is_written(tiny_model: Path, tmp_path: Path):
    from runner.core.errors import RunnerError
    from runner.train.tools.export import export

    base = tmp_path / "base-4bit"
    base.mkdir()
    config = json.loads((tiny_model / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (base / "config.json").write_text(json.dumps(config))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "base_model_name_or_path": str(base)})
    )
    with pytest.raises(RunnerError, match="stored quantized .bitsandbytes 4-bit.*broken model"):
        export(adapter, tmp_path / "out")
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "adapter",
        "base-4bit",
    ]


def test_prefix_adapters_are_exported_unmerged_with_how_to_load_them(tmp_path: Path, tiny_model: Path):
    from runner.train.tools.inference import Settings, generate, load

    run = train(tmp_path / "prefix", tiny_model, method={"type": "prefix", "num_virtual_tokens": 4},
                training={"max_steps": 2})  # fmt: skip
    out = tmp_path / "exported"
    result = runner_cli("export", str(run), "--out", str(out), "--executor", "local")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "cannot be merged" in result.stdout
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    assert "PeftModel.from_pretrained" in (out / "README.md").read_text()
    loaded = load(out)  # the exported adapter loads on its own: its base is found from its config
    assert type(loaded.model).__name__.startswith("Peft")
    assert len(generate(loaded, [[{"role": "user", "content": "hi"}]], Settings(max_new_tokens=3))) == 1


def test_a_fully_trained_model_exports_with_its_tokenizer_and_template(tmp_path: Path, tiny_model: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = train(tmp_path / "full", tiny_model, method={"type": "full"}, model={"template": "default"},
                training={"max_steps": 2, "learning_rate": 1e-2})  # fmt: skip
    out = tmp_path / "exported"
    result = runner_cli("export", str(run), "--out", str(out), "--executor", "local")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert "Human: " in tokenizer.chat_template  # the job's template, not the base's own (chatml)
    eos = AutoModelForCausalLM.from_pretrained(out).generation_config.eos_token_id
    assert eos == [tokenizer.eos_token_id]
    torch.testing.assert_close(
        logits(AutoModelForCausalLM.from_pretrained(out).eval(), tokenizer),
        logits(AutoModelForCausalLM.from_pretrained(run / "model").eval(), tokenizer),
    )


@pytest.fixture(scope="module")
def rm_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """The shipped chain's rm step on its sft step (two steps each; sft with a learning rate that
    moves its adapter enough to matter)."""
    from ruamel.yaml import YAML

    from tests.integration.test_chain import _short, _submit

    tmp = tmp_path_factory.mktemp("rm-chain")
    env = {"MODEL_DIR": str(tiny_model), "OUTPUT_DIR": str(tmp / "out")}
    sft_spec = _short("1-sft.yaml", tmp)
    yaml = YAML()
    spec = yaml.load(sft_spec.read_text(encoding="utf-8"))
    spec["training"]["learning_rate"] = 5e-2
    with sft_spec.open("w", encoding="utf-8") as f:
        yaml.dump(spec, f)
    sft = _submit(sft_spec, env)
    return _submit(_short("3-rm.yaml", tmp), {**env, "SFT": str(sft)})


def _reward_scores(model, tokenizer):
    import torch

    texts = ["<|im_start|>user\n你是谁？<|im_end|>\n<|im_start|>assistant\n我是小R。<|im_end|>\n",
             "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"]  # fmt: skip
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits.float()


def test_a_reward_model_exports_with_its_head_and_every_adapter_of_its_chain(rm_run: Path, tmp_path: Path):
    """The export is a sequence classifier that scores as the rm run's own stack does: its base,
    the sft adapter the rm run merged, then the rm adapter with its value head."""
    import torch
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from runner.core.jobspec.load import load_job

    out = tmp_path / "rm-export"
    result = runner_cli("export", str(rm_run), "--out", str(out), "--executor", "local")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "reward model" in result.stdout and "score" in result.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"] and len(config["id2label"]) == 1
    tokenizer = AutoTokenizer.from_pretrained(out)
    exported = AutoModelForSequenceClassification.from_pretrained(out).eval()

    spec = load_job(rm_run / "spec.yaml", files=False)

    def stack(with_sft: bool):
        model = AutoModelForSequenceClassification.from_pretrained(
            spec.model.path, num_labels=1, pad_token_id=tokenizer.pad_token_id
        )
        if with_sft:
            sft = PeftConfig.from_pretrained(spec.model.adapter)
            sft.task_type = None
            model = PeftModel.from_pretrained(model, spec.model.adapter, config=sft).merge_and_unload()
        return PeftModel.from_pretrained(model, str(rm_run / "adapter")).eval()  # unmerged: the run as it is

    run_scores = _reward_scores(stack(True), tokenizer)
    assert (
        run_scores - _reward_scores(stack(False), tokenizer)
    ).abs().max() > 1e-3  # the sft adapter matters
    torch.testing.assert_close(_reward_scores(exported, tokenizer), run_scores, atol=1e-4, rtol=1e-4)

    # chat, eval and serve refuse the run and its export: a reward model writes no answers
    for command in (["chat", str(rm_run), "-m", "hi"], ["eval", str(rm_run)], ["serve", str(rm_run)],
                    ["chat", str(out), "-m", "hi"], ["serve", str(out)]):  # fmt: skip
        result = runner_cli(*command, "--executor", "local")
        assert result.returncode == 2 and "reward model" in result.stderr, (command, result.stderr[-2000:])
        assert "Traceback" not in result.stderr


def test_an_export_follows_the_umask(lora_run: Path, tmp_path: Path):  # noqa: F811
    import os
    import stat

    old = os.umask(0o027)
    try:
        result = runner_cli("export", str(lora_run), "--out", str(tmp_path / "e"), "--executor", "local")
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stderr[-3000:]
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [tmp_path / "e", *(tmp_path / "e").rglob("*")]}
    assert modes.pop("e") == 0o750 and modes["model.safetensors"] == 0o640
    assert all(
        mode == (0o750 if (tmp_path / "e" / name).is_dir() else 0o640) for name, mode in modes.items()
    ), modes
