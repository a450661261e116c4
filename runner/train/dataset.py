"""Files -> a tokenized `datasets.Dataset` on disk, mixed, cached, split: in bounded memory.

Records stream from the files through the readers (runner/core/data) to worker processes that
tokenize them (train/encode.py), and the rows are written to an Arrow file as they come: the
training process memory-maps that file, so memory stays flat whatever the size of the data. Only
a draw (num_samples) or interleaving needs the records in random order; those datasets' items are
first written to Arrow on disk, and drawn from there.

Tokenizing is done once per content: the cache key hashes the data files, the data section of the
spec, the chat template, the tokenizer files and the preprocessing code, so an unchanged rerun
loads the result from OUTPUT/.cache/data/KEY (a directory datasets.load_from_disk reads) and a
change to any of them tokenizes again.
"""

from __future__ import annotations

import atexit
import hashlib
import itertools
import json
import logging
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from datasets import Dataset, concatenate_datasets, disable_progress_bars, interleave_datasets, load_from_disk
from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

from runner.core.data import readers as data
from runner.core.data.progress import Meter, duration
from runner.core.data.readers import Cursor, DataError
from runner.core.data.templates import BUILTIN, IGNORE, LENGTH, encode
from runner.core.jobspec.job import JobSpec
from runner.train import encode as encoding

log = logging.getLogger(__name__)
# The preprocessing code, hashed into the key (paths under the runner package).
CODE = ("core/data/readers.py", "core/data/records.py", "core/data/streams.py", "core/data/templates.py",
        "core/data/chat_formats.py", "core/data/preference.py", "train/dataset.py", "train/encode.py")  # fmt: skip
_TOKENIZER_FILES = ("tokenizer", "vocab", "merges", "special_tokens_map", "added_tokens", "chat_template")
STATS = "runner-stats.json"  # the figures of a tokenized set, kept beside it in the cache
last_stats: dict = {}  # those of the set this process built last (results.json, preview)
_PARALLEL_FROM = 20_000  # records (or 8 MiB of files): below, one process is faster than starting workers
_PARALLEL_FROM_BYTES = 8 << 20
_MAX_WORKERS = 16


def build(spec: JobSpec, tokenizer) -> tuple[Dataset, Dataset | None]:
    """Training and evaluation rows for the spec's stage (input_ids, labels)."""

    if not _tty():
        disable_progress_bars()  # bars only clutter a log file

    directory = cache_dir(spec, tokenizer) if spec.data.cache else None
    rows, stats = cached(directory, lambda: _tokenize_into(spec, tokenizer, directory))
    log.info("%d training rows, %d tokens", len(rows), stats.get("tokens") or tokens(rows))
    return split(rows, spec)


def cached(directory: Path | None, make) -> tuple[Dataset, dict]:
    """The rows and figures cached in `directory`, else `make()`'s (which caches them there); the
    figures become `last_stats`. In a distributed job the first process of each machine makes
    them; the others then load."""
    from accelerate import PartialState

    with PartialState().local_main_process_first():
        if directory and (directory / "dataset_info.json").exists():
            log.info("tokenized data from cache %s", directory)
            rows, stats = load_from_disk(str(directory)), _read_stats(directory)
        else:
            rows, stats = make()
    last_stats.clear()
    last_stats.update(stats)
    return rows, stats


def tokens(rows: Dataset) -> int:
    """The tokens of all rows, summed in Arrow (no list of lengths in Python)."""
    import pyarrow.compute as pc

    return int(pc.sum(rows.with_format("arrow")[LENGTH]).as_py() or 0) if len(rows) else 0


def _tty() -> bool:
    return sys.stderr.isatty() or os.environ.get("RUNNER_TTY") == "1"


_scratch: list[Path] = []  # the run directory, where rows that cannot be cached are written


def use_scratch(run_dir: Path) -> None:
    """Rows that are not cached (data.cache: false, or a cache this process cannot write) are
    written under the run directory, which is always writable and on disk (a container's /tmp is
    memory)."""
    _scratch[:] = [Path(run_dir) / ".tokenized"]


def _writable(directory: Path) -> OSError | None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".probe-{uuid.uuid4().hex}"
        probe.mkdir()
        probe.rmdir()
    except OSError as e:
        return e
    return None


