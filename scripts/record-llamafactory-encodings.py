"""Record LLaMA-Factory's own encodings (input_ids and labels) of the parity conversations, for
tests/integration/test_llamafactory_parity.py to hold runner's to. LLaMA-Factory is no runtime
dependency: this runs once, in a throwaway venv, and the result is committed as data.

  python3 -m venv /tmp/lf && /tmp/lf/bin/pip install --no-deps llamafactory==0.9.5
  /tmp/lf/bin/pip install /path/to/torch-cpu.whl "transformers==5.6.0" "datasets<=4.0.0" \
      "peft<=0.18.1" "accelerate<=1.11.0" numpy pyyaml sentencepiece tiktoken protobuf omegaconf
  # LLaMA-Factory imports its multimodal plugins at start; text needs none of them:
  mkdir /tmp/stubs && touch /tmp/stubs/torchaudio.py /tmp/stubs/av.py && echo /tmp/stubs > \
      /tmp/lf/lib/python3.11/site-packages/stubs.pth
  DISABLE_VERSION_CHECK=1 /tmp/lf/bin/python scripts/record-llamafactory-encodings.py

Inputs: tests/data/templates/parity_conversations.json (written here from CONVERSATIONS below
when missing) and the tokenizers of tests/data/tokenizers (scripts/reference-tokenizers.py).
Output: tests/data/templates/llamafactory_encodings.json.
"""

from __future__ import annotations

import gzip
import json
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
CONVERSATIONS_FILE = DATA / "templates" / "parity_conversations.json"
OUT = DATA / "templates" / "llamafactory_encodings.json"
CUTOFFS = (1024, 40)

# Each template with the real tokenizer(s) of its family's kind (byte-level BPE: Qwen's vocabulary;
# SentencePiece: Mistral's), the control tokens its models' tokenizers have (added as special
# tokens, as those tokenizers hold them), and the bos token where its family has one that the
# tokenizer lacks.
PAIRS: dict[str, dict] = {
    "default": {"tokenizers": ["qwen-bpe", "mistral-sp"]},
    "alpaca": {"tokenizers": ["qwen-bpe", "mistral-sp"]},
    "vicuna": {"tokenizers": ["qwen-bpe", "mistral-sp"]},
    "chatml": {"tokenizers": ["qwen-bpe"]},
    "qwen": {"tokenizers": ["qwen-bpe"]},
    "qwen3_nothink": {"tokenizers": ["qwen-bpe"]},
    "qwen3": {"tokenizers": ["qwen-bpe"], "added": ["<think>", "</think>"]},
    "llama3": {"tokenizers": ["qwen-bpe"], "bos": "<|begin_of_text|>",
               "special": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>"]},
    "glm4": {"tokenizers": ["qwen-bpe"],
             "special": ["[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]},
    "deepseek": {"tokenizers": ["qwen-bpe"], "bos": "<｜begin▁of▁sentence｜>"},
    "deepseek3": {"tokenizers": ["qwen-bpe"], "bos": "<｜begin▁of▁sentence｜>", "special": ["<｜User｜>", "<｜Assistant｜>"]},
    "llama2": {"tokenizers": ["mistral-sp"]},
    "mistral": {"tokenizers": ["mistral-sp"]},
    "chatglm3": {"tokenizers": ["mistral-sp"],
                 "special": ["[gMASK]", "sop", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]},
    "baichuan2": {"tokenizers": ["mistral-sp"], "special": ["<reserved_106>", "<reserved_107>"]},
    "yi": {"tokenizers": ["mistral-sp"], "special": ["<|im_start|>", "<|im_end|>"]},
    "intern2": {"tokenizers": ["mistral-sp"], "special": ["<|im_start|>", "<|im_end|>"]},
    "gemma": {"tokenizers": ["mistral-sp"], "special": ["<start_of_turn>", "<end_of_turn>"]},
    "phi": {"tokenizers": ["mistral-sp"], "special": ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]},
}  # fmt: skip


def conversations() -> list[dict]:
    """The conversations both sides encode: identity records, and answers and prompts whose
    edges a BPE merge would cross (quotes, newlines, brackets, spaces, colons), multi-turn ones,
    system prompts, Chinese, code, and prompts and answers longer than the small cutoff."""
    identity = json.loads((ROOT / "data" / "identity.json").read_text(encoding="utf-8"))
    out = []
    for record in identity[:24]:
        text = record["output"].replace("{{name}}", "小R").replace("{{author}}", "RunnerLab")
        out.append(
            {
                "messages": [
                    {"role": "user", "content": record["instruction"]},
                    {"role": "assistant", "content": text},
                ]
            }
        )
    edges = [
        ("Quote the motto:", '"Measure twice, cut once."'),
        ("Give the JSON key:", '"name"'),
        ("List two colours:", "\n- red\n- blue"),
        ("What is 2+2? Answer in brackets:", "(4)"),
        ("Say hi", " hi"),
        ("Finish the sentence: The sky is", " blue."),
        ("Write code:", "```python\nprint('hi')\n```"),
        ("Number the steps:", "1. Open\n2. Close"),
        ("Say it in French:", "'Bonjour'"),
        ("用一句话介绍北京：", "“北京是中国的首都。”"),
        ("翻译：hello", "：你好"),
        ("Emoji please:", "😀 done"),
        ("Respond with a colon first", ": ok"),
        ("End with a newline\n", "\nnewline first"),
        ("Trailing space ", " leading space"),
        ('Prompt ends in a quote "', '" answer starts with one'),
        ("Tab", "\tindented"),
        ("Dash", "-- dashes"),
        ("Numbers", "2024 was a year."),
        ("Empty-looking", "."),
    ]
    out += [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in edges
    ]
    system = "You are a careful assistant. 回答要简洁。"
    out += [
        {"messages": [{"role": "system", "content": system}, {"role": "user", "content": "Who are you?"},
                      {"role": "assistant", "content": "I am 小R."}]},
        {"messages": [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "Name?"},
                      {"role": "assistant", "content": '{"name": "R"}'}]},
        {"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"},
                      {"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "I am 小R."}]},
        {"messages": [{"role": "system", "content": system}, {"role": "user", "content": "A:"},
                      {"role": "assistant", "content": '"B"'}, {"role": "user", "content": "C:"},
                      {"role": "assistant", "content": "(D)"}, {"role": "user", "content": "E\n"},
                      {"role": "assistant", "content": "\nF"}]},
        {"messages": [{"role": "user", "content": "Think about it:"},
                      {"role": "assistant", "content": "<think>\nshort\n</think>\n\nDone."}]},
    ]  # fmt: skip
    long_prompt = " ".join(f"word{i}" for i in range(60)) + " — summarise:"
    long_answer = "Summary: " + " ".join(f"point{i}" for i in range(50))
    out += [
        {"messages": [{"role": "user", "content": long_prompt}, {"role": "assistant", "content": "Short."}]},
        {"messages": [{"role": "user", "content": "Explain:"}, {"role": "assistant", "content": long_answer}]},
        {"messages": [{"role": "user", "content": long_prompt}, {"role": "assistant", "content": long_answer}]},
        {"messages": [{"role": "system", "content": long_prompt}, {"role": "user", "content": "Go:"},
                      {"role": "assistant", "content": "\"Gone\""}]},
        {"messages": [{"role": "user", "content": "One"}, {"role": "assistant", "content": long_answer},
                      {"role": "user", "content": "Two"}, {"role": "assistant", "content": "(two)"}]},
    ]  # fmt: skip
    return out


def tokenizer(name: str, pair: dict):
    from transformers import AddedToken, AutoTokenizer

    directory = Path(tempfile.mkdtemp())
    source = DATA / "tokenizers" / name
    shutil.copy(source / "tokenizer_config.json", directory)
    (directory / "tokenizer.json").write_bytes(gzip.decompress((source / "tokenizer.json.gz").read_bytes()))
    tok = AutoTokenizer.from_pretrained(str(directory))
    tok.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in pair.get("special", [])], special_tokens=True
    )
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in pair.get("added", [])])
    if pair.get("bos"):
        tok.add_tokens([AddedToken(pair["bos"], special=True, normalized=False)], special_tokens=True)
        tok.bos_token = pair["bos"]
    return tok


