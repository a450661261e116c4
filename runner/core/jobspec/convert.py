"""LLaMA-Factory training YAML -> runner job spec.

`convert(data)` is a pure function of the parsed file: it returns the runner spec as a plain
dict (only keys that differ from runner's defaults, plus the required ones) and a list of
`Note`s: what was mapped with a caveat (`at` names the runner key, written as a comment there)
and what could not be mapped at all (`at` is None). `dump` writes the commented YAML.

LLaMA-Factory's own defaults count where they differ from runner's (cutoff_len 2048,
learning_rate 5e-5, batch size 8, a linear schedule, gradient checkpointing on), so the
converted job trains as the original would have.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.core import stages
from runner.core.jobspec import lfkeys
from runner.core.jobspec.checks.files import is_hub_id
from runner.core.jobspec.job import (
    PREFERENCE_LOSSES,
    TEMPLATES,
    EvalSpec,
    PpoSpec,
    PreferenceSpec,
    TrainingSpec,
)

# Any of these at the top level (and no runner `model:`/`method:` section) marks the file.
MARKERS = ("model_name_or_path", "finetuning_type")


class ConvertError(ValueError):
    """The input is not something convert can read; the message says what it is instead."""


@dataclass(frozen=True)
class Note:
    key: str  # the LLaMA-Factory key
    message: str
    at: tuple[str, ...] | None = None  # the runner key it concerns; None: not mapped
    kind: str = "mapped"  # mapped (with a caveat), or lfkeys' not needed, not supported, different semantics

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"

    @property
    def label(self) -> str:
        """How the CLI and the README's report name it."""
        return "note" if self.at is not None else f"not carried over ({self.kind})"


def is_llamafactory(data: Any) -> bool:
    """A LLaMA-Factory training config rather than a runner spec (cheap: top-level keys only)."""
    return (
        isinstance(data, dict)
        and any(k in data for k in MARKERS)
        and not isinstance(data.get("model"), dict)
        and not isinstance(data.get("method"), dict)
    )


# LLaMA-Factory (and HF TrainingArguments) defaults that differ from runner's.
_LF_DEFAULTS = {
    "cutoff_len": 2048,
    "learning_rate": 5e-5,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 8,
    "lr_scheduler_type": "linear",
    "logging_steps": 500,
}
_TRAINING = {k: f.default for k, f in TrainingSpec.model_fields.items()}
# LLaMA-Factory names of runner training keys whose names differ.
_TRAINING_RENAMED = {"enable_liger_kernel": "use_liger_kernel"}
_ATTENTION = {"fa2": "flash_attention_2", "sdpa": "sdpa", "disabled": "eager", "auto": "auto"}
# Keys convert reads alongside others (quantization with quantization_bit, ...): never reported alone.
_READ_WITH = ("quantization_method", "quantization_type", "double_quantization", "disable_gradient_checkpointing",
              "dataset_dir", "freeze_trainable_modules", "reward_model_type")  # fmt: skip
# The training loop's keys: a config with none of them trains nothing (LLaMA-Factory's preprocess step).
_LOOP = (
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
)
# LLaMA-Factory's generation defaults (GeneratingArguments), for stages ppo and eval.
_GENERATION = {"do_sample": True, "temperature": 0.95, "top_p": 0.7, "top_k": 50, "num_beams": 1,
               "max_new_tokens": 1024, "repetition_penalty": 1.0}  # fmt: skip


