"""Build a tiny, randomly initialised model for offline tests and demos: a Llama-style causal LM,
or (--kind bert) a BERT-style encoder for the classification stages.

The model and its tokenizer are created from scratch (nothing is downloaded), so the training
pipeline can be exercised end to end on a laptop or an air-gapped server. The Llama's tokenizer is
a byte-level BPE trained on the fly; the encoder's a cased WordPiece whose vocabulary holds every
CJK character as a token of its own, as bert-base-chinese's does. The output directory loads with
``AutoModelForCausalLM`` (or, for the encoder, ``AutoModelForSequenceClassification`` and
``AutoModelForTokenClassification``, whose heads then start untrained, as on bert-base-cased) and
``AutoTokenizer``, with ``local_files_only=True``.

Usage: ``python -m runner.train.tools.tiny OUT_DIR [--seed N] [--kind llama|bert]``
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from pathlib import Path

from runner.core import offline

logger = logging.getLogger(__name__)

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [PAD_TOKEN, IM_START, IM_END]

# ChatML as used by Qwen, minus Qwen's default system prompt so that a prompt
# rendered here is exactly what the fine-tuning data contained.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# The demo data set lives next to the package in the source tree; when the package
# is installed without it the built-in corpus below is still enough for merges.
_DEMO_DATASET = Path(__file__).resolve().parents[3] / "data" / "identity.json"

# Mixed Chinese/English text so the BPE learns merges for common CJK characters,
# not only for ASCII; otherwise every Chinese character costs three byte tokens.
_CORPUS = [
    "我是一个人工智能助手，可以回答问题、写作、翻译和总结文本。",
    "你好！很高兴认识你，请问有什么可以帮您的吗？",
    "我们在离线服务器上微调大语言模型，不需要访问互联网。",
    "微调可以让模型学会新的名字、新的风格和新的知识。",
    "全量微调会更新所有参数，而 LoRA 只训练少量低秩矩阵。",
    "训练数据使用 JSON 格式，每条样本包含指令、输入和输出。",
    "请把模型权重复制到服务器的本地目录，然后启动训练任务。",
    "学习率太大会让训练不稳定，太小则收敛很慢。",
    "训练完成后，我们用贪心解码检查模型的回答是否正确。",
    "显卡内存不够时，可以减小批大小或者使用梯度累积。",
    "这个小模型的参数是随机初始化的，只用于测试流程。",
    "分词器把文本切分成词元，模型再预测下一个词元。",
    "小明今天在实验室里跑了三个训练任务，都成功了。",
    "请用中文回答：你叫什么名字？谁开发了你？",
    "介绍一下你自己，说说你能做什么。",
    "我们的团队负责开发和维护这个命令行工具。",
    "没有网络的机器也能完成模型的训练、评估和导出。",
    "日志会记录每一步的损失值和学习率。",
    "检查点保存在输出目录中，可以随时恢复训练。",
    "Fine-tuning adapts a pretrained language model to a new task or persona.",
    "The runner CLI fine-tunes large language models on offline servers.",
    "Copy the model weights to a local directory before starting the job.",
    "Full fine-tuning updates every parameter, while LoRA trains small low-rank adapters.",
    "The training data is a JSON list of instruction, input and output records.",
    "A learning rate that is too high makes training unstable.",
    "After training we check the greedy answers of the model.",
    "Hello! I am an AI assistant. How can I help you today?",
    "Who are you, what is your name, and who made you?",
    "Please introduce yourself in one sentence.",
    "The tokenizer splits text into tokens and the model predicts the next token.",
    "Checkpoints are written to the output directory so a job can resume.",
    "Reduce the batch size or use gradient accumulation when memory is short.",
    "This tiny model has random weights and only exists to test the pipeline.",
    "Logs record the loss and learning rate at every step.",
    "No internet access is needed to train, evaluate or export the model.",
]


def _training_texts() -> list[str]:
    texts = list(_CORPUS)
    if _DEMO_DATASET.is_file():
        records = json.loads(_DEMO_DATASET.read_text(encoding="utf-8"))
        for rec in records:
            texts.extend(str(rec.get(key, "")) for key in ("instruction", "input", "output"))
    else:
        logger.debug("demo dataset %s not found; tokenizer uses the built-in corpus only", _DEMO_DATASET)
    return [t for t in texts if t]


def _build_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        # Seed all 256 bytes so any text, including unseen characters, is encodable.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_texts(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        bos_token=None,
        unk_token=None,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=1024,
        padding_side="right",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(
    out_dir: str | Path,
    *,
    seed: int = 0,
    vocab_size: int = 2048,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 256,
    # RoPE takes any position; 4096 lets the tiny model stand in for the real models of the shipped
    # jobs (cutoff_len up to 2048, where validate refuses more than a model's positions).
    max_position_embeddings: int = 4096,
) -> Path:
    """Create a random-weight Llama causal LM plus tokenizer in ``out_dir``.

    ``vocab_size`` is an upper bound for the BPE vocabulary; the small corpus may
    yield fewer tokens, and the embedding matrix is sized to the real tokenizer
    so generation can never emit an id the tokenizer cannot decode.
    The result is deterministic for a given ``seed``. Returns ``out_dir``.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = _build_tokenizer(vocab_size)
    tokenizer.model_max_length = max_position_embeddings

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    # Weight init draws from the global RNGs; seed them all for reproducible files.
    random.seed(seed)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )

    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    from runner.train.callbacks import share

    share(Path(out))
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("tiny model (%d params, vocab %d) written to %s", n_params, len(tokenizer), out)
    return out


