"""`runner bundle` / `runner load`: one checksummed archive carries images (+ model, data) in.

Layout of the archive (a plain tar, so `tar -tf` shows it on any machine):
  images.tar      `docker save` of the images, with every tag each image has
  model/...       optional: a model directory
  data/...        optional: a data directory
  sbom/NAME.cdx.json       the CycloneDX SBOM of each image (runner.host.images.sbom)
  sbom/NAME.licenses.txt   the license report of its Python packages under its policy
  manifest.json   image refs, ids and tags, file sizes; provenance: what built each image (runner
                  version, lock and spec hashes, build time) and the bundle (runner, time, and the
                  host only if asked); the signing key's fingerprint
  checksums.txt   `sha256  path` per file, then `aggregate  <sha256 of those lines>`
  checksums.txt.sig  optional (`bundle --sign KEY`): an SSHSIG signature of checksums.txt, which
                  `ssh-keygen -Y verify -n runner-bundle` checks by hand (runner.host.images.signing)
A load verifies every checksum, refuses missing and extra files, and checks the loaded image
ids (under every tag) against the manifest before reporting success. With trusted keys
(`load --require-signature PUBKEY`) it first refuses a bundle that is unsigned or signed by
another key, or whose checksums.txt changed since it was signed; every member's sha256 in the
signed checksums.txt is then checked before anything is loaded or put in place.

Neither side copies the images through a temporary file: `docker save` streams into the
archive (hashed on the way) and `docker load` reads images.tar from inside it, so each side
needs the images' size on its disk once, not twice. The checksums come last, so an archive cut
short anywhere lacks them.

Every check that needs no slow step comes first: the destination (exists, writable, free space)
before `docker save` or an extraction, a refused `--to` before `docker load`. Every I/O or
archive failure is a BundleError: one message naming the path, exit code 5.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import platform
import re
import shutil
import socket
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import runner
from runner.core.errors import RunnerError
from runner.host.docker_api import Docker
from runner.host.images import licenses, sbom, signing
from runner.host.images.wheels import sha256

CHECKSUMS = "checksums.txt"
SIGNATURE = "checksums.txt.sig"
MANIFEST = "manifest.json"
IMAGES = "images.tar"
SBOMS = "sbom"  # the directory of the SBOMs and license reports
CARRIED = ("model", "data")  # directories a bundle may carry besides the images


class BundleError(RunnerError):
    exit_code = 5


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _engine_errors() -> tuple[type[BaseException], ...]:
    """What the Docker SDK (and requests under it) raise when the engine fails mid-way."""
    from docker.errors import DockerException
    from requests.exceptions import RequestException

    return DockerException, RequestException


@contextlib.contextmanager
def _os_errors(doing: str, after: str = ""):
    """Any OSError left (a stat refused, a disk full mid-way) as one message naming the path."""
    try:
        yield
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        raise BundleError(f"{doing} failed: {where}{e.strerror or e}{after}") from None


def _files_of(directory: Path, prefix: str) -> Iterator[tuple[str, Path]]:
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            yield f"{prefix}/{path.relative_to(directory).as_posix()}", path


def aggregate(lines: list[str]) -> str:
    return hashlib.sha256("".join(line + "\n" for line in lines).encode()).hexdigest()


# ----------------------------------------------------------------------------------------------
# bundle


def _check_output(out: Path) -> None:
    if out.exists() or out.is_symlink():
        what = "a directory" if out.is_dir() else "a file"
        raise BundleError(f"-o {out}: {what} of that name exists already; choose another -o (a bundle is never overwritten)")  # fmt: skip
    parent = out.parent
    if not parent.exists():
        raise BundleError(
            f"-o {out}: the directory {parent} does not exist; create it first (mkdir -p {parent})"
        )
    if not parent.is_dir():
        raise BundleError(f"-o {out}: {parent} is not a directory")


def _check_carried(directory: Path | None, prefix: str) -> list[tuple[str, Path]]:
    if directory is None:
        return []
    if not directory.exists():
        raise BundleError(f"--{prefix} {directory}: no such directory")
    if not directory.is_dir():
        raise BundleError(f"--{prefix} {directory} is not a directory")
    try:
        return list(_files_of(directory, prefix))
    except OSError as e:
        raise BundleError(
            f"--{prefix} {directory}: cannot read {e.filename or directory} ({e.strerror})"
        ) from None


def bundle(
    refs: list[str], out: Path, model: Path | None = None, data: Path | None = None,
    docker: Docker | None = None, log: Callable[[str], None] = lambda s: None,
    sign: Path | None = None, record_host: bool = False,
) -> str:  # fmt: skip
    """Write the archive; returns its aggregate checksum.

    Each image is saved with every tag it has (e.g. `runner/cpu:latest` brings its content-hash
    tag `runner/cpu:<hash>` along), and the manifest lists them, so a load restores them all.
    Each image's SBOM and license report go in too; with `sign` (an Ed25519 private key),
    checksums.txt is signed. `record_host` writes this machine's name into the provenance.
    """
    with _os_errors(f"writing {out}", "; nothing was written"):
        return _bundle(refs, out, model, data, docker, log, sign, record_host)


def _bundle(
    refs: list[str], out: Path, model: Path | None, data: Path | None, docker: Docker | None,
    log: Callable[[str], None], sign: Path | None, record_host: bool,
) -> str:  # fmt: skip
    _check_output(out)
    carried = _check_carried(model, "model") + _check_carried(data, "data")
    key = signing.load_private(sign) if sign else None  # a key that cannot sign, before anything slow
    partial = out.with_name(out.name + ".partial")
    try:
        f = open(partial, "wb")  # noqa: SIM115 - closed before the rename below
    except OSError as e:
        raise BundleError(f"-o {out}: cannot write in {out.parent} ({e.strerror})") from None
    try:
        with f:
            docker = docker or Docker()
            images, image_bytes = _images(refs, docker)
            # `docker save` streams straight into the archive: the images are on this disk once.
            need = image_bytes + sum(path.stat().st_size for _, path in carried)
            free = shutil.disk_usage(out.parent).free
            if free < need:
                raise BundleError(
                    f"-o {out}: {out.parent} has {_mib(free)} free, and writing this bundle needs "
                    f"about {_mib(need)} there (the saved images plus model and data); free some "
                    "space or choose -o on a larger disk"
                )
            reports, provenance = _describe(images, docker, log)
            if record_host:
                provenance["bundled"] = {"host": socket.gethostname()}
            total = _write(f, images, carried, docker, log, reports, provenance, key)
        os.replace(partial, out)
    finally:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
    return total


def _images(refs: list[str], docker: Docker) -> tuple[list[dict], int]:
    """The manifest's entry per ref (id, every tag), and the bytes of the distinct images."""
    images, image_bytes = [], 0
    for ref in refs:
        image_id = docker.image_id(ref)
        if not image_id:
            raise BundleError(f"image {ref} is not in the Docker engine; build or load it first")
        tags = sorted(set(docker.image_tags(image_id)) | ({_as_tag(ref)} if _is_tag(ref) else set()))
        if image_id not in {i["id"] for i in images}:
            image_bytes += docker.image_size(image_id)
        images.append({"ref": ref, "id": image_id, "tags": tags})
    return images, image_bytes


