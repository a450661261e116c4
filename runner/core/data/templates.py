"""Chat templates and the encoding of a conversation into input_ids and labels: only answers train.

A template reaches the tokenizer as a Jinja chat template (`chat_template`), so chat renders what
training saw and a saved model carries its format. Training encodes as LLaMA-Factory does: a
built-in template (core/data/chat_formats.py) slot by slot, the tokenizer's own template (`auto`)
piece by piece; each prompt and each answer is tokenized on its own, so no token ever spans the
boundary between them (a BPE merge of a prompt's `:` with an answer's `"` would train a token that
never follows a real chat prompt). Cut to cutoff_len as LLaMA-Factory cuts (infer_seqlen: the
prompt gives way first); a record left with no answer token is dropped, never kept with an eos
alone.
"""

from __future__ import annotations

import json
import re

from runner.core.data.chat_formats import BOS, BUILTIN, EMPTY_THOUGHT, EOS, Special, Template
from runner.core.errors import RunnerError

__all__ = [
    "BUILTIN",
    "IGNORE",
    "LENGTH",
    "Template",
    "apply_template",
    "encode",
    "prompt_and_answer",
    "render",
]
IGNORE = -100
LENGTH = "length"  # tokens per row, kept for length-aware samplers; collators drop it


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


def builtin_of(tokenizer) -> tuple[Template, str] | None:
    """The built-in template a tokenizer was given (apply_template), and its default system
    prompt; None for the tokenizer's own template."""
    chat = getattr(tokenizer, "chat_template", None)
    name = _NAMED.search(chat) if isinstance(chat, str) else None
    template = BUILTIN.get(name.group(1)) if name else None
    if template is None or not chat.endswith(template.jinja):
        return None
    if chat == template.jinja:
        return template, ""
    found = _DEFAULT_SYSTEM.fullmatch(chat[: -len(template.jinja)])
    return (template, json.loads(found.group(1))) if found else None


_NAMED = re.compile(r"\{# runner template (\S+) #\}")


_DEFAULT_SYSTEM = re.compile(
    r"\{% if messages and messages\[0\]\['role'\] != 'system' %\}\{% set messages = \[\{'role': 'system', "
    r"'content': (\".*\")\}\] \+ messages %\}\{% endif %\}",
    re.DOTALL,
)


