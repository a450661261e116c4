"""Contracts with the libraries under runner/train/compat.py: one test per entry of
compat.OVERRIDES, named after it, on models small enough to build in memory. Each fails with
`compat.ENTRY (over LIBRARY INTERNALS): what changed`, so a new transformers, TRL or PEFT release
that moves something runner relies on says which piece to look at (pyproject.toml admits a new
minor release once these pass on it).

Also: no module of runner/train other than compat.py defines a method of a library trainer's
private name, and every stage's trainer that saves checkpoints commits them.
"""

from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path

import pytest

from tests.conftest import ROOT

torch = pytest.importorskip("torch", reason="the in-container dependencies (.[train]) are not installed")
pytest.importorskip("trl", reason="the in-container dependencies (.[train]) are not installed")

from runner.train import compat  # noqa: E402

VOCAB = 48


def broken(entry: str, what: str) -> str:
    return f"compat.{entry} (over {'; '.join(compat.OVERRIDES[entry])}): {what}"


def params(function) -> list[str]:
    return list(inspect.signature(function).parameters)


# --- tiny models and data, in memory -------------------------------------------------------


def llama_config(**overrides):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0, eos_token_id=1, bos_token_id=2,
        **overrides,
    )  # fmt: skip


def causal_lm(seed: int = 0):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(llama_config())


def classifier(seed: int = 0):
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(seed)
    return LlamaForSequenceClassification(llama_config(num_labels=1))


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t3"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=words, pad_token="t0", eos_token="t1", bos_token="t2",
                                   unk_token="t3")  # fmt: skip


def arguments(tmp_path: Path, config_class=None, **extra):
    from transformers import TrainingArguments

    return (config_class or TrainingArguments)(
        output_dir=str(tmp_path / "checkpoints"), use_cpu=True, report_to="none", disable_tqdm=True,
        per_device_train_batch_size=2, learning_rate=1e-3, logging_steps=1, save_strategy="steps",
        remove_unused_columns=False, **extra,
    )  # fmt: skip


def lm_rows(n: int = 4):
    from datasets import Dataset

    return Dataset.from_list(
        [
            {"input_ids": [2, 5 + i, 6 + i, 7 + i, 1], "labels": [-100, -100, 6 + i, 7 + i, 1]}
            for i in range(n)
        ]
    )


def pair_rows(n: int = 4):
    """runner's tokenized pairs (runner/core/data/preference.py)."""
    from datasets import Dataset

    return Dataset.from_list(
        [
            {"prompt_ids": [2, 5 + i], "chosen_ids": [9, 10 + i, 1], "rejected_ids": [20 + i, 1]}
            for i in range(n)
        ]
    )


def answer_rows(n: int = 4):
    from datasets import Dataset

    return Dataset.from_list(
        [{"prompt_ids": [2, 5 + i], "completion_ids": [9 + i, 1], "label": i % 2 == 0} for i in range(n)]
    )


def commit_spy(monkeypatch) -> list[dict]:
    """What each commit found: the staged checkpoint's files, and whether the final one existed."""
    from runner.train import checkpoint

    seen, commit = [], checkpoint.commit

    def spy(staged: Path, final: Path, world_size: int) -> None:
        files = sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file())
        seen.append({"staged": staged, "files": files, "final_existed": final.exists()})
        commit(staged, final, world_size)

    monkeypatch.setattr(checkpoint, "commit", spy)
    return seen


def assert_committed(entry: str, root: Path, seen: list[dict], step: int) -> None:
    """The library's whole save of `step` went into .partial and was committed from there."""
    assert seen, broken(entry, "the Trainer's save never reached checkpoint.committed")
    last = seen[-1]
    assert last["staged"] == root / ".partial" / f"checkpoint-{step}", broken(
        entry, f"the Trainer saved into {last['staged']}, not the directory _get_output_dir named"
    )
    assert "trainer_state.json" in last["files"], broken(
        entry, f"the save's last file was not written before the commit (staged: {last['files']})"
    )
    assert not last["final_existed"], broken(entry, "the Trainer wrote checkpoint-N in place")
    marker = json.loads((root / f"checkpoint-{step}" / "COMPLETE").read_text())
    assert set(marker["files"]) == set(last["files"]), broken(entry, "files were written after the commit")
    assert not list((root / ".partial").glob("checkpoint-*")), broken(entry, "a save stayed in .partial")


