"""The stages runner trains, one record each: the one list every other place derives from.

The job spec's `stage` choices (jobspec/job.py), the checks that refuse what a stage cannot do
(jobspec/checks/), which records each data format must hold for it and which dataset_info.json
entries it takes (core/data/), the in-container module that runs it (runner/train/__main__.py)
and the README's stage table all read these records. Plain data: nothing here imports the
schema or the stage modules, so every layer can read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Data:
    """What a stage reads from each record of its datasets: one of those below."""

    what: str  # in messages and docs, e.g. "preference pairs"
    fields: Mapping[str, tuple[str, ...]]  # each format it reads -> the fields a record must have
    # dataset_info.json entries: one with "ranking": true holds pairs, one with columns.kto_tag
    # labelled answers. True: only such entries; False: never; None: either (their prompts serve).
    ranking: bool | None
    labelled: bool | None
    preference: bool  # turned into preference items (core/data/preference.py), not conversations
    # What a classification head learns from it (core/data/labels.py): "sequence", a label (or
    # several) per text; "token", a tag per word. None: a language model's data, read with a template.
    classify: str | None = None

    @property
    def formats(self) -> tuple[str, ...]:
        return tuple(self.fields)

    def required(self, fmt: str) -> tuple[str, ...]:
        """The fields a record of format `fmt` must have; a format this data is not read in has
        its own (a text dataset's `text`), so the readers can still name what is missing."""
        return self.fields.get(fmt) or _OWN_FIELDS[fmt]


TEXT = Data("plain text", {"text": ("text",)}, ranking=False, labelled=False, preference=False)
CONVERSATIONS = Data(
    "conversations", {"alpaca": ("instruction", "output"), "sharegpt": ("conversations",)},
    ranking=False, labelled=False, preference=False,
)  # fmt: skip
PAIRS = Data(
    "preference pairs",
    {"alpaca": ("instruction", "chosen", "rejected"), "sharegpt": ("conversations", "chosen", "rejected")},
    ranking=True, labelled=False, preference=True,
)  # fmt: skip
LABELLED = Data(
    "answers labelled desirable or not",
    {"alpaca": ("instruction", "output", "kto_tag"), "sharegpt": ("conversations", "kto_tag")},
    ranking=False, labelled=True, preference=True,
)  # fmt: skip
# Prompts alone: answer and pair columns are left unread, so sft and pair data serve as they are.
PROMPTS = Data(
    "prompts", {"alpaca": ("instruction",), "sharegpt": ("conversations",)},
    ranking=None, labelled=None, preference=True,
)  # fmt: skip
# Classification: texts (or text pairs) with their label(s), words with a tag each; read as they
# are, never through a chat template.
LABELLED_TEXTS = Data(
    "texts with their label(s)", {"classification": ("text", "label")},
    ranking=False, labelled=False, preference=False, classify="sequence",
)  # fmt: skip
TAGGED_WORDS = Data(
    "words with a tag each", {"tagging": ("tokens", "tags")},
    ranking=False, labelled=False, preference=False, classify="token",
)  # fmt: skip
_OWN_FIELDS = {**CONVERSATIONS.fields, **TEXT.fields, **LABELLED_TEXTS.fields, **TAGGED_WORDS.fields}
# Stage eval: conversations for a language model; a classifier's test set, labelled as it trained.
EVALUATED = Data(
    "conversations (a classifier: texts with their label(s), or tagged words)",
    {**CONVERSATIONS.fields, **LABELLED_TEXTS.fields, **TAGGED_WORDS.fields},
    ranking=False, labelled=False, preference=False,
)  # fmt: skip


# What a stage may do without. The checks (jobspec/checks/stage.py) know how a spec asks for each
# feature; a stage lists those it does not support, and why, in `unsupported`.
FEATURES: dict[str, str] = {  # name -> as the README's stage table shows it
    "prompt learning": "methods `prefix`, `ptuning`, `prompt`",
    "packing": "`data.packing`",
    "val_size": "`data.val_size`",
    "micro_batch_tokens": "`training.micro_batch_tokens`",
    "memory_cap_gib": "`training.memory_cap_gib`",
    "gradient_checkpointing": "`training.gradient_checkpointing`",
    "sequential": "sampling `sequential`",
    "group_by_length": "sampling `group_by_length`",
    "batch_rebalance": "sampling `batch_rebalance`",
    "deepspeed": "`distributed.deepspeed`",
    "logits_on_targets_only": "`training.logits_on_targets_only`",
    "adalora": "method `adalora`",
    "template": "`model.template`",
    "default_system": "`model.default_system`",
}


@dataclass(frozen=True)
class Stage:
    """One stage: what runs it, what it reads, what it does without and what it needs."""

    name: str
    module: str  # the in-container module whose run(spec, run_dir) runs it; never imported here
    data: Data
    summary: str  # one line, for the docs
    trains: bool = True  # False: it trains nothing (eval), so a spec may leave out the method
    unsupported: Mapping[str, str] = field(default_factory=dict)  # FEATURES it lacks -> why
    needs: Mapping[str, str] = field(default_factory=dict)  # spec keys it requires -> what for

    def supports(self, feature: str) -> bool:
        assert feature in FEATURES, feature
        return feature not in self.unsupported


_PROMPT_LEARNING = "it needs a value head or reference model that prompt-learning adapters do not support"
_PREFERENCE_TRAINERS = {
    "prompt learning": _PROMPT_LEARNING,
    "micro_batch_tokens": "the preference trainers batch pairs themselves",
    "memory_cap_gib": "its probe measures sft's forward pass, not a preference step",
    "batch_rebalance": "it balances sft's and pt's micro-batches; the preference trainers batch themselves",
}

_CHAT_TEMPLATE = (
    "a classifier reads each text as it is, with its tokenizer's special tokens ([CLS] ... [SEP]), "
    "never through a chat template"
)
_CLASSIFIER = {
    "prompt learning": "its heads train beside the weights (full, freeze) or low-rank adapters (lora, qlora, "
    "adalora, ia3); prompt-learning adapters are not wired to a classification head",
    "packing": "each text is labelled on its own; packed rows would share one label",
    "micro_batch_tokens": "the classification heads' loss takes no token count to scale micro-batches by",
    "memory_cap_gib": "its probe measures a causal LM's forward pass, not a classifier's",
    "logits_on_targets_only": "a classifier computes no vocabulary logits",
    "template": _CHAT_TEMPLATE,
    "default_system": _CHAT_TEMPLATE,
}

STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("pt", "runner.train.stages.pt", TEXT,
              "continued pretraining: texts joined with the end-of-sequence token, cut into cutoff_len "
              "blocks, every token trained"),
        Stage("sft", "runner.train.stages.sft", CONVERSATIONS,
              "supervised fine-tuning: every assistant turn of single- and multi-turn conversations"),
        Stage("rm", "runner.train.stages.rm", PAIRS,
              "a reward model: a one-output value head trained to score chosen above rejected answers",
              unsupported={**_PREFERENCE_TRAINERS, "packing": "pairs are batched chosen beside rejected, never packed",
                           "logits_on_targets_only": "the reward model scores with a one-output head; it computes "
                                                     "no vocabulary logits"}),
        Stage("dpo", "runner.train.stages.dpo", PAIRS,
              "direct preference optimization: sigmoid, ipo or hinge against a reference; orpo and simpo "
              "without one",
              unsupported={**_PREFERENCE_TRAINERS, "packing": "pairs are batched chosen beside rejected, never packed",
                           "logits_on_targets_only": "TRL's DPO, ORPO and CPO losses read the logits of every "
                                                     "position of chosen and rejected"}),
        Stage("kto", "runner.train.stages.kto", LABELLED,
              "Kahneman-Tversky optimization on unpaired answers labelled desirable or not",
              unsupported={
                  **_PREFERENCE_TRAINERS,
                  "packing": "the KTO trainer batches the answers itself, never packed",
                  "group_by_length": "its KL term pairs each answer with its neighbour in a batch, so batches "
                                     "keep one order, shuffled once",
                  "logits_on_targets_only": "TRL's KTO loss reads the logits of every position of the answer "
                                            "and its KL pair",
              }),
        Stage("ppo", "runner.train.stages.ppo", PROMPTS,
              "PPO: answers generated to the prompts, scored by the reward model of an rm run",
              unsupported={
                  "prompt learning": _PROMPT_LEARNING,
                  "packing": "prompts are generated from one per row, never packed",
                  "val_size": "it evaluates on no held-out split: its measure is the reward model's score, "
                              "logged every step",
                  "micro_batch_tokens": "the PPO trainer batches the prompts and answers itself",
                  "memory_cap_gib": "its probe measures sft's forward pass, not a PPO step",
                  "gradient_checkpointing": "TRL's PPO trainer does not turn it on",
                  "sequential": "TRL's PPO trainer draws its prompts in a random order",
                  "group_by_length": "TRL's PPO trainer draws its prompts in a random order",
                  "batch_rebalance": "TRL's PPO trainer draws its prompts in a random order",
                  "adalora": "TRL's PPO loop steps its optimizer several times a step and calls no hook after "
                             "each, where AdaLoRA must reallocate its rank budget",
                  "deepspeed": "TRL's PPO trainer makes its own accelerator, which never reads the ZeRO "
                               "config, so ZeRO would be dropped silently; several processes still train "
                               "with DDP",
                  "logits_on_targets_only": "TRL's PPO loop computes its own log-probabilities of the "
                                            "generated answers",
              },
              needs={"ppo.reward_model": "a reward model to score the policy's answers: set ppo.reward_model "
                                         "to an rm run (its run directory or run id, `runner ls`) or a reward "
                                         "model's directory; train one with stage rm (jobs/rm.yaml)"}),
        Stage("cls", "runner.train.stages.cls", LABELLED_TEXTS,
              "sequence classification: a label for each text or text pair (several with "
              "classification.multi_label), a head on an encoder (BERT, RoBERTa, Chinese BERT) or a decoder; "
              "accuracy, F1 and a confusion matrix on the validation split",
              unsupported=_CLASSIFIER),
        Stage("ner", "runner.train.stages.ner", TAGGED_WORDS,
              "token classification: a tag for each word (BIO tags for named entities), learnt on the word's "
              "first sub-token; entity-level F1 on the validation split",
              unsupported=_CLASSIFIER),
        Stage("eval", "runner.train.stages.evaluate", EVALUATED,
              "loss, generated answers and BLEU/ROUGE of model.path (+ model.adapter) on the data, as "
              "`runner eval` runs it; a classifier's accuracy, F1 and confusion matrix (entity F1 for ner) "
              "on labelled data; trains nothing", trains=False),
    )
}  # fmt: skip
NAMES = tuple(STAGES)
DEFAULT = "sft"  # a spec without `stage`
PREFERENCE = tuple(s.name for s in STAGES.values() if s.data.preference)
CLASSIFYING = tuple(s.name for s in STAGES.values() if s.data.classify)  # a head that labels text


def table() -> str:
    """The README's stage table (tests/unit/test_stages.py holds the README to it)."""
    rows = ["| stage | what it does | data (formats) | does without |", "| --- | --- | --- | --- |"]
    for s in STAGES.values():
        what = s.summary + "".join(f"; needs `{key}`" for key in s.needs)
        data = f"{s.data.what} ({', '.join(f'`{f}`' for f in s.data.formats)})"
        without = "; ".join(FEATURES[f] for f in FEATURES if not s.supports(f)) or "-"
        rows.append(f"| `{s.name}` | {what} | {data} | {without} |")
    return "\n".join(rows) + "\n"
