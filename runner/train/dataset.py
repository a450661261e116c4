"""Files -> a tokenized `datasets.Dataset`, mixed, cached, split.

Tokenizing is done once per content: the cache key hashes the data files, the data
section of the spec, the chat template, the tokenizer files and this package's
preprocessing code, so an unchanged rerun loads the result from OUTPUT/.cache/data/KEY
and a change to any of them tokenizes again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import uuid
from pathlib import Path

from datasets import Dataset, concatenate_datasets, disable_progress_bars, interleave_datasets, load_from_disk
from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

from runner.core.data import readers as data
from runner.core.data.readers import DataError
from runner.core.data.templates import BUILTIN, IGNORE, LENGTH, encode
from runner.core.jobspec.job import JobSpec

log = logging.getLogger(__name__)
# The preprocessing code, hashed into the key (paths under the runner package).
CODE = ("core/data/readers.py", "core/data/templates.py", "core/data/preference.py", "train/dataset.py")
_TOKENIZER_FILES = ("tokenizer", "vocab", "merges", "special_tokens_map", "added_tokens", "chat_template")
STATS = "runner-stats.json"  # the figures of a tokenized set, kept beside it in the cache
last_stats: dict = {}  # those of the set this process built last (results.json, preview)
_PARALLEL_FROM = 20_000  # records; below this one process is faster than starting workers


def build(spec: JobSpec, tokenizer) -> tuple[Dataset, Dataset | None]:
    """Training and evaluation rows for the spec's stage (input_ids, labels)."""
    from accelerate import PartialState

    if not (sys.stderr.isatty() or os.environ.get("RUNNER_TTY") == "1"):
        disable_progress_bars()  # bars only clutter a log file

    directory = cache_dir(spec, tokenizer) if spec.data.cache else None
    # In a distributed job the first process of each machine tokenizes; the others then load.
    with PartialState().local_main_process_first():
        if directory and (directory / "dataset_info.json").exists():
            log.info("tokenized data from cache %s", directory)
            rows = load_from_disk(str(directory))
            stats = _read_stats(directory)
        else:
            rows, stats = tokenize(spec, tokenizer)
            if directory:
                _save(rows, directory, stats)
    last_stats.clear()
    last_stats.update(stats)
    log.info("%d training rows, %d tokens", len(rows), sum(rows[LENGTH]))
    return split(rows, spec)


def tokenize(spec: JobSpec, tokenizer) -> tuple[Dataset, dict]:
    """Tokenized rows and their figures: records read from each dataset, bad records skipped in
    each, samples dropped by cutoff_len."""
    skipped: list[int] = []
    loaded = data.load(spec.data, spec.training.seed, skipped, spec.stage)
    records = [len(items) for items in loaded]  # per dataset, in the spec's order
    sources = [Dataset.from_list([{"item": item} for item in items]) for items in loaded]
    mixed = mix(sources, spec)
    log.info("tokenizing %d records", len(mixed))
    workers = spec.data.preprocessing_workers or (
        min(8, os.cpu_count() or 1) if len(mixed) >= _PARALLEL_FROM else None
    )
    encode_fn, kwargs = (
        (_encode_texts, {"block": spec.data.cutoff_len})
        if spec.stage == "pt"
        else (
            _encode_conversations,
            {"cutoff_len": spec.data.cutoff_len, "efficient_eos": uses_efficient_eos(spec)},
        )
    )
    if spec.stage in data.PREFERENCE_STAGES:
        from runner.core.data.preference import encode_batch

        encode_fn, kwargs = encode_batch, {**kwargs, "stage": spec.stage}
    rows = mixed.map(encode_fn, batched=True, num_proc=workers, remove_columns=["item"],
                     fn_kwargs={"tokenizer": tokenizer, **kwargs}, new_fingerprint=uuid.uuid4().hex,
                     desc="tokenizing")  # fmt: skip
    if spec.stage == "pt":
        if not len(rows):
            raise DataError("the text datasets produce no tokens")
        return rows, {"records": records, "skipped": skipped}
    dropped = len(mixed) - len(rows)
    what = "prompt(s) were longer than" if spec.stage == "ppo" else "sample(s) had no answer left within"
    if dropped:
        log.warning("%d %s cutoff_len=%d and were dropped", dropped, what, spec.data.cutoff_len)
    if not len(rows):
        where = "every prompt is longer than" if spec.stage == "ppo" else "every answer starts beyond"
        raise DataError(
            f"no sample is left after tokenization: {where} cutoff_len={spec.data.cutoff_len}; raise data.cutoff_len"
        )
    return rows, {"records": records, "skipped": skipped, "dropped": dropped}


def mix(sources: list[Dataset], spec: JobSpec) -> Dataset:
    d = spec.data
    if len(sources) == 1 or d.mix == "concat":
        mixed = concatenate_datasets(sources)
    else:
        strategy = "first_exhausted" if d.mix == "interleave_under" else "all_exhausted"
        mixed = interleave_datasets(sources, probabilities=d.mix_probs, seed=spec.training.seed,
                                    stopping_strategy=strategy)  # fmt: skip
    if d.max_samples and len(mixed) > d.max_samples:
        mixed = mixed.select(range(d.max_samples))
    return mixed


