"""What a run or a model directory holds to load: a base, the adapters on it, the tokenizer and the
chat template, and whether it is a reward model (a value head that scores, not a language model
that writes) or a classifier (a head that labels text: stages cls and ner). Read from files alone
(no torch): the host refuses a run without a result, a reward model or a classifier given to chat or
to a chat server, or an export directory that is not empty, before anything starts; the tools load
what it names."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from runner.core import stages
from runner.core.data.labels import adapter_classifier as _adapter_classifier
from runner.core.data.labels import adapter_task, architectures, classifier_kind, classifier_of, model_config
from runner.core.errors import RunnerError
from runner.core.rundir import ADAPTER, RunDir

PROMPT_PEFT_TYPES = ("PREFIX_TUNING", "P_TUNING", "PROMPT_TUNING")


@dataclass
class Target:
    """Where the weights of something to talk to are."""

    base: str  # a model directory (the base of an adapter, or the whole model)
    adapter: str | None  # a PEFT adapter directory on top of base
    tokenizer: str  # the directory whose tokenizer (and chat template) to use
    template: str = "auto"  # the job's model.template, where known
    trust_remote_code: bool = False
    name: str = "model"
    default_system: str | None = None  # the job's model.default_system, where its spec has one
    # The tokenizer is one a run or an export saved: it carries the job's chat template (and what
    # the job added to it) already, and is used as it is.
    saved_tokenizer: bool = False
    # A reward model (stage rm, or a one-output sequence classifier): base + value head `score`.
    reward: bool = False
    # Adapters merged into the base, in order, before `adapter` goes on top: the sft adapter an rm
    # run merged before training its own adapter and head.
    merged: tuple[str, ...] = ()
    # A classifier (stages cls, ner): "sequence" (a label per text) or "token" (a tag per word);
    # its label set is labels.json beside its weights, or its config's id2label.
    classifier: str | None = None

    def refuse_not_generative(self, what: str) -> None:
        """A reward model scores answers and a classifier labels text: neither writes."""
        if self.classifier:
            stage = next(s.name for s in stages.STAGES.values() if s.data.classify == self.classifier)
            raise ClassifierError(
                f"{self.name} is a text classifier (stage {stage}: a head that labels text, no language model "
                f"head to write with), so it cannot {what}. Its scores on the validation split are in the "
                "run's eval_results.json; `runner serve` answers POST /v1/classify with its labels; `runner "
                "export` writes it with its head (AutoModelFor"
                f"{'Sequence' if self.classifier == 'sequence' else 'Token'}Classification)"
            )
        if self.reward:
            raise RewardModelError(
                f"{self.name} is a reward model (stage rm: a value head that scores an answer, no language "
                f"model head to write one), so it cannot {what}. Its pairwise accuracy on the held-out pairs "
                "is eval_accuracy in the run's results.json; `runner export` writes it as a sequence "
                "classifier (AutoModelForSequenceClassification) with its head"
            )


class RewardModelError(RunnerError):
    exit_code = 2


class ClassifierError(RunnerError):
    exit_code = 2


def resolve(path: str | Path) -> Target:
    """A run directory (its adapter/ or model/), an exported model, or an exported adapter."""
    path = Path(path)
    if RunDir.holds_run(path):
        from runner.core.jobspec.load import load_job

        run = RunDir(path)
        spec = load_job(run.spec_file, files=False)
        m = spec.model
        name = f"{spec.name}/{path.name}"
        system = getattr(m, "default_system", None)
        result = run.result()
        reward = spec.stage == "rm"
        classifier = stages.STAGES[spec.stage].data.classify
        if result is not None and result.name == ADAPTER:
            tokenizer = _tokenizer_dir(result, m.path)
            # rm merges model.adapter into the base and trains a new adapter (runner/train/stages/rm.py);
            # every other stage continues model.adapter, so its adapter/ holds all of it.
            merged = (m.adapter,) if reward and m.adapter else ()
            return Target(m.path, str(result), tokenizer, m.template, m.trust_remote_code, name, system,
                          tokenizer != m.path, reward, merged, classifier)  # fmt: skip
        if result is not None:
            classifier = classifier or classifier_kind(result)
            return Target(str(result), None, str(result), m.template, m.trust_remote_code, name, system, True,
                          reward or (not classifier and is_reward_model(result)), classifier=classifier)  # fmt: skip
        raise RunnerError(f"run {path.name} has no result (no adapter/ or model/ in {path}); "
                          "only a run that finished training can be used")  # fmt: skip
    if (path / "config.json").exists():
        return Target(str(path), None, str(path), name=path.name, saved_tokenizer=True,
                      reward=is_reward_model(path), classifier=classifier_kind(path))  # fmt: skip
    if (path / "adapter_config.json").exists():
        config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
        base = config["base_model_name_or_path"]
        if not base or not Path(base, "config.json").exists():
            raise RunnerError(f"{path} is an adapter whose base model ({base!r}) is not on this machine")
        tokenizer = _tokenizer_dir(path, base)
        classifier = _adapter_classifier(path, config.get("task_type") or "")
        return Target(base, str(path), tokenizer, name=path.name, saved_tokenizer=tokenizer != base,
                      reward=config.get("task_type") == "SEQ_CLS" and not classifier, classifier=classifier)  # fmt: skip
    raise RunnerError(f"{path} is neither a run directory nor a model directory (no run.json, config.json "
                      "or adapter_config.json)")  # fmt: skip


def of_spec(spec) -> Target:
    """What a job spec names: model.path, with model.adapter on top where given."""
    m = spec.model
    tokenizer = _tokenizer_dir(Path(m.adapter), m.path) if m.adapter else m.path
    # A run's model/ (runner eval of a fully trained run) holds the tokenizer the run saved.
    saved = tokenizer != m.path or RunDir.holds_run(Path(m.path).parent)
    classifier = classifier_of(m.path, m.adapter)
    reward = not classifier and (
        is_reward_model(Path(m.path)) or bool(m.adapter and adapter_task(m.adapter) == "SEQ_CLS")
    )
    return Target(m.path, m.adapter, tokenizer, m.template, m.trust_remote_code, spec.name,
                  getattr(m, "default_system", None), saved, reward, classifier=classifier)  # fmt: skip


def is_reward_model(model_dir: str | Path) -> bool:
    """A model directory saved as a one-output sequence classifier (a reward model's value head)."""
    config = model_config(model_dir)
    if classifier_kind(model_dir) or not any(
        a.endswith("ForSequenceClassification") for a in architectures(config)
    ):
        return False
    return len(config.get("id2label") or {"0": "", "1": ""}) == 1


def _tokenizer_dir(adapter: Path, base: str) -> str:
    return str(adapter) if (adapter / "tokenizer_config.json").exists() else base


def peft_type(adapter: str | Path) -> str:
    return json.loads(Path(adapter, "adapter_config.json").read_text(encoding="utf-8")).get("peft_type", "")


class ExportError(RunnerError):
    """An export that cannot be written as asked."""

    exit_code = 2


def check_out(out: Path, force: bool) -> None:
    """Refuse a non-empty OUT unless forced; nothing is written before this passes."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"{out} is not empty; choose a new directory, or pass --force to replace it")


def follow_umask(root: Path) -> None:
    """Directories 0777 and files 0666 less the umask, as any tool writes them (a temporary
    directory is 0700, and some libraries write 0600 files)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(root, 0o777 & ~mask)
    for here, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(Path(here, name), 0o777 & ~mask)
        for name in files:
            os.chmod(Path(here, name), 0o666 & ~mask)
