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
from runner.core.jobspec.checks.files import is_hub_id
from runner.core.jobspec.job import TEMPLATES, TrainingSpec

# Any of these at the top level (and no runner `model:`/`method:` section) marks the file.
MARKERS = ("model_name_or_path", "finetuning_type")


class ConvertError(ValueError):
    """The input is not something convert can read; the message says what it is instead."""


@dataclass(frozen=True)
class Note:
    key: str  # the LLaMA-Factory key
    message: str
    at: tuple[str, ...] | None = None  # the runner key it concerns; None: not mapped

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


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
# Keys that need no counterpart in runner; each with why.
_NOT_NEEDED = {
    "do_train": "runner always trains",
    "overwrite_cache": "runner keys its tokenized-data cache by a hash of the inputs; a change re-tokenizes",
    "overwrite_output_dir": "every run gets a new directory (output.dir/NAME/RUN-ID); nothing is overwritten",
    "plot_loss": "runner always plots the loss (loss.png in the run directory)",
    "report_to": "runner sends metrics nowhere over a network; it writes TensorBoard files (training.report_to: tensorboard) or none",
    "ddp_timeout": "runner has no setting for it; torch's default timeout applies",
    "save_only_model": "runner has no such switch; its checkpoints are what `runner resume` reads",
    "logging_dir": "logs are written inside the run directory",
    "run_name": "the run is named by `name` and a run id",
    "resume_from_checkpoint": "continue a run with `runner resume RUN-ID`",
    "eval_strategy": "runner evaluates every training.eval_steps steps when data.val_size is set",
    "evaluation_strategy": "runner evaluates every training.eval_steps steps when data.val_size is set",
    "save_strategy": "runner saves every training.save_steps steps",
    "tokenized_path": "runner caches tokenized data under OUTPUT/.cache itself",
    "quantization_method": "",  # handled with quantization_bit
    "quantization_type": "",
    "double_quantization": "",
    "disable_gradient_checkpointing": "",
    "dataset_dir": "",
    "freeze_trainable_modules": "",
}


def convert(data: Any, file_name: str = "job", near: Path | None = None) -> tuple[dict[str, Any], list[Note]]:
    """The runner spec equivalent to a LLaMA-Factory training config, and the notes.

    `near`: the config's directory, where a DeepSpeed JSON it names is looked for too."""
    if not isinstance(data, dict):
        raise ConvertError("not a LLaMA-Factory training config: the file is not a mapping of keys")
    if not is_llamafactory(data):
        if isinstance(data.get("method"), dict) or isinstance(data.get("model"), dict):
            raise ConvertError("this is a runner job spec already; check it with `runner validate`")
        raise ConvertError(
            "not a LLaMA-Factory training config: it has no top-level model_name_or_path or finetuning_type"
        )
    lf = {k: v for k, v in data.items() if v is not None}
    notes: list[Note] = []
    used: set[str] = set()

    def take(key: str, default: Any = None) -> Any:
        used.add(key)
        return lf.get(key, default)

    spec: dict[str, Any] = {"name": _name(take("output_dir"), file_name)}
    stage = take("stage", stages.DEFAULT)
    if stage != stages.DEFAULT:
        spec["stage"] = stage
    spec["model"] = _model(take, notes)
    spec["method"] = _method(take, notes)
    spec["data"] = _data(take, notes)
    training = _training(lf, take, notes)
    if training:
        spec["training"] = training
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
    if take("do_train") is False:
        notes.append(Note("do_train", "is false; runner always trains (use `runner plan` to only look)"))
    for key in ("do_eval", "do_predict"):
        if take(key):
            notes.append(Note(key, "runner evaluates on data.val_size during training only"))
    for key in ("eval_strategy", "evaluation_strategy"):
        if lf.get(key) == "no" or (lf.get(key) == "steps" and "eval_steps" in lf):
            used.add(key)  # what runner does anyway
    for key in lf:
        if key in used:
            continue
        why = _NOT_NEEDED.get(key)
        if why:
            notes.append(Note(key, why))
        elif why is None:
            notes.append(Note(key, "runner has no such setting"))
    return spec, notes


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
                              ("model", "template")))  # fmt: skip
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
            notes.append(Note("flash_attn", f"unknown value {attention!r}; runner chooses the kernel itself"))
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
        notes.append(
            Note("finetuning_type", f"runner has no {kind!r}; converted as lora", ("method", "type"))
        )
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
                              f"(got {how}, {bits}); converted as plain lora", ("method", "type")))  # fmt: skip
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


def _data(take, notes: list[Note]) -> dict[str, Any]:
    names = _split(take("dataset", ""))
    if not names:
        notes.append(
            Note("dataset", "is missing; add your datasets under data.datasets", ("data", "datasets"))
        )
    max_samples = take("max_samples")
    datasets = [{"name": n, **({"max_samples": max_samples} if max_samples else {})} for n in names]
    data: dict[str, Any] = {"datasets": datasets, "dataset_dir": str(take("dataset_dir", "data"))}
    for lf_key, key, default in (("cutoff_len", "cutoff_len", 1024), ("packing", "packing", False),
                                 ("val_size", "val_size", 0.0), ("mix_strategy", "mix", "concat"),
                                 ("preprocessing_num_workers", "preprocessing_workers", None)):  # fmt: skip
        value = take(lf_key, _LF_DEFAULTS.get(lf_key))
        if value is not None and value != default:
            data[key] = value
    probs = take("interleave_probs")
    if probs is not None:
        data["mix_probs"] = [float(p) for p in _split(probs)]
    if take("eval_dataset"):
        notes.append(Note("eval_dataset", "runner holds out data.val_size of the training data instead"))
    return data


def _training(lf: dict[str, Any], take, notes: list[Note]) -> dict[str, Any]:
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
    for key, value in _LF_DEFAULTS.items():
        if key in _TRAINING and key not in training:
            training[key] = value
    # LLaMA-Factory checkpoints activations unless told not to.
    if "gradient_checkpointing" not in training:
        training["gradient_checkpointing"] = not take("disable_gradient_checkpointing", False)
    return {k: v for k, v in training.items() if v != _TRAINING[k]}


def _deepspeed(path: str, near: Path | None, notes: list[Note]) -> dict[str, Any]:
    """ZeRO stage and offload from the JSON file where it can be read, else from its name."""
    places = [Path(path)] + ([near / path, near / Path(path).name] if near else [])
    found = next((p for p in places if p.is_file()), None)
    if found is not None:
        try:
            zero_cfg = json.loads(found.read_text(encoding="utf-8")).get("zero_optimization", {})
            stage = int(zero_cfg.get("stage", 0))
            offload = {
                "offload_optimizer": _device(zero_cfg.get("offload_optimizer")),
                "offload_params": _device(zero_cfg.get("offload_param")),
            }
        except (ValueError, AttributeError, TypeError) as e:
            raise ConvertError(f"deepspeed: cannot read {path}: {e}") from None
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
    if unmapped:
        head.append("# not carried over:")
        head += [f"#   {n}" for n in unmapped]
    yaml = YAML()
    yaml.width = 4096
    yaml.allow_unicode = True
    out = io.StringIO()
    out.write("\n".join(head) + "\n")
    yaml.dump(doc, out)
    return out.getvalue()
