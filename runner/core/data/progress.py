"""How far a long pass over the data has come: records done, their rate, tokens/s when tokenizing,
the share done and the time left. Neutral: validate draws it on the terminal (rich), training logs
it to the job log; both ask `status()` for the same words."""

from __future__ import annotations

import time
from collections.abc import Callable


def duration(seconds: float) -> str:
    """3.2 s, 4 m 05 s, 1 h 02 m."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} m {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} m"


def _rate(n: float) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k" if n >= 1e3 else f"{n:.0f}"


class Meter:
    """Records (and tokens) counted as they pass. The share done comes from `total` records when
    known, else from `fraction()` (the bytes read of the files, say)."""

    def __init__(
        self,
        total: int | None = None,
        fraction: Callable[[], float | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self._fraction, self.clock = total, fraction, clock
        self.records = self.tokens = 0
        self.start = self._last = clock()

    def add(self, records: int = 1, tokens: int = 0) -> None:
        self.records += records
        self.tokens += tokens

    @property
    def seconds(self) -> float:
        return self.clock() - self.start

    def fraction(self) -> float | None:
        if self.total:
            return min(1.0, self.records / self.total)
        return self._fraction() if self._fraction else None

    def due(self, every: float) -> bool:
        """True once `every` seconds have passed since the start or since it was last True."""
        now = self.clock()
        if now - self._last < every:
            return False
        self._last = now
        return True

    def status(self) -> str:
        """e.g. '1,234,567 records, 45.6 k records/s, 12.1 M tokens/s, 34%, 2 m 10 s left'."""
        seconds = max(self.seconds, 1e-9)
        parts = [f"{self.records:,} records", f"{_rate(self.records / seconds)} records/s"]
        if self.tokens:
            parts.append(f"{_rate(self.tokens / seconds)} tokens/s")
        done = self.fraction()
        if done is not None and 0 < done < 1:
            parts += [f"{done:.0%}", f"{duration(seconds * (1 - done) / done)} left"]
        return ", ".join(parts)