def _describe(
    images: list[dict], docker: Docker, log: Callable[[str], None]
) -> tuple[dict[str, bytes], dict]:
    """The SBOM and license report of each distinct image (name -> bytes), and the provenance of
    each: what built it, from the image's own labels."""
    reports: dict[str, bytes] = {}
    described: list[dict] = []
    for image in images:
        if image["id"] in {d["id"] for d in described}:
            continue
        log(f"sbom of {image['ref']}")
        try:
            text, facts = sbom.image_sbom(image["ref"], docker)
        except (*_engine_errors(), sbom.SbomError) as e:
            raise BundleError(f"the SBOM of {image['ref']} could not be made: {e}") from None
        name = _unique(_slug(image["ref"]), {d["name"] for d in described})
        judged = facts.judged()
        reports[f"{SBOMS}/{name}.cdx.json"] = text.encode()
        title = f"license report of {image['ref']} ({image['id']})"
        reports[f"{SBOMS}/{name}.licenses.txt"] = licenses.report(judged, title, facts.policy).encode()
        labels = facts.labels
        described.append({
            "name": name, "id": image["id"], "built": facts.created,
            "built_by_runner": labels.get("runner.version"), "built_on": labels.get("runner.build-host"),
            "lock_sha256": labels.get("runner.lock-sha256"),
            "image_spec_sha256": labels.get("runner.image-spec-sha256"),
            "wheel_sha256": labels.get("runner.wheel-sha256"),
            "base": facts.base["name"] if facts.base else None,
            "base_id": facts.base["id"] if facts.base else None,
            "sbom": f"{SBOMS}/{name}.cdx.json", "licenses": f"{SBOMS}/{name}.licenses.txt",
            "packages": {"python": len(facts.python), "os": len(facts.dpkg)},
            "license_verdicts": {v: sum(j.verdict == v for j in judged) for v in (licenses.ALLOWED,
                                 licenses.UNKNOWN, licenses.DENIED)},
        })  # fmt: skip
    return reports, {"images": [{k: v for k, v in d.items() if v is not None} for d in described]}


