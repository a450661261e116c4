"""Training throughput of runner's engine against the plain HF Trainer + PEFT recipe, measured in
one invocation so every claim is a ratio (a report, not a test).

    # CPU, the tiny shape: what CI runs to catch regressions
    .venv/bin/python bench/throughput.py --device cpu
    # GPU: the hand-written baseline script beside runner, same shape, workload and batch
    python bench/throughput.py --shape 8b --method lora --bs 4 --baseline path/to/hf_baseline.py \\
        --write docs/throughput.md

Models are random-weight Llama/Mistral shapes built on the device (nothing is downloaded). The
workload is synthetic instruction data: log-normal lengths around 300 tokens (32 to --max-len),
the first third of each sample is prompt (label -100), fixed seed. Each arm runs in its own
process; the first steps are warm-up and not timed. "Real" tokens are non-padding tokens.

Arms: `baseline` runs the given script (GPU only); `plain` is the same recipe written out here
(Trainer + PEFT, batches padded to the longest sample), for machines where the script cannot
run; `runner` is runner's own Trainer and collator, from a job spec with the given settings.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP = 3  # warm-up steps, not timed
SHAPES = {
    "tiny": dict(model_type="llama", hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4, vocab_size=2048),
    # the tiny body with Llama-3's 128k vocabulary: the output layer and its logits dominate, as
    # they do in memory at the real shapes
    "tiny-128k": dict(model_type="llama", hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, vocab_size=128256),
    "1b": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
               num_attention_heads=32, num_key_value_heads=8, vocab_size=128256),
    "8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8, vocab_size=128256),
    "mistral-7b": dict(model_type="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=32768),
}  # fmt: skip
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "4090": 165e12}


def workload(n: int, max_len: int, vocab: int, seed: int = 0, fixed: bool = False) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        length = max_len if fixed else min(max_len, max(32, int(rng.lognormvariate(math.log(300), 0.7))))
        ids = [rng.randrange(3, vocab) for _ in range(length)]
        prompt = length // 3
        rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return rows


def build_model(shape: str, device: str, dtype, max_len: int, attn: str):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    dims = dict(SHAPES[shape])
    config = AutoConfig.for_model(dims.pop("model_type"), **dims, max_position_embeddings=max(4096, max_len),
                                  tie_word_embeddings=False, use_cache=False)  # fmt: skip
    config._attn_implementation = attn
    torch.manual_seed(0)
    torch.set_default_dtype(dtype)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config)
    torch.set_default_dtype(torch.float32)
    return model


def pad_tokenizer():
    """A stand-in tokenizer: the collators only need its pad id."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                   pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")  # fmt: skip


class Meter:
    """Counts real tokens from step SKIP on and times those steps, from the start of step SKIP to
    the end of the last step (what a trainer does after it, saving say, is not training)."""

    def __init__(self, trainer, cuda: bool):
        from transformers import TrainerCallback

        self.tokens, self.steps, self.t0, self.t1, self.first_step = 0, 0, None, None, None
        self.cuda = cuda
        meter = self

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                if state.global_step == SKIP:
                    meter.sync()
                    meter.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                if state.global_step in (1, state.max_steps):  # a sync every step would cost overlap
                    meter.sync()
                    meter.t1 = time.perf_counter()
                    meter.first_step = meter.first_step or meter.t1
                if state.global_step > SKIP:
                    meter.steps += 1

        trainer.add_callback(Callback())
        step = trainer.training_step

        def counting(model, inputs, *a, **kw):
            if trainer.state.global_step >= SKIP:
                mask = inputs.get("attention_mask")
                self.tokens += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
            return step(model, inputs, *a, **kw)

        trainer.training_step = counting

    def sync(self):
        if self.cuda:
            import torch

            torch.cuda.synchronize()


