"""Paths the spec names: they exist, this process may reach and read them, and the output
directory can be written; a missing one is reported with what its directory holds instead."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from runner.core.jobspec.checks.context import Context, unset
from runner.core.jobspec.job import JobSpec
from runner.core.jobspec.yaml_loader import Loc


def directory(value: str, at: Context, loc: Loc, must_hold: tuple[str, ...], what: str) -> bool:
    """Whether `value` is a readable directory holding `must_hold`; what is wrong goes to `at`."""
    path = at.base / value
    if unset(value):
        return False
    if not reachable(path, value, loc, at, inside=True):
        return False
    if not path.is_dir():
        if is_hub_id(value, at.base):
            at.add(loc, f"'{value}' is a Hugging Face hub id, and runner never downloads: on the connected "
                        f"side run `huggingface-cli download {value} --local-dir DIR`, carry DIR in and set "
                        "this to it")  # fmt: skip
        else:
            at.add(loc, f"no such directory '{value}'; {holds(path.parent, value)}")
        return False
    missing = [f for f in must_hold if not (path / f).exists()]
    if missing:
        at.add(loc, f"'{value}' is not {what} directory (no {', '.join(missing)}); it holds: {listing(path)}")
        return False
    return readable(path, value, loc, at)


def readable(path: Path, value: str, loc: Loc, at: Context) -> bool:
    """Every file under path readable (and every directory searchable) by this process."""
    bad = unreadable(path)
    if bad:
        shown = ", ".join(f"{p} (mode {p.lstat().st_mode & 0o777:04o}, owner uid {p.lstat().st_uid})"
                          for p in bad[:3])  # fmt: skip
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        at.add(loc, f"'{value}' is not readable by uid {os.getuid()}: {shown}{more}; "
                    f"make it readable, e.g. chmod -R a+rX {value}")  # fmt: skip
    return not bad


def reachable(path: Path, value: str, loc: Loc, at: Context | None, inside: bool = False) -> bool:
    """False (and why, to `at`) when a directory on the way to path (or path itself, `inside`) may
    not be searched by this process: it could not even tell whether path exists."""
    path = Path(os.path.abspath(path))
    for d in [*reversed(path.parents), *([path] if inside else [])]:
        if os.access(d, os.X_OK):
            continue
        try:
            st = d.lstat()  # its parent may be searched, so this answers
        except OSError:
            return True  # missing: reported as such where it matters
        if not stat.S_ISDIR(st.st_mode):
            return True
        if at is not None:
            at.add(loc, f"'{value}' cannot be reached by uid {os.getuid()}: {d} (mode {st.st_mode & 0o777:04o}, "
                        f"owner uid {st.st_uid}) may not be searched by it; make it searchable, e.g. chmod a+x {d}")  # fmt: skip
        return False
    return True


def unreadable(path: Path, limit: int = 10000) -> list[Path]:
    """Files this process cannot read and directories it cannot list, under path (or path)."""
    if path.is_file():
        return [] if os.access(path, os.R_OK) else [path]
    bad: list[Path] = []
    for n, (root, dirs, files) in enumerate(os.walk(path, onerror=lambda e: bad.append(Path(e.filename)))):
        if n > limit:
            break
        for name in files:
            f = Path(root, name)
            if not os.access(f, os.R_OK):
                bad.append(f)
        for name in dirs:
            d = Path(root, name)
            if not os.access(d, os.R_OK | os.X_OK):
                bad.append(d)
    return sorted(set(bad))


def is_hub_id(value: str, base: Path = Path(".")) -> bool:
    """`org/name` that is no path here: a Hugging Face hub id."""
    if not value or value.startswith(("/", ".", "~", "$")) or (base / value).exists():
        return False
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", value))


def holds(parent: Path, value: str) -> str:
    if not parent.is_dir():
        return f"'{Path(value).parent}/' does not exist either"
    return f"'{Path(value).parent}/' holds: {listing(parent)}"


def listing(directory: Path, limit: int = 12) -> str:
    try:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in directory.iterdir())
    except OSError:
        return f"nothing uid {os.getuid()} may list"
    if not names:
        return "nothing (empty)"
    more = f" ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def output(spec: JobSpec, at: Context) -> None:
    """output.dir can hold a new run directory; a run's own re-check: its directory is writable."""
    loc = ("output", "dir")
    if at.writes is not None:
        if not (at.writes.is_dir() and os.access(at.writes, os.W_OK | os.X_OK)):
            at.add(loc, f"the run directory {at.writes} is not writable by uid {os.getuid()} here; it must "
                        "belong to the user the job runs as")  # fmt: skip
        return
    value = spec.output.dir
    path = at.base / value
    if not reachable(path, value, loc, at):
        return
    # The nearest existing ancestor must be writable, or no run directory can be created.
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not (probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)):
        shown = os.path.relpath(probe, at.base) if not Path(value).is_absolute() else str(probe)
        at.add(
            loc, f"'{shown}' is not a writable directory; choose another output.dir or fix its permissions"
        )


CHECKS = (output,)
