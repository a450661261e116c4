"""What chat, eval, export and serve load and generate with: a run's result (base + adapter,
or a fully trained model) or an exported model directory, strictly from local files."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from runner.core.errors import RunnerError
from runner.core.target import Target, resolve


def prepare_tokenizer(target: Target):
    """The target's tokenizer with the job's chat template; a saved one is used as it is."""
    from runner.core.data.templates import apply_template
    from runner.train.model import load_tokenizer

    tokenizer = load_tokenizer(target.tokenizer, target.trust_remote_code)
    if not target.saved_tokenizer:
        extra = {"default_system": target.default_system} if target.default_system is not None else {}
        apply_template(tokenizer, target.template, **extra)
    elif not getattr(tokenizer, "chat_template", None):
        raise RunnerError(f"the tokenizer in {target.tokenizer} has no chat template")
    return tokenizer


def fit_vocabulary(model, tokenizer) -> None:
    """Grow the base's embeddings to a tokenizer the run added tokens to; the adapter then brings
    the trained rows (embeddings and head are trained in full when tokens are added)."""
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)


def ready(model, tokenizer, adapter: str | None):
    """A loaded base made ready to answer: the run's adapter on top (the vocabulary grown to its
    tokenizer first), on the GPU when there is one, in eval mode."""
    import torch

    if adapter:
        from peft import PeftModel

        fit_vocabulary(model, tokenizer)
        model = PeftModel.from_pretrained(model, adapter)
    if torch.cuda.is_available():
        model = model.to("cuda")
    model.eval()
    return model


@dataclass
class Loaded:
    model: object
    tokenizer: object
    stop_ids: list[int]
    name: str
    context: int  # the longest sequence the model takes (prompt + answer)
    lock: threading.Lock = field(default_factory=threading.Lock)  # one generate() at a time


def default_dtype():
    import torch

    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


PURPOSES = {"chat": "chat", "serve": "be served as a chat model", "eval": "generate answers to evaluate"}


def load(path: str | Path, dtype=None, purpose: str = "chat") -> Loaded:
    """Model and tokenizer ready to generate (eval mode, left padding, the chat template)."""
    return load_target(resolve(path), dtype, purpose)


def load_target(target: Target, dtype=None, purpose: str = "chat") -> Loaded:
    """A reward model is refused: loaded as a language model it would lose its value head and
    write from an untrained one."""
    from transformers import AutoModelForCausalLM

    from runner.core.data.templates import stop_token_ids

    target.refuse_not_generative(PURPOSES.get(purpose, purpose))
    tokenizer = prepare_tokenizer(target)
    tokenizer.padding_side = "left"  # batched generation continues every row from its end
    model = AutoModelForCausalLM.from_pretrained(
        target.base, local_files_only=True, trust_remote_code=target.trust_remote_code,
        dtype=dtype or default_dtype(),
    )  # fmt: skip
    model = ready(model, tokenizer, target.adapter)
    stop = stop_token_ids(tokenizer, target.template)
    saved = getattr(model.generation_config, "eos_token_id", None)
    for tid in saved if isinstance(saved, list) else [saved]:
        if tid is not None and tid not in stop:
            stop.append(tid)
    context = getattr(model.config, "max_position_embeddings", None) or tokenizer.model_max_length
    return Loaded(model, tokenizer, stop, target.name, int(context))


@dataclass
class Settings:
    """Generation settings (as in transformers' GenerationConfig)."""

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    num_beams: int = 1
    repetition_penalty: float = 1.0
    seed: int | None = None

    def kwargs(self, loaded: Loaded) -> dict:
        out = {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams,
               "repetition_penalty": self.repetition_penalty, "eos_token_id": loaded.stop_ids,
               "pad_token_id": loaded.tokenizer.pad_token_id, "do_sample": self.do_sample}  # fmt: skip
        if self.do_sample:
            out.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        else:  # greedy: no sampling knobs (transformers warns about unused ones)
            out.update(temperature=None, top_p=None, top_k=None)
        return out


def context_problem(loaded: Loaded, prompt_tokens: int, wanted: int | None = None) -> str | None:
    """Why a prompt (and the answer length asked for) does not fit the model's context, or None;
    the one rule of serve and chat."""
    room = loaded.context - prompt_tokens
    if room < 1 or (wanted is not None and wanted > room):
        asked = f" and {wanted} more asked for the answer" if wanted else ""
        return (f"this model's context is {loaded.context} tokens; the messages take {prompt_tokens}{asked}; "
                "shorten the conversation" + (" or ask for a shorter answer" if wanted else ""))  # fmt: skip
    return None


def prompt_ids(loaded: Loaded, messages: list[dict]) -> list[int]:
    from runner.core.data.templates import render

    text = render(loaded.tokenizer, messages, generation_prompt=True)
    return loaded.tokenizer(text, add_special_tokens=False)["input_ids"]


def generate(loaded: Loaded, conversations: list[list[dict]], settings: Settings) -> list[str]:
    """One answer per conversation, generated as a left-padded batch."""
    import torch

    tok = loaded.tokenizer
    rows = [prompt_ids(loaded, messages) for messages in conversations]
    batch = tok.pad({"input_ids": rows}, padding=True, return_tensors="pt").to(loaded.model.device)
    _seed(settings)
    with loaded.lock, torch.no_grad():
        out = loaded.model.generate(**batch, **settings.kwargs(loaded))
    width = batch["input_ids"].shape[1]
    return [tok.decode(row[width:], skip_special_tokens=True).strip() for row in out]


def stream(loaded: Loaded, messages: list[dict], settings: Settings) -> Iterator[str]:
    """The answer's text piece by piece, as the model produces it. Closing the iterator early
    (a consumer that stops reading, Ctrl-C) stops the generation within one token; the model's
    lock is held by the generating thread alone, never across the consumer's pace."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    ids = torch.tensor([prompt_ids(loaded, messages)], device=loaded.model.device)
    streamer = TextIteratorStreamer(loaded.tokenizer, skip_prompt=True, skip_special_tokens=True)
    failure: list[BaseException] = []
    cancelled = threading.Event()

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full(
                (input_ids.shape[0],), cancelled.is_set(), dtype=torch.bool, device=input_ids.device
            )

    def work() -> None:
        try:
            with loaded.lock, torch.no_grad():
                _seed(settings)
                loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                                      stopping_criteria=StoppingCriteriaList([Cancelled()]),
                                      **settings.kwargs(loaded))  # fmt: skip
        except BaseException as e:  # handed to the reader, which would otherwise wait forever
            failure.append(e)
            streamer.end()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        yield from (piece for piece in streamer if piece)
    finally:
        cancelled.set()
        thread.join()
    if failure:
        raise failure[0]


def _seed(settings: Settings) -> None:
    if settings.do_sample and settings.seed is not None:
        from transformers import set_seed

        set_seed(settings.seed)
