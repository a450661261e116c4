"""Built-in templates against the formats they claim: LLaMA-Factory's slots for the same name,
and the chat templates the models ship, on tokenizers that carry each model's special tokens.

tests/data/templates/llamafactory.json holds LLaMA-Factory's slots; models.json each family's
special tokens and, where it ships one, its own chat template. The reference renderer here
follows LLaMA-Factory's rules (system on the first turn, default_system, fused system,
efficient eos) and shares no code with runner's templates.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from tests.conftest import DATA

pytestmark = pytest.mark.integration
LF = json.loads((DATA / "templates" / "llamafactory.json").read_text(encoding="utf-8"))
MODELS = {k: v for k, v in json.loads((DATA / "templates" / "models.json").read_text(encoding="utf-8")).items()
          if not k.startswith("_")}  # fmt: skip
SYSTEM = {"role": "system", "content": "You are helpful."}
TURNS = [
    {"role": "user", "content": "你好"},
    {"role": "assistant", "content": "你好！"},
    {"role": "user", "content": "Who are you?"},
    {"role": "assistant", "content": "I am 小R."},
]
CONVERSATIONS = {"with system": [SYSTEM, *TURNS], "without system": TURNS}


def family_tokenizer(tiny_model: Path, family: dict):
    """The tiny byte-level tokenizer with a model family's special tokens, eos and bos."""
    from runner.train.model import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model))
    tokenizer.add_special_tokens(
        {"additional_special_tokens": family["special"]}, replace_extra_special_tokens=False
    )
    tokenizer.add_special_tokens(
        {"eos_token": family["eos"], **({"bos_token": family["bos"]} if "bos" in family else {})}
    )
    return tokenizer


def llamafactory_pairs(name: str, messages: list[dict], bos: str, eos: str) -> list[tuple[str, str]]:
    """(prompt, answer) text per turn, as LLaMA-Factory composes them from its slots."""
    slots = LF[name]

    def fill(slot: str, content: str = "") -> str:
        return (
            slot.replace("{{content}}", content).replace("{{eos_token}}", eos).replace("{{bos_token}}", bos)
        )

    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    turns = messages[1:] if system else messages
    system = system or slots.get("default_system", "")
    texts = []
    for i, message in enumerate(turns):
        head, content = "", message["content"]
        if i == 0:
            head = fill(slots.get("prefix", ""))
            if system and slots.get("fuse_system"):
                content = fill(slots["system"], system) + content
            elif system:
                head += fill(slots.get("system", "{{content}}"), system)
        texts.append(head + fill(slots[message["role"]], content))
    return list(zip(texts[::2], texts[1::2], strict=True))


@pytest.mark.parametrize("family", sorted(MODELS))
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
def test_builtin_renders_and_labels_as_llamafactory(tiny_model, family, conversation):
    from runner.core.data.templates import BUILTIN, IGNORE, apply_template, encode

    spec = MODELS[family]
    name = spec["template"]
    tokenizer = family_tokenizer(tiny_model, spec)
    apply_template(tokenizer, name)  # refuses a control token the vocabulary lacks
    messages = CONVERSATIONS[conversation]
    efficient = BUILTIN[name].efficient_eos
    row = encode(tokenizer, messages, cutoff_len=4096, efficient_eos=efficient)
    pairs = llamafactory_pairs(name, messages, tokenizer.bos_token or "", tokenizer.eos_token)

    text = "".join(prompt + answer for prompt, answer in pairs) + (tokenizer.eos_token if efficient else "")
    assert tokenizer.decode(row["input_ids"]) == text
    trained = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label == t]
    answers = "".join(answer for _, answer in pairs) + (tokenizer.eos_token if efficient else "")
    assert tokenizer.decode(trained) == answers
    # Efficient eos: every prompt after the first starts with a position labelled eos.
    relabelled = [i for i, (t, label) in enumerate(zip(row["input_ids"], row["labels"], strict=True))
                  if label not in (IGNORE, t)]  # fmt: skip
    assert all(row["labels"][i] == tokenizer.eos_token_id for i in relabelled)
    assert len(relabelled) == (len(pairs) - 1 if efficient else 0)
    for i in relabelled:  # ... at the first token of the next prompt
        assert tokenizer.decode(row["input_ids"][i:]).startswith(pairs[1][0][:3])
    # chat asks with the prompt of the last turn
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    assert prompt == "".join(p + a for p, a in pairs[:-1]) + pairs[-1][0]