def convert(data: Any, file_name: str = "job", near: Path | None = None) -> tuple[dict[str, Any], list[Note]]:
    """The runner spec equivalent to a LLaMA-Factory training config, and the notes.

    `near`: the config's directory, where a DeepSpeed JSON it names is looked for too (and in the
    directories above it, as LLaMA-Factory takes such paths from its repository's root)."""
    if not isinstance(data, dict):
        raise ConvertError("not a LLaMA-Factory training config: the file is not a mapping of keys")
    if not is_llamafactory(data):
        if isinstance(data.get("method"), dict) or isinstance(data.get("model"), dict):
            raise ConvertError("this is a runner job spec already; check it with `runner validate`")
        if "compute_environment" in data or "distributed_type" in data:
            raise ConvertError("this is an accelerate launcher config (accelerate launch --config_file), not a "
                               "LLaMA-Factory training config; runner launches from the spec's resources and "
                               "distributed sections")  # fmt: skip
        if isinstance(data.get("model"), str) and ("train_dataset" in data or "dist_config" in data):
            raise ConvertError("this is a LLaMA-Factory v1 config (model:, train_dataset:), which runner convert "
                               "does not read; convert the classic config (model_name_or_path:, dataset:) of the "
                               "same job")  # fmt: skip
        raise ConvertError(
            "not a LLaMA-Factory training config: it has no top-level model_name_or_path or finetuning_type"
        )
    lf = {k: v for k, v in data.items() if v is not None}
    _refuse_other_commands(lf)
    notes: list[Note] = []
    used: set[str] = set(_READ_WITH)

    def take(key: str, default: Any = None) -> Any:
        used.add(key)
        return lf.get(key, default)

    spec: dict[str, Any] = {"name": _name(take("output_dir"), file_name)}
    stage = _stage(take, notes)
    if stage != stages.DEFAULT:
        spec["stage"] = stage
    spec["model"] = _model(take, notes)
    if stage != "eval":
        spec["method"] = _method(take, notes)
    elif take("finetuning_type") is not None:
        notes.append(Note("finetuning_type", "stage eval trains nothing (model.adapter is evaluated with the "
                          "model)", kind=lfkeys.NOT_NEEDED))  # fmt: skip
    spec["data"] = _data(take, notes, stage)
    training = _training(lf, take, notes, stage)
    if training:
        spec["training"] = training
    for section, values in (("preference", _preference(take, notes, stage)), ("ppo", _ppo(take, notes, stage)),
                            ("eval", _eval(take, notes, stage))):  # fmt: skip
        if values:
            spec[section] = values
    deepspeed = take("deepspeed")
    if deepspeed:
        spec["distributed"] = {"deepspeed": _deepspeed(str(deepspeed), near, notes)}
    output_dir = take("output_dir")
    if output_dir:
        parent = str(Path(str(output_dir)).parent)
        spec["output"] = {"dir": parent}
        notes.append(
            Note("output_dir", f"runs are written to {parent}/{spec['name']}/RUN-ID", ("output", "dir"))
        )
    _without_unsupported(spec, lf, notes)
    for key in ("eval_strategy", "evaluation_strategy"):
        if lf.get(key) == "no" or (lf.get(key) == "steps" and "eval_steps" in lf):
            used.add(key)  # what runner does anyway
    for key in lf:
        if key not in used:
            kind, why = lfkeys.reason(key, lf[key])
            notes.append(Note(key, why, kind=kind))
    return spec, notes


def _refuse_other_commands(lf: dict[str, Any]) -> None:
    """Configs of LLaMA-Factory's other commands (eval, chat, export) and its preprocess-only step
    train nothing; converting them into a training job would change what they do."""
    if "task" in lf or "n_shot" in lf:
        raise ConvertError(
            f"this is a LLaMA-Factory benchmark config (llamafactory-cli eval, task {lf.get('task')!r}): it scores a "
            "model on MMLU, C-Eval or CMMLU and trains nothing. runner has no such benchmarks; `runner eval RUN "
            "--data FILE` scores a run on your own data (loss, BLEU, ROUGE)"
        )
    if "export_dir" in lf:
        raise ConvertError("this is a LLaMA-Factory export config (llamafactory-cli export): it merges or "
                           "quantizes a model and trains nothing; `runner export RUN` merges a run's adapter")  # fmt: skip
    inference = ("model_name_or_path", "adapter_name_or_path", "template", "trust_remote_code", "finetuning_type",
                 "infer_backend", "infer_dtype", "default_system", "quantization_bit", "quantization_method")  # fmt: skip
    if "infer_backend" in lf or (set(lf) <= set(inference) and "adapter_name_or_path" in lf):
        raise ConvertError("this is a LLaMA-Factory inference config (llamafactory-cli chat, webchat or api): it "
                           "trains nothing; `runner chat RUN` and `runner serve RUN` talk to a run's result")  # fmt: skip
    if lf.get("tokenized_path") and not any(k in lf for k in _LOOP):
        raise ConvertError(
            "this is a LLaMA-Factory preprocess config: with tokenized_path and no training settings it "
            "tokenizes the data, saves it and stops. runner tokenizes within every run and keeps the result "
            "(data.cache); convert the config that trains, and `runner preview JOB` shows the tokenized rows"
        )