# --- the encoder --------------------------------------------------------------------------------

BERT_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_CJK = (0x4E00, 0x9FFF)  # CJK Unified Ideographs: one token each, as in bert-base-chinese's vocabulary
_CJK_PUNCTUATION = "，。！？；：、“”‘’（）《》【】…—"


# English words the encoder's vocabulary holds whole (others are spelt out): everyday review, news
# and support-ticket words, so small example sets read as words rather than letters.
_ENCODER_WORDS = """
the a an and or but not no is was were are be been it this that these those we you he she they i my our
your their his her its of in on at for to from with by about after before yesterday today tomorrow
food service room coffee staff pizza music pasta soup bread waiter waitress price prices bill hotel
restaurant order delivery product quality support account card bank loan payment refund password app
terrible awful worst poor disappointing bland okay average fine good nice pleasant excellent amazing
perfect great bad slow fast rude friendly cheap expensive fair fresh cold hot delicious clean dirty
love hate like recommend never again always very really too so much more most less best
lives works hired visited met said went came bought sold opened closed called asked
company corp inc university bank city country river street
John Mary Smith Anna Berg Li Wei Paris London Berlin Tokyo New York Hong Kong Beijing Shanghai
Acme Globex United Nations Google Microsoft Apple Huawei
"""


def _wordpiece_vocab() -> list[str]:
    """Specials, every printable ASCII character (alone and as a ##continuation, so any English word
    is spelt out rather than lost to [UNK]), the CJK characters and punctuation, then the corpus's
    English words whole."""
    import re

    ascii_chars = [chr(c) for c in range(33, 127)]
    vocab = [*BERT_SPECIAL, *ascii_chars, *(f"##{c}" for c in ascii_chars if c.isalnum())]
    vocab += [chr(c) for c in range(_CJK[0], _CJK[1] + 1)] + list(_CJK_PUNCTUATION)
    texts = [*_training_texts(), _ENCODER_WORDS]
    words = sorted({w for text in texts for w in re.findall(r"[A-Za-z]{2,}", text)})
    seen = set(vocab)
    return vocab + [w for w in words if w not in seen]


def _build_wordpiece():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    vocab = {token: i for i, token in enumerate(_wordpiece_vocab())}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        lowercase=False, handle_chinese_chars=True, strip_accents=False
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return BertTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]",
        mask_token="[MASK]", do_lower_case=False, tokenize_chinese_chars=True, model_max_length=512,
    )  # fmt: skip


def build_tiny_encoder(
    out_dir: str | Path,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 128,
    max_position_embeddings: int = 512,
) -> Path:
    """Create a random-weight BERT (saved as BertForMaskedLM, as bert-base-cased ships) plus its
    WordPiece tokenizer in ``out_dir``; deterministic for a given ``seed``. Returns ``out_dir``."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_wordpiece()
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings, pad_token_id=tokenizer.pad_token_id, dtype="float32",
        # 5x BERT's 0.02: random layers this wide then carry the words to [CLS] (at 0.02 its pooled
        # output hardly differs between texts), so a head learns a small labelled set in tens of steps.
        initializer_range=0.1,
    )  # fmt: skip
    random.seed(seed)
    torch.manual_seed(seed)
    model = BertForMaskedLM(config).to(torch.float32)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    from runner.train.callbacks import share

    share(Path(out))
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("tiny encoder (%d params, vocab %d) written to %s", n_params, len(tokenizer), out)
    return out


def main(argv: list[str] | None = None) -> None:
    offline.enter()
    parser = argparse.ArgumentParser(
        prog="python -m runner.train.tools.tiny", description=__doc__.splitlines()[0]
    )
    parser.add_argument("out_dir", type=Path, help="directory to write the model and tokenizer to")
    parser.add_argument("--seed", type=int, default=0, help="random seed for the weights (default: 0)")
    parser.add_argument("--kind", choices=["llama", "bert"], default="llama",
                        help="llama: a causal LM (default); bert: an encoder for stages cls and ner")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    build = build_tiny_encoder if args.kind == "bert" else build_tiny_model
    out = build(args.out_dir, seed=args.seed)
    print(out)


if __name__ == "__main__":
    main()