# --- transformers' Trainer -----------------------------------------------------------------


def test_CommittedCheckpoints(tmp_path, monkeypatch):
    """The Trainer's save goes, whole, into the directory `_get_output_dir` names; its own
    rotation follows save_total_limit (None while runner's commit is pending)."""
    from transformers import Trainer

    entry = "CommittedCheckpoints"
    assert params(Trainer._save_checkpoint) == ["self", "model", "trial"], broken(entry, "new signature")
    assert params(Trainer._get_output_dir) == ["self", "trial"], broken(entry, "new signature")

    class Committing(compat.CommittedCheckpoints, Trainer):
        pass

    seen = commit_spy(monkeypatch)
    args = arguments(tmp_path, max_steps=3, save_steps=1, save_total_limit=1)
    Committing(model=causal_lm(), args=args, train_dataset=lm_rows()).train()
    root = tmp_path / "checkpoints"
    assert [s["staged"].name for s in seen] == ["checkpoint-1", "checkpoint-2", "checkpoint-3"], broken(
        entry, f"the Trainer's saves of 3 steps, one a step, committed {[s['staged'].name for s in seen]}"
    )
    assert_committed(entry, root, seen, 3)
    assert sorted(p.name for p in root.glob("checkpoint-*")) == ["checkpoint-3"], broken(
        entry, "rotation kept other than the newest"
    )


def test_StopAtMaxSteps(tmp_path):
    """Resumed mid-epoch from the checkpoint of max_steps, the Trainer trains a step more (the
    reason for the override); `_run_epoch` is what its loop calls for each epoch, and guarded,
    it trains none."""
    from transformers import Trainer

    entry = "StopAtMaxSteps"
    assert "_run_epoch" in vars(Trainer), broken(entry, "Trainer has no _run_epoch")
    calls = []

    class Counted(Trainer):
        def _run_epoch(self, *args, **kwargs):
            calls.append(self.state.global_step)
            return super()._run_epoch(*args, **kwargs)

        def training_step(self, *args, **kwargs):
            calls.append("step")
            return super().training_step(*args, **kwargs)

    class Guarded(compat.StopAtMaxSteps, Counted):
        pass

    args = arguments(tmp_path, max_steps=2, save_steps=2)  # 8 rows in batches of 2: 4 steps an epoch
    Counted(model=causal_lm(), args=args, train_dataset=lm_rows(8)).train()
    assert calls[0] == 0, broken(entry, "the train loop does not call _run_epoch")
    last = str(tmp_path / "checkpoints" / "checkpoint-2")
    for trainer_class in (Counted, Guarded):
        calls.clear()
        out = trainer_class(model=causal_lm(), args=args, train_dataset=lm_rows(8)).train(
            resume_from_checkpoint=last
        )
        if trainer_class is Counted:
            assert "step" in calls, broken(
                entry, "the library stops at max_steps by itself now: the override can go"
            )
        else:
            assert "step" not in calls and out.global_step == 2, broken(
                entry, f"resumed at max_steps, the Trainer trained on (calls {calls}, step {out.global_step})"
            )


def test_TokenBudgetSteps(tmp_path):
    """One step's batch in parts through `training_step`, each given the step's token count,
    leaves the gradient of the whole batch in one pass."""
    from transformers import Trainer

    entry = "TokenBudgetSteps"
    assert params(Trainer.training_step) == ["self", "model", "inputs", "num_items_in_batch"], broken(
        entry, "new signature"
    )

    class Budget(compat.TokenBudgetSteps, Trainer):
        pass

    trainer = Budget(model=causal_lm(), args=arguments(tmp_path, max_steps=1), train_dataset=lm_rows())
    assert trainer.model_accepts_loss_kwargs is True, broken(
        entry, "the model no longer takes the token count"
    )
    ids = torch.tensor([[2, 5, 6, 7, 1], [2, 8, 9, 1, 0], [2, 10, 11, 12, 13], [2, 14, 1, 0, 0]])
    mask = (torch.arange(5) < torch.tensor([[5], [4], [5], [3]])).long()
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :2] = -100
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    count = torch.tensor(int((labels[:, 1:] != -100).sum()))

    def gradient(budget):
        trainer.model.zero_grad()
        trainer.micro_batch_tokens = budget
        trainer.training_step(trainer.model, dict(batch), count)
        return [p.grad.clone() for p in trainer.model.parameters()]

    whole, parts = gradient(None), gradient(10)
    worst = max((a - b).abs().max().item() for a, b in zip(whole, parts, strict=True))
    assert worst < 1e-6, broken(entry, f"the parts' gradients differ from the step's by {worst:g}")


