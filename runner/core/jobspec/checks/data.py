"""The data: each dataset's file (or registry entry) exists and is readable, is in a format its
stage reads, and every record reads as training would read it; the mix fits the datasets."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from runner.core import stages
from runner.core.data import registry
from runner.core.jobspec.checks.context import Context, either, unset
from runner.core.jobspec.checks.files import directory, holds, reachable, readable
from runner.core.jobspec.job import DatasetSpec, DataSpec, JobSpec
from runner.core.jobspec.partial import Unchecked
from runner.core.jobspec.yaml_loader import Loc


def mix(spec: JobSpec, at: Context) -> None:
    data, loc = spec.data, ("data", "mix_probs")
    probs, n = data.mix_probs, len(data.datasets)
    if probs is None:
        return
    if data.mix == "concat":
        at.add(loc, "needs mix: interleave_under or interleave_over (concat takes every record)")
    elif len(probs) != n:
        at.add(loc, f"has {len(probs)} value(s) for {n} dataset(s); give one per dataset")
    elif any(p < 0 for p in probs) or abs(sum(probs) - 1) > 1e-6:
        at.add(loc, f"must be >= 0 and sum to 1 (got {probs}, sum {sum(probs):g})")


def dataset_dir(spec: JobSpec, at: Context) -> None:
    value = spec.data.dataset_dir
    if value is not None:
        directory(value, at, ("data", "dataset_dir"), (registry.REGISTRY,), "a dataset registry")


def datasets(spec: JobSpec, at: Context) -> None:
    """Each dataset on its own: one that failed validation, or reads a part that did, is skipped."""
    for i, ds in enumerate(spec.data.datasets):
        with contextlib.suppress(Unchecked):
            if ds.name and not ds.path:
                _named(spec, i, ds, at)
            else:
                _file(spec, i, ds, at)


def _file(spec: JobSpec, i: int, ds: DatasetSpec, at: Context) -> None:
    before, path, where = len(at.found), ds.path, ("data", "datasets", i, "path")
    known = path is not None and not unset(path) and reachable(at.base / path, path, where, at)
    if known and not (at.base / path).exists():
        at.add(where, f"no such file or directory '{path}'; {holds((at.base / path).parent, path)}")
    elif known:
        readable(at.base / path, path, where, at)
    stage = stages.STAGES[spec.stage]
    if ds.format not in stage.data.formats:
        at.add(("data", "datasets", i, "format"), _format_message(stage, ds.format))
    if _scores_a_benchmark(spec):
        return  # its directory is read by the benchmark's own reader (eval.benchmark), not as records
    if at.read and known and len(at.found) == before and (at.base / path).exists():
        _read(ds.model_copy(update={"path": str(at.base / path)}), spec, where, at)


def _scores_a_benchmark(spec: JobSpec) -> bool:
    return not stages.STAGES[spec.stage].trains and spec.eval.benchmark is not None


def benchmark(spec: JobSpec, at: Context) -> None:
    """A multiple-choice benchmark: scored by a stage that trains nothing, from a directory with
    the few-shot examples (dev/), and on a split whose answers are published."""
    bench = spec.eval.benchmark
    if bench is None:
        return
    loc = ("eval", "benchmark")
    if stages.STAGES[spec.stage].trains:
        at.add(loc, f"a benchmark is scored by stage eval only (got stage {spec.stage}); put it in a stage: "
                    "eval spec, or run `runner eval RUN --benchmark DIR`")  # fmt: skip
        return
    path = at.base / bench.path
    if not reachable(path, bench.path, (*loc, "path"), at):
        return
    if not path.is_dir():
        at.add((*loc, "path"), f"is not a directory (got {bench.path}); give the benchmark's directory, the "
                               "one holding dev/ and val/ or test/")  # fmt: skip
    elif not (path / "dev").is_dir():
        at.add((*loc, "path"), f"{bench.path} has no dev/ directory; an MMLU, C-Eval or CMMLU benchmark keeps "
                               "its few-shot examples there")  # fmt: skip
    if bench.layout == "ceval" and bench.split == "test":
        at.add((*loc, "split"), "C-Eval publishes no answers for its test split (got test); use split: val")


def _format_message(stage: stages.Stage, fmt: str) -> str:
    readers = [s.name for s in stages.STAGES.values() if fmt in s.data.formats]
    note = f"format: {fmt} is for stage {readers[0]}" if len(readers) == 1 else f"got '{fmt}'"
    return f"stage '{stage.name}' needs {stage.data.what}; use format: {either(stage.data.formats)} ({note})"


def _named(spec: JobSpec, i: int, ds: DatasetSpec, at: Context) -> None:
    """A registry entry: usable as the stage reads it, then read as its file would be."""
    loc, value, before = ("data", "datasets", i, "name"), spec.data.dataset_dir, len(at.found)
    clash = [k for k in ("format", "columns", "tags") if k in ds.model_fields_set]
    if clash:
        at.add(loc, f"a named dataset takes {', '.join(clash)} from {registry.REGISTRY}; remove "
                    f"{', '.join(clash)} here, or give path instead of name")  # fmt: skip
    if value is None:
        at.add(loc, f"a dataset given by name needs data.dataset_dir (the directory of {registry.REGISTRY})")
        return
    if unset(value) or not reachable(at.base / value, value, loc, None, inside=True):
        return  # reported at data.dataset_dir
    if not (at.base / value / registry.REGISTRY).is_file():
        return  # reported at data.dataset_dir
    try:
        explicit = registry.dataset(ds, at.base / value, spec.stage, value)
    except registry.RegistryError as e:
        at.add(loc, str(e))
        return
    except ValidationError:
        return  # an entry the schema would refuse cannot be read either; nothing more to say here
    if at.read and len(at.found) == before:
        _read(explicit, spec, loc, at)


def _read(ds: DatasetSpec, spec: JobSpec, loc: Loc, at: Context) -> None:
    """Every record of one dataset, read by the code training reads it with; what training would
    stop at is reported here, before anything starts."""
    from runner.core.data import readers as reader

    settings = DataSpec.model_construct(
        datasets=[ds], on_bad_record=spec.data.on_bad_record, placeholders=spec.data.placeholders
    )
    where = f"{loc[0]}.{loc[1]}[{loc[2]}]"
    with _progress(ds, at.base) as (tick, cursor):
        errors, total = reader.check(ds, settings, where, tick=tick, stage=spec.stage, cursor=cursor)
    for e in errors:
        at.add(loc, e.text(_shown(e.file, at.base) if e.file else None))
    if total > len(errors):
        at.add(loc, f"{_shown(ds.path, at.base)}: {total - len(errors)} more bad record(s) after these; fix "
                    "them, or skip them with data.on_bad_record: skip")  # fmt: skip


@contextlib.contextmanager
def _progress(ds: DatasetSpec, base: Path, large: int = 32 << 20):
    """(tick, cursor) for a dataset of `large` bytes or more read on a terminal: one line, redrawn
    in place, of records read, records/s, the share of the bytes read and the time left. Nothing
    when the output is no terminal (a log) or the data is small."""
    from runner.core.data import readers as reader
    from runner.core.data.progress import Meter

    try:
        size = sum(f.stat().st_size for f in reader.files(ds))
    except (OSError, reader.DataError):
        size = 0  # reading reports it
    if size < large or not sys.stderr.isatty():
        yield None, None
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn

    cursor = reader.Cursor(size)
    meter, shown = Meter(fraction=cursor.fraction), _shown(ds.path, base)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), transient=True) as bar:
        task = bar.add_task(f"reading {shown}", total=None)

        def tick() -> None:
            meter.add()
            if meter.due(0.2):
                bar.update(task, description=f"reading {shown}: {meter.status()}")

        yield tick, cursor


def _shown(path: Any, base: Path) -> str:
    """A data file as the user would write it: relative to the spec's base where it is inside."""
    path = Path(os.path.abspath(path))
    try:
        return str(path.relative_to(os.path.abspath(base)))
    except ValueError:
        return str(path)


CHECKS = (mix, dataset_dir, datasets, benchmark)