def _slug(ref: str) -> str:
    """A file name for an image's reports: `localhost/runner/cpu:latest` -> cpu."""
    name = ref.removeprefix("sha256:")[:12] if ref.startswith("sha256:") else ref.split("@")[0]
    name = name.rsplit("/", 1)[-1].split(":")[0]
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "image"


def _unique(name: str, taken: set[str]) -> str:
    n, candidate = 1, name
    while candidate in taken:
        n += 1
        candidate = f"{name}-{n}"
    return candidate


def _write(
    f: BinaryIO, images: list[dict], carried: list[tuple[str, Path]], docker: Docker,
    log: Callable[[str], None], reports: dict[str, bytes], provenance: dict, key=None,
) -> str:  # fmt: skip
    """images.tar, the carried files, the SBOMs and license reports, manifest.json, checksums.txt
    and its signature; returns the aggregate."""
    names = list(dict.fromkeys(n for i in images for n in (i["tags"] or [i["ref"]])))
    log(f"saving {', '.join(names)}")
    try:
        digest, size = _stream_member(f, IMAGES, docker.save_stream(names))
    except _engine_errors() as e:
        raise BundleError(f"docker save of {', '.join(names)} failed: {e}") from None
    sums, sizes = [f"{digest}  {IMAGES}"], {IMAGES: size}
    for name, path in carried:
        log(f"checksum {name}")
        sums.append(f"{sha256(path)}  {name}")
        sizes[name] = path.stat().st_size
    for name, data_bytes in reports.items():
        sums.append(f"{hashlib.sha256(data_bytes).hexdigest()}  {name}")
        sizes[name] = len(data_bytes)
    created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    provenance["bundled"] = {
        "runner_version": runner.__version__, "python": platform.python_version(), "created": created,
        **provenance.get("bundled", {}),
    }  # fmt: skip
    manifest = {
        "runner_version": runner.__version__,
        "created": created,
        "images": images,
        "files": sizes,
        "provenance": provenance,
        **({"signed_by": signing.public_of(key).fingerprint} if key else {}),
    }
    manifest_bytes = (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode()
    sums.append(f"{hashlib.sha256(manifest_bytes).hexdigest()}  {MANIFEST}")
    total = aggregate(sums)
    checksums = ("\n".join(sums) + f"\naggregate  {total}\n").encode()
    members = [*reports.items(), (MANIFEST, manifest_bytes), (CHECKSUMS, checksums)]
    if key:
        log(f"signing {CHECKSUMS} with {signing.public_of(key).fingerprint}")
        members.append((SIGNATURE, signing.sign(checksums, key)))
    with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, path in carried:
            tar.add(path, arcname=name, recursive=False)
        for name, data_bytes in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data_bytes), int(time.time()), 0o644
            tar.addfile(info, io.BytesIO(data_bytes))
    return total