def test_LogitsOnTargets():
    """The loss with the head at trained positions only (logits_to_keep, shift_labels) is the
    loss of every position."""
    from transformers import Trainer

    entry = "LogitsOnTargets"
    assert params(Trainer.compute_loss) == [
        "self",
        "model",
        "inputs",
        "return_outputs",
        "num_items_in_batch",
    ], broken(entry, "new signature")
    model = causal_lm()
    assert compat.takes_logits_to_keep(model), broken(entry, "the model's forward takes no logits_to_keep")
    ids = torch.tensor([[2, 5, 6, 7, 8, 1], [2, 9, 10, 11, 1, 0]])
    labels = torch.tensor([[-100, -100, -100, 7, 8, 1], [-100, -100, 10, 11, 1, -100]])
    batch = {"input_ids": ids, "attention_mask": (ids != 0).long(), "labels": labels}
    full = model(**batch).loss
    kept = model(**compat.only_targets(batch)).loss
    assert torch.allclose(full, kept, atol=1e-6), broken(
        entry, f"loss {kept.item()} at targets, {full.item()} whole"
    )


def test_AdapterOnlySave(tmp_path):
    """PEFT saves a second adapter ('ref') in a subfolder of its name; save_model(output_dir,
    _internal_call) leaves the trained adapter only."""
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer

    entry = "AdapterOnlySave"
    assert params(Trainer.save_model) == ["self", "output_dir", "_internal_call"], broken(
        entry, "new signature"
    )
    model = get_peft_model(causal_lm(), LoraConfig(r=2, target_modules=["q_proj"]))
    model.add_adapter("ref", LoraConfig(r=2, target_modules=["q_proj"]))
    model.save_pretrained(tmp_path / "peft")
    assert (tmp_path / "peft" / "ref" / "adapter_config.json").exists(), broken(
        entry, "PEFT no longer saves the 'ref' adapter into a subfolder named after it"
    )

    class Saving(compat.AdapterOnlySave, Trainer):
        pass

    Saving(model=model, args=arguments(tmp_path)).save_model(str(tmp_path / "adapter"))
    saved = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert "adapter_model.safetensors" in saved and "ref" not in saved, broken(entry, f"saved {saved}")


# --- TRL -----------------------------------------------------------------------------------


