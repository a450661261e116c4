"""Typed errors of the library. The CLI alone maps them to messages and exit codes."""

from __future__ import annotations

from dataclasses import dataclass


class RunnerError(Exception):
    """A problem the user can fix; printed without a traceback."""

    exit_code = 1


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec, located in its file."""

    file: str
    line: int  # 1-based; 0 when unknown
    col: int  # 1-based; 0 when unknown
    path: str  # dotted key path as the user wrote it, '' for the whole file
    message: str

    def __str__(self) -> str:
        where = self.file if not self.line else f"{self.file}:{self.line}:{self.col}"
        return f"{where} {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class SpecError(RunnerError):
    """A spec is invalid; carries every problem found in one pass."""

    exit_code = 2

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.col, p.path))
        super().__init__("\n".join(str(p) for p in self.problems))


class RunError(RunnerError):
    """A run could not be started, or ended badly."""


class NoSuchRunError(RunError):
    """A command named a run that does not exist: a mistake in its arguments."""

    exit_code = 2


class UnsupportedError(RunnerError):
    """A valid request this build of runner cannot carry out (e.g. QLoRA without CUDA)."""

    exit_code = 3