def _stream_member(f: BinaryIO, name: str, chunks: Iterable[bytes]) -> tuple[str, int]:
    """Write one tar member whose size is known only at its end; returns its sha256 and size.

    A header-sized gap comes first, then the data, then the header is written into the gap. The
    GNU header keeps to one block for any size (base-256 past 8 GiB), so the gap always fits.
    """
    start = f.tell()
    f.write(bytes(tarfile.BLOCKSIZE))
    h, size = hashlib.sha256(), 0
    for chunk in chunks:
        h.update(chunk)
        f.write(chunk)
        size += len(chunk)
    f.write(bytes(-size % tarfile.BLOCKSIZE))
    end = f.tell()
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, int(time.time()), 0o644
    header = info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
    assert len(header) == tarfile.BLOCKSIZE, name
    f.seek(start)
    f.write(header)
    f.seek(end)
    return h.hexdigest(), size


def _is_tag(ref: str) -> bool:
    """`name:tag` or `name` (not an image id, not a digest reference)."""
    return not ref.startswith("sha256:") and "@" not in ref


def _as_tag(ref: str) -> str:
    """`name` -> `name:latest`, as Docker reads it (a registry's `host:port/` is no tag)."""
    return ref if ":" in ref.rsplit("/", 1)[-1] else f"{ref}:latest"


# ----------------------------------------------------------------------------------------------
# load


@dataclass
class Contents:
    """What a cheap pass over the archive found: member sizes, checksums, the verified manifest."""

    archive: Path
    expected: dict[str, str]  # name -> sha256, manifest.json excluded (already verified)
    sizes: dict[str, int]
    manifest: dict
    aggregate: str
    carried: list[str] = field(default_factory=list)  # "model", "data" where present
    signer: signing.PublicKey | None = None  # whose signature checksums.txt carries (verified)
    trusted: bool = False  # the signer is one of the keys the load was told to require


def _damaged(archive: Path, e: object) -> BundleError:
    return BundleError(
        f"{archive} is truncated or damaged ({e}); copy it again from the original and compare its "
        "size and aggregate sha256 with what `runner bundle` printed"
    )


def _read(tar: tarfile.TarFile, name: str) -> bytes:
    f = tar.extractfile(name)
    return f.read() if f else b""


def inspect(archive: Path, trusted: list[signing.PublicKey] | None = None) -> Contents:
    """Everything that can be checked without extracting: tar structure, the signature of the
    checksum list (required, and by one of `trusted`, when that is given; checked against the key
    it names otherwise), the list's aggregate, missing and extra files, the manifest against its
    checksum."""
    if not archive.exists():
        raise BundleError(f"{archive}: no such file")
    if archive.is_dir():
        raise BundleError(f"{archive} is a directory, not a bundle")
    try:
        tar = tarfile.open(archive, "r:")
    except tarfile.ReadError as e:
        raise BundleError(f"{archive} is not a runner bundle (not a tar archive: {e})") from None
    except OSError as e:
        raise BundleError(f"cannot read {archive} ({e.strerror})") from None
    try:
        with tar:
            return _inspect(archive, tar, trusted)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise _damaged(archive, e) from None