def test_TokenizedPairs(tmp_path, tokenizer, monkeypatch):
    """DPOTrainer hands `_prepare_dataset(dataset, processing_class, args, dataset_name)` the
    train set, uses what it returns, collates runner's columns into [chosen; rejected] rows, and
    saves its checkpoints through CommittedCheckpoints."""
    from trl import DPOConfig, DPOTrainer

    entry = "TokenizedPairs"
    assert params(DPOTrainer._prepare_dataset) == [
        "self",
        "dataset",
        "processing_class",
        "args",
        "dataset_name",
    ], broken(entry, "new signature")
    called = []

    class Pairs(compat.TokenizedPairs, compat.CommittedCheckpoints, DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            called.append(dataset_name)
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    rows = pair_rows()
    trainer = Pairs(model=causal_lm(), ref_model=causal_lm(), processing_class=tokenizer, train_dataset=rows,
                    args=arguments(tmp_path, DPOConfig, max_steps=1, max_length=16, beta=0.1))  # fmt: skip
    assert called == ["train"] and trainer.train_dataset is rows, broken(entry, f"called for {called}")
    batch = trainer.data_collator([rows[0], rows[1]])
    expected = [2, 5, 9, 10, 1]  # prompt + chosen of the first pair
    assert batch["input_ids"][0].tolist() == expected and batch["input_ids"][2].tolist()[:4] == [
        2,
        5,
        20,
        1,
    ], broken(entry, f"DPO's collator made {batch['input_ids'].tolist()} of runner's pairs")
    assert batch["completion_mask"][0].tolist() == [0, 0, 1, 1, 1], broken(
        entry, "the answer is not the completion"
    )
    seen = commit_spy(monkeypatch)
    trainer.train()  # its last step saves
    assert_committed(entry, tmp_path / "checkpoints", seen, 1)


def test_TokenizedUnpaired(tmp_path, tokenizer):
    """KTOTrainer sets `calculate_KL` before `_prepare_dataset`, and its collator reads the KL
    pairs runner adds (KL_completion_ids)."""
    from trl import KTOConfig, KTOTrainer

    entry = "TokenizedUnpaired"
    assert params(KTOTrainer._prepare_dataset) == [
        "self",
        "dataset",
        "processing_class",
        "args",
        "dataset_name",
    ], broken(entry, "new signature")

    class Unpaired(compat.TokenizedUnpaired, KTOTrainer):
        pass

    args = arguments(tmp_path, KTOConfig, max_steps=1, max_length=16, train_sampling_strategy="sequential")
    try:
        trainer = Unpaired(model=causal_lm(), ref_model=causal_lm(), processing_class=tokenizer, args=args,
                           train_dataset=answer_rows())  # fmt: skip
    except AttributeError as e:
        raise AssertionError(broken(entry, f"{e} (calculate_KL is set after _prepare_dataset)")) from e
    assert trainer.calculate_KL, broken(entry, "KL pairs are off by default")
    first = trainer.train_dataset[0]
    assert first["KL_completion_ids"] == answer_rows()[1]["completion_ids"], broken(
        entry, f"row 0 is {first}"
    )
    batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])
    assert batch["KL_input_ids"][0].tolist()[:4] == [2, 5, 10, 1], broken(
        entry, f"KTO's collator made {batch.get('KL_input_ids')} of the KL pairs"
    )


@pytest.mark.parametrize("trainer", ["orpo", "cpo"])
def test_TokenizedPairRows(trainer, tmp_path, tokenizer):
    """ORPO's and CPO's __init__ map `tokenize_row(feature, model)` over runner's rows and leave
    them otherwise as they are; their collator reads the columns pair_rows writes."""
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    if trainer == "orpo":
        from trl.experimental.orpo import ORPOConfig as Config
        from trl.experimental.orpo import ORPOTrainer as Base
    else:
        from trl.experimental.cpo import CPOConfig as Config
        from trl.experimental.cpo import CPOTrainer as Base

    entry = "TokenizedPairRows"
    assert params(Base.tokenize_row) == ["self", "feature", "model"], broken(
        entry, f"{Base.__name__}: new signature"
    )

    class Rows(compat.TokenizedPairRows, Base):
        pass

    args = arguments(tmp_path, Config, max_steps=1, max_length=16, max_completion_length=16)
    made = Rows(model=causal_lm(), processing_class=tokenizer, args=args, train_dataset=pair_rows())
    first = made.train_dataset[0]
    assert first["chosen_input_ids"] == [2, 5, 9, 10, 1] and first["chosen_labels"][:2] == [-100, -100], (
        broken(entry, f"{Base.__name__} turned runner's pair into {first}")
    )
    batch = made.data_collator([made.train_dataset[0], made.train_dataset[1]])
    assert batch["rejected_input_ids"][0].tolist()[:4] == [2, 5, 20, 1], broken(
        entry, f"{Base.__name__}'s collator made {batch.get('rejected_input_ids')}"
    )