def encoder(template_name: str, tok, cutoff_len: int):
    """LLaMA-Factory's supervised encoding of one conversation, with this template and cutoff."""
    from llamafactory.data.processor.supervised import SupervisedDatasetProcessor
    from llamafactory.data.template import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments

    args = DataArguments(template=template_name, cutoff_len=cutoff_len)
    template = get_template_and_fix_tokenizer(tok, args)
    processor = SupervisedDatasetProcessor(template=template, tokenizer=tok, processor=None, data_args=args)

    def encode(conversation: list[dict]) -> list[list[int]]:
        system = conversation[0]["content"] if conversation[0]["role"] == "system" else None
        turns = conversation[1:] if system is not None else conversation
        input_ids, labels = processor._encode_data_example(
            prompt=turns[:-1], response=turns[-1:], system=system, tools=None, images=[], videos=[], audios=[]
        )
        return [input_ids, labels]

    return encode


def main() -> None:
    import llamafactory

    if not CONVERSATIONS_FILE.exists():
        CONVERSATIONS_FILE.write_text(
            json.dumps(conversations(), ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
        )
    records = json.loads(CONVERSATIONS_FILE.read_text(encoding="utf-8"))
    out = {
        "_source": f"LLaMA-Factory {llamafactory.__version__} (SupervisedDatasetProcessor._encode_data_example with "
        "get_template_and_fix_tokenizer), by scripts/record-llamafactory-encodings.py, over "
        "parity_conversations.json; baichuan2 is 0.9.4's registration (0.9.5 dropped it) run by 0.9.5's code.",
        "cutoffs": list(CUTOFFS),
        "pairs": {},
    }
    for name, pair in PAIRS.items():
        if name == "baichuan2":
            from llamafactory.data.formatter import StringFormatter
            from llamafactory.data.template import TEMPLATES, register_template

            if name not in TEMPLATES:
                register_template(name="baichuan2", efficient_eos=True,
                                  format_user=StringFormatter(slots=["<reserved_106>{{content}}<reserved_107>"]))  # fmt: skip
        for tok_name in pair["tokenizers"]:
            rows = {}
            tok = tokenizer(tok_name, pair)
            for cutoff in CUTOFFS:
                encode = encoder(name, tok, cutoff)
                rows[str(cutoff)] = [encode(r["messages"]) for r in records]
            out["pairs"][f"{name}/{tok_name}"] = {
                "template": name, "tokenizer": tok_name, "special": pair.get("special", []),
                "added": pair.get("added", []), "bos": pair.get("bos"), "rows": rows,
            }  # fmt: skip
            print(name, tok_name, "done")
    text = json.dumps(out, ensure_ascii=False, separators=(",", ":"))
    OUT.write_text(text.replace('"pairs":{', '"pairs":{\n').replace('},"', '},\n"') + "\n", encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
