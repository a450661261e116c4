"""The preference stages' own settings: dpo's reference-free losses, and ppo's reward model,
which must be a reward model and read text as the policy does."""

from __future__ import annotations

import json
from pathlib import Path

from runner.core import stages
from runner.core.data.labels import adapter_task
from runner.core.jobspec.checks.context import Context, changed, unset
from runner.core.jobspec.checks.files import directory, listing
from runner.core.jobspec.checks.model import earlier_run, run_saved_adapter
from runner.core.jobspec.job import REFERENCE_FREE, JobSpec
from runner.core.rundir import ADAPTER


def reference_free(spec: JobSpec, at: Context) -> None:
    """preference.loss is dpo's alone: its reference-free losses keep no reference to set."""
    loss = spec.preference.loss
    if spec.stage == "dpo" and loss in REFERENCE_FREE and changed(spec.preference, "reference"):
        at.add(("preference", "reference"), f"loss '{loss}' compares chosen with rejected answers and keeps "
                                            "no reference model; remove preference.reference")  # fmt: skip


def reward_model(spec: JobSpec, at: Context) -> None:
    """The reward model a stage needs (ppo) is an rm run or a reward model's directory, and it reads
    text as the policy does (the same tokenizer), or its scores would be of other tokens."""
    value, loc = spec.ppo.reward_model, ("ppo", "reward_model")
    if "ppo.reward_model" not in stages.STAGES[spec.stage].needs or value is None or unset(value):
        return  # not read; or missing, as stage.needs reports; or an unset variable, reported
    run = earlier_run(value, at.base)
    if run is not None:
        if not run_saved_adapter(run, loc, at):
            return
        path = run.dir.path / ADAPTER
        shown = str(path)
    else:
        path, shown = at.base / value, value
        if not directory(value, at, loc, (), "a reward model"):
            return
        if not any((path / f).is_file() for f in ("adapter_config.json", "config.json")):
            at.add(loc, f"'{value}' is no reward model (no adapter_config.json or config.json); it holds: "
                        f"{listing(path)}; name an rm run or the adapter/ it saved")  # fmt: skip
            return
    if (path / "adapter_config.json").is_file() and adapter_task(path) != "SEQ_CLS":
        at.add(loc, f"the adapter in {shown} has no value head (task_type {adapter_task(path)}, not SEQ_CLS): "
                    "it is no reward model; name an rm run (stage rm trains one)")  # fmt: skip
        return
    if at.model_dir is not None:
        differs = tokenizer_difference(at.model_dir, path, spec.model.add_special_tokens)
        if differs:
            at.add(loc, f"the reward model's tokenizer ({shown}) is not the policy's ({spec.model.path}): "
                        f"{differs}. The reward model scores the policy's tokens, so it must be trained "
                        "(stage rm) from the same base model and model.add_special_tokens")  # fmt: skip


def tokenizer_difference(policy: Path, reward: Path, added: list[str]) -> str | None:
    """How the reward model's tokenizer differs from the policy's (the model's plus the spec's
    add_special_tokens), by their tokenizer.json vocabularies and special tokens; None when they
    agree, or when either has no tokenizer.json to compare (a slow tokenizer)."""
    mine, theirs = _token_ids(policy), _token_ids(reward)
    if not mine or not theirs:
        return None
    for token in added:
        if token not in mine:
            mine[token] = len(mine)
    if mine != theirs:
        only = [t for t in theirs if t not in mine][:3]
        other = [t for t in mine if t in theirs and mine[t] != theirs[t]][:3]
        if only:
            return (f"it has {', '.join(map(repr, only))}, which the policy's lacks ({len(theirs)} tokens, the "
                    f"policy's {len(mine)})")  # fmt: skip
        if other:
            return f"{other[0]!r} is token {theirs[other[0]]} there and {mine[other[0]]} here"
        return f"it has {len(theirs)} tokens, the policy's {len(mine)}"
    for name in ("eos_token", "bos_token"):
        a, b = _special(policy, name), _special(reward, name)
        if a and b and a != b:
            return f"its {name} is {b!r}, the policy's {a!r}"
    return None


def _token_ids(model_dir: Path) -> dict[str, int]:
    try:
        tokenizer = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    vocab = (tokenizer.get("model") or {}).get("vocab") or {}
    if isinstance(vocab, list):  # unigram: [piece, score] in id order
        vocab = {p[0]: i for i, p in enumerate(vocab) if isinstance(p, list) and p}
    ids = dict(vocab) if isinstance(vocab, dict) else {}
    for t in tokenizer.get("added_tokens") or []:
        if isinstance(t, dict) and isinstance(t.get("content"), str):
            ids[t["content"]] = t.get("id")
    return ids


def _special(model_dir: Path, name: str) -> str | None:
    try:
        value = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8")).get(name)
    except (OSError, ValueError, AttributeError):
        return None
    return value.get("content") if isinstance(value, dict) else value if isinstance(value, str) else None


def kto_batch(spec: JobSpec, at: Context) -> None:
    """KTO estimates its KL term from each answer paired with another prompt of the same batch
    (TRL's KTO trainer refuses a batch of one after tokenizing)."""
    batch = spec.training.per_device_train_batch_size
    if spec.stage == "kto" and batch < 2:
        accumulation = spec.training.gradient_accumulation_steps
        keep = (f" and gradient_accumulation_steps: {accumulation // 2} to keep {accumulation} samples "
                "per step") if accumulation % 2 == 0 and accumulation >= 2 else ""  # fmt: skip
        at.add(("training", "per_device_train_batch_size"),
               f"is {batch}, and stage kto needs at least 2: its KL term pairs each answer with another "
               f"prompt of the same per-device batch, so a batch of one has none; set it to 2{keep}")  # fmt: skip


CHECKS = (reference_free, reward_model, kto_batch)
