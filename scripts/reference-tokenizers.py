"""Build the two real tokenizers the template parity tests use, from files PyPI packages ship
(no hub): Qwen's byte-level BPE (dashscope's resources/qwen.tiktoken, the vocabulary of Qwen
1.5 to 3) and Mistral's SentencePiece model (mistral-common's data/tokenizer.model.v1, Mistral
7B v0.1's, built as Llama 2's is). Writes tests/data/tokenizers/{qwen-bpe,mistral-sp}/ with a
gzipped tokenizer.json and its tokenizer_config.json.

Run once, in a throwaway venv that has transformers, tiktoken and protobuf
(PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python where its protobuf is newer than transformers reads):
  pip download --no-deps dashscope==2.0.2 mistral-common==1.13.1 -d /tmp/pkgs
  python scripts/reference-tokenizers.py /tmp/pkgs
"""

from __future__ import annotations

import gzip
import json
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "tokenizers"
# Qwen's pre-tokenizer pattern (tokenization_qwen.py; Qwen2's tokenizer.json splits the same way).
QWEN_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
QWEN_SPECIAL = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}


def member(wheels: Path, package: str, name: str, into: Path) -> Path:
    wheel = next(wheels.glob(f"{package}-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        z.extract(name, into)
    return into / name


def qwen(wheels: Path, work: Path) -> Path:
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = member(wheels, "dashscope", "dashscope/resources/qwen.tiktoken", work)
    out = work / "qwen-bpe"
    out.mkdir()
    converted = TikTokenConverter(
        vocab_file=str(ranks), pattern=QWEN_PATTERN, extra_special_tokens=QWEN_SPECIAL
    )
    converted.converted().save(str(out / "tokenizer.json"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"))
    tokenizer.add_special_tokens({"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"})
    shutil.rmtree(out)
    tokenizer.save_pretrained(str(out))
    return out


def mistral(wheels: Path, work: Path) -> Path:
    """Llama 2's tokenizer.json layout (legacy: every encoded text starts a new word, as
    LLaMA-Factory sees it), built from the SentencePiece model with the classic merge order."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast
    from transformers.utils import sentencepiece_model_pb2 as model_pb2

    proto = model_pb2.ModelProto()
    proto.ParseFromString(
        member(wheels, "mistral_common", "mistral_common/data/tokenizer.model.v1", work).read_bytes()
    )
    vocab = {piece.piece: i for i, piece in enumerate(proto.pieces)}
    scores = {piece.piece: piece.score for piece in proto.pieces}
    merges = []
    for merged, score in scores.items():
        local = [(merged[:i], merged[i:], score) for i in range(1, len(merged))
                 if merged[:i] in vocab and merged[i:] in vocab]  # fmt: skip
        merges += sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]]))
    merges = [(a, b) for a, b, _ in sorted(merges, key=lambda m: m[2], reverse=True)]
    backend = Tokenizer(BPE(vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])  # fmt: skip
    backend.add_special_tokens(
        [AddedToken(t, normalized=False, special=True) for t in ("<unk>", "<s>", "</s>")]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    out = work / "mistral-sp"
    tokenizer.save_pretrained(str(out))
    return out


def keep(built: Path) -> None:
    target = OUT / built.name
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    data = (built / "tokenizer.json").read_bytes()
    (target / "tokenizer.json.gz").write_bytes(gzip.compress(data, mtime=0))
    config = json.loads((built / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("name_or_path", None)
    (target / "tokenizer_config.json").write_text(json.dumps(config, indent=1, ensure_ascii=False) + "\n")


def main() -> None:
    wheels = Path(sys.argv[1])
    with tempfile.TemporaryDirectory() as tmp:
        for build in (qwen, mistral):
            keep(build(wheels, Path(tmp)))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
