"""What a model directory must hold before anything loads it: a readable config.json, tokenizer
files, and whole, readable weights in a form transformers loads (no Git LFS pointers, no shard
missing from its index); a quantized base that the job's image can train on; and enough
positions for data.cutoff_len. Each finding names the file and the way out."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from runner.core.jobspec.checks.context import Context
from runner.core.jobspec.checks.files import listing
from runner.core.jobspec.job import JobSpec

LOC = ("model", "path")
# Any one of these is a tokenizer transformers can load (vocab.json needs merges.txt beside it).
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
    "sentencepiece.bpe.model", "qwen.tiktoken",
)  # fmt: skip
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_LFS = b"version https://git-lfs.github.com/spec"
# Where each config keeps the longest sequence it was trained for.
_POSITIONS = (
    "max_position_embeddings",
    "n_positions",
    "seq_length",
    "max_sequence_length",
    "model_max_length",
)

# quantization_config.quant_method -> the packages transformers needs to load it, and whether a
# LoRA adapter can train on it (transformers' quantizer.is_trainable and PEFT's quantized layers).
QUANTIZED: dict[str, tuple[tuple[str, ...], str | None]] = {
    "gptq": (("optimum", "gptqmodel"), None),
    "awq": (("gptqmodel",), None),
    "aqlm": (("aqlm",), None),
    "bitsandbytes": (("bitsandbytes",), None),
    "hqq": (("hqq",), None),
    "eetq": ((), "EETQ weights load for inference only"),
    "fp8": ((), "fp8 weights load for inference only"),
    "fbgemm_fp8": ((), "fp8 weights load for inference only"),
    "compressed-tensors": ((), "runner does not train on compressed-tensors checkpoints"),
    "gguf": ((), "GGUF is llama.cpp's format"),
}


def contents(spec: JobSpec, at: Context, model_dir: Path) -> None:
    """Every problem of a model directory that holds config.json (checks/model.py saw it)."""
    shown = spec.model.path
    config = _config(model_dir, shown, at)
    _tokenizer(model_dir, shown, at)
    _weights(model_dir, shown, at)
    if config is None:
        return
    _quantized(spec, config, shown, at)
    _positions(spec, config, shown, at)


def _config(model_dir: Path, shown: str, at: Context) -> dict | None:
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        at.add(LOC, f"cannot read '{shown}/config.json' ({getattr(e, 'strerror', None) or e}); copy it again")
        return None
    except ValueError as e:
        at.add(
            LOC, f"'{shown}/config.json' is not valid JSON ({e}); copy it again from the model's repository"
        )
        return None
    if not isinstance(config, dict):
        at.add(LOC, f"'{shown}/config.json' is not a model config (a JSON object); copy it again")
        return None
    if not config.get("model_type") and not config.get("auto_map"):
        at.add(LOC, f"'{shown}/config.json' names no model_type, so transformers cannot tell the architecture; "
                    "copy the config.json of the model's own repository")  # fmt: skip
    return config


def tokenizer_files(model_dir: Path) -> list[str]:
    """The tokenizer files a model directory holds (none: transformers cannot load a tokenizer)."""
    have = [f for f in TOKENIZER_FILES if (model_dir / f).is_file()]
    return have + [p.name for p in model_dir.glob("*.tiktoken") if p.name not in have]


def _tokenizer(model_dir: Path, shown: str, at: Context) -> None:
    have = tokenizer_files(model_dir)
    if have == ["vocab.json"] and not (model_dir / "merges.txt").is_file():
        at.add(LOC, f"'{shown}' has vocab.json but no merges.txt, which a BPE tokenizer needs beside it; copy "
                    "merges.txt in from the model's repository")  # fmt: skip
    elif not have:
        at.add(LOC, f"'{shown}' has no tokenizer (none of {', '.join(TOKENIZER_FILES[:4])}, ...); it holds: "
                    f"{listing(model_dir)}; copy the tokenizer files in from the model's repository")  # fmt: skip
    for name in have:
        _not_a_pointer(model_dir / name, shown, at)


def _weights(model_dir: Path, shown: str, at: Context) -> None:
    index = next((model_dir / i for i in WEIGHT_INDEXES if (model_dir / i).is_file()), None)
    if index is not None:
        shards = _shards(index, shown, at)
        if shards is None:
            return
        missing = sorted(s for s in shards if not (model_dir / s).is_file())
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            at.add(LOC, f"'{shown}' lacks {len(missing)} of the {len(shards)} weight files its {index.name} lists "
                        f"({', '.join(missing[:3])}{more}): the copy is incomplete; copy them in")  # fmt: skip
        files = [model_dir / s for s in sorted(shards) if s not in missing]
    else:
        files = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("pytorch_model*.bin"))
        files = [f for f in files if not f.name.startswith("adapter_")]
    if not files and index is None:
        other = [p.name for p in model_dir.iterdir() if p.suffix in (".gguf", ".h5", ".msgpack", ".ckpt")]
        why = (f" ({', '.join(sorted(other)[:3])} are weights transformers does not train from: convert them "
               "to safetensors)" if other else "")  # fmt: skip
        at.add(LOC, f"'{shown}' has no weights (no model.safetensors, model-*.safetensors or pytorch_model*.bin)"
                    f"{why}; it holds: {listing(model_dir)}; copy the weight files in from the model's "
                    "repository")  # fmt: skip
        return
    for f in files:
        if _not_a_pointer(f, shown, at) and f.suffix == ".safetensors":
            _safetensors_header(f, shown, at)


def _shards(index: Path, shown: str, at: Context) -> set[str] | None:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
    except (OSError, ValueError, AttributeError):
        weight_map = None
    if not isinstance(weight_map, dict) or not weight_map:
        at.add(LOC, f"'{shown}/{index.name}' is not a weight index (no weight_map); copy it again")
        return None
    return {str(v) for v in weight_map.values()}


def _not_a_pointer(path: Path, shown: str, at: Context) -> bool:
    """False (and why) for a Git LFS pointer left where a file should be: a clone without LFS."""
    try:
        if path.stat().st_size > 1024:
            return True
        with open(path, "rb") as f:
            head = f.read(len(_LFS))
    except OSError:
        return True  # unreadable: files.readable reports it
    if head == _LFS:
        at.add(LOC, f"'{shown}/{path.name}' is a Git LFS pointer, not the file (the repository was cloned "
                    "without git-lfs): run `git lfs pull` in that clone on the connected side, or download "
                    "it with `huggingface-cli download REPO --local-dir DIR`, and carry it in again")  # fmt: skip
        return False
    return True


def _safetensors_header(path: Path, shown: str, at: Context) -> None:
    """A safetensors file starts with the length of its JSON header; a cut copy fails here."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else -1
            header = f.read(length) if 0 < length <= min(size - 8, 100_000_000) else b""
        json.loads(header)
    except OSError:
        return  # unreadable: files.readable reports it
    except ValueError:
        at.add(LOC, f"'{shown}/{path.name}' is not a whole safetensors file ({size:,} bytes, its header cannot "
                    "be read): the copy is truncated or damaged; copy it again and compare its checksum")  # fmt: skip


