"""Chat templates and the label mask: only assistant turns are trained.

A template is a Jinja chat template, the same thing a tokenizer ships as `chat_template`,
so `tokenizer.apply_chat_template` renders training data and chat alike and a saved model
carries its template with it. Built-ins cover models whose tokenizers ship none.
"""

from __future__ import annotations

from dataclasses import dataclass

from runner.errors import RunnerError

IGNORE = -100


@dataclass(frozen=True)
class Template:
    name: str
    jinja: str
    stop: tuple[str, ...] = ()  # end-of-turn strings besides the tokenizer's eos


_CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_QWEN = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}" + _CHATML
)
_LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
_MISTRAL = (
    "{{ bos_token }}{% set system = messages[0]['content'] if messages[0]['role'] == 'system' else '' %}"
    "{% for m in messages if m['role'] != 'system' %}"
    "{% if m['role'] == 'user' %}{{ '[INST] ' + (system + '\\n\\n' if system and loop.first else '')"
    " + m['content'] + '[/INST]' }}"
    "{% else %}{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}"
)
_CHATGLM3 = (
    "{{ '[gMASK]sop' }}{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}{{ '<|assistant|>\\n ' + m['content'] + eos_token }}"
    "{% else %}{{ '<|' + m['role'] + '|>\\n ' + m['content'] }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n ' }}{% endif %}"
)
_BAICHUAN2 = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}"
    "{% elif m['role'] == 'user' %}{{ '<reserved_106>' + m['content'] }}"
    "{% else %}{{ '<reserved_107>' + m['content'] + eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<reserved_107>' }}{% endif %}"
)
_ALPACA = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] + '\\n\\n' }}"
    "{% elif m['role'] == 'user' %}{% if loop.first %}{{ 'Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\\n\\n' }}{% endif %}"
    "{{ '### Instruction:\\n' + m['content'] + '\\n\\n### Response:\\n' }}"
    "{% else %}{{ m['content'] + eos_token + '\\n\\n' }}{% endif %}{% endfor %}"
)
_DEFAULT = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ 'System: ' + m['content'] + '\\n' }}"
    "{% elif m['role'] == 'user' %}{{ 'Human: ' + m['content'] + '\\nAssistant: ' }}"
    "{% else %}{{ m['content'] + eos_token + '\\n' }}{% endif %}{% endfor %}"
)

BUILTIN: dict[str, Template] = {
    t.name: t
    for t in (
        Template("chatml", _CHATML, ("<|im_end|>",)),
        Template("qwen", _QWEN, ("<|im_end|>",)),
        Template("llama3", _LLAMA3, ("<|eot_id|>",)),
        Template("mistral", _MISTRAL),
        Template("chatglm3", _CHATGLM3, ("<|user|>", "<|observation|>")),
        Template("baichuan2", _BAICHUAN2),
        Template("alpaca", _ALPACA),
        Template("default", _DEFAULT),
    )
}


def apply_template(tokenizer, name: str) -> None:
    """Give the tokenizer the chosen template, so a saved tokenizer carries it."""
    if name == "auto":
        if not getattr(tokenizer, "chat_template", None):
            raise RunnerError(
                "the tokenizer has no chat_template; set model.template to one of " + ", ".join(BUILTIN)
            )
        return
    tokenizer.chat_template = BUILTIN[name].jinja


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


def encode(tokenizer, messages: list[dict], cutoff_len: int) -> dict[str, list[int]] | None:
    """input_ids and labels (-100 outside assistant turns), cut to cutoff_len.

    Returns None when nothing trainable is left after truncation.
    """
    input_ids: list[int] = []
    labels: list[int] = []
    for text, trained in segments(tokenizer, messages):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        input_ids += ids
        labels += ids if trained else [IGNORE] * len(ids)
    input_ids, labels = input_ids[:cutoff_len], labels[:cutoff_len]
    if all(label == IGNORE for label in labels):
        return None
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}