def _inspect(archive: Path, tar: tarfile.TarFile, trusted: list[signing.PublicKey] | None) -> Contents:
    members = tar.getmembers()
    # tarfile stops quietly at a header it cannot read; an archive ends with zero blocks instead.
    tar.fileobj.seek(tar.offset)  # type: ignore[union-attr]
    if tar.fileobj.read(tarfile.BLOCKSIZE).strip(b"\0"):  # type: ignore[union-attr]
        raise _damaged(archive, f"an unreadable tar header at byte {tar.offset}")
    odd = [m.name for m in members if not (m.isfile() or m.isdir())]
    if odd:
        raise BundleError(f"{archive} holds entries that are not plain files: {', '.join(odd[:5])}")
    sizes = {m.name: m.size for m in members if m.isfile()}
    if CHECKSUMS not in sizes or MANIFEST not in sizes:
        raise BundleError(f"{archive} has no {CHECKSUMS} or {MANIFEST}; it is not a runner bundle")
    checksums = _read(tar, CHECKSUMS)
    signer = _check_signature(
        archive, checksums, _read(tar, SIGNATURE) if SIGNATURE in sizes else None, trusted
    )
    try:
        lines = checksums.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise BundleError(f"{CHECKSUMS} in {archive} is damaged (not text)") from None
    body = [line for line in lines if not line.startswith("aggregate")]
    stated = next((line.split()[-1] for line in lines if line.startswith("aggregate")), "")
    if aggregate(body) != stated:
        raise BundleError(f"{CHECKSUMS} in {archive} does not match its own aggregate checksum")
    expected = {}
    for line in body:
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            raise BundleError(
                f"{CHECKSUMS} in {archive} has a line that is not `sha256  path`: {line[:80]!r}"
            )
        path = PurePosixPath(name)
        if (
            path.is_absolute()
            or ".." in path.parts
            or not (name in (IMAGES, MANIFEST) or path.parts[0] in (*CARRIED, SBOMS))
        ):
            raise BundleError(
                f"{archive} names a file outside {IMAGES}, model/, data/ and {SBOMS}/: {name!r}"
            )
        expected[name] = digest
    extra = sorted(set(sizes) - set(expected) - {CHECKSUMS, SIGNATURE})
    missing = sorted(set(expected) - set(sizes))
    if extra:
        raise BundleError(f"{archive} holds files not in {CHECKSUMS}: {', '.join(extra)}")
    if missing:
        raise BundleError(
            f"{archive} lacks files listed in {CHECKSUMS}: {', '.join(missing)} (is it truncated or damaged?)"
        )
    if IMAGES not in expected:
        raise BundleError(f"{archive} holds no {IMAGES}; it is not a runner bundle")
    manifest_bytes = _read(tar, MANIFEST)
    if hashlib.sha256(manifest_bytes).hexdigest() != expected.pop(MANIFEST):
        raise BundleError(f"{MANIFEST} in {archive} is damaged: its sha256 differs from {CHECKSUMS}")
    try:
        manifest = json.loads(manifest_bytes.decode("utf-8"))
        images = manifest["images"]
        assert all(isinstance(i["ref"], str) and isinstance(i["id"], str) for i in images)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise BundleError(f"{MANIFEST} in {archive} is not a runner bundle manifest") from None
    carried = [p for p in CARRIED if any(n.startswith(p + "/") for n in expected)]
    return Contents(archive, expected, sizes, manifest, stated, carried, signer, trusted is not None)


def _check_signature(
    archive: Path, checksums: bytes, signature: bytes | None, trusted: list[signing.PublicKey] | None
) -> signing.PublicKey | None:
    """The signer of checksums.txt, its signature verified; refused: no signature where one is
    required, a key that is not trusted, a checksums.txt that changed after it was signed."""
    if signature is None:
        if trusted is not None:
            raise BundleError(
                f"{archive} is not signed (it has no {SIGNATURE}), and --require-signature refuses an "
                "unsigned bundle; ask for one made with `runner bundle --sign KEY`"
            )
        return None
    try:
        return signing.verify(checksums, signature, trusted)
    except signing.BadSignature as e:
        raise BundleError(f"{SIGNATURE} in {archive}: {e}; nothing was loaded") from None
    except signing.ChangedSince:
        raise BundleError(
            f"{CHECKSUMS} in {archive} does not match its signature {SIGNATURE} (by {signing.signer(signature).fingerprint}): "
            "one of them changed after it was signed; nothing was loaded"
        ) from None


