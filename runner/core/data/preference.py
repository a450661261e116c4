"""Preference data: pairs for stages rm and dpo, labelled answers for kto, prompts for ppo.

The formats are LLaMA-Factory's. A pair is a prompt with two answers to it:

    alpaca:   {"instruction": ..., "input": ..., "chosen": "better", "rejected": "worse"}
    sharegpt: {"conversations": [... ending with the user's turn],
               "chosen": {"from": "gpt", "value": "better"}, "rejected": {"from": "gpt", "value": "worse"}}

KTO's data is unpaired: one answer and `kto_tag` (true: desirable, false: undesirable), the
answer being alpaca's `output` or the last assistant turn of sharegpt's `conversations`.

PPO's data is prompts alone (it generates the answers): alpaca's instruction and input, or
sharegpt's conversations without a final assistant turn (one there is dropped); any answer or
pair columns are left unread, so sft and preference data serve as they are.

Records are read by runner/core/data/readers.py (the same file:line errors); the prompt and each
answer are rendered with the job's chat template and split exactly as sft labels them: the
answer is the text the template adds after the generation prompt, end-of-turn token included.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from runner.core import stages
from runner.core.data import records as data
from runner.core.data.records import DataError
from runner.core.data.templates import LENGTH
from runner.core.jobspec.job import DatasetSpec

Converter = Callable[[Any, DatasetSpec, tuple, str], dict]


def converter(fmt: str, stage: str) -> Converter:
    """The function turning one record of format `fmt` into the preference item `stage` reads
    (its data in core/stages.py): a pair, a labelled answer or a prompt."""
    reads = stages.STAGES[stage].data
    if reads is stages.LABELLED:
        return lambda record, ds, origin, where: _labelled(record, ds, origin, where, fmt, stage)
    if reads is stages.PROMPTS:
        return lambda record, ds, origin, where: {"prompt": _question(record, ds, origin, where, fmt, stage)}
    return lambda record, ds, origin, where: _pair(record, ds, origin, where, fmt, stage)


def _prompt(record: Any, ds: DatasetSpec, origin: tuple, where: str, fmt: str, stage: str) -> list[dict]:
    if fmt == "alpaca":
        return data.alpaca_prompt(record, ds, origin, where, stage)
    return data.sharegpt_messages(record, ds, origin, where, stage, ends_with="user")


def _question(record: Any, ds: DatasetSpec, origin: tuple, where: str, fmt: str, stage: str) -> list[dict]:
    """The messages a prompt (ppo's) is made of, up to the user's last question."""
    if fmt == "alpaca":
        return data.alpaca_prompt(record, ds, origin, where, stage)
    messages = data.sharegpt_messages(record, ds, origin, where, stage, ends_with="either")
    return messages[:-1] if messages[-1]["role"] == "assistant" else messages


def _pair(record: Any, ds: DatasetSpec, origin: tuple, where: str, fmt: str, stage: str) -> dict:
    _need(record, ds, origin, where, ("chosen", "rejected"), stage)
    prompt = _prompt(record, ds, origin, where, fmt, stage)
    chosen, rejected = (_answer(record, ds, origin, where, key, fmt, stage) for key in ("chosen", "rejected"))
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _labelled(record: Any, ds: DatasetSpec, origin: tuple, where: str, fmt: str, stage: str) -> dict:
    _need(record, ds, origin, where, ("kto_tag",), stage)
    if fmt == "alpaca":
        prompt = data.alpaca_prompt(record, ds, origin, where, stage)
        answer = data.text_field(record, ds, origin, where, "output", stage=stage)
    else:
        messages = data.sharegpt_messages(record, ds, origin, where, stage)
        prompt, answer = messages[:-1], messages[-1]["content"]
    return {"prompt": prompt, "completion": answer, "label": _tag(record, ds, origin)}


def _need(
    record: Any, ds: DatasetSpec, origin: tuple, where: str, fields: tuple[str, ...], stage: str
) -> None:
    """One message for a record that lacks the preference fields altogether: what the stage needs."""
    if not isinstance(record, dict):
        return  # data.field says what it is
    columns = [ds.columns.get(f, f) for f in fields]
    missing = [c for c in columns if c not in record]
    if not missing:
        return
    have = ", ".join(map(str, record))
    if stages.STAGES[stage].data is stages.LABELLED:
        what = (f"stage {stage} needs each answer labelled: a column '{columns[0]}' of true (desirable) or "
                "false (undesirable)")  # fmt: skip
    else:
        what = (f"stage {stage} needs preference pairs: columns '{columns[0]}' (the better answer) and "
                f"'{columns[1]}' (the worse one)")  # fmt: skip
    _, fix = data.missing_columns(ds, [str(k) for k in record], where, stage)
    raise data.record_error(origin, f"{what}; it has {have}. Add them, or {fix}")


def _answer(record: Any, ds: DatasetSpec, origin: tuple, where: str, key: str, fmt: str, stage: str) -> str:
    """chosen or rejected: text (alpaca), or one assistant message (sharegpt; text is accepted)."""
    value = data.field(record, ds, key, origin, where, stage=stage)
    column = ds.columns.get(key, key)
    if fmt == "sharegpt" and isinstance(value, dict):
        role_keys, content_keys = data.turn_keys(ds)
        role = next((value[k] for k in role_keys if k in value), None)
        content = next((value[k] for k in content_keys if k in value), None)
        if (
            data.role_names(ds).get(role) != "assistant"
            or content is None
            or isinstance(content, (dict, list))
        ):
            raise data.record_error(
                origin, f"'{column}' must be the assistant's message, e.g. {{\"from\": \"gpt\", \"value\": "
                f"\"...\"}} (got {value!r:.80}); map other names in {where}.tags",
            )  # fmt: skip
        value = content
    if isinstance(value, (dict, list)):
        raise data.record_error(origin, f"'{column}' must be text, got {data.kind_of(value)}")
    if not str(value).strip():
        raise data.record_error(origin, f"'{column}' is empty; give it text, or drop the record")
    return str(value)


def _tag(record: dict, ds: DatasetSpec, origin: tuple) -> bool:
    column = ds.columns.get("kto_tag", "kto_tag")
    value = record.get(column)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise data.record_error(origin, f"'{column}' must be true (a desirable answer) or false (an undesirable "
                              f"one), got {value!r:.40}")  # fmt: skip


# --- tokens -----------------------------------------------------------------------------------


def encode_answer(
    tokenizer, prompt: list[dict], answer: str, cutoff_len: int, efficient_eos: bool = False
) -> tuple[list[int], list[int]] | None:
    """(prompt ids, answer ids) of one answer to `prompt`, each tokenized on its own as sft does
    (and LLaMA-Factory's encode_oneturn), so no token spans the two. Cut to cutoff_len; None
    when the prompt leaves no room for the answer."""
    from runner.core.data.templates import prompt_and_answer

    prompt_ids, answer_ids = prompt_and_answer(tokenizer, [*prompt, {"role": "assistant", "content": answer}])
    if efficient_eos and tokenizer.eos_token_id is not None:
        answer_ids = answer_ids + [tokenizer.eos_token_id]
    if len(prompt_ids) >= cutoff_len or not answer_ids:
        return None
    return prompt_ids, answer_ids[: cutoff_len - len(prompt_ids)]


def encode_pair(tokenizer, item: dict, cutoff_len: int, efficient_eos: bool = False) -> dict | None:
    """prompt_ids, chosen_ids, rejected_ids of one pair (None when cutoff_len leaves no answer)."""
    chosen = encode_answer(tokenizer, item["prompt"], item["chosen"], cutoff_len, efficient_eos)
    rejected = encode_answer(tokenizer, item["prompt"], item["rejected"], cutoff_len, efficient_eos)
    if chosen is None or rejected is None:
        return None
    (p_c, c), (p_r, r) = chosen, rejected
    n = next((i for i, (a, b) in enumerate(zip(p_c, p_r, strict=False)) if a != b), min(len(p_c), len(p_r)))
    return {"prompt_ids": p_c[:n], "chosen_ids": p_c[n:] + c, "rejected_ids": p_r[n:] + r}


def encode_prompt(tokenizer, prompt: list[dict], cutoff_len: int) -> list[int] | None:
    """A ppo prompt's ids, as sft tokenizes the prompt of a turn (up to where the answer would
    start); None when longer than cutoff_len (a cut question is another one)."""
    from runner.core.data.templates import prompt_and_answer

    ids, _ = prompt_and_answer(tokenizer, [*prompt, {"role": "assistant", "content": ""}])
    return ids if len(ids) <= cutoff_len else None


def encode_batch(batch: dict[str, list], tokenizer, stage: str, cutoff_len: int, efficient_eos: bool) -> dict:
    """Rows for `stage` (datasets.map, batched): dpo: prompt_ids, chosen_ids, rejected_ids; rm: chosen_ids
    and rejected_ids, each the whole sequence; kto: prompt_ids, completion_ids, label; ppo: input_ids,
    the prompt."""
    reads = stages.STAGES[stage].data
    if reads is stages.PROMPTS:
        prompts = [encode_prompt(tokenizer, item["prompt"], cutoff_len) for item in batch["item"]]
        kept = [ids for ids in prompts if ids is not None]
        return {"input_ids": kept, LENGTH: [len(ids) for ids in kept]}
    if reads is stages.LABELLED:
        keys: tuple[str, ...] = ("prompt_ids", "completion_ids", "label")
    elif stage == "rm":  # TRL's RewardTrainer scores whole sequences: the prompt goes into each
        keys = ("chosen_ids", "rejected_ids")
    else:
        keys = ("prompt_ids", "chosen_ids", "rejected_ids")
    out: dict[str, list] = {k: [] for k in (*keys, LENGTH)}
    for item in batch["item"]:
        if reads is stages.LABELLED:
            encoded = encode_answer(tokenizer, item["prompt"], item["completion"], cutoff_len, efficient_eos)
            if encoded is None:
                continue
            row = {"prompt_ids": encoded[0], "completion_ids": encoded[1], "label": item["label"]}
            length = len(encoded[0]) + len(encoded[1])
        else:
            pair = encode_pair(tokenizer, item, cutoff_len, efficient_eos)
            if pair is None:
                continue
            p = pair["prompt_ids"]
            length = len(p) + max(len(pair["chosen_ids"]), len(pair["rejected_ids"]))
            row = pair if "prompt_ids" in keys else {"chosen_ids": p + pair["chosen_ids"],
                                                     "rejected_ids": p + pair["rejected_ids"]}  # fmt: skip
        for k in keys:
            out[k].append(row[k])
        out[LENGTH].append(length)
    return out


__all__ = ["DataError", "converter", "encode_answer", "encode_batch", "encode_pair", "encode_prompt"]
