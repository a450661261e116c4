"""Chat templates and the label mask: only assistant turns are trained.

A template is a Jinja chat template, the same thing a tokenizer ships as `chat_template`,
so `tokenizer.apply_chat_template` renders training data and chat alike and a saved model
carries its template with it. Built-ins cover models whose tokenizers ship none.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass

from runner.core.errors import RunnerError
from runner.core.jobspec.job import CONTROL_TOKENS

IGNORE = -100
LENGTH = "length"  # tokens per row, kept for length-aware samplers; collators drop it


@dataclass(frozen=True)
class Template:
    """A built-in template. Those sharing a name with LLaMA-Factory render exactly as its do."""

    name: str
    jinja: str
    stop: tuple[str, ...] = ()  # end-of-turn strings besides the tokenizer's eos
    default_system: str = ""  # the system prompt of a conversation that has none
    # eos closes the conversation instead of each answer: no eos between turns in the input, and
    # the first token after each answer but the last is labelled eos (ChatGLM3, Baichuan2).
    efficient_eos: bool = False

    @property
    def controls(self) -> tuple[str, ...]:
        """Strings that must be single tokens of the vocabulary."""
        return CONTROL_TOKENS.get(self.name, ())


def _roles(system: str, user: str, assistant: str, generation: str) -> str:
    """A template from one Jinja expression per role, `c` standing for the message content."""
    return (
        "{% for m in messages %}{% set c = m['content'] %}"
        f"{{% if m['role'] == 'system' %}}{{{{ {system} }}}}"
        f"{{% elif m['role'] == 'user' %}}{{{{ {user} }}}}"
        f"{{% else %}}{{{{ {assistant} }}}}{{% endif %}}{{% endfor %}}"
        f"{{% if add_generation_prompt %}}{{{{ {generation} }}}}{{% endif %}}"
    )


_CHATML = _roles(
    "'<|im_start|>system\\n' + c + '<|im_end|>\\n'",
    "'<|im_start|>user\\n' + c + '<|im_end|>\\n'",
    "'<|im_start|>assistant\\n' + c + '<|im_end|>\\n'",
    "'<|im_start|>assistant\\n'",
)
_LLAMA3 = "{{ bos_token or '' }}" + _roles(
    "'<|start_header_id|>system<|end_header_id|>\\n\\n' + c + '<|eot_id|>'",
    "'<|start_header_id|>user<|end_header_id|>\\n\\n' + c + '<|eot_id|>'",
    "'<|start_header_id|>assistant<|end_header_id|>\\n\\n' + c + '<|eot_id|>'",
    "'<|start_header_id|>assistant<|end_header_id|>\\n\\n'",
)
# The system prompt joins the first user message, as in Llama 2 and LLaMA-Factory's `mistral`.
# (Mistral's own v0.3 template puts it in the last [INST] instead: use template auto for that.)
_MISTRAL = (
    "{{ bos_token or '' }}{% set system = messages[0]['content'] if messages[0]['role'] == 'system' else '' %}"
    "{% for m in messages if m['role'] != 'system' %}"
    "{% if m['role'] == 'user' %}{{ '[INST] ' + (system + '\\n\\n' if system and loop.first else '')"
    " + m['content'] + '[/INST]' }}"
    "{% else %}{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}"
)
_CHATGLM3 = "[gMASK]sop" + _roles(
    "'<|system|>\\n' + c", "'<|user|>\\n' + c", "'<|assistant|>\\n' + c", "'<|assistant|>'"
)
_BAICHUAN2 = _roles("c", "'<reserved_106>' + c", "'<reserved_107>' + c", "'<reserved_107>'")
_ALPACA = _roles(
    "c", "'### Instruction:\\n' + c + '\\n\\n### Response:\\n'", "c + eos_token + '\\n\\n'", "''"
)
_DEFAULT = _roles(
    "'System: ' + c + eos_token + '\\n'", "'Human: ' + c + eos_token + '\\nAssistant:'",
    "c + eos_token + '\\n'", "''",
)  # fmt: skip

BUILTIN: dict[str, Template] = {
    t.name: t
    for t in (
        Template("chatml", _CHATML, ("<|im_end|>",)),
        Template("qwen", _CHATML, ("<|im_end|>",),
                 default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
        Template("llama3", _LLAMA3, ("<|eot_id|>",)),
        Template("mistral", _MISTRAL),
        Template("chatglm3", _CHATGLM3, ("<|user|>", "<|observation|>"), efficient_eos=True),
        Template("baichuan2", _BAICHUAN2, efficient_eos=True),
        Template("alpaca", _ALPACA, default_system="Below is an instruction that describes a task. "
                 "Write a response that appropriately completes the request.\n\n"),
        Template("default", _DEFAULT),
    )
}  # fmt: skip


def with_default_system(jinja: str, system: str) -> str:
    """The template, with `system` as the system message of a conversation that has none."""
    if not system:
        return jinja
    literal = json.dumps(system, ensure_ascii=False)  # a valid Jinja string literal
    return (
        "{% if messages and messages[0]['role'] != 'system' %}"
        f"{{% set messages = [{{'role': 'system', 'content': {literal}}}] + messages %}}{{% endif %}}" + jinja
    )


def apply_template(tokenizer, name: str, default_system: str | None = None) -> None:
    """Give the tokenizer the chosen template, so a saved tokenizer carries it (and its default
    system prompt: `default_system`, else the built-in's own)."""
    if name == "auto":
        if not getattr(tokenizer, "chat_template", None):
            raise RunnerError(
                "the tokenizer has no chat_template; set model.template to one of " + ", ".join(BUILTIN)
            )
        tokenizer.chat_template = with_default_system(tokenizer.chat_template, default_system or "")
        return
    template = BUILTIN[name]
    system = template.default_system if default_system is None else default_system
    tokenizer.chat_template = with_default_system(template.jinja, system)
    missing = [t for t in template.controls if not is_single_token(tokenizer, t)]
    if missing:
        where = getattr(tokenizer, "name_or_path", "") or "model.path"
        raise RunnerError("model." + missing_controls(name, missing, where))


def is_single_token(tokenizer, text: str) -> bool:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return len(ids) == 1 and ids[0] != tokenizer.unk_token_id


def add_special_tokens(tokenizer, tokens: list[str]) -> list[str]:
    """Add what the vocabulary lacks as special tokens; returns the ones added."""
    new = [t for t in tokens if not is_single_token(tokenizer, t)]
    if new:
        tokenizer.add_special_tokens({"additional_special_tokens": new}, replace_extra_special_tokens=False)
    return new


def stop_token_ids(tokenizer, name: str) -> list[int]:
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for text in BUILTIN[name].stop if name in BUILTIN else ("<|im_end|>", "<|eot_id|>"):
        tid = tokenizer.convert_tokens_to_ids(text)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid not in ids:
            ids.append(tid)
    return ids


def render(tokenizer, messages: list[dict], *, generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def segments(tokenizer, messages: list[dict]) -> list[tuple[str, bool]]:
    """Split a rendered conversation into (text, trained) pieces.

    Each assistant turn is the text its rendering adds after the generation prompt, so
    whatever closes the turn (eos, <|im_end|>) is trained too and the model learns to stop.
    """
    pieces: list[tuple[str, bool]] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:i], generation_prompt=True)
        turn = render(tokenizer, messages[: i + 1])
        if not (prompt.startswith(done) and turn.startswith(prompt)):
            raise RunnerError(
                "the chat template renders earlier turns differently once later turns are added, "
                "so answers cannot be located; choose a built-in model.template"
            )
        pieces += [(prompt[len(done) :], False), (turn[len(prompt) :], True)]
        done = turn
    return [(text, trained) for text, trained in pieces if text]


