"""The core metadata (name, version, license fields) of the distributions a lock pins.

Read from the files themselves where they are at hand (a wheel's `*.dist-info/METADATA`, an
sdist's `PKG-INFO`), else from the package index the lock was resolved against: pip fetches only
the metadata of a wheel where the index serves it apart (PEP 658), and an sdist, which has none
apart, is downloaded (hash-checked) to read its PKG-INFO.

This module imports nothing else of runner's image pipeline, so the lock, the wheelhouse and the
license policy can all use it.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import json
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from runner.core.errors import RunnerError

SDIST = ".tar.gz"
_NO_MATCH = re.compile(r"No matching distribution found for ([A-Za-z0-9._-]+)")

Metadata = email.message.Message


class MetadataError(RunnerError):
    pass


def normalize(name: str) -> str:
    """PEP 503 project name: lower case, runs of -_. as one '-'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def dist_project(filename: str) -> tuple[str, str]:
    """(normalized project name, version) of a wheel or sdist file name."""
    name, version = filename.removesuffix(SDIST).split("-")[:2]
    return normalize(name), version


def platform_tags(platform: str) -> list[str]:
    """x86_64-manylinux_2_28 -> manylinux_2_28_x86_64 ... manylinux_2_17_x86_64, manylinux2014_x86_64."""
    m = re.fullmatch(r"(x86_64|aarch64)-manylinux_2_(\d+)", platform)
    if not m:
        raise MetadataError(f"platform '{platform}' is not of the form x86_64-manylinux_2_NN")
    arch, glibc = m[1], int(m[2])
    tags = [f"manylinux_2_{n}_{arch}" for n in range(glibc, 16, -1)]
    return tags + [f"manylinux2014_{arch}", "any"]


def parse(text: bytes | str) -> Metadata:
    """Core metadata (RFC 822 style) as a message; header values are plain strings."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return email.message_from_string(text, policy=email.policy.compat32)


def from_file(path: Path) -> Metadata:
    """The metadata a wheel or an sdist carries; MetadataError naming the file if it has none."""
    try:
        if path.name.endswith(".whl"):
            with zipfile.ZipFile(path) as whl:
                names = [n for n in whl.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
                if len(names) == 1:
                    return parse(whl.read(names[0]))
        elif path.name.endswith(SDIST):
            with tarfile.open(path, "r:gz") as sdist:
                for member in sdist:  # PKG-INFO at the top comes early; stop there
                    if re.fullmatch(r"[^/]+/PKG-INFO", member.name) and member.isfile():
                        return parse(sdist.extractfile(member).read())  # type: ignore[union-attr]
    except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError) as e:
        raise MetadataError(f"{path}: cannot read its metadata ({e})") from None
    raise MetadataError(f"{path}: no package metadata in it (not a wheel or an sdist)")


def from_json(data: dict) -> Metadata:
    """pip's installation report gives metadata as JSON (PEP 566); back to the message form."""
    msg = email.message.Message()
    for key, value in data.items():
        header = "-".join(part.capitalize() for part in key.split("_"))
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                msg[header] = item
    return msg


def from_folder(folder: Path, pins: dict[str, tuple[str, set[str]]]) -> dict[str, Metadata]:
    """The metadata of the files in a wheelhouse that are the pinned ones: name -> (version,
    allowed sha256s), checked against the wheelhouse's manifest (a wheel built here from an sdist
    counts for its name and version)."""
    try:
        files = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError):
        return {}
    found: dict[str, Metadata] = {}
    for filename, info in sorted(files.items()):
        name, version = dist_project(filename)
        pinned = pins.get(name)
        if name in found or not pinned or pinned[0] != version or not (folder / filename).is_file():
            continue
        if info.get("sha256") in pinned[1] or info.get("built_from_sdist"):
            try:
                found[name] = from_file(folder / filename)
            except MetadataError:
                continue  # read from the index instead
    return found