def arm(a: argparse.Namespace) -> dict:
    """One measured run in this process; prints and returns its RESULT."""
    start = time.perf_counter()
    import torch

    cuda = a.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        torch.set_num_threads(os.cpu_count() or 1)
    rows = workload(a.bs * (a.steps + 10), a.max_len, SHAPES[a.shape]["vocab_size"], fixed=a.fixed_len)
    tokenizer = pad_tokenizer()
    if a.arm == "runner":
        trainer, n_params = _runner_trainer(a, rows, tokenizer)
    else:
        trainer, n_params = _plain_trainer(a, rows, tokenizer)
    meter = Meter(trainer, cuda)
    trainer.train()
    seconds = meter.t1 - meter.t0
    tps = meter.tokens / seconds
    flops = (6 if a.method == "full" else 4) * n_params
    peak = next((v for k, v in PEAK_FLOPS.items() if cuda and k in torch.cuda.get_device_name()), None)
    result = {
        "arm": _label(a, trainer.args), "shape": a.shape, "method": a.method, "bs": a.bs, "packing": a.arm == "runner" and a.packing,
        "ckpt": a.ckpt, "timed_steps": meter.steps, "sec": round(seconds, 2), "real_tok_s": round(tps, 1),
        "first_step_s": round(meter.first_step - start, 2),
        "peak_gib": round((torch.cuda.max_memory_allocated() if cuda else _rss()) / 2**30, 2),
        "mfu": round(tps * flops / peak, 3) if peak else None,
    }  # fmt: skip
    print("RESULT", json.dumps(result), flush=True)
    return result


def _label(a: argparse.Namespace, args) -> str:
    if a.arm == "plain":
        return "plain"
    label = "runner" if a.targets_only else "runner, all logits"
    label += "" if a.fused or a.method == "full" else ", PEFT's LoRA forward"
    label += f", passes of <= {a.micro_batch_tokens} tokens" if a.micro_batch_tokens else ""
    if not a.memory_cap:
        return label
    every = (args.activation_checkpointing_kwargs or {}).get("every_n_layers", 1)
    chosen = f"checkpointing 1 layer in {every}" if args.activation_checkpointing else "no checkpointing"
    return label + f", cap {a.memory_cap:g} GiB: {chosen}"


def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _runner_trainer(a, rows, tokenizer):
    from datasets import Dataset

    from runner.core.jobspec.job import JobSpec
    from runner.train import dataset
    from runner.train import trainer as loop
    from runner.train.methods import apply_method
    from runner.train.model import attention, weight_dtype

    method = {"type": a.method}
    if a.method in ("lora", "qlora"):
        method.update(r=16, alpha=32, dropout=0.0, target=TARGETS, fused=a.fused)
    spec = JobSpec.model_validate({
        "name": "bench", "model": {"path": "random", "attn_implementation": a.attn},
        "method": method, "data": {"datasets": [{"path": "synthetic"}], "packing": a.packing, "cutoff_len": a.max_len},
        "training": {"per_device_train_batch_size": a.bs, "max_steps": a.steps, "learning_rate": 1e-4,
                     "logging_steps": 1000, "save_steps": 10**6, "gradient_checkpointing": a.ckpt and not a.memory_cap,
                     "gradient_accumulation_steps": a.accum, "train_sampling_strategy": a.sampling,
                     "logits_on_targets_only": a.targets_only, "micro_batch_tokens": a.micro_batch_tokens,
                     "memory_cap_gib": a.memory_cap},
        "resources": {"gpus": 1 if a.device == "cuda" else 0},
    })  # fmt: skip
    if a.method == "qlora":  # quantization happens on load, as for a real model directory
        model = _quantized(a, spec)
        n_params = _dense_params(a)
    else:
        model = build_model(a.shape, a.device, weight_dtype(spec), a.max_len, attention(spec))
        n_params = sum(p.numel() for p in model.parameters())
    model = apply_method(model, spec)
    run_dir = Path(tempfile.mkdtemp(prefix="runner-bench-"))
    trainer = loop.make_trainer(spec, run_dir, model, tokenizer, Dataset.from_list(rows), None,
                                dataset.collator(spec, tokenizer))  # fmt: skip
    return trainer, n_params


