"""Items -> tokenized rows in an Arrow file on disk: in bounded memory, on the job's cores.

The calling process reads the items (a stream) and hands batches of them to worker processes that
tokenize; their rows come back in order and are written to disk as they arrive. Memory holds two
batches per worker whatever the size of the data, and the rows are the same, in the same order,
with any number of workers. Stage pt's token stream runs on across batches and is cut into blocks
of cutoff_len as it comes: every block is full but the very last.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from runner.core.data.progress import Meter
from runner.core.data.templates import LENGTH

log = logging.getLogger(__name__)
BATCH = 1000  # items a worker tokenizes at a time
BATCH_CHARS = 4 << 20  # or fewer, when they are long documents
ROWS_PER_BATCH = 50_000  # rows of one record batch in the file, at most
BYTES_PER_BATCH = 32 << 20  # or fewer, when they hold this many bytes
FILE = "data-00000-of-00001.arrow"  # the name save_to_disk gives one shard
STREAM = "stream"  # stage pt: a batch's texts as one run of token ids, cut into blocks here
_IDS = pa.list_(pa.int32())  # token ids and labels: half the disk of int64, any vocabulary


@dataclass
class Job:
    """What the workers run: fn({"item": items}, tokenizer, **kwargs) -> columns (lists); `block`
    (stage pt): fn returns one column STREAM, cut here into rows of `block` tokens."""

    fn: Callable[..., dict[str, list]]
    kwargs: dict[str, Any] = field(default_factory=dict)
    block: int | None = None


@dataclass
class Written:
    records: int = 0  # items read
    rows: int = 0
    tokens: int = 0  # in the rows


def cores() -> int:
    """The cores this process may run on: its CPU affinity, within a container's CPU quota."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    for quota_file, period_file in (("cpu.max", None), ("cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us")):
        try:
            values = Path("/sys/fs/cgroup", quota_file).read_text().split()
            if period_file:
                values.append(Path("/sys/fs/cgroup", period_file).read_text().strip())
            quota, period = values[0], values[1]
            if quota not in ("max", "-1"):
                return max(1, min(n, math.ceil(int(quota) / int(period))))
        except (OSError, ValueError, IndexError):
            continue
    return n


def write(
    items: Iterable[Any],
    job: Job,
    tokenizer,
    directory: Path,
    workers: int,
    meter: Meter,
    every: float = 60.0,
) -> Written:
    """Tokenize `items` into directory/FILE with `workers` processes (1: this one); a progress line
    is logged every `every` seconds."""
    out, written = _Writer(directory / FILE), Written()
    blocks = _Blocks(job.block) if job.block else None

    def take(n: int, batch: pa.RecordBatch) -> None:
        tokens = len(batch) if blocks else 0
        if blocks:
            batch = blocks.add(batch.column(0))
        out.write(batch)
        written.records += n
        meter.add(n, tokens or out.last_tokens)
        if meter.due(every):
            log.info("tokenizing: %s", meter.status())

    try:
        if workers <= 1:
            for chunk in batches(items):
                take(len(chunk), _encode(job, tokenizer, chunk))
        else:
            _parallel(items, job, tokenizer, workers, take)
        if blocks:
            out.write(blocks.last())
    finally:
        out.close()
    written.rows, written.tokens = out.rows, out.tokens
    return written


