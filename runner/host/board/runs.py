"""What the board shows of runs, read from their directories as the CLI reads them: plain data
(dicts of str, numbers, lists) ready for JSON. No HTTP here.

Every file is read through RunDir; the same record, spec.yaml, metrics.jsonl and train.log that
`runner ls/status/logs` read. Files that do not change once written (spec.yaml) or that only grow
(metrics.jsonl) are cached by size and modification time, so a list refreshed every few seconds
reads only what changed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import threading
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from runner.core.errors import NoSuchRunError, RunError
from runner.core.rundir import EVAL_RESULTS, RunDir, RunRecord, all_runs, read_record

log = logging.getLogger(__name__)

TAIL = 256 * 1024  # bytes of a log shown at first; the rest is a download
# The progress line MetricsCallback writes off a terminal, and a tqdm bar's counter on one.
_STEP = re.compile(rb"step (\d+)/(\d+)")
_BAR = re.compile(rb"\|\s*(\d+)/(\d+) \[")


class Runs:
    """The runs under some output directories, and those in the user's run index, by id."""

    def __init__(self, output_dirs: list[Path] | None = None):
        self.output_dirs = [Path(d) for d in (output_dirs or [])]
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], tuple[tuple[int, int], Any]] = {}

    def records(self) -> list[RunRecord]:
        """Every run, oldest first. Default directories as `runner ls`: where the known runs went,
        $OUTPUT_DIR and ./outputs."""
        dirs = list(self.output_dirs)
        if not dirs:
            known = {Path(r.run_dir).parent.parent for r in all_runs()}
            dirs = [*sorted(known), *(Path(d) for d in (os.environ.get("OUTPUT_DIR"), "outputs") if d)]
        return all_runs([d for d in dict.fromkeys(dirs) if d.is_dir()])

    def get(self, run_id: str) -> RunRecord:
        """A run by its exact id, among those this board lists: never a path, never a prefix."""
        for record in self.records():
            if record.id == run_id:
                return fresh(record)
        raise NoSuchRunError(f"no run '{run_id}' on this board")

    # --- cached readers -------------------------------------------------------------------

    def _cached(self, path: Path, kind: str, read):
        try:
            st = path.stat()
        except OSError:
            return None
        key, stamp = (str(path), kind), (st.st_size, st.st_mtime_ns)
        with self._lock:
            hit = self._cache.get(key)
            if hit and hit[0] == stamp:
                return hit[1]
        value = read(path)
        with self._lock:
            self._cache[key] = (stamp, value)
        return value

    def spec(self, run: RunDir) -> dict[str, Any]:
        """spec.yaml as plain data ({} when missing or unreadable)."""
        return self._cached(run.spec_file, "spec", _read_yaml) or {}

    def metrics(self, run: RunDir) -> list[dict[str, Any]]:
        return self._cached(run.metrics, "metrics", _read_metrics) or []

    # --- what the pages show ----------------------------------------------------------------

    def summary(self, record: RunRecord) -> dict[str, Any]:
        """One row of the runs list."""
        run = record.dir
        spec = self.spec(run)
        model = spec.get("model") or {}
        method = spec.get("method") or {}
        resources = spec.get("resources") or {}
        rows = self.metrics(run)
        losses = [r for r in rows if isinstance(r.get("loss"), (int, float))]
        step, total = progress(run, rows, record)
        return {
            "id": record.id,
            "name": record.name,
            "stage": spec.get("stage"),
            "method": method.get("type") if isinstance(method, dict) else None,
            "model": _model_name(model),
            "state": record.status,
            "step": step,
            "total": total,
            "loss": losses[-1]["loss"] if losses else None,
            "started": record.started or record.created,
            "ended": record.ended,
            "duration_s": duration(record),
            "gpus": gpus(resources),
            "executor": record.executor,
            "host": record.host,
            "message": record.message,
        }

    def detail(self, record: RunRecord) -> dict[str, Any]:
        """Everything the run page shows besides the log and the curves, which it follows."""
        run = record.dir
        return {
            "summary": self.summary(record),
            "record": asdict(record),
            "command": shlex.join(record.command) if record.command else None,
            "spec": _read_text(run.spec_file),
            "results": _read_json(run.results),
            "evaluation": _read_json(run.path / EVAL_RESULTS),  # a `runner eval` run's scores
            "files": files(run),
            "tensorboard": str(run.tensorboard) if run.tensorboard.is_dir() else None,
            "tensorboard_command": f"tensorboard --logdir {shlex.quote(str(run.path.parent.parent))} --host 127.0.0.1"
            if run.tensorboard.is_dir()
            else None,
            "result": str(run.result().relative_to(run.path)) if run.result() else None,
        }