def _workdir(contents: Contents, extract_to: Path) -> tuple[Path, Path | None]:
    """A fresh directory in --to to unpack model/ and data/ into, after every check of the
    destination; returns it and the --to directory if this load created it (removed again on
    failure)."""
    archive = contents.archive
    created = None
    if extract_to.exists() and not extract_to.is_dir():
        raise BundleError(f"--to {extract_to} is a file, not a directory")
    if not extract_to.exists() and not extract_to.parent.is_dir():
        raise BundleError(
            f"--to {extract_to}: the directory {extract_to.parent} does not exist; create it first "
            f"(mkdir -p {extract_to.parent}) or choose another --to"
        )
    for prefix in contents.carried:
        target = extract_to / prefix
        if target.exists() or target.is_symlink():
            raise BundleError(
                f"{target} exists already; choose another --to or move it away (nothing is overwritten)"
            )
    try:
        if not extract_to.exists():
            extract_to.mkdir()
            created = extract_to
        return Path(tempfile.mkdtemp(prefix=f".{archive.name}.", dir=extract_to)), created
    except OSError as e:
        if created:
            created.rmdir()
        raise BundleError(f"--to {extract_to}: cannot write there ({e.strerror})") from None


def _extract(contents: Contents, work: Path | None, names: list[str], log: Callable[[str], None]) -> None:
    """Unpack `names` into work and check every file's sha256 (the others are only read)."""
    archive = contents.archive
    try:
        with tarfile.open(archive, "r:") as tar:
            for member in tar:
                if member.name not in contents.expected:
                    continue
                dest = work / member.name if work and member.name in names else None
                log(f"checksum {member.name}" + (" (unpacking)" if dest else ""))
                h = hashlib.sha256()
                src = tar.extractfile(member)
                if dest:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                with open(dest, "wb") if dest else contextlib.nullcontext() as out:
                    while chunk := src.read(1 << 20):
                        h.update(chunk)
                        if out:
                            out.write(chunk)
                if h.hexdigest() != contents.expected[member.name]:
                    raise BundleError(
                        f"{member.name} in {archive} is damaged: its sha256 differs from {CHECKSUMS}"
                    )
    except (tarfile.TarError, EOFError) as e:
        raise _damaged(archive, e) from None
    except OSError as e:
        if e.filename is None:  # a read of the archive itself (a short read is an OSError too)
            raise _damaged(archive, e) from None
        raise BundleError(f"unpacking {archive} failed: {e.filename}: {e.strerror}") from None


class _HashingReader:
    """A file-like view of one archive member that hashes what it hands out."""

    def __init__(self, src: BinaryIO, size: int):
        self.src, self.size, self.sha = src, size, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.src.read(n)
        self.sha.update(data)
        return data

    def __len__(self) -> int:  # the request's Content-Length
        return self.size


def _docker_load(contents: Contents, docker: Docker, log: Callable[[str], None]) -> None:
    """`docker load` reads images.tar from inside the archive; its sha256 is taken again on the
    way, so an archive that changed since it was verified is still refused."""
    archive = contents.archive
    log(f"docker load {IMAGES}")
    try:
        with tarfile.open(archive, "r:") as tar:
            member = tar.getmember(IMAGES)
            src = _HashingReader(tar.extractfile(member), member.size)  # type: ignore[arg-type]
            try:
                docker.load(src)  # type: ignore[arg-type]
            except _engine_errors() as e:
                raise BundleError(f"docker load of {IMAGES} from {archive} failed: {e}") from None
    except (tarfile.TarError, EOFError, KeyError) as e:
        raise _damaged(archive, e) from None
    if src.sha.hexdigest() != contents.expected[IMAGES]:
        raise BundleError(
            f"{archive} changed while it was loaded: {IMAGES} no longer matches {CHECKSUMS}; copy "
            "it again from the original and load it once more"
        )


