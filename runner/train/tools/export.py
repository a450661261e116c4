"""Export a run's result as a plain model directory:
`python -m runner.train.tools.export RUN_DIR OUT [--dtype auto|bf16|fp16|fp32] [--force]`.

An adapter is merged into its base; the directory then holds safetensors shards, the tokenizer
with its chat template and a generation config that stops where the template ends a turn, and
`AutoModelForCausalLM.from_pretrained(OUT)` loads it without runner or peft. Prompt-learning
adapters (prefix, P-Tuning, prompt tuning) add virtual tokens instead of changing weights and
cannot be merged: the adapter is exported with the tokenizer and a note on how to load it.

A reward model (an rm run) is exported as a one-output sequence classifier with its value head
`score`: the base, every adapter of its chain merged in order (the sft adapter the rm run merged
before training, then its own adapter), loaded by `AutoModelForSequenceClassification`.

A classifier (a cls or ner run) is exported with its head and its label set (id2label in the
config, labels.json beside it): the adapter merged into the base, loaded by
`AutoModelForSequenceClassification` or `AutoModelForTokenClassification`.

Everything is written to a new directory beside OUT and moved into place once complete, so OUT
never holds half a model; its directories and files then get the permissions the umask gives.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from runner.core import offline
from runner.core.errors import RunnerError
from runner.core.target import (
    PROMPT_PEFT_TYPES,
    ExportError,
    Target,
    check_out,
    follow_umask,
    peft_type,
    resolve,
)
from runner.train.tools.inference import fit_vocabulary

log = logging.getLogger(__name__)
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
SHARD = "5GB"


def quantized_base(base: str) -> str | None:
    """The quantization method a base model is stored in (bitsandbytes 4-bit, GPTQ, AWQ...), or None."""
    config = json.loads(Path(base, "config.json").read_text(encoding="utf-8"))
    q = config.get("quantization_config")
    if not q:
        return None
    method = q.get("quant_method", "quantized")
    return f"{method} 4-bit" if q.get("load_in_4bit") or q.get("bits") == 4 else str(method)


def export(run_dir: Path, out: Path, dtype: str = "auto", force: bool = False) -> str:
    """Write the export; returns what was written, in one line."""
    target = resolve(run_dir)
    check_out(out, force)
    if quant := quantized_base(target.base):
        raise ExportError(
            f"the base model {target.base} is stored quantized ({quant}); merging into quantized weights "
            "would write a broken model. Point model.path at the original (unquantized) base, or use "
            "the adapter as it is"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        prompt_learning = bool(target.adapter) and peft_type(target.adapter) in PROMPT_PEFT_TYPES
        if target.reward and prompt_learning:
            raise ExportError(f"{target.adapter} is a {peft_type(target.adapter)} reward adapter: its virtual "
                              "tokens cannot be merged into a sequence classifier; use the run's adapter as it is")  # fmt: skip
        if target.classifier:
            what = _classifier(target, work, dtype)
        elif target.reward:
            what = _reward(target, work, dtype)
        elif prompt_learning:
            what = _adapter_only(target, work)
        else:
            what = _merged(target, work, dtype)
        _verify(work)
        follow_umask(work)
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return what


def _tokenizer(target: Target):
    from runner.train.tools.inference import prepare_tokenizer

    return prepare_tokenizer(target)  # the template travels in the tokenizer files


def _merged(target: Target, work: Path, dtype: str) -> str:
    import torch
    from transformers import AutoModelForCausalLM

    from runner.core.data.templates import stop_token_ids

    tokenizer = _tokenizer(target)
    saved_dtype = _saved_dtype(target.base)
    model = AutoModelForCausalLM.from_pretrained(
        target.base, local_files_only=True, trust_remote_code=target.trust_remote_code,
        dtype=torch.float32,  # merged in full precision, cast once at the end
    )  # fmt: skip
    if target.adapter:
        from peft import PeftModel

        fit_vocabulary(model, tokenizer)
        model = PeftModel.from_pretrained(model, target.adapter).merge_and_unload()
        how = f"adapter {target.adapter} merged into {target.base}"
    else:
        how = f"full model {target.base}"
    want = DTYPES.get(dtype, saved_dtype if dtype == "auto" else dtype)
    model = model.to(getattr(torch, want))
    gen = model.generation_config
    gen.eos_token_id = stop_token_ids(tokenizer, target.template)
    gen.pad_token_id = tokenizer.pad_token_id
    model.config.use_cache = True
    model.save_pretrained(str(work), max_shard_size=SHARD)
    tokenizer.padding_side = "left"  # what generation from the exported model wants
    tokenizer.save_pretrained(str(work))
    return f"{how}; {want} safetensors"


def _reward(target: Target, work: Path, dtype: str) -> str:
    """The base as a one-output classifier, the chain's adapters merged into it in order, the value
    head trained; as stage ppo builds its reward model (runner/train/stages/ppo.py)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    tokenizer = _tokenizer(target)
    model = AutoModelForSequenceClassification.from_pretrained(
        target.base, num_labels=1, local_files_only=True, trust_remote_code=target.trust_remote_code,
        dtype=torch.float32, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    fit_vocabulary(model, tokenizer)
    chain = [*target.merged, *([target.adapter] if target.adapter else [])]
    if chain:
        from peft import PeftConfig, PeftModel

        for adapter in chain:
            config = PeftConfig.from_pretrained(adapter)
            if adapter != target.adapter:
                config.task_type = None  # an sft adapter (a causal LM's), merged as stage rm merged it
            model = PeftModel.from_pretrained(model, adapter, config=config).merge_and_unload()
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.use_cache = True
    want = DTYPES.get(dtype, _saved_dtype(target.base) if dtype == "auto" else dtype)
    model.to(getattr(torch, want)).save_pretrained(str(work), max_shard_size=SHARD)
    tokenizer.save_pretrained(str(work))
    how = " then ".join(chain) + f" merged into {target.base}" if chain else f"full model {target.base}"
    return f"reward model (sequence classifier with its value head `score`): {how}; {want} safetensors"


def _classifier(target: Target, work: Path, dtype: str) -> str:
    """The base with the trained head, the adapter merged in; the label set in the config and beside it."""
    import torch

    from runner.train.tools.classifier import load_classifier

    loaded = load_classifier(target, dtype=torch.float32)  # merged in full precision, cast once at the end
    model = loaded.model.merge_and_unload() if target.adapter else loaded.model
    want = DTYPES.get(dtype, _saved_dtype(target.base) if dtype == "auto" else dtype)
    model.config.pad_token_id = loaded.tokenizer.pad_token_id
    model.to(getattr(torch, want)).save_pretrained(str(work), max_shard_size=SHARD)
    loaded.tokenizer.save_pretrained(str(work))
    loaded.labels.save(work)
    kind = "Sequence" if loaded.labels.task == "sequence" else "Token"
    how = (
        f"adapter {target.adapter} merged into {target.base}"
        if target.adapter
        else f"full model {target.base}"
    )
    return (f"classifier (AutoModelFor{kind}Classification, {len(loaded.labels.names)} labels, with its head): "
            f"{how}; {want} safetensors")  # fmt: skip


def _saved_dtype(base: str) -> str:
    config = json.loads(Path(base, "config.json").read_text(encoding="utf-8"))
    saved = str(config.get("dtype") or config.get("torch_dtype") or "float32").removeprefix("torch.")
    return saved if saved in DTYPES.values() else "float32"


def _adapter_only(target: Target, work: Path) -> str:
    kind = peft_type(target.adapter)
    for item in Path(target.adapter).iterdir():
        if item.name.startswith("adapter_"):
            shutil.copy2(item, work / item.name)
    config = json.loads((work / "adapter_config.json").read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = str(Path(target.base).resolve())
    (work / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    _tokenizer(target).save_pretrained(str(work))
    (work / "README.md").write_text(
        f"# A {kind} adapter (not merged)\n\n"
        f"{kind} trains virtual tokens that are put before every input; they are not weights of the base\n"
        "model, so they cannot be merged into it. Load the base and this adapter with peft:\n\n"
        "```python\n"
        "from peft import PeftModel\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f'base = AutoModelForCausalLM.from_pretrained("{config["base_model_name_or_path"]}")\n'
        'model = PeftModel.from_pretrained(base, "THIS_DIRECTORY")\n'
        'tokenizer = AutoTokenizer.from_pretrained("THIS_DIRECTORY")\n'
        "```\n\n`runner chat` and `runner serve` take this directory as it is.\n",
        encoding="utf-8",
    )
    return (f"{kind} adapters cannot be merged into the base (they add virtual tokens, not weights); "
            "exported the adapter with the tokenizer, and README.md says how to load it")  # fmt: skip


def _verify(work: Path) -> None:
    """Every tensor the index names is in its shard: a complete directory, or an error."""
    from safetensors import safe_open

    index = work / "model.safetensors.index.json"
    if index.exists():
        expected = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        found: set[str] = set()
        for shard in set(expected.values()):
            with safe_open(str(work / shard), "pt") as f:
                found |= set(f.keys())
        missing = set(expected) - found
        if missing:
            raise RunnerError(f"export incomplete: {len(missing)} tensor(s) missing from the shards")
    elif not (work / "model.safetensors").exists() and not (work / "adapter_model.safetensors").exists():
        raise RunnerError("export wrote no weights")


def main(argv: list[str] | None = None) -> int:
    offline.enter()
    parser = argparse.ArgumentParser(prog="python -m runner.train.tools.export", description=__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES])
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        what = export(args.run_dir, args.out, args.dtype, args.force)
    except RunnerError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except PermissionError as e:
        print(f"error: cannot write the export: {e.strerror}: {e.filename}; choose an --out this user "
              f"(uid {os.getuid()}) can write", file=sys.stderr)  # fmt: skip
        return 2
    print(f"exported to {args.out}: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