def from_index(
    pinned: dict[str, str], python: str, platforms: list[str], find_links: list[str] | None = None
) -> dict[str, Metadata]:
    """The metadata of each `name -> requirement line (with hashes)` from the package index, as pip
    sees it with the user's own configuration (index, mirrors, credentials).

    Wheels: `pip install --dry-run --report` for the target python and platforms, which fetches
    only their metadata where the index serves it apart (PEP 658); in a few parallel runs, since
    pip fetches one page at a time. Projects without a wheel for the target: their sdist,
    downloaded hash-checked, read for its PKG-INFO.
    """
    from concurrent.futures import ThreadPoolExecutor

    names = sorted(pinned)
    chunks = [names[i::_RUNS] for i in range(min(_RUNS, len(names)))]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(len(chunks) or 1) as pool:
        runs = [
            pool.submit(
                _wheels_metadata,
                {n: pinned[n] for n in chunk},
                Path(tmp) / str(i),
                python,
                platforms,
                find_links,
            )  # fmt: skip
            for i, chunk in enumerate(chunks)
        ]
        found: dict[str, Metadata] = {}
        sdists: dict[str, str] = {}
        for run in runs:
            got, without_wheel = run.result()
            found.update(got)
            sdists.update({n: pinned[n] for n in without_wheel})
        if sdists:
            found.update(_sdist_metadata(sdists, Path(tmp) / "sdists", find_links))
    return found


_RUNS = 4  # parallel pip runs reading metadata from the index


def _wheels_metadata(
    todo: dict[str, str], tmp: Path, python: str, platforms: list[str], links: list[str] | None
) -> tuple[dict[str, Metadata], list[str]]:
    """Metadata of the wheels of `todo`, and the projects that have no wheel for the target."""
    tmp.mkdir()
    found: dict[str, Metadata] = {}
    without: list[str] = []
    for _ in range(len(todo) + 1):
        if not todo:
            break
        missing = _report(todo, tmp, python, platforms, links, found)
        if missing is None:
            break
        without.append(missing)
        todo = {n: r for n, r in todo.items() if n != missing}
    return found, without


def _pip(args: list[str], links: list[str] | None) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "pip", *args, "--progress-bar", "off", "--quiet"]
    for link in links or []:
        argv += ["--find-links", link]
    return subprocess.run(argv, capture_output=True, text=True)


def _report(
    todo: dict[str, str], tmp: Path, python: str, platforms: list[str], links: list[str] | None,
    found: dict[str, Metadata],
) -> str | None:  # fmt: skip
    """One dry run over `todo`; fills `found`, or returns the project that has no wheel (pip stops
    at the first)."""
    req, report = tmp / "requirements.txt", tmp / "report.json"
    req.write_text("\n".join(todo.values()) + "\n", encoding="utf-8")
    args = ["install", "--dry-run", "--ignore-installed", "--no-deps", "--require-hashes",
            "--only-binary=:all:", "--python-version", python, "--implementation", "cp",
            "--target", str(tmp / "target"), "--report", str(report), "-r", str(req)]  # fmt: skip
    for tag in platforms:
        args += ["--platform", tag]
    proc = _pip(args, links)
    if proc.returncode != 0:
        m = _NO_MATCH.search(proc.stderr)
        if m and normalize(m[1]) in todo:
            return normalize(m[1])
        raise MetadataError(
            f"reading the packages' metadata from the index failed:\n{proc.stderr.strip()[-3000:]}"
        )
    for item in json.loads(report.read_text(encoding="utf-8")).get("install", []):
        meta = from_json(item.get("metadata") or {})
        if meta["Name"]:
            found[normalize(meta["Name"])] = meta
    return None


def _sdist_metadata(pinned: dict[str, str], dest: Path, links: list[str] | None) -> dict[str, Metadata]:
    dest.mkdir()
    req = dest / "requirements.txt"
    req.write_text("\n".join(pinned.values()) + "\n", encoding="utf-8")
    args = [
        "download",
        "--no-deps",
        "--require-hashes",
        "--no-binary",
        ":all:",
        "-r",
        str(req),
        "-d",
        str(dest),
    ]
    proc = _pip(args, links)
    if proc.returncode != 0:
        raise MetadataError(
            f"downloading the sdists of {', '.join(sorted(pinned))} to read their metadata failed:\n"
            + proc.stderr.strip()[-3000:]
        )
    found = {}
    for path in sorted(dest.glob(f"*{SDIST}")):
        meta = from_file(path)  # by the name it states: an old sdist's file name may not split
        if normalize(meta["Name"] or "") in pinned:
            found[normalize(meta["Name"])] = meta
    return found