def _quantized(a, spec):
    import torch
    from transformers import AutoModelForCausalLM

    from runner.train.model import attention, quantization, weight_dtype

    path = Path(tempfile.gettempdir()) / f"runner-random-{a.shape}"
    if not (path / "config.json").exists():
        dense = build_model(a.shape, a.device, torch.bfloat16, a.max_len, "sdpa")
        dense.save_pretrained(path)
        del dense
        torch.cuda.empty_cache()
    return AutoModelForCausalLM.from_pretrained(
        path, quantization_config=quantization(spec), dtype=weight_dtype(spec),
        attn_implementation=attention(spec), device_map={"": 0},
    )  # fmt: skip


def _dense_params(a) -> int:
    """Parameters of the unquantized shape (for MFU), without building it."""
    d = SHAPES[a.shape]
    h, i, n, v = d["hidden_size"], d["intermediate_size"], d["num_hidden_layers"], d["vocab_size"]
    kv = h // d["num_attention_heads"] * d["num_key_value_heads"]
    return n * (2 * h * h + 2 * h * kv + 3 * h * i + 2 * h) + 2 * v * h + h


def _plain_trainer(a, rows, tokenizer):
    """The hand-written recipe: Trainer + PEFT, padded batches, nothing else."""
    import torch
    from torch.utils.data import Dataset
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    cuda = a.device == "cuda"
    model = build_model(a.shape, a.device, torch.bfloat16 if cuda else torch.float32, a.max_len, "sdpa")
    n_params = sum(p.numel() for p in model.parameters())
    if a.method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS,
                                                 task_type="CAUSAL_LM"))  # fmt: skip

    class Rows(Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            return rows[i]

    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="plain-bench-"), per_device_train_batch_size=a.bs,
        max_steps=a.steps, learning_rate=1e-4, bf16=cuda, logging_steps=1000, save_strategy="no",
        report_to=[], gradient_checkpointing=a.ckpt, dataloader_num_workers=2 if cuda else 0,
        remove_unused_columns=False, disable_tqdm=True, use_cpu=not cuda,
    )  # fmt: skip
    collate = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    return Trainer(model=model, args=args, train_dataset=Rows(), data_collator=collate), n_params


def _spawn(argv: list[str], name: str) -> dict:
    """One arm in its own process; a failed arm (out of memory, say) is reported, not fatal."""
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1].removeprefix("RESULT "))
    tail = (proc.stderr.strip() or proc.stdout.strip() or f"exit {proc.returncode}").splitlines()[-1]
    print(f"arm {name} failed: {tail}", file=sys.stderr)
    return {
        "arm": name,
        "real_tok_s": None,
        "failed": "out of memory" if "out of memory" in tail.lower() else tail[:80],
    }


def compare(a: argparse.Namespace) -> str:
    common = ["--shape", a.shape, "--method", a.method, "--bs", str(a.bs), "--steps", str(a.steps),
              "--max-len", str(a.max_len), "--device", a.device] + ([] if a.ckpt else ["--no-ckpt"])  # fmt: skip
    common += ["--fixed-len"] if a.fixed_len else []
    if a.baseline:
        base_argv = [sys.executable, a.baseline, "--shape", a.shape, "--method", a.method, "--bs", str(a.bs),
                     "--steps", str(a.steps), "--max-len", str(a.max_len)] + ([] if a.ckpt else ["--no-ckpt"])  # fmt: skip
        base_argv += ["--fixed-len"] if a.fixed_len else []
        base = {**_spawn(base_argv, "baseline"), "arm": "baseline"}
    else:
        base = _spawn([sys.executable, __file__, "--arm", "plain", *common], "plain")
    ablations = [["--packing", "--no-targets-only"]] + (
        [["--packing", "--no-fused"]] if a.method != "full" else []
    )
    variants = [[], ["--packing"]] + (ablations if a.ablate else [])
    if a.micro_batch_tokens or a.memory_cap:
        budget = ["--micro-batch-tokens", str(a.micro_batch_tokens)] if a.micro_batch_tokens else []
        variants.append(
            ["--packing", *budget] + (["--memory-cap", str(a.memory_cap)] if a.memory_cap else [])
        )
    ours = [_spawn([sys.executable, __file__, "--arm", "runner", *common, *v], "runner " + " ".join(v))
            for v in variants]  # fmt: skip
    return report([base, *ours], a)