def test_PPOWithoutTrainerInit(tmp_path, tokenizer, monkeypatch):
    """TRL's PPOTrainer builds itself without Trainer.__init__, so the attribute the Trainer's
    save reads is set by runner; the save reads it, and finds the policy as `model.policy`."""
    import os

    from datasets import Dataset

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    entry = "PPOWithoutTrainerInit"
    assert "self.model.policy" in inspect.getsource(PPOTrainer), broken(
        entry, "PPO no longer reaches the policy as self.model.policy"
    )

    class PPO(compat.PPOWithoutTrainerInit, PPOTrainer):
        pass

    args = arguments(tmp_path, PPOConfig, total_episodes=2, response_length=4, num_mini_batches=1,
                     local_rollout_forward_batch_size=2, num_sample_generations=0, stop_token_id=1)  # fmt: skip
    made = PPO(args=args, processing_class=tokenizer, model=causal_lm(), ref_model=causal_lm(),
               reward_model=classifier(1), value_model=classifier(2),
               train_dataset=Dataset.from_list([{"input_ids": [2, 5, 6]}] * 4))  # fmt: skip
    assert made.is_distributed_loading_by_transformers is False
    assert hasattr(made.model, "policy"), broken(entry, "the policy is no longer model.policy")

    class Read:  # tells whether the save reads the attribute runner sets
        seen = False

        def __bool__(self):
            Read.seen = True
            return False

    made.is_distributed_loading_by_transformers = Read()
    with monkeypatch.context() as m:  # as on a rank other than the first, where the save reads it
        m.setattr(PPOConfig, "should_save", property(lambda self: False))
        made.save_model(str(tmp_path / "other-rank"))
    assert Read.seen, broken(
        entry, "the Trainer's save no longer reads is_distributed_loading_by_transformers"
    )
    made.save_model(str(tmp_path / "model"))
    assert (tmp_path / "model" / "model.safetensors").exists(), broken(entry, "PPO saved no policy")


# --- PEFT ----------------------------------------------------------------------------------