def turn_pairs(tokenizer, messages: list[dict]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids) of every turn, each tokenized on its own: a built-in template's
    slots one by one, as LLaMA-Factory's Template._encode; the tokenizer's own template by the
    text its rendering adds for the prompt, then for the answer."""
    found = builtin_of(tokenizer)
    if found is not None:
        return _slot_pairs(tokenizer, *found, messages)
    return _piece_pairs(tokenizer, messages)


def _slot_pairs(tokenizer, template: Template, default_system: str, messages: list[dict]):
    given = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    turns = messages[1:] if given is not None else messages
    system = given or default_system
    encoded: list[list[int]] = []
    for i, message in enumerate(turns):
        slots: list = []
        content = message["content"]
        if i == 0:
            slots += template.prefix
            if system and template.fuse_system:
                content = _fill(template.system, system)[0] + content
            elif system:
                slots += _fill(template.system, system)
        slots += _fill(template.user if message["role"] == "user" else template.assistant, content)
        encoded.append(_ids(tokenizer, slots))
    pairs = list(zip(encoded[0::2], encoded[1::2], strict=False))
    if template.thought:  # an answer without a thought gets an empty one, trained (LLaMA-Factory's qwen3)
        thought = tokenizer.encode(EMPTY_THOUGHT, add_special_tokens=False)
        answers = [m["content"] for m in turns[1::2]]
        pairs = [(p, a if "<think>" in text or "</think>" in text else thought + a)
                 for (p, a), text in zip(pairs, answers, strict=False)]  # fmt: skip
    return pairs


def _fill(slots: tuple, content: str) -> list:
    return [s.replace("{{content}}", content, 1) if isinstance(s, str) else s for s in slots]


def _ids(tokenizer, slots: list) -> list[int]:
    ids: list[int] = []
    for slot in slots:
        if isinstance(slot, str):
            ids += tokenizer.encode(slot, add_special_tokens=False) if slot else []
        elif slot == BOS:
            ids += [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        elif slot == EOS:
            ids += [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        elif isinstance(slot, Special):
            ids.append(tokenizer.convert_tokens_to_ids(slot.token))
    return ids


def _piece_pairs(tokenizer, messages: list[dict]) -> list[tuple[list[int], list[int]]]:
    pairs, done = [], ""
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
        pairs.append((_text_ids(tokenizer, prompt[len(done) :]), _text_ids(tokenizer, turn[len(prompt) :])))
        done = turn
    return pairs


def _text_ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False) if text else []


def infer_seqlen(source_len: int, target_len: int, cutoff_len: int) -> tuple[int, int]:
    """How much of a prompt and its answer fit in cutoff_len (LLaMA-Factory's rule): a short answer
    is kept whole and the prompt cut; a long answer is cut to what a short prompt leaves; else
    both are cut in proportion."""
    if target_len * 2 < cutoff_len:
        max_target = cutoff_len
    elif source_len * 2 < cutoff_len:
        max_target = cutoff_len - source_len
    else:
        max_target = int(cutoff_len * (target_len / (source_len + target_len)))
    target = min(max_target, target_len)
    return min(max(cutoff_len - target, 0), source_len), target


def encode(
    tokenizer, messages: list[dict], cutoff_len: int, *, efficient_eos: bool | None = None
) -> dict[str, list[int]] | None:
    """input_ids and labels (-100 outside answers), cut to cutoff_len as LLaMA-Factory cuts; None
    when no answer token is left (a record kept for a lone eos would train nothing real).
    `efficient_eos`: for the tokenizer's own template (a built-in one knows its own)."""
    found = builtin_of(tokenizer)
    pairs = _slot_pairs(tokenizer, *found, messages) if found else _piece_pairs(tokenizer, messages)
    efficient = found[0].efficient_eos if found else bool(efficient_eos)
    eos = tokenizer.eos_token_id
    efficient = efficient and eos is not None
    input_ids: list[int] = []
    labels: list[int] = []
    answers, total = 0, 1 if efficient else 0
    for turn, (source, target) in enumerate(pairs):
        if total >= cutoff_len:
            break
        source_len, target_len = infer_seqlen(len(source), len(target), cutoff_len - total)
        source, target = source[:source_len], target[:target_len]
        total += source_len + target_len
        if efficient and turn != 0 and source_len:
            source_labels = [eos] + [IGNORE] * (source_len - 1)  # the previous answer ends here
        else:
            source_labels = [IGNORE] * source_len
        input_ids += source + target
        labels += source_labels + target
        answers += target_len
    if efficient:
        input_ids, labels = input_ids + [eos], labels + [eos]
    if not answers:
        return None
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}


def prompt_and_answer(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) of a conversation that ends with the answer, each tokenized on its
    own (LLaMA-Factory's encode_oneturn): everything before the last answer is its prompt."""
    pairs = turn_pairs(tokenizer, messages)
    prompt = [t for source, target in pairs[:-1] for t in source + target] + (pairs[-1][0] if pairs else [])
    return prompt, pairs[-1][1] if pairs else []


def missing_controls(template: str, missing: list[str], where: str) -> str:
    listed = ", ".join(repr(t) for t in missing)
    return (
        f"template {template} needs {listed} as special tokens, which the tokenizer at {where} "
        f"lacks: they would be trained as plain text pieces and chat would never stop at the end "
        f"of a turn. Choose the template made for this model (or auto, the tokenizer's own), or "
        f"add them to model.add_special_tokens: [{', '.join(json.dumps(t) for t in missing)}] (the "
        f"embeddings grow to match and train with the method)"
    )
