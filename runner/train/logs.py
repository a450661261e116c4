"""A job log a person can read: each distinct library warning once per run, with how often it
came at the end; lines that every rank would print alike, printed by rank 0 only.

The other ranks keep their errors (stderr is theirs), their own warnings the first time any rank
sees them, and the lines that differ between ranks (those naming their rank, or logged with
extra={"per_rank": True}). Which rank printed a warning first is decided through marker files in
the run directory, so ranks on other nodes (which share it) agree too. `output.verbose: true`
turns all of this off: every line of every rank, every warning each time.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import sys
import warnings
from pathlib import Path

# Loggers that narrate what is no concern of a training run (DeepSpeed's compiler probe prints
# each gcc command through distutils).
_CHATTY = ("httpx", "urllib3", "filelock", "torch.distributed.elastic")


class LogPolicy:
    def __init__(self, rank: int):
        self.rank = rank
        self.counts: collections.Counter[str] = collections.Counter()
        self.shown: set[str] = set()
        self.markers: Path | None = None
        self.verbose = False
        self._showwarning = warnings.showwarning
        self._stdout = sys.stdout

    def install(self) -> None:
        warnings.showwarning = self._warning
        for handler in logging.getLogger().handlers:
            handler.addFilter(self._record)
        for name in _CHATTY:
            logging.getLogger(name).setLevel(logging.WARNING)
        if self.rank > 0:
            sys.stdout = _OwnLines(sys.stdout, self.rank)

    def shared(self, run_dir: Path) -> None:
        """Agree with the other ranks, through run_dir, on which warnings were shown."""
        self.markers = run_dir / ".warnings-shown"
        try:
            self.markers.mkdir(exist_ok=True)
        except OSError:
            self.markers = None

    def everything(self) -> None:
        """output.verbose: every line of every rank, every warning each time."""
        self.verbose = True
        warnings.showwarning = self._showwarning
        sys.stdout = self._stdout
        for name in _CHATTY:
            logging.getLogger(name).setLevel(logging.NOTSET)

    def summary(self) -> None:
        """Rank 0: the warnings that came again, each with its count (this rank's)."""
        repeated = {key: n for key, n in self.counts.items() if n > 1}
        if self.verbose or self.rank != 0 or not repeated:
            return
        print(f"warnings shown once above, and how often each came (rank 0; output.verbose: true shows "
              f"every one): {len(repeated)}", flush=True)  # fmt: skip
        for key, n in sorted(repeated.items(), key=lambda kv: -kv[1]):
            print(f"  {n}x {key[:200]}", flush=True)

    def _first(self, key: str) -> bool:
        """Whether no rank has shown `key` yet (and this one now does)."""
        if key in self.shown:
            return False
        self.shown.add(key)
        if self.markers is None:
            return self.rank == 0
        marker = self.markers / hashlib.sha1(key.encode("utf-8", "replace")).hexdigest()[:16]
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            return False
        except OSError:
            return self.rank == 0
        return True

    def _warning(self, message, category, filename, lineno, file=None, line=None) -> None:
        key = f"{category.__name__}: {message}"
        self.counts[key] += 1
        if self._first(key):
            where = "/".join(Path(filename).parts[-3:])
            print(f"warning: {key} ({where}:{lineno})", file=sys.stderr, flush=True)

    def _record(self, record: logging.LogRecord) -> bool:
        if self.verbose:
            return True
        if record.levelno >= logging.ERROR:
            return True
        if record.levelno < logging.WARNING and "_distutils" in record.pathname:
            return False  # distutils logs on the root logger: the gcc commands of DeepSpeed's probes
        if record.levelno >= logging.WARNING:
            key = f"{record.name}: {record.getMessage()}"
            self.counts[key] += 1
            return self._first(key)
        return (
            self.rank == 0 or getattr(record, "per_rank", False) or f"rank {self.rank}" in record.getMessage()
        )


class _OwnLines:
    """A non-zero rank's stdout: only its own lines (those naming its rank) get through; every
    rank prints the rest alike, and rank 0 does already."""

    def __init__(self, stream, rank: int):
        self.stream, self.rank, self.pending = stream, rank, ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if f"rank {self.rank}" in line or line.startswith("error:"):
                self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


def rank() -> int:
    return int(os.environ.get("RANK", "0"))