def lora_linear(dtype=torch.float32):
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora.layer import Linear

    model = get_peft_model(causal_lm(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    (layer,) = [m for m in model.modules() if type(m) is Linear]
    torch.nn.init.normal_(layer.lora_B["default"].weight)  # B starts at zero: make the update count
    return layer.to(dtype)


def test_fused_fuse_lora():
    """The fused forward gives PEFT's output and gradients on a plain LoRA layer, from the layer
    attributes it reads."""
    from peft.tuners.lora.layer import Linear

    from runner.train.fused import fuse_lora

    entry = "fused.fuse_lora"
    assert params(Linear.forward) == ["self", "x", "args", "kwargs"], broken(entry, "new forward signature")
    assert params(Linear._cast_input_dtype) == ["self", "x", "dtype"], broken(entry, "new _cast_input_dtype")
    layer = lora_linear()
    for name in ("lora_A", "lora_B", "scaling", "lora_dropout", "lora_variant", "merged", "disable_adapters",
                 "active_adapters", "base_layer"):  # fmt: skip
        assert hasattr(layer, name), broken(entry, f"a LoRA layer has no {name}")
    x = torch.randn(2, 3, layer.in_features, requires_grad=True)

    def run():
        out = layer(x)
        out.pow(2).sum().backward()
        grads = [
            x.grad.clone(),
            layer.lora_A["default"].weight.grad.clone(),
            layer.lora_B["default"].weight.grad.clone(),
        ]
        x.grad = None
        layer.zero_grad()
        return out.detach(), grads

    peft_out, peft_grads = run()
    holder = torch.nn.Module()
    holder.layer = layer
    assert fuse_lora(holder) == 1, broken(entry, "the LoRA layer is not a plain peft Linear any more")
    fused_out, fused_grads = run()
    assert torch.allclose(peft_out, fused_out, atol=1e-5), broken(entry, "the output differs from PEFT's")
    for a, b in zip(peft_grads, fused_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-4), broken(entry, "a gradient differs from PEFT's")


def test_fused_fuse_lora_knows_zero3_parameters():
    """fused.py leaves a layer whose weights ZeRO-3 partitions to PEFT; it tells them by ds_id."""
    deepspeed = pytest.importorskip("deepspeed", reason="deepspeed is not installed")
    from deepspeed.runtime.zero import partition_parameters

    assert "param.ds_id =" in inspect.getsource(partition_parameters.Init), broken(
        "fused.fuse_lora", f"deepspeed {deepspeed.__version__} marks its partitioned parameters otherwise"
    )


def test_methods__lora_forward():
    """Switching `cast_input_dtype_enabled` off leaves the adapter's input in its own dtype."""
    entry = "methods._lora_forward"
    layer = lora_linear()
    assert hasattr(layer, "cast_input_dtype_enabled"), broken(
        entry, "a LoRA layer has no cast_input_dtype_enabled"
    )
    x = torch.randn(2, layer.in_features, dtype=torch.bfloat16)
    assert layer._cast_input_dtype(x, torch.float32).dtype == torch.float32, broken(
        entry, "PEFT casts no more"
    )
    layer.cast_input_dtype_enabled = False
    assert layer._cast_input_dtype(x, torch.float32).dtype == torch.bfloat16, broken(
        entry, "the switch is ignored"
    )


# --- the registry --------------------------------------------------------------------------


def test_every_override_has_its_contract_test():
    tests = {name for name in globals() if name.startswith("test_")}
    missing = [e for e in compat.OVERRIDES if f"test_{e.replace('.', '_')}" not in tests]
    assert not missing, f"compat.OVERRIDES entries without a contract test here: {missing}"


def _library_private_names() -> set[str]:
    from transformers import Trainer
    from trl import DPOTrainer, KTOTrainer, RewardTrainer

    names = {"training_step", "compute_loss", "tokenize_row"}  # overridable, but what compat covers
    for cls in (Trainer, DPOTrainer, KTOTrainer, RewardTrainer):
        names |= {n for n in dir(cls) if n.startswith("_") and not n.startswith("__")}
    return names


def test_no_override_of_a_library_internal_outside_compat():
    """A class in runner/train defining a method of a library trainer's private name (or
    training_step, compute_loss, tokenize_row) belongs in compat.py, with a contract test."""
    private, found = _library_private_names(), []
    for path in sorted((ROOT / "runner" / "train").rglob("*.py")):
        if path.name == "compat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                found += [
                    f"{path.relative_to(ROOT)}:{f.lineno} {node.name}.{f.name}"
                    for f in node.body
                    if isinstance(f, ast.FunctionDef) and f.name in private
                ]
    assert not found, f"overrides of library internals outside runner/train/compat.py: {found}"


def test_every_stage_trainer_that_saves_checkpoints_commits_them():
    """sft/pt, rm, dpo (with orpo and simpo) and kto: committed checkpoints and the resume rules."""
    from runner.train.stages import dpo, kto, rm
    from runner.train.trainer import Resumable, RunnerTrainer

    classes = [RunnerTrainer, rm.Trainer, dpo.Trainer, kto.Trainer]
    classes += [dpo._reference_free_classes(loss)[0] for loss in dpo.REFERENCE_FREE]
    missing = [c.__name__ for c in classes if not issubclass(c, Resumable)]
    assert not missing, missing
    for cls in classes:  # runner's pieces come before the library's own overrides
        mro = cls.__mro__
        assert mro.index(compat.CommittedCheckpoints) < min(
            i for i, c in enumerate(mro) if c.__module__.startswith(("transformers.", "trl."))
        ), cls


def test_the_train_bounds_admit_what_every_image_lock_pins():
    """pyproject.toml's train extra holds the libraries compat.py reaches into below their next
    minor release; every lock the images install must still fall inside."""
    import re

    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib", reason="python 3.11 reads TOML; 3.10 does not")

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    bounds = {r.name: r.specifier for r in map(Requirement, extra["optional-dependencies"]["train"])}
    for name in ("transformers", "peft", "trl"):
        assert any(s.operator == "<" for s in bounds[name]), f"{name} has no upper bound: {bounds[name]}"
    outside = []
    for lock in sorted((ROOT / "images").glob("*.lock")):
        for name, version in re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", lock.read_text(encoding="utf-8"), re.M):
            if name in bounds and not bounds[name].contains(version.split("+")[0]):
                outside.append(f"{lock.name}: {name}=={version} is outside {bounds[name]}")
    assert not outside, outside