def fresh(record: RunRecord) -> RunRecord:
    """The record as it is on disk now (a list read a moment ago may be stale), brought up to date
    with its container when it ran detached, as `runner status` does."""
    where = record.run_dir  # where this machine sees it (all_runs); the record may name another path
    try:
        record = read_record(where)
    except (RunError, OSError):
        return record
    record.run_dir = where
    if record.status == "running" and record.container:
        try:
            from runner.host.docker_api import Docker
            from runner.host.execute.docker import refresh

            refresh(record, Docker(timeout=5))
        except Exception as e:  # no engine here: the record on disk is all there is
            log.debug("cannot refresh %s from Docker: %s", record.id, e)
    return record


def progress(run: RunDir, rows: list[dict[str, Any]], record: RunRecord) -> tuple[int | None, int | None]:
    """(step, total steps) from the log's last progress line; the metrics' last step where the log
    has none."""
    step = max((r.get("step", 0) for r in rows), default=None)
    total = None
    tail = read_tail(run.log, 16 * 1024)
    found = list(_STEP.finditer(tail)) or list(_BAR.finditer(tail))
    if found:
        s, total = int(found[-1].group(1)), int(found[-1].group(2))
        step = max(step or 0, s)
    if total is None and record.status == "succeeded" and step is not None:
        total = step
    return step, total


def duration(record: RunRecord) -> float | None:
    start = _time(record.started)
    if start is None:
        return None
    end = _time(record.ended) if record.ended else (time.time() if record.status == "running" else None)
    return round(end - start, 1) if end is not None else None


def gpus(resources: dict[str, Any]) -> str:
    count = resources.get("gpus", "all")
    nodes = resources.get("nodes", 1) or 1
    shown = "cpu" if count == 0 else ",".join(map(str, count)) if isinstance(count, list) else str(count)
    return f"{shown} x {nodes} nodes" if isinstance(nodes, int) and nodes > 1 else shown


def files(run: RunDir, limit: int = 400) -> list[dict[str, Any]]:
    """The run's files, relative paths with their sizes; a checkpoint or result directory counts
    as one entry per file up to `limit` entries in all."""
    out: list[dict[str, Any]] = []
    for root, dirs, names in os.walk(run.path, followlinks=False):
        dirs.sort()
        for name in sorted(names):
            path = Path(root) / name
            try:
                size = path.lstat().st_size
            except OSError:
                continue
            out.append({"path": path.relative_to(run.path).as_posix(), "size": size})
            if len(out) >= limit:
                return out
    return out


def read_tail(path: Path, size: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            f.seek(max(0, end - size))
            return f.read()
    except OSError:
        return b""


def _model_name(model: dict[str, Any]) -> str | None:
    path = model.get("path") if isinstance(model, dict) else None
    if not isinstance(path, str):
        return None
    name = Path(path).name or path
    return f"{name} + {Path(model['adapter']).name}" if isinstance(model.get("adapter"), str) else name


def _time(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        return None


def _read_yaml(path: Path) -> dict[str, Any]:
    from ruamel.yaml import YAML

    try:
        data = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        log.debug("cannot read %s: %s", path, e)
        return {}
    except Exception as e:  # ruamel's own errors: a damaged file shows as no spec, not as a crash
        log.debug("cannot parse %s: %s", path, e)
        return {}
    return data if isinstance(data, dict) else {}


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    return _rows(read_from(path, 0, 1 << 30))


def read_metrics_from(run: RunDir, at: int) -> tuple[list[dict[str, Any]], int]:
    """The complete lines of metrics.jsonl from byte `at` on, and where the next read starts (a
    line being written is read next time)."""
    data = read_from(run.metrics, at, 1 << 24)
    end = data.rfind(b"\n") + 1
    return _rows(data[:end]), at + end


def _rows(data: bytes) -> list[dict[str, Any]]:
    rows = []
    for line in data.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut short
        if isinstance(row, dict):
            rows.append({k: v for k, v in row.items() if _finite(v)})
    return rows


def read_from(path: Path, offset: int, limit: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(limit)
    except OSError:
        return b""


def _finite(value: Any) -> bool:
    # NaN and infinity are not JSON; a diverged loss shows as a gap in the curve.
    return not isinstance(value, float) or value == value and value not in (float("inf"), float("-inf"))


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