def _stage(take, notes: list[Note]) -> str:
    stage = take("stage", stages.DEFAULT)
    if take("do_predict") and not take("do_train", False):
        notes.append(Note("do_predict", "predicts without training: runner's stage eval generates the answers "
                          "and scores them (BLEU, ROUGE, loss)", ("stage",)))  # fmt: skip
        return "eval"
    if take("do_predict"):
        notes.append(Note("do_predict", "runner evaluates a run after training with `runner eval RUN`",
                          kind=lfkeys.DIFFERENT))  # fmt: skip
    if take("do_eval"):
        notes.append(
            Note("do_eval", "runner evaluates on data.val_size during training", kind=lfkeys.DIFFERENT)
        )
    if take("do_train") is False and take("do_predict") is not True:
        notes.append(Note("do_train", "is false; runner always trains (use `runner plan` to only look)",
                          kind=lfkeys.DIFFERENT))  # fmt: skip
    if stage not in stages.STAGES:
        raise ConvertError(f"stage {stage!r} is not one runner trains ({', '.join(stages.NAMES)})")
    return stage


def _name(output_dir: Any, file_name: str) -> str:
    raw = Path(str(output_dir)).name if output_dir else Path(file_name).stem
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", raw).lstrip("._-")
    return name or "job"


def _split(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v.strip() for v in str(value).split(",") if v.strip()]


def _model(take, notes: list[Note]) -> dict[str, Any]:
    path = str(take("model_name_or_path", ""))
    model: dict[str, Any] = {"path": path}
    if is_hub_id(path):
        model["path"] = "${MODEL_DIR}"
        notes.append(Note("model_name_or_path", f"{path} is a hub id and runner never downloads: copy "
                          "the model directory onto this machine and set MODEL_DIR to it", ("model", "path")))  # fmt: skip
    if take("trust_remote_code"):
        model["trust_remote_code"] = True
    template = take("template")
    if template is not None:
        if template in TEMPLATES:
            if template != "auto":
                model["template"] = template
        else:
            notes.append(Note("template", f"runner has no built-in template {template!r}; auto uses the "
                              "tokenizer's own chat template (or pick one of " + ", ".join(TEMPLATES[1:]) + ")",
                              ("model", "template"), kind=lfkeys.DIFFERENT))  # fmt: skip
    system = take("default_system")
    if system is not None:
        model["default_system"] = str(system)
    tokens = take("add_special_tokens")
    if tokens:
        model["add_special_tokens"] = _split(tokens)
    take("resize_vocab")  # runner grows the embeddings whenever the vocabulary does
    attention = take("flash_attn")
    if attention is not None:
        if attention in _ATTENTION:
            if _ATTENTION[attention] != "auto":
                model["attn_implementation"] = _ATTENTION[attention]
        else:
            notes.append(Note("flash_attn", f"unknown value {attention!r}; runner chooses the kernel itself",
                              kind=lfkeys.DIFFERENT))  # fmt: skip
    adapter = take("adapter_name_or_path")
    if adapter:
        adapters = _split(adapter)
        model["adapter"] = adapters[-1]
        if len(adapters) > 1:
            notes.append(Note("adapter_name_or_path", "runner starts from one adapter; merge the others "
                              f"first (kept: {adapters[-1]})", ("model", "adapter")))  # fmt: skip
    return model


