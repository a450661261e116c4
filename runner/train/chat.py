"""Talk to a run's result: `python -m runner.train.chat RUN_DIR [--message TEXT]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runner.errors import RunnerError


def load(run_dir: Path):
    """The trained model of a run (base + adapter, or the full model) and its tokenizer."""
    import torch  # noqa: F401  (fail here, not halfway, if torch is missing)
    from transformers import AutoModelForCausalLM

    from runner.spec import load_job
    from runner.train.model import fit_vocab, load_tokenizer

    spec = load_job(run_dir / "spec.yaml", files=False)
    adapter, full = run_dir / "adapter", run_dir / "model"
    if adapter.is_dir():
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(
            spec.model.path, local_files_only=True, trust_remote_code=spec.model.trust_remote_code
        )
        tokenizer = load_tokenizer(str(adapter), spec.model.trust_remote_code)
        fit_vocab(base, tokenizer)  # tokens the run added (model.add_special_tokens)
        model, tok_dir = PeftModel.from_pretrained(base, str(adapter)), adapter
    elif full.is_dir():
        model, tok_dir = AutoModelForCausalLM.from_pretrained(str(full), local_files_only=True), full
    else:
        raise RunnerError(f"{run_dir} holds no trained model yet (no adapter/ or model/)")
    model.eval()
    return spec, model, load_tokenizer(str(tok_dir), spec.model.trust_remote_code)


def reply(spec, model, tokenizer, messages: list[dict], max_new_tokens: int = 128) -> str:
    import torch

    from runner.train.templates import stop_token_ids

    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False,
            eos_token_id=stop_token_ids(tokenizer, spec.model.template),
            pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.train.chat")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--message", "-m", help="one question; omit for an interactive chat")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args(argv)
    try:
        spec, model, tokenizer = load(args.run_dir)
    except RunnerError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    if args.message is not None:
        print(
            f"user> {args.message}\nassistant> {reply(spec, model, tokenizer, [{'role': 'user', 'content': args.message}], args.max_new_tokens)}"
        )
        return 0
    history: list[dict] = []
    while True:
        try:
            text = input("user> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if text in ("exit", "quit"):
            return 0
        if text == "clear":
            history = []
            continue
        history.append({"role": "user", "content": text})
        answer = reply(spec, model, tokenizer, history, args.max_new_tokens)
        history.append({"role": "assistant", "content": answer})
        print(f"assistant> {answer}")


if __name__ == "__main__":
    sys.exit(main())