def _tokenize_into(spec: JobSpec, tokenizer, directory: Path | None) -> tuple[Dataset, dict]:
    """Tokenize into a temporary sibling of `directory`, then rename it there: a reader never sees
    a half-written cache. The first process of every machine may write (machines can share the
    directory): each writes its own temporary copy and one rename wins. Without a cache
    (data.cache: false), or where this process cannot write the cache (a container's user that
    does not own it), the rows are written under the run directory until this process ends."""
    parent = directory.parent if directory else None
    if parent is not None and (e := _writable(parent)):
        log.warning("cannot write the data cache in %s (%s); the rows are not kept and the next run "
                    "tokenizes again", parent, e.strerror or e)  # fmt: skip
        directory = parent = None
    if parent is None:
        parent = _scratch[0] if _scratch else Path(tempfile.gettempdir())
    tmp = parent / f"{directory.name if directory else 'uncached'}.tmp-{uuid.uuid4().hex}"  # pids repeat
    keep = tmp
    try:
        stats = tokenize(spec, tokenizer, tmp)
        if directory:
            try:
                os.replace(tmp, directory)
                log.info("tokenized data cached in %s", directory)
            except OSError as e:
                if not (directory / "dataset_info.json").exists():
                    log.warning("could not cache the tokenized data in %s (%s); the next run tokenizes again",
                                directory, e)  # fmt: skip
                    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
                    return load_from_disk(str(tmp)), stats
                log.info("tokenized data was cached in %s by another process", directory)
            keep = directory
        else:
            atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        return load_from_disk(str(keep)), stats
    finally:
        if keep != tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def tokenize(spec: JobSpec, tokenizer, into: Path) -> dict:
    """Tokenize the spec's data into the directory `into` (laid out as save_to_disk lays out a
    Dataset); returns its figures: records read from each dataset, bad records skipped in each,
    samples dropped by cutoff_len, rows, tokens, seconds and processes."""
    d = spec.data
    bad = [[0] for _ in d.datasets]
    records = [0] * len(d.datasets)
    size = sum(f.stat().st_size for ds in d.datasets for f in data.files(ds))
    cursor = Cursor(size)
    random_access = any(ds.num_samples for ds in d.datasets) or (d.mix != "concat" and len(d.datasets) > 1)
    if random_access:
        items, total = _drawn(spec, into / "items", records, bad, cursor)
    else:
        items, total = _streamed(spec, records, bad, cursor), None
    large = total >= _PARALLEL_FROM if total is not None else size >= _PARALLEL_FROM_BYTES
    workers = d.preprocessing_workers or (min(_MAX_WORKERS, encoding.cores()) if large else 1)
    meter = Meter(total, cursor.fraction)
    log.info("tokenizing %s with %d process(es)", f"{total} records" if total is not None else
             f"{size / 2**20:,.0f} MiB of data", workers)  # fmt: skip
    written = encoding.write(items, _job(spec), tokenizer, into, workers, meter, every=10 if _tty() else 60)
    shutil.rmtree(into / "items", ignore_errors=True)
    skipped = [b[0] for b in bad]
    if sum(skipped):
        log.warning("skipped %d bad record(s) (data.on_bad_record: skip)", sum(skipped))
    log.info("tokenized %d records into %d rows, %d tokens in %s (%s)", written.records, written.rows,
             written.tokens, duration(meter.seconds), meter.status().split(", ", 2)[-1])  # fmt: skip
    stats: dict[str, Any] = {"records": records, "skipped": skipped}
    if spec.stage == "pt":
        if not written.rows:
            raise DataError("the text datasets produce no tokens")
    else:
        dropped = written.records - written.rows
        what = "prompt(s) were longer than" if spec.stage == "ppo" else "sample(s) had no answer left within"
        if dropped:
            log.warning("%d %s cutoff_len=%d and were dropped", dropped, what, d.cutoff_len)
        if not written.rows:
            where = "every prompt is longer than" if spec.stage == "ppo" else "every answer starts beyond"
            raise DataError(
                f"no sample is left after tokenization: {where} cutoff_len={d.cutoff_len}; raise data.cutoff_len"
            )
        stats["dropped"] = dropped
    stats.update(rows=written.rows, tokens=written.tokens, seconds=round(meter.seconds, 2), workers=workers)
    _describe(into, stats)
    return stats


