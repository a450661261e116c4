"""Datasets -> items: each dataset's records read and converted for the stage (conversations,
texts, pairs, labelled answers or prompts), placeholders filled, samples drawn. Training reads its
data with `load`; `runner validate` reads every record with `check`, so whatever training would
reject is rejected there first."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from typing import Any

from runner.core import stages
from runner.core.data import labels, preference
from runner.core.data.records import (
    DataError,
    alpaca_conversation,
    files,
    fill_placeholders,
    read_records,
    sharegpt_conversation,
    text_field,
)
from runner.core.data.streams import Cursor
from runner.core.jobspec.job import DatasetSpec, DataSpec

log = logging.getLogger(__name__)
PREFERENCE_STAGES = stages.PREFERENCE  # read into preference items, not conversations
__all__ = [
    "PREFERENCE_STAGES",
    "Cursor",
    "DataError",
    "check",
    "draw",
    "draw_indices",
    "files",
    "items_of",
    "load",
]


def load(
    data: DataSpec, seed: int = 42, skipped_per_dataset: list[int] | None = None, stage: str = stages.DEFAULT
) -> list[list[Any]]:
    """Each dataset's items in file order: conversations (lists of messages) or texts; for the
    preference stages, pairs or labelled answers (runner/core/data/preference.py).

    Placeholders are filled and each dataset's max_samples and num_samples applied; mixing and
    the overall max_samples happen later, on the Dataset objects. skipped_per_dataset, when
    given, receives how many bad records each dataset skipped (on_bad_record: skip).
    """
    sources, skipped = [], 0
    rng = numpy_random(seed)  # one stream for every dataset in order, as LLaMA-Factory's global one
    for i, ds in enumerate(data.datasets):
        bad = [0]
        if ds.num_samples:  # as LLaMA-Factory: draw from every record, then cut to max_samples
            every = list(
                items_of(
                    ds.model_copy(update={"max_samples": None}), data, f"data.datasets[{i}]", bad, stage=stage
                )
            )
            items = draw(every, ds.num_samples, rng)[: ds.max_samples]
        else:
            items = list(items_of(ds, data, f"data.datasets[{i}]", bad, stage=stage))
        skipped += bad[0]
        sources.append(items)
        if skipped_per_dataset is not None:
            skipped_per_dataset.append(bad[0])
    if skipped:
        log.warning("skipped %d bad record(s) (data.on_bad_record: skip)", skipped)
    return sources


def draw(items: list[Any], n: int, rng: random.Random | int) -> list[Any]:
    """num_samples as LLaMA-Factory draws them (data/loader.py): a random permutation of every
    record cut to n; beyond the dataset's size, every record once and the rest drawn again with
    replacement. `rng`: numpy_random(seed), or the seed itself."""
    return [items[i] for i in draw_indices(len(items), n, rng)]


def draw_indices(size: int, n: int, rng: random.Random | int) -> list[int]:
    """The positions `draw` takes from `size` records, for records that stay on disk."""
    rng = numpy_random(rng) if isinstance(rng, int) else rng
    picked = _permutation(rng, size)[:n]
    picked += [_interval(rng, size - 1) for _ in range(n - len(picked))]
    return picked


def numpy_random(seed: int) -> random.Random:
    """The stream numpy's legacy global generator gives after np.random.seed(seed), which is what
    transformers.set_seed leaves for LLaMA-Factory's draws: MT19937 seeded by init_genrand
    (numpy's mt19937_seed), whose 32-bit outputs Python's Mersenne Twister yields alike. Pure
    Python: the host side has no numpy."""
    state = [seed & 0xFFFFFFFF]
    for i in range(1, 624):
        state.append((1812433253 * (state[-1] ^ (state[-1] >> 30)) + i) & 0xFFFFFFFF)
    rng = random.Random()
    rng.setstate((3, (*state, 624), None))
    return rng


def _interval(rng: random.Random, top: int) -> int:
    """numpy's random_interval: a value in [0, top] by masked rejection of 32-bit draws."""
    if top <= 0:
        return 0
    mask = (1 << top.bit_length()) - 1
    while (value := rng.getrandbits(32) & mask) > top:
        pass
    return value


def _permutation(rng: random.Random, n: int) -> list[int]:
    """numpy's legacy permutation(n): a Fisher-Yates shuffle of range(n), from the end."""
    out = list(range(n))
    for i in reversed(range(1, n)):
        j = _interval(rng, i)
        out[i], out[j] = out[j], out[i]
    return out


def items_of(
    ds: DatasetSpec, data: DataSpec, where: str, bad: list[int],
    report: Callable[[DataError], None] | None = None, stage: str = stages.DEFAULT,
    cursor: Cursor | None = None,
) -> Iterator[Any]:  # fmt: skip
    """One dataset's items, read as a stream. A bad record raises DataError (on_bad_record: error)
    or is counted in bad[0] (skip); with `report`, it is passed there instead and reading goes on,
    so a check sees every bad record. A dataset with no usable record raises DataError. `cursor`
    follows the bytes read (progress)."""
    n = 0
    convert = alpaca_conversation if ds.format == "alpaca" else sharegpt_conversation
    if stage in PREFERENCE_STAGES:
        convert = preference.converter(ds.format, stage)
    elif ds.format in labels.FORMATS:  # classification: texts with labels, words with tags
        convert = labels.converter(ds.format)
    for origin, record in read_records(ds, where, stage, cursor):
        if ds.max_samples and n >= ds.max_samples:
            break
        try:
            if isinstance(record, DataError):  # a record that does not even parse
                raise record
            record = fill_placeholders(record, data.placeholders)
            if ds.format == "text":
                item: Any = text_field(record, ds, origin, where, "text")
            else:
                item = convert(record, ds, origin, where)
        except DataError as e:
            if report and data.on_bad_record == "error":
                report(e)
            elif data.on_bad_record == "error":
                raise
            bad[0] += 1
            continue
        n += 1
        yield item
    if not n and not (report and data.on_bad_record == "error" and bad[0]):
        raise DataError(
            "has no usable record"
            + (f": all {bad[0]} were bad and skipped" if bad[0] else "; is the file empty?"),
            ds.path, fatal=True,
        )  # fmt: skip


def check(
    ds: DatasetSpec, data: DataSpec, where: str, limit: int = 3, tick: Callable[[], None] | None = None,
    stage: str = stages.DEFAULT, cursor: Cursor | None = None,
) -> tuple[list[DataError], int]:  # fmt: skip
    """Read every record of one dataset as training would, in bounded memory: the first `limit`
    errors that training would stop at, and how many there are in all. tick() follows each record,
    `cursor` the bytes read."""
    errors: list[DataError] = []
    total = [0]

    def report(e: DataError) -> None:
        total[0] += 1
        if len(errors) < limit:
            errors.append(e)

    try:
        for _ in items_of(ds, data, where, [0], report, stage=stage, cursor=cursor):
            if tick:
                tick()
    except DataError as e:
        total[0] += 1
        if len(errors) < limit:
            errors.append(e)
    return errors, total[0]
