"""`runner bundle` / `runner load`: one checksummed archive carries images (+ model, data) in.

Layout of the archive (a plain tar, so `tar -tf` shows it on any machine):
  images.tar      `docker save` of the images
  model/...       optional: a model directory
  data/...        optional: a data directory
  manifest.json   image refs and ids, file sizes
  checksums.txt   `sha256  path` per file, then `aggregate  <sha256 of those lines>`
A load verifies every checksum, refuses missing and extra files, and checks the loaded image
ids against the manifest before reporting success.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import runner
from runner.build.wheels import sha256
from runner.docker_api import Docker
from runner.errors import RunnerError

CHECKSUMS = "checksums.txt"
MANIFEST = "manifest.json"
IMAGES = "images.tar"


class BundleError(RunnerError):
    exit_code = 5


def _files_of(directory: Path, prefix: str) -> Iterator[tuple[str, Path]]:
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            yield f"{prefix}/{path.relative_to(directory).as_posix()}", path


def aggregate(lines: list[str]) -> str:
    return hashlib.sha256("".join(line + "\n" for line in lines).encode()).hexdigest()


def bundle(
    refs: list[str], out: Path, model: Path | None = None, data: Path | None = None,
    docker: Docker | None = None, log: Callable[[str], None] = lambda s: None,
) -> str:  # fmt: skip
    """Write the archive; returns its aggregate checksum."""
    docker = docker or Docker()
    images = []
    for ref in refs:
        image_id = docker.image_id(ref)
        if not image_id:
            raise BundleError(f"image {ref} is not in the Docker engine; build or load it first")
        images.append({"ref": ref, "id": image_id})
    if out.exists():
        raise BundleError(f"{out} exists already; choose another -o (a bundle is never overwritten)")
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        saved = Path(tmp) / IMAGES
        log(f"saving {', '.join(refs)}")
        docker.save(refs, saved)
        members = [(IMAGES, saved)]
        for directory, prefix in ((model, "model"), (data, "data")):
            if directory is not None:
                if not directory.is_dir():
                    raise BundleError(f"--{prefix} {directory} is not a directory")
                members += list(_files_of(directory, prefix))
        sums = []
        for name, path in members:
            log(f"checksum {name}")
            sums.append(f"{sha256(path)}  {name}")
        manifest = {
            "runner_version": runner.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "images": images,
            "files": {name: path.stat().st_size for name, path in members},
        }
        manifest_bytes = (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode()
        sums.append(f"{hashlib.sha256(manifest_bytes).hexdigest()}  {MANIFEST}")
        total = aggregate(sums)
        checksums = ("\n".join(sums) + f"\naggregate  {total}\n").encode()
        partial = out.with_name(out.name + ".partial")
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            for name, data_bytes in ((MANIFEST, manifest_bytes), (CHECKSUMS, checksums)):
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(data_bytes), int(time.time())
                tar.addfile(info, io.BytesIO(data_bytes))
            for name, path in members:
                tar.add(path, arcname=name, recursive=False)
        os.replace(partial, out)
    return total


def verify_and_extract(archive: Path, dest: Path) -> tuple[dict, str]:
    """Extract into dest, checking every file; returns (manifest, aggregate)."""
    if not archive.is_file():
        raise BundleError(f"{archive}: no such file")
    try:
        tar = tarfile.open(archive, "r:")
    except tarfile.TarError as e:
        raise BundleError(f"{archive} is not a runner bundle (not a tar archive: {e})") from None
    with tar:
        names = [m.name for m in tar.getmembers() if m.isfile()]
        odd = [m.name for m in tar.getmembers() if not (m.isfile() or m.isdir())]
        if odd:
            raise BundleError(f"{archive} holds entries that are not plain files: {', '.join(odd[:5])}")
        if CHECKSUMS not in names or MANIFEST not in names:
            raise BundleError(f"{archive} has no {CHECKSUMS} or {MANIFEST}; it is not a runner bundle")
        lines = tar.extractfile(CHECKSUMS).read().decode().splitlines()
        body = [line for line in lines if not line.startswith("aggregate")]
        stated = next((line.split()[-1] for line in lines if line.startswith("aggregate")), "")
        if aggregate(body) != stated:
            raise BundleError(f"{CHECKSUMS} in {archive} does not match its own aggregate checksum")
        expected = {line.split("  ", 1)[1]: line.split("  ", 1)[0] for line in body}
        extra = sorted(set(names) - set(expected) - {CHECKSUMS})
        missing = sorted(set(expected) - set(names))
        if extra:
            raise BundleError(f"{archive} holds files not in {CHECKSUMS}: {', '.join(extra)}")
        if missing:
            raise BundleError(f"{archive} lacks files listed in {CHECKSUMS}: {', '.join(missing)}")
        tar.extractall(dest, filter="data")
    for name, digest in expected.items():
        if sha256(dest / name) != digest:
            raise BundleError(f"{name} in {archive} is damaged: its sha256 differs from {CHECKSUMS}")
    manifest = json.loads((dest / MANIFEST).read_text(encoding="utf-8"))
    return manifest, stated


def load(archive: Path, extract_to: Path | None = None, docker: Docker | None = None) -> dict:
    """Verify, `docker load`, check image ids; model/ and data/ go to extract_to if given."""
    docker = docker or Docker()
    parent = extract_to.parent if extract_to else archive.parent
    with tempfile.TemporaryDirectory(dir=parent) as tmp:
        manifest, total = verify_and_extract(archive, Path(tmp))
        docker.load(Path(tmp) / IMAGES)
        for image in manifest["images"]:
            got = docker.image_id(image["ref"])
            if got != image["id"]:
                raise BundleError(
                    f"after loading, {image['ref']} is {got}, not {image['id']} as the manifest says"
                )
        if extract_to:
            for prefix in ("model", "data"):
                if (Path(tmp) / prefix).exists():
                    target = extract_to / prefix
                    if target.exists():
                        raise BundleError(
                            f"{target} exists already; choose another --to (nothing is overwritten)"
                        )
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(Path(tmp) / prefix, target)
    manifest["aggregate"] = total
    return manifest