def report(results: list[dict], a: argparse.Namespace) -> str:
    import torch
    import transformers

    device = (
        torch.cuda.get_device_name()
        if a.device == "cuda"
        else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    )
    base = results[0]["real_tok_s"]
    lines = [
        f"### {a.shape} {a.method}, micro-batch {a.bs}, {'checkpointing' if a.ckpt else 'no checkpointing'}",
        "",
        f"{device}; torch {torch.__version__}, transformers {transformers.__version__}; "
        f"{a.steps} steps, {SKIP} untimed; max length {a.max_len}",
        "",
        "| arm | packing | real tokens/s | x baseline | peak GiB | MFU | first step s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        tps = r["real_tok_s"]
        if tps is None:
            lines.append(f"| {r['arm']} | | failed: {r['failed']} | | | | |")
            continue
        ratio = f"{tps / base:.2f}" if base else "-"
        mfu = r.get("mfu") or r.get("mfu_vs_989") or "-"
        lines.append(f"| {r['arm']} | {'yes' if r.get('packing') else 'no'} | {tps:,.0f} | {ratio} | "
                     f"{r.get('peak_gib', '')} | {mfu} | {r.get('first_step_s', '-')} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda if present")
    p.add_argument("--shape", choices=list(SHAPES), default=None, help="default: 1b on cuda, tiny on cpu")
    p.add_argument("--method", choices=["lora", "qlora", "full"], default="lora")
    p.add_argument("--bs", type=int, default=8, help="samples per step (micro-batch)")
    p.add_argument("--steps", type=int, default=None, help="default: 30 on cuda, 15 on cpu")
    p.add_argument("--max-len", type=int, default=1024)
    p.add_argument("--fixed-len", action="store_true", help="every sample exactly --max-len tokens")
    p.add_argument("--no-ckpt", dest="ckpt", action="store_false", help="no gradient checkpointing")
    p.add_argument("--packing", action="store_true", help="(runner arm) padding-free packed rows")
    p.add_argument("--attn", default="auto", help="(runner arm) model.attn_implementation")
    p.add_argument(
        "--no-targets-only",
        dest="targets_only",
        action="store_false",
        help="(runner arm) logits at every position, not only where tokens are trained",
    )
    p.add_argument(
        "--no-fused", dest="fused", action="store_false", help="(runner arm) PEFT's own LoRA forward"
    )
    p.add_argument("--ablate", action="store_true",
                   help="also run runner packed without targets-only logits, and without the fused LoRA forward")  # fmt: skip
    p.add_argument("--accum", type=int, default=1, help="(runner arm) gradient_accumulation_steps")
    p.add_argument("--micro-batch-tokens", type=int, help="(runner arm) training.micro_batch_tokens: "
                   "the --bs samples of a step in passes of at most this many tokens")  # fmt: skip
    p.add_argument("--memory-cap", type=float, help="(runner arm) training.memory_cap_gib: checkpointing "
                   "chosen to fit, replacing --no-ckpt")  # fmt: skip
    p.add_argument("--sampling", default="random", help="(runner arm) training.train_sampling_strategy")
    p.add_argument("--baseline", help="the hand-written baseline script to run beside runner (GPU)")
    p.add_argument("--write", type=Path, help="append the markdown table to this file")
    p.add_argument("--arm", choices=["runner", "plain"], help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.device is None:
        import torch

        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    a.shape = a.shape or ("1b" if a.device == "cuda" else "tiny")
    a.steps = a.steps or (30 if a.device == "cuda" else 15)
    if a.steps <= SKIP:
        p.error(f"--steps must be more than the {SKIP} untimed warm-up steps")
    if a.arm:
        arm(a)
        return
    if a.method == "qlora" and not a.baseline:
        sys.exit("qlora is measured against the baseline script on a GPU: pass --baseline")
    table = compare(a)
    print(table)
    if a.write:
        a.write.parent.mkdir(parents=True, exist_ok=True)
        with open(a.write, "a", encoding="utf-8") as f:
            f.write("\n" + table)


if __name__ == "__main__":
    main()