def _method(take, notes: list[Note]) -> dict[str, Any]:
    kind = take("finetuning_type", "lora")
    if kind == "freeze":
        method: dict[str, Any] = {"type": "freeze"}
        layers = take("freeze_trainable_layers", 2)
        if isinstance(layers, int) and layers < 0:
            notes.append(Note("freeze_trainable_layers", f"{layers} trains the first layers; runner trains the "
                              f"last ones: trainable_layers: {-layers}", ("method", "trainable_layers")))  # fmt: skip
            layers = -layers
        if layers != 2:
            method["trainable_layers"] = layers
        modules = take("freeze_trainable_modules", "all")
        if _split(modules) != ["all"]:
            notes.append(Note("freeze_trainable_modules", "runner trains whole layers; name modules to train "
                              "beside them in extra_modules", ("method", "type")))  # fmt: skip
        extra = take("freeze_extra_modules")
        if extra:
            method["extra_modules"] = _split(extra)
        return method
    if kind == "full":
        return {"type": "full"}
    if kind != "lora":
        notes.append(Note("finetuning_type", f"runner has no {kind!r}; converted as lora", ("method", "type"),
                          kind=lfkeys.DIFFERENT))  # fmt: skip
    method = {"type": "lora"}
    bits = take("quantization_bit")
    if bits is not None:
        how = str(take("quantization_method", "bnb")).lower()
        if how in ("bnb", "bitsandbytes") and bits in (4, 8):
            method = {"type": "qlora"}
            if bits != 4:
                method["bits"] = bits
            if take("quantization_type", "nf4") != "nf4":
                method["quant_type"] = take("quantization_type")
            if take("double_quantization", True) is False:
                method["double_quant"] = False
        else:
            notes.append(Note("quantization_bit", f"runner quantizes with bitsandbytes to 4 or 8 bits only "
                              f"(got {how}, {bits}); converted as plain lora", ("method", "type"),
                              kind=lfkeys.DIFFERENT))  # fmt: skip
    for lf_key, key, default in (("lora_rank", "r", 8), ("lora_alpha", "alpha", None),
                                 ("lora_dropout", "dropout", 0.0), ("loraplus_lr_ratio", "loraplus_lr_ratio", None),
                                 ("use_dora", "dora", False), ("use_rslora", "rslora", False)):  # fmt: skip
        value = take(lf_key)
        if value is not None and value != default:
            method[key] = value
    target = take("lora_target")
    if target is not None and _split(target) != ["all"]:
        method["target"] = _split(target)
    extra = take("additional_target")
    if extra:
        method["modules_to_save"] = _split(extra)
    return method


def _data(take, notes: list[Note], stage: str) -> dict[str, Any]:
    key = "eval_dataset" if stage == "eval" else "dataset"
    names = _split(take(key, ""))
    if not names:
        notes.append(Note(key, "is missing; add your datasets under data.datasets", ("data", "datasets")))
    max_samples = take("max_samples")
    datasets = [{"name": n, **({"max_samples": max_samples} if max_samples else {})} for n in names]
    data: dict[str, Any] = {"datasets": datasets, "dataset_dir": str(take("dataset_dir", "data"))}
    for lf_key, key, default in (("cutoff_len", "cutoff_len", 1024), ("val_size", "val_size", 0.0),
                                 ("mix_strategy", "mix", "concat"),
                                 ("preprocessing_num_workers", "preprocessing_workers", None)):  # fmt: skip
        value = take(lf_key, _LF_DEFAULTS.get(lf_key))
        if value is not None and value != default:
            data[key] = value
    probs = take("interleave_probs")
    if probs is not None:
        data["mix_probs"] = [float(p) for p in _split(probs)]
    neat, plain = take("neat_packing"), take("packing")
    if stage == "pt":
        for key in ("neat_packing", "packing"):
            if take(key) is not None:
                notes.append(
                    Note(
                        key, "stage pt always joins its texts into cutoff_len blocks", kind=lfkeys.NOT_NEEDED
                    )
                )
    elif neat:
        data["packing"] = True  # runner's packing is neat: positions restart, no attention across samples
    elif plain:
        data["packing"] = True
        notes.append(Note("packing", "runner packs as LLaMA-Factory's neat_packing does: samples in one row "
                          "never attend to each other (plain packing lets them)", ("data", "packing")))  # fmt: skip
    return data