def _quantized(spec: JobSpec, config: dict, shown: str, at: Context) -> None:
    quant = config.get("quantization_config")
    if not isinstance(quant, dict):
        return
    kind = str(quant.get("quant_method") or ("bitsandbytes" if "load_in_4bit" in quant else "?")).lower()
    method = spec.method.type
    packages, never = QUANTIZED.get(kind, ((), f"runner does not know quant_method '{kind}'"))
    if never:
        at.add(LOC, f"'{shown}' holds {kind}-quantized weights, and {never}; train on the model's unquantized "
                    "weights (method: qlora quantizes them as it loads)")  # fmt: skip
        return
    if method in ("full", "freeze"):
        at.add(("method", "type"), f"'{method}' trains the base's own weights, and '{shown}' holds {kind}-quantized "
                                   "ones, which do not train; use type: lora on it, or the unquantized "
                                   "model")  # fmt: skip
        return
    if kind == "bitsandbytes":
        bits = 4 if quant.get("load_in_4bit") else 8
        if method != "qlora" or spec.method.bits != bits:
            at.add(("method", "type"), f"'{shown}' was saved {bits}-bit quantized by bitsandbytes; train it with "
                                       f"type: qlora and bits: {bits} (its stored quantization is used as it is)")  # fmt: skip
        return
    if method == "qlora":
        at.add(("method", "type"), f"qlora quantizes the base as it loads, and '{shown}' is {kind}-quantized "
                                   "already; use type: lora")  # fmt: skip
    lacking = [p for p in packages if not _in_image(spec, p, at)]
    if lacking:
        at.add(LOC, f"'{shown}' holds {kind}-quantized weights, which transformers loads with "
                    f"{' and '.join(packages)}; image '{spec.image}' lacks {', '.join(lacking)}. Train on the "
                    "unquantized model (method: qlora quantizes it as it loads), or build an image with "
                    f"{', '.join(lacking)} in its spec's requirements (runner build)")  # fmt: skip


def _in_image(spec: JobSpec, package: str, at: Context) -> bool:
    """Whether the job's image installs `package`, by its lock file (images/IMAGE.lock); an image
    runner did not build (a full reference) is taken at its word."""
    lock = at.base / "images" / f"{spec.image}.lock"
    try:
        text = lock.read_text(encoding="utf-8")
    except OSError:
        return True
    names = {
        line.split("==")[0].strip().lower().replace("_", "-") for line in text.splitlines() if "==" in line
    }
    return package in names


def _positions(spec: JobSpec, config: dict, shown: str, at: Context) -> None:
    key = next((k for k in _POSITIONS if isinstance(config.get(k), int) and config[k] > 0), None)
    if key is None:
        return
    positions = config[key]
    scaling = config.get("rope_scaling") or {}
    factor = scaling.get("factor") if isinstance(scaling, dict) else None
    if (
        isinstance(factor, (int, float))
        and factor > 1
        and scaling.get("rope_type", scaling.get("type")) in ("linear", "dynamic", "yarn", "longrope")
        and "original_max_position_embeddings" not in scaling
    ):
        positions = int(positions * factor)
    cutoff = spec.data.cutoff_len
    if cutoff > positions:
        at.add(("data", "cutoff_len"), f"is {cutoff}, beyond the {positions} positions of '{shown}' ({key} in its "
                                       f"config.json): longer rows have no position to take; set cutoff_len: "
                                       f"{positions} or less")  # fmt: skip