def load(
    archive: Path, extract_to: Path | None = None, docker: Docker | None = None,
    log: Callable[[str], None] = lambda s: None, trusted: list[signing.PublicKey] | None = None,
) -> dict:  # fmt: skip
    """Verify, `docker load`, check image ids; model/ and data/ go to extract_to if given.

    Refused before anything slow (extraction, `docker load`): a damaged or truncated archive, a
    `--to` whose parent is missing, that is not writable, or that already holds model/ or data/,
    and too little free space to unpack. With `trusted` keys: a bundle not signed by one of them.
    """
    with _os_errors(f"loading {archive}"):
        return _load(archive, extract_to, docker, log, trusted)


def _load(
    archive: Path, extract_to: Path | None, docker: Docker | None, log: Callable[[str], None],
    trusted: list[signing.PublicKey] | None,
) -> dict:  # fmt: skip
    contents = inspect(archive, trusted)
    unpack = [n for n in contents.expected if extract_to and n.split("/")[0] in contents.carried]
    work, created = _workdir(contents, extract_to) if extract_to else (None, None)
    ok = False
    try:
        if work:
            need, free = sum(contents.sizes[n] for n in unpack), shutil.disk_usage(work).free
            if free < need:
                raise BundleError(
                    f"--to {extract_to} has {_mib(free)} free, and unpacking {archive} needs "
                    f"{_mib(need)} there; free some space or choose --to on a larger disk"
                )
        docker = docker or Docker()
        if trusted is not None and unpack:
            # A signed bundle from a source not yet trusted: nothing of it is written, not even into
            # the hidden directory, until every member matches the signed checksums (so model and
            # data are read twice, and hashed again as they are unpacked).
            _extract(contents, None, [], log)
        _extract(contents, work, unpack, log)  # every checksum, before anything is loaded
        _docker_load(contents, docker, log)
        manifest = contents.manifest
        for image in manifest["images"]:
            for ref in [image["ref"], *image.get("tags", [])]:
                got = docker.image_id(ref)
                if got != image["id"]:
                    raise BundleError(
                        f"after loading, {ref} is {got}, not {image['id']} as the manifest says"
                    )
        for prefix in contents.carried if extract_to else []:
            target = extract_to / prefix
            if target.exists() or target.is_symlink():
                raise BundleError(
                    f"{target} exists already; choose another --to or move it away (nothing is overwritten)"
                )
            os.replace(work / prefix, target)  # type: ignore[operator] - work is set with --to
        ok = True
    finally:
        if work:
            shutil.rmtree(work, ignore_errors=True)
        if created and not ok:
            shutil.rmtree(created, ignore_errors=True)
    manifest["aggregate"] = contents.aggregate
    manifest["signature"] = _signature_info(contents)
    return manifest


def _signature_info(contents: Contents) -> dict | None:
    if contents.signer is None:
        return None
    return {"signer": contents.signer.fingerprint, "trusted": contents.trusted}


def describe(archive: Path, trusted: list[signing.PublicKey] | None = None) -> dict:
    """What `load --inspect` shows: the manifest (provenance included), the member sizes and the
    signature, after the checks that need no extraction (see `inspect`); nothing is loaded, and
    the members' own sha256 are not read (a load checks them)."""
    with _os_errors(f"reading {archive}"):
        contents = inspect(archive, trusted)
    return {**contents.manifest, "aggregate": contents.aggregate, "sizes": contents.sizes,
            "signature": _signature_info(contents)}  # fmt: skip