def _training(lf: dict[str, Any], take, notes: list[Note], stage: str) -> dict[str, Any]:
    training: dict[str, Any] = {}
    for key in lf:
        name = _TRAINING_RENAMED.get(key, key)
        if name == "report_to":  # wandb, mlflow, ... report over a network: only TensorBoard carries over
            value = lf[key] if isinstance(lf[key], list) else [lf[key]]
            if "tensorboard" in value:
                training[name] = take(key) and "tensorboard"
                if others := [v for v in value if v != "tensorboard"]:
                    notes.append(Note(key, f"{', '.join(map(str, others))} not carried over: they report over a "
                                      "network; TensorBoard files are written", ("training", "report_to")))  # fmt: skip
        elif name in _TRAINING:
            training[name] = take(key)
    if stage == "eval":  # trains nothing: only what the config says (its eval batch size)
        return {k: v for k, v in training.items() if v != _TRAINING[k]}
    for key, value in _LF_DEFAULTS.items():
        if key in _TRAINING and key not in training:
            training[key] = value
    # LLaMA-Factory checkpoints activations unless told not to.
    if "gradient_checkpointing" not in training:
        training["gradient_checkpointing"] = not take("disable_gradient_checkpointing", False)
    batch = training.get("per_device_train_batch_size", _TRAINING["per_device_train_batch_size"])
    if stage == "kto" and isinstance(batch, int) and batch < 2:
        accumulation = training.get("gradient_accumulation_steps", 1)
        training["per_device_train_batch_size"] = 2
        kept = ""
        if isinstance(accumulation, int) and accumulation >= 2 and accumulation % 2 == 0:
            training["gradient_accumulation_steps"] = accumulation // 2
            kept = f"; gradient_accumulation_steps {accumulation} -> {accumulation // 2} keeps {accumulation} per step"
        notes.append(Note("per_device_train_batch_size", f"was {batch}: stage kto needs at least 2 per device, as "
                          "its KL term pairs each answer with another prompt of the batch (TRL's KTO trainer "
                          f"refuses 1){kept}", ("training", "per_device_train_batch_size")))  # fmt: skip
    return {k: v for k, v in training.items() if v != _TRAINING[k]}


def _preference(take, notes: list[Note], stage: str) -> dict[str, Any]:
    """pref_loss, pref_beta and KTO's weights: runner's preference section, read by dpo and kto."""
    out: dict[str, Any] = {}
    keys = ("pref_loss", "pref_beta", "kto_chosen_weight", "kto_rejected_weight")
    if stage != "dpo" and stage != "kto":  # the stages that read the preference section
        for key in keys:
            if take(key) is not None:
                notes.append(
                    Note(
                        key, f"only the preference stages read it, not stage {stage}", kind=lfkeys.NOT_NEEDED
                    )
                )
        return out
    loss = take("pref_loss")
    if stage == "kto" and loss is not None:
        notes.append(
            Note("pref_loss", "stage kto has its own loss; pref_loss is dpo's", kind=lfkeys.NOT_NEEDED)
        )
    elif loss is not None and loss in PREFERENCE_LOSSES:
        if loss != "sigmoid":
            out["loss"] = loss
    elif loss is not None:
        notes.append(Note("pref_loss", f"runner's dpo has no {loss!r} loss (it has {', '.join(PREFERENCE_LOSSES)}"
                          "; for unpaired answers, stage kto); converted as sigmoid", kind=lfkeys.NOT_SUPPORTED))  # fmt: skip
    beta = take("pref_beta")
    if beta is not None and beta != PreferenceSpec.model_fields["beta"].default:
        out["beta"] = beta
    for lf_key, key in (
        ("kto_chosen_weight", "desirable_weight"),
        ("kto_rejected_weight", "undesirable_weight"),
    ):
        value = take(lf_key)
        if value is None:
            continue
        if stage != "kto":
            notes.append(Note(lf_key, "only stage kto reads it", kind=lfkeys.NOT_NEEDED))
        elif value != PreferenceSpec.model_fields[key].default:
            out[key] = value
    return out


def _generation(take) -> dict[str, Any]:
    """LLaMA-Factory's generation settings, its defaults where the config has none."""
    return {key: take(key, default) for key, default in _GENERATION.items()}