def _encode_conversations(
    batch: dict[str, list], tokenizer, cutoff_len: int, efficient_eos: bool
) -> dict[str, list]:
    out: dict[str, list] = {"input_ids": [], "labels": []}
    for messages in batch["item"]:
        row = encode(tokenizer, messages, cutoff_len, efficient_eos=efficient_eos)
        if row is not None:
            out["input_ids"].append(row["input_ids"])
            out["labels"].append(row["labels"])
    out[LENGTH] = [len(ids) for ids in out["input_ids"]]
    return out


def uses_efficient_eos(spec: JobSpec) -> bool:
    template = BUILTIN.get(spec.model.template)
    return bool(template and template.efficient_eos)


def _encode_texts(batch: dict[str, list], tokenizer, block: int) -> dict[str, list]:
    """Every text + eos, concatenated, cut into blocks of `block` tokens (the last may be shorter)."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    for text in batch["item"]:
        stream += tokenizer(text, add_special_tokens=True)["input_ids"] + eos
    blocks = [stream[i : i + block] for i in range(0, len(stream), block)]
    blocks = [b for b in blocks if len(b) > 1]
    return {"input_ids": blocks, "labels": blocks, LENGTH: [len(b) for b in blocks]}


def split(rows: Dataset, spec: JobSpec) -> tuple[Dataset, Dataset | None]:
    size = spec.data.val_size
    if not size:
        return rows, None
    n_val = int(size) if size >= 1 else max(1, round(size * len(rows)))
    if n_val >= len(rows):
        raise DataError(
            f"data.val_size={size} leaves no training samples: the data makes only {len(rows)} row(s); "
            "lower val_size or add data"
        )
    parts = rows.train_test_split(test_size=n_val, seed=spec.training.seed)
    return parts["train"], parts["test"]


# --- batches ---------------------------------------------------------------------------------


def collator(spec: JobSpec, tokenizer):
    """Padded batches; or, with data.packing, one row per micro-batch with no padding at all.

    A packed row restarts position_ids at every sample. transformers reads those restarts
    as sample boundaries: flash-attention runs variable-length kernels, flex attention and
    sdpa get a block-diagonal mask. Either way no token attends to another sample.
    """
    if spec.data.packing:
        return WithoutLength(DataCollatorWithFlattening(separator_id=IGNORE))
    return WithoutLength(DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE))


class WithoutLength:
    """The length column serves the samplers; the model must not receive it."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, features: list[dict]) -> dict:
        return self.collate([{k: v for k, v in f.items() if k != LENGTH} for f in features])


# --- the cache -----------------------------------------------------------------------------


def cache_dir(spec: JobSpec, tokenizer) -> Path:
    return Path(spec.output.dir) / ".cache" / "data" / cache_key(spec, tokenizer)


def cache_key(spec: JobSpec, tokenizer) -> str:
    h = hashlib.sha256()
    ignored = {"val_size", "preprocessing_workers", "cache", "packing", "dataset_dir"}
    settings = spec.data.model_dump(mode="json", exclude=ignored)
    for ds in settings["datasets"]:
        ds.pop("path")  # the content counts, not where it lies
        ds.pop("name")
    mixing = {"stage": spec.stage, "data": settings}
    interleaved = spec.data.mix != "concat" and len(spec.data.datasets) > 1
    if interleaved or any(ds.num_samples for ds in spec.data.datasets):
        mixing["seed"] = spec.training.seed  # interleaving and num_samples draw from it
    _feed(h, "spec", json.dumps(mixing, sort_keys=True).encode())
    for i, ds in enumerate(spec.data.datasets):
        for f in data.files(ds):
            _feed(h, f"data{i}/{f.name}", _file_digest(f))
    _feed(h, "template", (getattr(tokenizer, "chat_template", None) or "").encode())
    _feed(h, "template-eos", str(uses_efficient_eos(spec)).encode())
    _feed(h, "added-tokens", json.dumps(tokenizer.get_added_vocab(), sort_keys=True).encode())
    model = Path(spec.model.path)
    for f in sorted(model.iterdir()):
        if f.is_file() and f.name.startswith(_TOKENIZER_FILES) or f.suffix == ".model":
            _feed(h, f"tokenizer/{f.name}", _file_digest(f))
    here = Path(__file__).parents[1]
    for name in CODE:
        _feed(h, f"code/{name}", (here / name).read_bytes())
    return h.hexdigest()[:32]


def _feed(h, label: str, payload: bytes) -> None:
    h.update(f"{label}\0{len(payload)}\0".encode())
    h.update(payload)


def _file_digest(path: Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.digest()


def _read_stats(directory: Path) -> dict:
    try:
        return json.loads((directory / STATS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # a cache written before the figures were kept


def _save(rows: Dataset, directory: Path, stats: dict) -> None:
    """Write to a temporary sibling, then rename: a reader never sees a half-written cache. The
    first process of every machine may write (machines can share the directory): each writes its
    own temporary copy, one rename wins, and a failed cache never fails the job."""
    tmp = directory.with_name(f"{directory.name}.tmp-{uuid.uuid4().hex}")  # pids repeat across containers
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        rows.save_to_disk(str(tmp))
        (tmp / STATS).write_text(json.dumps(stats, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, directory)
        log.info("tokenized data cached in %s", directory)
    except Exception as e:  # a cache is an optimization, never a reason to stop
        if (directory / "dataset_info.json").exists():
            log.info("tokenized data was cached in %s by another process", directory)
        else:
            log.warning(
                "could not cache the tokenized data in %s (%s); the next run tokenizes again", directory, e
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