@pytest.mark.parametrize("family", sorted(f for f in MODELS if "chat_template" in MODELS[f]))
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
def test_builtin_renders_as_the_models_own_template(tiny_model, family, conversation):
    from runner.core.data.templates import apply_template

    spec = MODELS[family]
    ours, theirs = family_tokenizer(tiny_model, spec), family_tokenizer(tiny_model, spec)
    apply_template(ours, spec["template"])
    theirs.chat_template = spec["chat_template"]
    messages = CONVERSATIONS[conversation]
    for generation_prompt in (False, True):
        sent = messages[:-1] if generation_prompt else messages
        a = ours.apply_chat_template(sent, tokenize=False, add_generation_prompt=generation_prompt)
        b = theirs.apply_chat_template(sent, tokenize=False, add_generation_prompt=generation_prompt)
        if "official_differs" in spec:  # chatglm3: the one documented difference, and no other
            assert a != b
            b = b.replace("\n ", "\n")
        assert a == b


def test_default_system_overrides_the_templates_own(tiny_model):
    from runner.core.data.templates import apply_template

    tokenizer = family_tokenizer(tiny_model, MODELS["qwen2.5"])
    apply_template(tokenizer, "qwen", "你是客服助手。")
    text = tokenizer.apply_chat_template(TURNS[:2], tokenize=False)
    assert text.startswith("<|im_start|>system\n你是客服助手。<|im_end|>\n<|im_start|>user\n你好")
    apply_template(tokenizer, "qwen", "")  # none at all
    assert tokenizer.apply_chat_template(TURNS[:2], tokenize=False).startswith("<|im_start|>user\n")
    apply_template(tokenizer, "chatml", "Be brief.")  # any template, and the one a run saves
    assert "<|im_start|>system\nBe brief.<|im_end|>" in tokenizer.apply_chat_template(
        TURNS[:2], tokenize=False
    )


def test_missing_control_tokens_are_refused_with_the_fix(tiny_model):
    from runner.core.data.templates import add_special_tokens, apply_template
    from runner.core.errors import RunnerError

    tokenizer = family_tokenizer(tiny_model, MODELS["default"])  # the tiny one: no llama3 tokens
    with pytest.raises(RunnerError) as refused:
        apply_template(tokenizer, "llama3")
    message = str(refused.value)
    assert message.startswith(
        "model.template llama3 needs '<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>'"
    )
    assert 'model.add_special_tokens: ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]' in message
    assert add_special_tokens(tokenizer, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]) == [
        "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]  # fmt: skip
    apply_template(tokenizer, "llama3")  # now accepted
    assert len(tokenizer("<|eot_id|>", add_special_tokens=False)["input_ids"]) == 1


# --- SentencePiece: each prompt and each answer tokenized on its own, as LLaMA-Factory does ----


@pytest.fixture(scope="module")
def sentencepiece_tokenizer(tmp_path_factory):
    """A SentencePiece BPE model trained here, on the spot, loaded as transformers loads one."""
    spm = pytest.importorskip("sentencepiece")
    from transformers import AutoTokenizer

    texts = ["Who are you? I am a small model.", "Tell me about the weather today.",
             "The answer is forty two.", "你好！我是小R。", "### Instruction:", "### Response:"] * 40  # fmt: skip
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=400, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, hard_vocab_limit=False, minloglevel=2,
    )  # fmt: skip
    directory = tmp_path_factory.mktemp("sentencepiece")
    (directory / "tokenizer.model").write_bytes(model.getvalue())
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "add_bos_token": False,
    }))  # fmt: skip
    return AutoTokenizer.from_pretrained(directory, local_files_only=True)


@pytest.mark.parametrize("name", ["alpaca", "default", "mistral"])
def test_sentencepiece_answers_are_tokenized_apart_from_their_prompts(sentencepiece_tokenizer, name):
    from runner.core.data.templates import apply_template, encode, turn_pairs

    tokenizer = sentencepiece_tokenizer
    apply_template(tokenizer, name)
    messages = [SYSTEM, *TURNS]
    row = encode(tokenizer, messages, cutoff_len=4096)
    pairs = turn_pairs(tokenizer, messages)
    assert row["input_ids"] == [t for prompt, answer in pairs for t in prompt + answer]
    trained = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100]
    assert trained == [t for _, answer in pairs for t in answer]
    # an answer is what the tokenizer makes of it alone, whatever prompt precedes it
    answer = tokenizer(" I am 小R." if name == "mistral" else "I am 小R.", add_special_tokens=False)[
        "input_ids"
    ]
    assert pairs[-1][1][: len(answer)] == answer
    assert "I am 小R." in tokenizer.decode(trained) and "Who are you?" not in tokenizer.decode(trained)
