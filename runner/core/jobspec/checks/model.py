"""The model: its directory, the code it would run, the adapter it starts from (a directory or an
earlier run) and the chat template its tokenizer must carry."""

from __future__ import annotations

import json
import re
from pathlib import Path

from runner.core import stages
from runner.core.data.labels import FORMATS as LABELLED_FORMATS
from runner.core.data.templates import missing_controls
from runner.core.jobspec.checks.context import Context, unset
from runner.core.jobspec.checks.files import directory, listing
from runner.core.jobspec.checks.modeldir import contents, tokenizer_files
from runner.core.jobspec.job import CONTROL_TOKENS, TEMPLATES, JobSpec
from runner.core.jobspec.partial import Unchecked
from runner.core.jobspec.yaml_loader import Loc
from runner.core.rundir import ADAPTER

_MODEL_FILES = ("config.json",)


def model_dir(spec: JobSpec, at: Context) -> None:
    path = spec.model.path
    if directory(path, at, ("model", "path"), _MODEL_FILES, "a Hugging Face model"):
        at.model_dir = at.base / path
        if spec.model.trust_remote_code:
            _remote_code(at.model_dir, at)
        contents(spec, at, at.model_dir)


def _remote_code(model_dir: Path, at: Context) -> None:
    """The code a model's auto_map names must lie in its directory: code in another hub
    repository (`repo--module.Class`) or a missing module would be fetched from the hub."""
    for name in ("config.json", "tokenizer_config.json"):
        try:
            auto_map = json.loads((model_dir / name).read_text(encoding="utf-8")).get("auto_map") or {}
        except (OSError, ValueError, AttributeError):
            continue
        for key, refs in auto_map.items() if isinstance(auto_map, dict) else ():
            for ref in refs if isinstance(refs, list) else [refs]:
                if not isinstance(ref, str):
                    continue
                repo, _, local = ref.rpartition("--")
                module = local.rsplit(".", 1)[0]
                where = f"{model_dir.name}/{name} auto_map.{key}"
                if repo:
                    at.add(("model", "trust_remote_code"),
                           f"{where} is code in the hub repository '{repo}' ({ref}), which an offline "
                           f"machine cannot fetch: copy {module}.py from that repository into the model "
                           f"directory and change the entry to '{local}'")  # fmt: skip
                elif not (model_dir / f"{module.replace('.', '/')}.py").is_file():
                    at.add(("model", "trust_remote_code"),
                           f"{where} names {module}.py, which the model directory lacks (it would be "
                           "fetched from the hub): copy it in from the model's repository")  # fmt: skip


def adapter(spec: JobSpec, at: Context) -> None:
    value, loc = spec.model.adapter, ("model", "adapter")
    if value is None or unset(value):
        return
    run = earlier_run(value, at.base)
    if run is not None:
        run_saved_adapter(run, loc, at)
    else:
        directory(value, at, loc, ("adapter_config.json",), "a PEFT adapter")


def template(spec: JobSpec, at: Context) -> None:
    name, loc = spec.model.template, ("model", "template")
    if name not in TEMPLATES:
        close = _closest(name, TEMPLATES)
        at.add(loc, f"unknown template '{name}'; " + (f"did you mean '{close}'? " if close else "")
                    + f"known: {', '.join(TEMPLATES)}")  # fmt: skip
        return
    data = stages.STAGES[spec.stage].data
    if at.model_dir is None or data is stages.TEXT or data.classify or _labelled(spec):
        return  # no model to look into, or plain text or a classifier's, which no template renders
    if name in CONTROL_TOKENS:
        vocabulary = _vocabulary(at.model_dir)
        added = spec.model.add_special_tokens
        missing = [t for t in CONTROL_TOKENS[name] if t not in vocabulary and t not in added]
        if vocabulary and missing:
            at.add(loc, missing_controls(name, missing, spec.model.path))
    elif name == "auto" and tokenizer_files(at.model_dir) and not _has_chat_template(at.model_dir):
        at.add(loc, f"the tokenizer in '{spec.model.path}' has no chat_template; name a built-in template "
                    f"({', '.join(TEMPLATES[1:])})")  # fmt: skip


def _labelled(spec: JobSpec) -> bool:
    """Every dataset a classifier's (texts with labels, tagged words: stage eval of a classifier)."""
    try:
        return all(ds.format in LABELLED_FORMATS for ds in spec.data.datasets)
    except Unchecked:  # the schema refused the data section
        return False


def earlier_run(value: str, base: Path):
    """The run that model.adapter names, by its run directory or a run id `runner ls` knows; None
    where the value is no run (an adapter directory, or nothing at all)."""
    from runner.core.errors import RunnerError
    from runner.core.rundir import RunDir, find_run, read_record

    path = base / value
    try:
        if RunDir.holds_run(path) and not (path / "adapter_config.json").exists():
            return read_record(path)
        if not path.exists() and re.fullmatch(r"\d{8}-\d{6}(-[0-9a-f]{0,4})?", value):
            return find_run(value)
    except RunnerError:
        return None
    return None


def run_saved_adapter(run, loc: Loc, at: Context) -> bool:
    """An earlier run to continue: it must have succeeded and saved an adapter."""
    where = f"run {run.id} of job '{run.name}' ({run.run_dir})"
    if run.status != "succeeded":
        at.add(loc, f"{where} {run.status if run.status != 'created' else 'never started'}"
                    f"{', see its train.log' if run.status == 'failed' else ''}; name a run that "
                    "succeeded (`runner ls`), or an adapter directory")  # fmt: skip
        return False
    result = run.dir.result()
    if result is None or result.name != ADAPTER:
        fix = (f"it saved a whole model: set model.path to {result} and leave out model.adapter"
               if result is not None else f"it holds: {listing(Path(run.run_dir))}")  # fmt: skip
        at.add(loc, f"{where} saved no adapter ({run.dir.path / ADAPTER} is missing); {fix}")
        return False
    return True


def run_adapter(value: str, base: Path) -> Path:
    """model.adapter as a directory: an earlier run's adapter/, or the adapter directory itself."""
    run = earlier_run(value, base)
    return run.dir.path / ADAPTER if run is not None else base / value


def _vocabulary(model_dir: Path) -> set[str]:
    """The token strings of a tokenizer.json (empty when there is none to read)."""
    try:
        tokenizer = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    vocab = (tokenizer.get("model") or {}).get("vocab") or {}
    pieces = set(vocab) if isinstance(vocab, dict) else {p[0] for p in vocab if isinstance(p, list) and p}
    return pieces | {t.get("content") for t in tokenizer.get("added_tokens") or [] if isinstance(t, dict)}


def _has_chat_template(model_dir: Path) -> bool:
    if (model_dir / "chat_template.jinja").exists() or (model_dir / "chat_template.json").exists():
        return True
    config = model_dir / "tokenizer_config.json"
    try:
        return bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))
    except (OSError, ValueError):
        return False


def _closest(word: str, options: tuple[str, ...]) -> str | None:
    import difflib

    match = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return match[0] if match else None


CHECKS = (model_dir, adapter, template)