def _streamed(spec: JobSpec, records: list[int], bad: list[list[int]], cursor: Cursor) -> Iterator[Any]:
    """Every dataset's items one after the other (mix concat), straight from the files."""

    def each(i: int) -> Iterator[Any]:
        ds = spec.data.datasets[i]
        for item in data.items_of(
            ds, spec.data, f"data.datasets[{i}]", bad[i], stage=spec.stage, cursor=cursor
        ):
            records[i] += 1
            yield item

    stream = itertools.chain.from_iterable(each(i) for i in range(len(spec.data.datasets)))
    return itertools.islice(stream, spec.data.max_samples) if spec.data.max_samples else stream


def _drawn(
    spec: JobSpec, scratch: Path, records: list[int], bad: list[list[int]], cursor: Cursor
) -> tuple[Iterator[Any], int]:
    """The items of a draw (num_samples) or an interleaving: each dataset's items written to Arrow
    on disk (JSON text, memory-mapped), drawn and mixed there; the mixed items and their count."""
    import pyarrow as pa

    rng = data.numpy_random(spec.training.seed)  # one stream for every dataset in order, as LLaMA-Factory's
    sources = []
    for i, ds in enumerate(spec.data.datasets):
        every = ds.model_copy(update={"max_samples": None}) if ds.num_samples else ds
        items = data.items_of(
            every, spec.data, f"data.datasets[{i}]", bad[i], stage=spec.stage, cursor=cursor
        )
        path, meter = scratch / f"{i}.arrow", Meter(fraction=cursor.fraction)
        path.parent.mkdir(parents=True, exist_ok=True)
        schema = pa.schema([("item", pa.large_string())])
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as out:
            for chunk in encoding.batches(items):
                out.write_batch(pa.record_batch([pa.array([json.dumps(x, ensure_ascii=False) for x in chunk],
                                                          pa.large_string())], schema=schema))  # fmt: skip
                meter.add(len(chunk))
                if meter.due(60):
                    log.info("reading data.datasets[%d]: %s", i, meter.status())
        table = Dataset.from_file(str(path))
        if ds.num_samples:  # as LLaMA-Factory: draw from every record, then cut to max_samples
            table = table.select(data.draw_indices(len(table), ds.num_samples, rng)[: ds.max_samples])
        records[i] = len(table)
        sources.append(table)
    mixed = mix(sources, spec)
    rows = (json.loads(x) for chunk in mixed.iter(batch_size=encoding.BATCH) for x in chunk["item"])
    return rows, len(mixed)


def _job(spec: JobSpec) -> encoding.Job:
    """What the workers do for the spec's stage."""
    if spec.stage == "pt":
        return encoding.Job(_text_stream, block=spec.data.cutoff_len)
    kwargs = {"cutoff_len": spec.data.cutoff_len, "efficient_eos": uses_efficient_eos(spec)}
    if spec.stage in data.PREFERENCE_STAGES:
        from runner.core.data.preference import encode_batch

        return encoding.Job(encode_batch, {**kwargs, "stage": spec.stage})
    return encoding.Job(_encode_conversations, kwargs)


def save(rows: Dataset, directory: Path, stats: dict) -> None:
    """Cache a set built in memory (the classification stages' rows) as `_tokenize_into` caches a
    streamed one: written to a temporary sibling, then renamed; a failed cache never fails the job."""
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


def _describe(directory: Path, stats: dict) -> None:
    """The files that make `directory` a Dataset load_from_disk reads, and the figures."""
    rows = Dataset.from_file(str(directory / encoding.FILE))
    state = {"_data_files": [{"filename": encoding.FILE}], "_fingerprint": directory.name.split(".tmp-")[0],
             "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
             "_split": None}  # fmt: skip
    info = asdict(rows.info)
    (directory / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
    (directory / STATS).write_text(json.dumps(stats, ensure_ascii=False) + "\n", encoding="utf-8")
    (directory / "dataset_info.json").write_text(json.dumps({k: info[k] for k in sorted(info)}, indent=2),
                                                 encoding="utf-8")  # fmt: skip


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


def _text_stream(batch: dict[str, list], tokenizer) -> dict[str, list]:
    """The texts, each + eos, as one run of token ids (cut into cutoff_len blocks by encode.py)."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids = tokenizer(batch["item"], add_special_tokens=True)["input_ids"] if batch["item"] else []
    return {encoding.STREAM: [t for one in ids for t in itertools.chain(one, eos)]}


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
