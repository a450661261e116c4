"""Checks that need more than one field, or the file system.

They run on the raw (interpolated) data, beside schema validation, so one pass reports
everything; each check skips values whose type the schema already rejects.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import re
import stat
import sys
from pathlib import Path
from typing import Any

from runner.core.data import registry
from runner.core.data.templates import missing_controls
from runner.core.jobspec.job import CONTROL_TOKENS, DATA_FORMATS, PROMPT_LEARNING, TEMPLATES
from runner.core.jobspec.yaml_loader import Loc

# What this build of runner can execute; the schema already covers the whole product.
AVAILABLE_STAGES = ("pt", "sft", "dpo", "rm", "kto", "ppo", "eval")
_MODEL_FILES = ("config.json",)
Found = list[tuple[Loc, str]]
# Whether the checks read every record of the data (`runner validate --no-data` turns it off).
_READ_DATA = contextvars.ContextVar("read_data", default=True)


@contextlib.contextmanager
def reading_data(enabled: bool):
    """Within this block, check() reads the data (enabled) or only looks at its files."""
    token = _READ_DATA.set(enabled)
    try:
        yield
    finally:
        _READ_DATA.reset(token)


def check(data: Any, base: Path, writes: Path | None = None) -> Found:
    """Every problem beyond the schema: (location, message). `writes`: see load_job."""
    if not isinstance(data, dict):
        return []
    found: Found = []
    stage = data.get("stage", "sft")
    method = _get(data, "method", "type")
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    _check_stage_method(stage, method, found)
    _check_preference(data, stage, found)
    _check_model(model, stage, base, found)
    if stage == "ppo":
        _check_ppo(data, model, base, found)
    # A run's own re-check (`writes`) leaves reading the data to the training that follows.
    _check_data(data.get("data"), stage, base, found, read=writes is None and _READ_DATA.get())
    _check_output(_get(data, "output", "dir"), base, found, writes)
    method_data = data.get("method") if isinstance(data.get("method"), dict) else {}
    ff, targets = method_data.get("feedforward"), method_data.get("target")
    if method == "ia3" and isinstance(ff, list) and ff:
        missing = [f for f in ff if not (isinstance(targets, list) and f in targets)]
        if missing:
            found.append((("method", "feedforward"),
                          f"{', '.join(map(str, missing))} must also be listed in method.target"))  # fmt: skip
    ds = _get(data, "distributed", "deepspeed")
    if isinstance(ds, dict):
        _check_deepspeed(ds, _get(data, "resources", "gpus"), found)
    rank, nodes = _get(data, "distributed", "node_rank"), _get(data, "resources", "nodes")
    if isinstance(rank, int) and isinstance(nodes, int) and not isinstance(rank, bool) and rank >= nodes:
        found.append((("distributed", "node_rank"), f"must be < resources.nodes ({nodes}) (got {rank})"))
    if (
        method == "freeze"
        and method_data.get("trainable_layers") == 0
        and not method_data.get("extra_modules")
    ):
        found.append((("method", "trainable_layers"),
                      "is 0 and extra_modules is empty, so nothing would train; raise it or name modules"))  # fmt: skip
    if method in PROMPT_LEARNING and _get(data, "data", "packing") is True:
        found.append((("data", "packing"),
                      f"'{method}' prepends virtual tokens to every row, so packed samples would see "
                      "each other; set packing: false for prompt-learning methods"))  # fmt: skip
    _check_micro_batch_tokens(data, found)
    _check_memory_cap(data, found)
    if _get(data, "training", "bf16") is True and _get(data, "training", "fp16") is True:
        found.append((("training", "fp16"), "bf16 and fp16 are both true; keep one of them"))
    return found


def _check_deepspeed(ds: dict, gpus: Any, found: Found) -> None:
    """Combinations DeepSpeed cannot run are refused here, never dropped silently."""
    zero, loc = ds.get("zero", 2), ("distributed", "deepspeed")
    if ds.get("offload_params") is True and zero != 3:
        found.append((loc + ("offload_params",),
                      "parameter offload needs ZeRO stage 3; set zero: 3 or offload_params: false"))  # fmt: skip
    if ds.get("offload_optimizer") is True and zero == 0:
        found.append((loc + ("offload_optimizer",),
                      "optimizer offload needs ZeRO stage 1, 2 or 3 (stage 0 keeps no optimizer "
                      "partition to offload); raise zero or set offload_optimizer: false"))  # fmt: skip
    if gpus == 0:
        for key in ("offload_optimizer", "offload_params"):
            if ds.get(key) is True:
                found.append((loc + (key,),
                              "offload moves state from GPU to host memory; with resources.gpus: 0 "
                              f"everything is in host memory already; set {key}: false"))  # fmt: skip


def _check_micro_batch_tokens(data: dict, found: Found) -> None:
    budget = _get(data, "training", "micro_batch_tokens")
    if not isinstance(budget, int) or isinstance(budget, bool):
        return
    loc = ("training", "micro_batch_tokens")
    cutoff = _get(data, "data", "cutoff_len")
    cutoff = cutoff if isinstance(cutoff, int) else 1024
    if budget < cutoff:
        found.append((loc, f"is {budget}, below data.cutoff_len ({cutoff}): a sample of full length "
                           f"could not fit in a micro-batch; raise it to at least {cutoff}"))  # fmt: skip
    if _get(data, "training", "train_sampling_strategy") == "batch_rebalance":
        found.append((loc, "and train_sampling_strategy: batch_rebalance both size the micro-batches; "
                           "keep one of them"))  # fmt: skip
    if isinstance(_get(data, "distributed", "deepspeed"), dict):
        found.append((loc, "does not combine with distributed.deepspeed, which counts micro-batches "
                           "itself; remove one of them"))  # fmt: skip


def _check_memory_cap(data: dict, found: Found) -> None:
    training = data.get("training")
    if not isinstance(training, dict) or training.get("memory_cap_gib") is None:
        return
    loc = ("training", "memory_cap_gib")
    # The resolved spec a run keeps lists every default, so only a value that asks for
    # something conflicts.
    for switch, default in (("gradient_checkpointing", False), ("checkpoint_every_n_layers", 1),
                            ("offload_activations", False)):  # fmt: skip
        if training.get(switch, default) != default:
            found.append(
                (("training", switch), f"is chosen by memory_cap_gib; remove {switch} or memory_cap_gib")
            )
    if _get(data, "distributed", "deepspeed", "zero") == 3:
        found.append((loc, "cannot be planned under ZeRO-3, which partitions the weights; remove it and "
                           "set gradient_checkpointing yourself"))  # fmt: skip


def _get(data: dict, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _check_stage_method(stage: Any, method: Any, found: Found) -> None:
    if isinstance(stage, str) and stage in ("rm", "dpo", "kto", "ppo") and method in PROMPT_LEARNING:
        found.append(
            (("method", "type"),
             f"'{method}' cannot train stage '{stage}' (it needs a value head or reference model "
             "that prompt-learning adapters do not support); use lora, qlora, freeze or full"))  # fmt: skip
    if isinstance(stage, str) and stage not in AVAILABLE_STAGES and stage in (
        "rm", "dpo", "kto", "ppo"
    ):  # fmt: skip
        found.append(
            (("stage",),
             f"stage '{stage}' is not available in this version of runner yet; "
             f"available: {', '.join(AVAILABLE_STAGES)}"))  # fmt: skip


# dpo's losses that need no reference model (TRL's experimental ORPO and CPO trainers).
REFERENCE_FREE = ("orpo", "simpo")


def _check_preference(data: dict, stage: Any, found: Found) -> None:
    """What the preference stages (TRL's trainers) cannot combine with."""
    if stage == "ppo":
        _check_ppo_settings(data, found)
        return
    if stage not in ("rm", "dpo", "kto"):
        return
    loss, reference = _get(data, "preference", "loss"), _get(data, "preference", "reference")
    if stage == "dpo" and loss in REFERENCE_FREE and reference in ("copy", "precomputed"):
        found.append((("preference", "reference"), f"loss '{loss}' compares chosen with rejected answers "
                      "and keeps no reference model; remove preference.reference"))  # fmt: skip
    for section, key, why in (
        ("data", "packing", "pairs are batched chosen beside rejected, never packed"),
        ("training", "micro_batch_tokens", "the preference trainers batch pairs themselves"),
        ("training", "memory_cap_gib", "its probe measures sft's forward pass, not a preference step"),
    ):
        value = _get(data, section, key)
        if value not in (None, False):
            found.append(((section, key), f"does not apply to stage '{stage}' ({why}); remove it"))
    strategy = _get(data, "training", "train_sampling_strategy")
    if stage == "kto" and strategy == "group_by_length":
        found.append((("training", "train_sampling_strategy"),
                      "stage kto pairs each answer with its neighbour in a batch for its KL term, so "
                      "batches keep one order; use random (shuffled once) or sequential"))  # fmt: skip
    if strategy == "batch_rebalance":
        found.append((("training", "train_sampling_strategy"),
                      f"batch_rebalance is for sft and pt; stage '{stage}' takes random, sequential or "
                      "group_by_length"))  # fmt: skip


def _check_ppo(data: dict, model: dict, base: Path, found: Found) -> None:
    """Stage ppo: its reward model is an rm run or a reward model's directory, and it reads text
    as the policy does (the same tokenizer), or its scores would be of other tokens."""
    value = _get(data, "ppo", "reward_model")
    if value is None:
        found.append((("stage",), "stage ppo needs a reward model to score the policy's answers: set "
                                  "ppo.reward_model to an rm run (its run directory or run id, `runner ls`) "
                                  "or a reward model's directory; train one with stage rm (jobs/rm.yaml)"))  # fmt: skip
        return
    if not isinstance(value, str) or "${" in value:
        return  # the schema, or the unset variable, is reported
    loc = ("ppo", "reward_model")
    run = earlier_run(value, base)
    if run is not None:
        before = len(found)
        _check_run_adapter(run, loc, found)
        if len(found) > before:
            return
        path, shown = Path(run.run_dir) / "adapter", str(Path(run.run_dir) / "adapter")
    else:
        path, shown = base / value, value
        if not _check_dir(value, base, loc, (), "a reward model", found):
            return
        if not any((path / f).is_file() for f in ("adapter_config.json", "config.json")):
            found.append((loc, f"'{value}' is no reward model (no adapter_config.json or config.json); it "
                               f"holds: {_listing(path)}; name an rm run or the adapter/ it saved"))  # fmt: skip
            return
    if (path / "adapter_config.json").is_file() and _adapter_task(path) != "SEQ_CLS":
        found.append((loc, f"the adapter in {shown} has no value head (task_type {_adapter_task(path)}, not "
                           "SEQ_CLS): it is no reward model; name an rm run (stage rm trains one)"))  # fmt: skip
        return
    policy = model.get("path")
    if isinstance(policy, str) and "${" not in policy and (base / policy / "config.json").is_file():
        added = model.get("add_special_tokens")
        differs = tokenizer_difference(base / policy, path, added if isinstance(added, list) else [])
        if differs:
            found.append((loc, f"the reward model's tokenizer ({shown}) is not the policy's ({policy}): "
                               f"{differs}. The reward model scores the policy's tokens, so it must be "
                               "trained (stage rm) from the same base model and model.add_special_tokens"))  # fmt: skip


def tokenizer_difference(policy: Path, reward: Path, added: list[str]) -> str | None:
    """How the reward model's tokenizer differs from the policy's (the model's plus the spec's
    add_special_tokens), by their tokenizer.json vocabularies and special tokens; None when they
    agree, or when either has no tokenizer.json to compare (a slow tokenizer)."""
    mine, theirs = _token_ids(policy), _token_ids(reward)
    if not mine or not theirs:
        return None
    for token in added:
        if isinstance(token, str) and token not in mine:
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


def _adapter_task(adapter: Path) -> str | None:
    try:
        return json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8")).get("task_type")
    except (OSError, ValueError, AttributeError):
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


def _check_ppo_settings(data: dict, found: Found) -> None:
    """What TRL's PPO trainer does its own way: it batches prompts itself, in a shuffled order, and
    evaluates on no held-out split."""
    for section, key, why in (
        ("data", "packing", "prompts are generated from one per row, never packed"),
        ("training", "micro_batch_tokens", "the PPO trainer batches the prompts and answers itself"),
        ("training", "memory_cap_gib", "its probe measures sft's forward pass, not a PPO step"),
        ("training", "gradient_checkpointing", "TRL's PPO trainer does not turn it on"),
    ):
        value = _get(data, section, key)
        if value not in (None, False):
            found.append(((section, key), f"does not apply to stage 'ppo' ({why}); remove it"))
    if _get(data, "distributed", "deepspeed") is not None:
        found.append((("distributed", "deepspeed"),
                      "stage ppo cannot train under DeepSpeed: TRL's PPO trainer makes its own "
                      "accelerator, which never reads the ZeRO config, so ZeRO would be dropped "
                      "silently; remove distributed.deepspeed (several processes still train with DDP)"))  # fmt: skip
    if _get(data, "data", "val_size") not in (None, 0, 0.0):
        found.append((("data", "val_size"), "stage ppo evaluates on no held-out split (its measure is the "
                                            "reward model's score, logged every step); remove it"))  # fmt: skip
    strategy = _get(data, "training", "train_sampling_strategy")
    if strategy not in (None, "random"):
        found.append((("training", "train_sampling_strategy"),
                      "stage ppo draws its prompts in a random order; remove it or set random"))  # fmt: skip


def _check_model(model: dict, stage: Any, base: Path, found: Found) -> None:
    path = model.get("path")
    model_ok = False
    if isinstance(path, str):
        model_ok = _check_dir(path, base, ("model", "path"), _MODEL_FILES, "a Hugging Face model", found)
    if model_ok and model.get("trust_remote_code") is True:
        _check_remote_code(base / path, found)
    adapter = model.get("adapter")
    if isinstance(adapter, str) and "${" not in adapter:
        run = earlier_run(adapter, base)
        if run is not None:
            _check_run_adapter(run, ("model", "adapter"), found)
        else:
            _check_dir(adapter, base, ("model", "adapter"), ("adapter_config.json",), "a PEFT adapter", found)
    template = model.get("template", "auto")
    if isinstance(template, str) and template not in TEMPLATES:
        close = _closest(template, TEMPLATES)
        found.append(
            (("model", "template"),
             f"unknown template '{template}'; "
             + (f"did you mean '{close}'? " if close else "")
             + f"known: {', '.join(TEMPLATES)}"))  # fmt: skip
    elif isinstance(template, str) and template in CONTROL_TOKENS and model_ok and stage != "pt":
        vocabulary = _vocabulary(base / path)
        added = model.get("add_special_tokens") or []
        missing = [t for t in CONTROL_TOKENS[template] if t not in vocabulary and t not in added]
        if vocabulary and missing:
            found.append((("model", "template"), missing_controls(template, missing, path)))
    elif template == "auto" and model_ok and stage != "pt" and not _has_chat_template(base / path):
        found.append(
            (("model", "template"),
             f"the tokenizer in '{path}' has no chat_template; name a built-in template "
             f"({', '.join(TEMPLATES[1:])})"))  # fmt: skip


def earlier_run(value: str, base: Path):
    """The run that model.adapter names, by its run directory or a run id `runner ls` knows; None
    where the value is no run (an adapter directory, or nothing at all)."""
    from runner.core.errors import RunnerError
    from runner.core.rundir import RECORD, find_run, read_record

    path = base / value
    try:
        if (path / RECORD).is_file() and not (path / "adapter_config.json").exists():
            return read_record(path)
        if not path.exists() and re.fullmatch(r"\d{8}-\d{6}(-[0-9a-f]{0,4})?", value):
            return find_run(value)
    except RunnerError:
        return None
    return None


def _check_run_adapter(run, loc: Loc, found: Found) -> None:
    """An earlier run to continue: it must have succeeded and saved an adapter."""
    where = f"run {run.id} of job '{run.name}' ({run.run_dir})"
    if run.status != "succeeded":
        found.append((loc, f"{where} {run.status if run.status != 'created' else 'never started'}"
                           f"{', see its train.log' if run.status == 'failed' else ''}; name a run that "
                           "succeeded (`runner ls`), or an adapter directory"))  # fmt: skip
        return
    saved = Path(run.run_dir) / "adapter"
    if not (saved / "adapter_config.json").is_file():
        model = Path(run.run_dir) / "model"
        fix = (f"it saved a whole model: set model.path to {model} and leave out model.adapter"
               if (model / "config.json").is_file() else f"it holds: {_listing(Path(run.run_dir))}")  # fmt: skip
        found.append((loc, f"{where} saved no adapter ({saved} is missing); {fix}"))


def run_adapter(value: str, base: Path) -> Path:
    """model.adapter as a directory: an earlier run's adapter/, or the adapter directory itself."""
    run = earlier_run(value, base)
    return Path(run.run_dir) / "adapter" if run is not None else base / value


def is_hub_id(value: str, base: Path = Path(".")) -> bool:
    """`org/name` that is no path here: a Hugging Face hub id."""
    if not value or value.startswith(("/", ".", "~", "$")) or (base / value).exists():
        return False
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", value))


def _check_remote_code(model_dir: Path, found: Found) -> None:
    """The code a model's auto_map names must lie in its directory: code in another hub
    repository (`repo--module.Class`) or a missing module would be fetched from the hub."""
    for name in ("config.json", "tokenizer_config.json"):
        try:
            auto_map = json.loads((model_dir / name).read_text(encoding="utf-8")).get("auto_map") or {}
        except (OSError, ValueError, AttributeError):
            continue
        for key, refs in auto_map.items() if isinstance(auto_map, dict) else ():
            for ref in refs if isinstance(refs, list) else [refs]:
                if not isinstance(ref, str):
                    continue
                repo, _, local = ref.rpartition("--")
                module = local.rsplit(".", 1)[0]
                where = f"{model_dir.name}/{name} auto_map.{key}"
                if repo:
                    found.append((("model", "trust_remote_code"),
                        f"{where} is code in the hub repository '{repo}' ({ref}), which an offline "
                        f"machine cannot fetch: copy {module}.py from that repository into the model "
                        f"directory and change the entry to '{local}'"))  # fmt: skip
                elif not (model_dir / f"{module.replace('.', '/')}.py").is_file():
                    found.append((("model", "trust_remote_code"),
                        f"{where} names {module}.py, which the model directory lacks (it would be "
                        "fetched from the hub): copy it in from the model's repository"))  # fmt: skip


def _check_dir(value: str, base: Path, loc: Loc, must_hold: tuple[str, ...], what: str, found: Found) -> bool:
    path = base / value
    if "${" in value:
        return False  # an unset variable, already reported
    if not _reachable(path, value, loc, found, inside=True):
        return False
    if not path.is_dir():
        if is_hub_id(value, base):
            found.append((loc, f"'{value}' is a Hugging Face hub id, and runner never downloads: on the "
                               f"connected side run `huggingface-cli download {value} --local-dir DIR`, "
                               "carry DIR in and set this to it"))  # fmt: skip
        else:
            found.append((loc, f"no such directory '{value}'; {_holds(path.parent, value)}"))
        return False
    missing = [f for f in must_hold if not (path / f).exists()]
    if missing:
        found.append(
            (loc, f"'{value}' is not {what} directory (no {', '.join(missing)}); it holds: "
                  f"{_listing(path)}"))  # fmt: skip
        return False
    return _check_readable(path, value, loc, found)


def _check_readable(path: Path, value: str, loc: Loc, found: Found) -> bool:
    """Every file under path readable (and every directory searchable) by this process."""
    bad = unreadable(path)
    if bad:
        shown = ", ".join(f"{p} (mode {p.lstat().st_mode & 0o777:04o}, owner uid {p.lstat().st_uid})"
                          for p in bad[:3])  # fmt: skip
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        found.append((loc, f"'{value}' is not readable by uid {os.getuid()}: {shown}{more}; "
                           f"make it readable, e.g. chmod -R a+rX {value}"))  # fmt: skip
    return not bad


def _reachable(path: Path, value: str, loc: Loc, found: Found, inside: bool = False) -> bool:
    """False (and why) when a directory on the way to path (or path itself, `inside`) may not be
    searched by this process: it could not even tell whether path exists."""
    path = Path(os.path.abspath(path))
    for d in [*reversed(path.parents), *([path] if inside else [])]:
        if os.access(d, os.X_OK):
            continue
        try:
            st = d.lstat()  # its parent may be searched, so this answers
        except OSError:
            return True  # missing: reported as such where it matters
        if not stat.S_ISDIR(st.st_mode):
            return True
        found.append((loc, f"'{value}' cannot be reached by uid {os.getuid()}: {d} (mode "
                           f"{st.st_mode & 0o777:04o}, owner uid {st.st_uid}) may not be searched by it; "
                           f"make it searchable, e.g. chmod a+x {d}"))  # fmt: skip
        return False
    return True


def unreadable(path: Path, limit: int = 10000) -> list[Path]:
    """Files this process cannot read and directories it cannot list, under path (or path)."""
    if path.is_file():
        return [] if os.access(path, os.R_OK) else [path]
    bad: list[Path] = []
    for n, (root, dirs, files) in enumerate(os.walk(path, onerror=lambda e: bad.append(Path(e.filename)))):
        if n > limit:
            break
        for name in files:
            f = Path(root, name)
            if not os.access(f, os.R_OK):
                bad.append(f)
        for name in dirs:
            d = Path(root, name)
            if not os.access(d, os.R_OK | os.X_OK):
                bad.append(d)
    return sorted(set(bad))


def _check_data(data: Any, stage: Any, base: Path, found: Found, read: bool = True) -> None:
    datasets = data.get("datasets") if isinstance(data, dict) else None
    if not isinstance(datasets, list):
        return
    _check_mix(data, len(datasets), found)
    dataset_dir = data.get("dataset_dir")
    if isinstance(dataset_dir, str):
        _check_dir(
            dataset_dir, base, ("data", "dataset_dir"), (registry.REGISTRY,), "a dataset registry", found
        )
    for i, ds in enumerate(datasets):
        if not isinstance(ds, dict):
            continue
        before = len(found)
        if isinstance(ds.get("name"), str) and "path" not in ds:
            fields = _check_named(ds, i, dataset_dir, stage, base, found)
            if read and fields and len(found) == before:
                fields["max_samples"] = ds.get("max_samples") or fields.get("max_samples")
                _read_data({**ds, **fields}, data, base, ("data", "datasets", i, "name"), found, stage)
            continue
        path, fmt = ds.get("path"), ds.get("format", "alpaca")
        where = ("data", "datasets", i, "path")
        known = isinstance(path, str) and "${" not in path and _reachable(base / path, path, where, found)
        if known and not (base / path).exists():
            found.append(
                (where, f"no such file or directory '{path}'; {_holds((base / path).parent, path)}"))  # fmt: skip
        elif known:
            _check_readable(base / path, path, where, found)
        if fmt not in DATA_FORMATS:
            continue
        if stage == "pt" and fmt != "text":
            found.append(
                (("data", "datasets", i, "format"),
                 f"stage 'pt' trains on plain text; use format: text (got '{fmt}')"))  # fmt: skip
        if stage in ("sft", "rm", "dpo", "kto", "ppo", "eval") and fmt == "text":
            found.append(
                (("data", "datasets", i, "format"),
                 f"stage '{stage}' needs conversations; use format: alpaca or sharegpt "
                 "(format: text is for stage pt)"))  # fmt: skip
        if read and known and len(found) == before and (base / path).exists():
            _read_data(ds, data, base, where, found, stage)


def _read_data(ds: dict, data: dict, base: Path, loc: Loc, found: Found, stage: Any = "sft") -> None:
    """Every record of one dataset, read by the code training reads it with; what training would
    stop at is reported here, before anything starts."""
    from pydantic import ValidationError

    from runner.core.data import readers as reader
    from runner.core.jobspec.job import DatasetSpec, DataSpec

    try:
        spec = DatasetSpec.model_validate({**ds, "path": str(base / ds["path"])})
    except ValidationError:
        return  # the schema reports it
    on_bad = data.get("on_bad_record", "error")
    placeholders = data.get("placeholders") or {}
    if on_bad not in ("error", "skip") or not isinstance(placeholders, dict):
        return  # the schema reports it
    settings = DataSpec.model_construct(datasets=[spec], on_bad_record=on_bad, placeholders=placeholders)
    where = ".".join(str(k) for k in loc[:2]) + f"[{loc[2]}]"
    with _progress(spec, base) as tick:
        errors, total = reader.check(
            spec, settings, where, tick=tick, stage=stage if isinstance(stage, str) else "sft"
        )
    for e in errors:
        found.append((loc, e.text(_shown(e.file, base) if e.file else None)))
    if total > len(errors):
        found.append((loc, f"{_shown(spec.path, base)}: {total - len(errors)} more bad record(s) after "
                           "these; fix them, or skip them with data.on_bad_record: skip"))  # fmt: skip


@contextlib.contextmanager
def _progress(spec, base: Path, large: int = 32 << 20):
    """A records-read counter on a terminal, for data of `large` bytes or more."""
    from runner.core.data import readers as reader

    try:
        size = sum(f.stat().st_size for f in reader.files(spec))
    except (OSError, reader.DataError):
        size = 0  # reading reports it
    if size < large or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn

    columns = (SpinnerColumn(), TextColumn("reading {task.description}: {task.completed:,} records"))
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(_shown(spec.path, base), total=None)
        yield lambda: bar.advance(task)


def _shown(path: Any, base: Path) -> str:
    """A data file as the user would write it: relative to the spec's base where it is inside."""
    path = Path(os.path.abspath(path))
    try:
        return str(path.relative_to(os.path.abspath(base)))
    except ValueError:
        return str(path)


def _check_mix(data: dict, n: int, found: Found) -> None:
    probs, mix = data.get("mix_probs"), data.get("mix", "concat")
    if not (isinstance(probs, list) and all(isinstance(p, (int, float)) for p in probs)):
        return
    loc = ("data", "mix_probs")
    if mix == "concat":
        found.append((loc, "needs mix: interleave_under or interleave_over (concat takes every record)"))
    elif len(probs) != n:
        found.append((loc, f"has {len(probs)} value(s) for {n} dataset(s); give one per dataset"))
    elif any(p < 0 for p in probs) or abs(sum(probs) - 1) > 1e-6:
        found.append((loc, f"must be >= 0 and sum to 1 (got {probs}, sum {sum(probs):g})"))


def _check_named(
    ds: dict, i: int, dataset_dir: Any, stage: Any, base: Path, found: Found
) -> dict[str, Any] | None:
    """The entry's fields as registry.expand gives them, when the entry is usable."""
    loc = ("data", "datasets", i, "name")
    clash = [k for k in ("format", "columns", "tags") if k in ds]
    if clash:
        found.append((loc, f"a named dataset takes {', '.join(clash)} from {registry.REGISTRY}; "
                           f"remove {', '.join(clash)} here, or give path instead of name"))  # fmt: skip
    if not isinstance(dataset_dir, str):
        found.append((loc, "a dataset given by name needs data.dataset_dir (the directory of "
                           f"{registry.REGISTRY})"))  # fmt: skip
        return None
    if "${" in dataset_dir or not _reachable(base / dataset_dir, dataset_dir, loc, [], inside=True):
        return None  # reported at data.dataset_dir
    if not (base / dataset_dir / registry.REGISTRY).is_file():
        return None  # reported at data.dataset_dir
    try:
        return registry.expand(
            ds["name"], base / dataset_dir, stage if isinstance(stage, str) else "sft", dataset_dir
        )
    except registry.RegistryError as e:
        found.append((loc, str(e)))
        return None


def _check_output(value: Any, base: Path, found: Found, writes: Path | None = None) -> None:
    if writes is not None:
        if not (writes.is_dir() and os.access(writes, os.W_OK | os.X_OK)):
            found.append((("output", "dir"), f"the run directory {writes} is not writable by uid {os.getuid()} "
                                             "here; it must belong to the user the job runs as"))  # fmt: skip
        return
    if not isinstance(value, str):
        return
    path = base / value
    if not _reachable(path, value, ("output", "dir"), found):
        return
    # The nearest existing ancestor must be writable, or no run directory can be created.
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not (probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)):
        shown = os.path.relpath(probe, base) if not Path(value).is_absolute() else str(probe)
        found.append(
            (("output", "dir"),
             f"'{shown}' is not a writable directory; choose another output.dir or fix its "
             "permissions"))  # fmt: skip