def _ppo(take, notes: list[Note], stage: str) -> dict[str, Any]:
    keys = ("reward_model", "ppo_epochs")
    if stage != "ppo":
        for key in keys:
            if take(key) is not None:
                notes.append(Note(key, f"only stage ppo reads it, not stage {stage}", kind=lfkeys.NOT_NEEDED))
        if stage != "eval":
            for key in _GENERATION:
                if take(key) is not None:
                    notes.append(Note(key, "generation settings are read by stages ppo and eval only",
                                      kind=lfkeys.NOT_NEEDED))  # fmt: skip
        return {}
    out: dict[str, Any] = {}
    reward, kind = take("reward_model"), take("reward_model_type", "lora")
    if reward and kind == "api":
        notes.append(Note("reward_model", "an API reward model is not supported: ppo.reward_model is an rm run or "
                          "a reward model's directory", kind=lfkeys.NOT_SUPPORTED))  # fmt: skip
    elif reward:
        out["reward_model"] = str(reward)
        if kind == "lora":
            notes.append(Note("reward_model", "a LLaMA-Factory rm adapter keeps its value head apart "
                              "(value_head.safetensors), which runner does not read; if validate refuses it, "
                              "train the reward model with runner's stage rm and name that run",
                              ("ppo", "reward_model")))  # fmt: skip
    epochs = take("ppo_epochs")
    if epochs is not None and epochs != PpoSpec.model_fields["ppo_epochs"].default:
        out["ppo_epochs"] = epochs
    generation = _generation(take)
    out["response_length"] = generation["max_new_tokens"]
    if generation["temperature"] != PpoSpec.model_fields["temperature"].default:
        out["temperature"] = generation["temperature"]
    if not generation["do_sample"]:
        notes.append(
            Note(
                "do_sample", "ppo always samples its answers (at ppo.temperature)", kind=lfkeys.NOT_SUPPORTED
            )
        )
    sampled = [f"{k} {generation[k]}" for k in ("top_p", "top_k") if generation[k] not in (1.0, 0)]
    if sampled:
        notes.append(Note("top_p", f"LLaMA-Factory samples PPO answers with {' and '.join(sampled)} (its defaults "
                          "where the config says nothing); runner's ppo (TRL's PPO trainer) samples from the whole "
                          "distribution at ppo.temperature", kind=lfkeys.DIFFERENT))  # fmt: skip
    for key in ("num_beams", "repetition_penalty"):
        if generation[key] != _GENERATION[key]:
            notes.append(
                Note(key, "ppo samples one answer per prompt, with no penalty", kind=lfkeys.NOT_SUPPORTED)
            )
    return out


def _eval(take, notes: list[Note], stage: str) -> dict[str, Any]:
    if stage != "eval":
        return {}
    generation = _generation(take)
    return {k: v for k, v in generation.items() if v != EvalSpec.model_fields[k].default}


# The spec keys by which a converted spec asks for each of stages.FEATURES, and the LLaMA-Factory
# keys that ask for them there.
_FEATURE_KEYS = {
    "gradient_checkpointing": (("training", "gradient_checkpointing"), "disable_gradient_checkpointing"),
    "packing": (("data", "packing"), "packing"),
    "val_size": (("data", "val_size"), "val_size"),
    "deepspeed": (("distributed", "deepspeed"), "deepspeed"),
}


def _without_unsupported(spec: dict[str, Any], lf: dict[str, Any], notes: list[Note]) -> None:
    """What the stage does without is left out, with the stage's reason (LLaMA-Factory's own
    defaults, such as gradient checkpointing, would otherwise make the converted spec invalid)."""
    stage = stages.STAGES[spec.get("stage", stages.DEFAULT)]
    for feature, why in stage.unsupported.items():
        if feature not in _FEATURE_KEYS:
            continue
        (section, key), lf_key = _FEATURE_KEYS[feature]
        if key not in spec.get(section, {}):
            continue
        del spec[section][key]
        if not spec[section]:
            del spec[section]
        notes[:] = [n for n in notes if n.at != (section, key)]
        if feature == "packing" and "neat_packing" in lf:
            lf_key = "neat_packing"
        said = lf_key in lf or (feature == "gradient_checkpointing" and "gradient_checkpointing" in lf)
        default = "" if said else " (LLaMA-Factory's default)"
        notes.append(Note(lf_key if said else feature, f"left out{default}: stage {stage.name} does without it "
                          f"({why})", kind=lfkeys.NOT_SUPPORTED))  # fmt: skip