def _parallel(items: Iterable[Any], job: Job, tokenizer, workers: int, take) -> None:
    # fork: the tokenizer is the parent's, not a pickled copy
    context = multiprocessing.get_context("fork")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start, initargs=(job, tokenizer))
    pending: collections.deque = collections.deque()
    try:
        for chunk in batches(items):
            pending.append((len(chunk), pool.submit(_run, chunk)))
            if len(pending) >= 2 * workers:  # no more in flight: reading may be faster than tokenizing
                n, done = pending.popleft()
                take(n, done.result())
        while pending:
            n, done = pending.popleft()
            take(n, done.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def batches(items: Iterable[Any]) -> Iterator[list[Any]]:
    """Lists of BATCH items, or fewer when their text passes BATCH_CHARS."""
    items = iter(items)
    while True:
        chunk, chars = [], 0
        for item in itertools.islice(items, BATCH):
            chunk.append(item)
            chars += _chars(item)
            if chars >= BATCH_CHARS:
                break
        if not chunk:
            return
        yield chunk


def _chars(item: Any) -> int:
    if isinstance(item, str):
        return len(item)
    if isinstance(item, list):  # a conversation
        return sum(len(m.get("content", "")) for m in item if isinstance(m, dict))
    return 1000


# --- in the workers ---------------------------------------------------------------------------

_job: tuple[Job, Any] | None = None


def _start(job: Job, tokenizer) -> None:
    global _job
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # this process is one of the parallel ones
    _job = (job, tokenizer)


def _run(chunk: list[Any]) -> pa.RecordBatch:
    assert _job is not None
    return _encode(*_job, chunk)


def _encode(job: Job, tokenizer, chunk: list[Any]) -> pa.RecordBatch:
    columns = job.fn({"item": chunk}, tokenizer, **job.kwargs)
    return pa.RecordBatch.from_arrays(
        [pa.array(v, type=_type(k)) for k, v in columns.items()], names=list(columns)
    )


def _type(column: str) -> pa.DataType:
    return {LENGTH: pa.int64(), "label": pa.bool_(), STREAM: pa.int32()}.get(column, _IDS)


# --- in the calling process -------------------------------------------------------------------


class _Blocks:
    """A token stream cut into rows of `size` (input_ids = labels: every token trains), the
    remainder carried into the next batch."""

    def __init__(self, size: int) -> None:
        self.size, self.rest = size, pa.array([], pa.int32())

    def add(self, tokens: pa.Array) -> pa.RecordBatch:
        tokens = pa.concat_arrays([self.rest, tokens])
        n = len(tokens) // self.size * self.size
        self.rest = tokens.slice(n)
        return _rows(tokens.slice(0, n), self.size)

    def last(self) -> pa.RecordBatch:
        """The remainder as one shorter block; a single token teaches nothing and is dropped."""
        rest = pa.concat_arrays([self.rest if len(self.rest) > 1 else self.rest.slice(0, 0)])
        return _rows(rest, max(1, len(rest)))


def _rows(tokens: pa.Array, size: int) -> pa.RecordBatch:
    n = len(tokens) // size
    ids = pa.ListArray.from_arrays(pa.array(range(0, n * size + 1, size), pa.int32()), tokens)
    return pa.RecordBatch.from_arrays(
        [ids, ids, pa.array([size] * n, pa.int64())], names=["input_ids", "labels", LENGTH]
    )


class _Writer:
    """Batches appended to one Arrow stream file, the format datasets memory-maps. Small batches
    are joined into record batches of up to ROWS_PER_BATCH rows or BYTES_PER_BATCH bytes first:
    reading the file touches every record batch's header, and the kernel maps 64 KiB around each
    one, so a file of many small batches would cost the training process memory in proportion to
    the data."""

    def __init__(self, path: Path) -> None:
        self.path, self.rows, self.tokens, self.last_tokens = path, 0, 0, 0
        self._sink: Any = None
        self._writer: Any = None
        self._held: list[pa.RecordBatch] = []
        self._held_rows = self._held_bytes = 0

    def write(self, batch: pa.RecordBatch) -> None:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._sink = pa.OSFile(str(self.path), "wb")
            self._writer = pa.ipc.new_stream(self._sink, batch.schema)
        self.last_tokens = (pc.sum(batch.column(LENGTH)).as_py() or 0) if len(batch) else 0
        if len(batch):
            self._held.append(batch)
            self._held_rows += len(batch)
            self._held_bytes += batch.nbytes
            if self._held_rows >= ROWS_PER_BATCH or self._held_bytes >= BYTES_PER_BATCH:
                self._flush()
        self.rows += len(batch)
        self.tokens += self.last_tokens

    def _flush(self) -> None:
        if self._held:
            for joined in pa.Table.from_batches(self._held).combine_chunks().to_batches():
                self._writer.write_batch(joined)
        self._held, self._held_rows, self._held_bytes = [], 0, 0

    def close(self) -> None:
        if self._writer is not None:
            self._flush()
            self._writer.close()
            self._sink.close()
            self._writer = None