def encode(
    tokenizer, messages: list[dict], cutoff_len: int, *, efficient_eos: bool = False
) -> dict[str, list[int]] | None:
    """input_ids and labels (-100 outside assistant turns), cut to cutoff_len.

    The whole rendered conversation is tokenized at once, exactly as chat will tokenize it; each
    token is then labelled by the piece its text falls in. Tokenizing the pieces one by one would differ at every boundary with
    SentencePiece tokenizers, which mark the start of a text. Returns None when nothing
    trainable is left after truncation.
    """
    pieces = segments(tokenizer, messages)
    text = "".join(piece for piece, _ in pieces)
    input_ids, owner = _tokenize(tokenizer, text, pieces)
    labels = [tid if pieces[k][1] else IGNORE for tid, k in zip(input_ids, owner, strict=True)]
    if efficient_eos and tokenizer.eos_token_id is not None:
        # The first token after an answer is labelled eos: the model learns to stop there.
        for i in range(1, len(owner)):
            if owner[i] != owner[i - 1] and pieces[owner[i - 1]][1] and not pieces[owner[i]][1]:
                labels[i] = tokenizer.eos_token_id
        input_ids, labels = input_ids[: cutoff_len - 1], labels[: cutoff_len - 1]
        input_ids, labels = input_ids + [tokenizer.eos_token_id], labels + [tokenizer.eos_token_id]
    input_ids, labels = input_ids[:cutoff_len], labels[:cutoff_len]
    if all(label == IGNORE for label in labels):
        return None
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}


def _tokenize(tokenizer, text: str, pieces: list[tuple[str, bool]], *, offsets: bool | None = None):
    """The ids of `text` and, for each, the index of the piece it belongs to."""
    starts, at = [], 0
    for piece, _ in pieces:
        starts.append(at)
        at += len(piece)
    if offsets is None:
        offsets = getattr(tokenizer, "is_fast", False)
    if offsets:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        # A token belongs to the piece of its last character: one that straddles a prompt and
        # its answer is trained, as the prefix rule below has it too.
        owner = [
            max(bisect.bisect_right(starts, max(end - 1, begin)) - 1, 0)
            for begin, end in enc["offset_mapping"]
        ]
        return enc["input_ids"], owner
    # Without offsets (slow tokenizers): a piece's tokens start where the tokens of the text before
    # it stop agreeing with those of the whole text.
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    owner = [0] * len(ids)
    for k in range(1, len(pieces)):
        before = tokenizer(text[: starts[k]], add_special_tokens=False)["input_ids"]
        same = next(
            (i for i, (a, b) in enumerate(zip(before, ids, strict=False)) if a != b),
            min(len(before), len(ids)),
        )
        for i in range(same, len(ids)):
            owner[i] = k
    return ids, owner


def missing_controls(template: str, missing: list[str], where: str) -> str:
    listed = ", ".join(repr(t) for t in missing)
    return (
        f"template {template} needs {listed} as special tokens, which the tokenizer at {where} "
        f"lacks: they would be trained as plain text pieces and chat would never stop at the end "
        f"of a turn. Choose the template made for this model (or auto, the tokenizer's own), or "
        f"add them to model.add_special_tokens: [{', '.join(json.dumps(t) for t in missing)}] (the "
        f"embeddings grow to match and train with the method)"
    )