def _deepspeed(path: str, near: Path | None, notes: list[Note]) -> dict[str, Any]:
    """ZeRO stage and offload from the JSON file where it can be read, else from its name."""
    places = [Path(path)]
    if near is not None:  # beside the config, then from each directory above (LLaMA-Factory's root)
        places += [near / Path(path).name, *(d / path for d in [near, *near.parents])]
    found = next((p for p in places if p.is_file()), None)
    if found is not None:
        try:
            config = json.loads(found.read_text(encoding="utf-8"))
            zero_cfg = config.get("zero_optimization", {})
            stage = int(zero_cfg.get("stage", 0))
            offload = {
                "offload_optimizer": _device(zero_cfg.get("offload_optimizer")),
                "offload_params": _device(zero_cfg.get("offload_param")),
            }
        except (ValueError, AttributeError, TypeError) as e:
            raise ConvertError(f"deepspeed: cannot read {path}: {e}") from None
        autotp = (config.get("tensor_parallel") or {}).get("autotp_size")
        if autotp and autotp != 1:
            notes.append(Note("deepspeed", f"{Path(path).name} asks for DeepSpeed AutoTP (tensor_parallel.autotp_size "
                              f"{autotp}), which runner does not do: each GPU holds the whole model, its optimizer "
                              f"state and gradients partitioned by ZeRO stage {stage}", ("distributed", "deepspeed")))  # fmt: skip
        nvme = [
            k
            for k in ("offload_optimizer", "offload_param")
            if (zero_cfg.get(k) or {}).get("device") == "nvme"
        ]
        if nvme:
            notes.append(Note("deepspeed", f"{', '.join(nvme)} to NVMe becomes offload to host memory: runner "
                              "offloads to the CPU only", ("distributed", "deepspeed")))  # fmt: skip
    else:
        m = re.search(r"z(?:ero)?_?([0-3])", Path(path).name)
        if not m:
            raise ConvertError(
                f"deepspeed: {path} does not exist and its name names no ZeRO stage (ds_z3_...)"
            )
        stage, name = int(m.group(1)), Path(path).name
        offload = {"offload_optimizer": "offload" in name, "offload_params": "offload" in name and stage == 3}
        notes.append(Note("deepspeed", f"{path} is not here; ZeRO stage and offload taken from its name",
                          ("distributed", "deepspeed")))  # fmt: skip
    return {"zero": stage, **{k: v for k, v in offload.items() if v}}


def _device(section: Any) -> bool:
    return isinstance(section, dict) and section.get("device") in ("cpu", "nvme")


def dump(spec: dict[str, Any], notes: list[Note], source: str) -> str:
    """The spec as commented YAML: mapped-with-a-caveat notes beside their keys, the rest on top."""
    import io

    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    def commented(value: Any) -> Any:
        if isinstance(value, dict):
            return CommentedMap((k, commented(v)) for k, v in value.items())
        if isinstance(value, list):
            seq = CommentedSeq(commented(v) for v in value)
            if all(not isinstance(v, (dict, list)) for v in value):
                seq.fa.set_flow_style()
            return seq
        return value

    doc = commented(spec)
    for note in notes:
        if note.at is None:
            continue
        node = doc
        for part in note.at[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and note.at[-1] in node:
            node.yaml_add_eol_comment(f"{note.key}: {note.message}", note.at[-1])
    unmapped = [n for n in notes if n.at is None]
    head = [f"# converted by `runner convert` from the LLaMA-Factory config {source}"]
    for kind in lfkeys.KINDS:
        these = [n for n in unmapped if n.kind == kind]
        if these:
            head.append(f"# not carried over ({kind}):")
            head += [f"#   {n}" for n in these]
    yaml = YAML()
    yaml.width = 4096
    yaml.allow_unicode = True
    out = io.StringIO()
    out.write("\n".join(head) + "\n")
    yaml.dump(doc, out)
    return out.getvalue()