def _vocabulary(model_dir: Path) -> set[str]:
    """The token strings of a tokenizer.json (empty when there is none to read)."""
    try:
        tokenizer = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    vocab = (tokenizer.get("model") or {}).get("vocab") or {}
    pieces = set(vocab) if isinstance(vocab, dict) else {p[0] for p in vocab if isinstance(p, list) and p}
    return pieces | {t.get("content") for t in tokenizer.get("added_tokens") or [] if isinstance(t, dict)}


def _has_chat_template(model_dir: Path) -> bool:
    if (model_dir / "chat_template.jinja").exists() or (model_dir / "chat_template.json").exists():
        return True
    config = model_dir / "tokenizer_config.json"
    try:
        return bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))
    except (OSError, ValueError):
        return False


def _holds(parent: Path, value: str) -> str:
    if not parent.is_dir():
        return f"'{Path(value).parent}/' does not exist either"
    return f"'{Path(value).parent}/' holds: {_listing(parent)}"


def _listing(directory: Path, limit: int = 12) -> str:
    try:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in directory.iterdir())
    except OSError:
        return f"nothing uid {os.getuid()} may list"
    if not names:
        return "nothing (empty)"
    more = f" ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _closest(word: str, options: tuple[str, ...] | list[str]) -> str | None:
    import difflib

    match = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return match[0] if match else None
