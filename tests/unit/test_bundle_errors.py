"""`runner bundle` / `runner load` failures that need no Docker engine: one message naming the
path, exit code 5, no traceback, and nothing written or loaded.

The bundles here are real archives written by runner's own `bundle()`, with a stand-in engine
whose `docker save` writes a few MiB of random bytes as images.tar. The CLI runs with a
DOCKER_HOST that leads nowhere, so a refusal that came after contacting the engine (let alone
after `docker load`) would show as exit code 4 instead of 5.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from tests.conftest import remount, runner_cli, tmpfs

NO_ENGINE = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}
IMAGE_ID = "sha256:" + "ab" * 32
TAGS = {"runner/tiny:latest": IMAGE_ID, "runner/tiny:0123456789ab": IMAGE_ID}


class FakeDocker:
    """The few engine calls bundle/load make; images.tar is a JSON line of tags then padding."""

    def __init__(self, tags: dict[str, str] | None = None, size: int = 3 << 20):
        self.tags = dict(tags or {})
        self.size = size
        self.saved: list[list[str]] = []
        self.loaded = 0

    def image_id(self, ref: str) -> str | None:
        return self.tags.get(ref) or (ref if ref in self.tags.values() else None)

    def image_tags(self, ref: str) -> list[str]:
        image_id = self.image_id(ref)
        return [t for t, i in self.tags.items() if i == image_id]

    def image_size(self, ref: str) -> int:
        return self.size

    def image_attrs(self, ref: str) -> dict:
        image_id = self.image_id(ref)
        return {"Id": image_id, "RepoTags": self.image_tags(ref), "Created": "2026-01-01T00:00:00Z",
                "Os": "linux", "Architecture": "amd64", "Config": {"Labels": None}}  # fmt: skip

    def read_files(self, image: str, paths: list[str]) -> dict[str, bytes]:
        return {}  # an image with no dpkg database and no Python of runner's: an SBOM of the image alone

    def save_stream(self, refs: list[str]) -> Iterator[bytes]:
        self.saved.append(list(refs))
        head = json.dumps({r: self.image_id(r) for r in refs}).encode() + b"\n"
        yield head
        for _ in range((self.size - len(head)) // (1 << 16)):
            yield os.urandom(1 << 16)
        yield os.urandom((self.size - len(head)) % (1 << 16))

    def load(self, tar: BinaryIO) -> list[str]:
        self.loaded += 1
        data = b"".join(iter(lambda: tar.read(1 << 16), b""))  # all of it, as the engine reads
        self.tags.update(json.loads(data.split(b"\n", 1)[0]))
        return sorted(set(self.tags.values()))


def _run(*args: str) -> subprocess.CompletedProcess:
    return runner_cli(*args, env=NO_ENGINE)


def _refused(result: subprocess.CompletedProcess, *named: str) -> None:
    assert result.returncode == 5, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    for text in named:
        assert text in result.stderr, result.stderr


def _leftovers(directory: Path) -> list[str]:
    """Temporary or partial files a refused command may have left."""
    return [p.name for p in directory.iterdir() if p.name.startswith(".") or p.name.endswith(".partial")]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    model = tmp_path_factory.mktemp("src") / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}\n')
    (model / "weights.bin").write_bytes(os.urandom(2 << 20))  # more than small_disk holds
    return model


@pytest.fixture(scope="module")
def good_bundle(tmp_path_factory, model_dir) -> Path:
    from runner.host.images.bundle import bundle

    out = tmp_path_factory.mktemp("bundles") / "good.bundle"
    bundle(["runner/tiny:latest"], out, model=model_dir, docker=FakeDocker(TAGS))
    return out


@pytest.fixture
def read_only_dir(tmp_path: Path):
    """A real read-only file system (a tmpfs mounted ro); as non-root, a directory without write
    permission."""
    ro = tmp_path / "ro"
    if os.geteuid() != 0:
        ro.mkdir()
        ro.chmod(0o555)
        yield ro
        ro.chmod(0o755)
        return
    with tmpfs(ro, "ro,size=1m"):
        yield ro


@pytest.fixture
def small_disk(tmp_path: Path):
    """A writable file system of 1 MiB."""
    with tmpfs(tmp_path / "small", "size=1m") as disk:
        yield disk


# ---------------------------------------------------------------------------------------------
# load


def _flip_middle(src: Path, dst: Path) -> None:
    data = bytearray(src.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + 64):
        data[i] ^= 0xFF
    dst.write_bytes(bytes(data))


def _flip_header_of(src: Path, dst: Path, member: str) -> None:
    import tarfile

    with tarfile.open(src) as tar:
        offset = tar.getmember(member).offset
    data = bytearray(src.read_bytes())
    for i in range(offset, offset + 100):  # the member's name and mode: no longer a valid header
        data[i] ^= 0xFF
    dst.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncated", "is truncated or damaged (unexpected end of data)"),
        ("cut-in-last-file", "is truncated or damaged (unexpected end of data)"),
        ("bad-header", "is truncated or damaged (an unreadable tar header at byte "),
        ("garbage", "is not a runner bundle (not a tar archive: "),
        ("empty", "is not a runner bundle (not a tar archive: empty file)"),
    ],
)
def test_load_refuses_a_damaged_archive(good_bundle: Path, tmp_path: Path, damage: str, message: str):
    import tarfile

    bad = tmp_path / f"{damage}.bundle"
    if damage == "truncated":
        bad.write_bytes(good_bundle.read_bytes()[:100_000])  # as `head -c 100000 good > bad`
    elif damage == "cut-in-last-file":
        with tarfile.open(good_bundle) as tar:
            cut = tar.getmember("model/weights.bin").offset_data + 1000
        bad.write_bytes(good_bundle.read_bytes()[:cut])
    elif damage == "bad-header":
        _flip_header_of(good_bundle, bad, "model/weights.bin")
    elif damage == "garbage":
        bad.write_bytes(os.urandom(50_000))
    else:
        bad.write_bytes(b"")
    dest = tmp_path / "dest"
    result = _run("load", str(bad), "--to", str(dest))
    _refused(result, str(bad), message.format(archive=bad))
    assert not dest.exists()
    assert _leftovers(tmp_path) == []


def test_load_refuses_flipped_bytes_before_docker_load(good_bundle: Path, tmp_path: Path):
    """Found only by the checksums, so after the engine was reached: the library with a stand-in
    engine here, the CLI in tests/docker/test_bundle_errors.py."""
    from runner.host.images.bundle import BundleError, load

    bad = tmp_path / "flipped.bundle"
    _flip_middle(good_bundle, bad)
    engine = FakeDocker()
    with pytest.raises(
        BundleError, match=rf"^images.tar in {bad} is damaged: its sha256 differs from checksums"
    ):
        load(bad, extract_to=tmp_path / "dest", docker=engine)
    assert engine.loaded == 0 and not (tmp_path / "dest").exists() and _leftovers(tmp_path) == []


def test_load_without_to_refuses_a_truncated_archive_and_leaves_nothing(good_bundle: Path, tmp_path: Path):
    bad = tmp_path / "bad.bundle"
    bad.write_bytes(good_bundle.read_bytes()[: good_bundle.stat().st_size // 2])
    _refused(_run("load", str(bad)), f"{bad} is truncated or damaged")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.bundle"]


def test_load_refuses_a_missing_archive_or_a_directory(tmp_path: Path):
    _refused(_run("load", str(tmp_path / "absent.bundle")), f"{tmp_path / 'absent.bundle'}: no such file")
    _refused(_run("load", str(tmp_path)), f"{tmp_path} is a directory, not a bundle")


def test_load_refuses_a_to_whose_parent_is_missing(good_bundle: Path, tmp_path: Path):
    dest = tmp_path / "no" / "such" / "dest"
    result = _run("load", str(good_bundle), "--to", str(dest))
    _refused(result, f"--to {dest}: the directory {dest.parent} does not exist", f"mkdir -p {dest.parent}")
    assert not (tmp_path / "no").exists()


def test_load_refuses_a_to_that_is_a_file(good_bundle: Path, tmp_path: Path):
    (tmp_path / "file").write_text("x")
    _refused(_run("load", str(good_bundle), "--to", str(tmp_path / "file")), "is a file, not a directory")


def test_load_refuses_an_existing_target_before_docker_load(good_bundle: Path, tmp_path: Path):
    dest = tmp_path / "dest"
    (dest / "model").mkdir(parents=True)
    (dest / "model" / "mine.txt").write_text("keep me")
    result = _run("load", str(good_bundle), "--to", str(dest))
    # Exit 5, not 4: refused before the engine (unreachable here) was even contacted.
    _refused(result, f"{dest / 'model'} exists already; choose another --to")
    assert sorted(p.name for p in (dest / "model").iterdir()) == ["mine.txt"]
    assert sorted(p.name for p in dest.iterdir()) == ["model"]


@pytest.mark.parametrize("where", ["to-itself", "inside"])
def test_load_refuses_read_only_media(good_bundle: Path, read_only_dir: Path, where: str):
    dest = read_only_dir if where == "to-itself" else read_only_dir / "dest"
    result = _run("load", str(good_bundle), "--to", str(dest))
    _refused(result, f"--to {dest}: cannot write there (")
    assert "Read-only file system" in result.stderr or "Permission denied" in result.stderr
    assert list(read_only_dir.iterdir()) == []


def test_load_refuses_too_little_free_space_before_unpacking(good_bundle: Path, small_disk: Path):
    dest = small_disk / "dest"
    result = _run("load", str(good_bundle), "--to", str(dest))
    _refused(result, f"--to {dest} has ", " MiB free, and unpacking ", " needs 2.0 MiB there")
    assert list(small_disk.iterdir()) == []  # --to was made for the check, then removed


def test_load_loads_with_every_tag_and_places_the_model(good_bundle: Path, model_dir: Path, tmp_path: Path):
    from runner.host.images.bundle import load

    engine = FakeDocker()
    manifest = load(good_bundle, extract_to=tmp_path / "dest", docker=engine)
    assert engine.loaded == 1 and engine.tags == TAGS  # both tags came back
    assert manifest["images"] == [{"ref": "runner/tiny:latest", "id": IMAGE_ID, "tags": sorted(TAGS)}]
    for f in model_dir.iterdir():
        assert (tmp_path / "dest" / "model" / f.name).read_bytes() == f.read_bytes()
    assert _leftovers(tmp_path / "dest") == [] and _leftovers(good_bundle.parent) == []


def test_load_refuses_when_a_tag_is_not_the_manifests_image(good_bundle: Path, tmp_path: Path):
    from runner.host.images.bundle import BundleError, load

    class Mislabelling(FakeDocker):
        def load(self, tar: BinaryIO) -> list[str]:
            super().load(tar)
            self.tags["runner/tiny:0123456789ab"] = "sha256:" + "cd" * 32
            return []

    with pytest.raises(BundleError, match=r"after loading, runner/tiny:0123456789ab is sha256:cdcd"):
        load(good_bundle, extract_to=tmp_path / "dest", docker=Mislabelling())
    assert not (tmp_path / "dest").exists()


# ---------------------------------------------------------------------------------------------
# bundle


def test_bundle_records_and_saves_every_tag_of_the_image(good_bundle: Path):
    import tarfile

    with tarfile.open(good_bundle) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())
        saved = json.loads(tar.extractfile("images.tar").readline())
    assert manifest["images"] == [{"ref": "runner/tiny:latest", "id": IMAGE_ID, "tags": sorted(TAGS)}]
    assert saved == TAGS  # `docker save` was asked for both tags, so a load restores both


def test_bundle_refuses_an_output_that_exists(tmp_path: Path):
    (tmp_path / "taken.bundle").write_text("mine")
    (tmp_path / "folder").mkdir()
    result = _run("bundle", "runner/tiny:latest", "-o", str(tmp_path / "taken.bundle"))
    _refused(result, f"-o {tmp_path / 'taken.bundle'}: a file of that name exists already")
    assert (tmp_path / "taken.bundle").read_text() == "mine"
    result = _run("bundle", "runner/tiny:latest", "-o", str(tmp_path / "folder"))
    _refused(result, f"-o {tmp_path / 'folder'}: a directory of that name exists already")
    assert _leftovers(tmp_path) == []


def test_bundle_refuses_a_missing_output_directory(tmp_path: Path):
    out = tmp_path / "no" / "such" / "x.bundle"
    result = _run("bundle", "runner/tiny:latest", "-o", str(out))
    _refused(result, f"-o {out}: the directory {out.parent} does not exist", f"mkdir -p {out.parent}")
    assert not (tmp_path / "no").exists()


def test_bundle_refuses_read_only_media(read_only_dir: Path):
    out = read_only_dir / "x.bundle"
    result = _run("bundle", "runner/tiny:latest", "-o", str(out))
    _refused(result, f"-o {out}: cannot write in {read_only_dir} (")
    assert list(read_only_dir.iterdir()) == []


def test_bundle_refuses_a_missing_model_directory(tmp_path: Path):
    result = _run("bundle", "x", "-o", str(tmp_path / "x.bundle"), "--model", str(tmp_path / "absent"))
    _refused(result, f"--model {tmp_path / 'absent'}: no such directory")
    assert list(tmp_path.iterdir()) == []


def test_bundle_refuses_too_little_free_space_before_docker_save(small_disk: Path):
    from runner.host.images.bundle import BundleError, bundle

    engine = FakeDocker(TAGS)
    with pytest.raises(BundleError, match=rf"-o {small_disk}/x.bundle: {small_disk} has 1.0 MiB free"):
        bundle(["runner/tiny:latest"], small_disk / "x.bundle", docker=engine)
    assert engine.saved == [] and list(small_disk.iterdir()) == []


def test_bundle_that_fills_the_disk_mid_way_leaves_nothing(small_disk: Path):
    from runner.host.images.bundle import BundleError, bundle

    engine = FakeDocker(TAGS)
    engine.image_size = lambda ref: 0  # an engine that under-reports: the disk fills during the save
    out = small_disk / "x.bundle"
    with pytest.raises(
        BundleError, match=rf"^writing {out} failed: .*No space left on device; nothing was written"
    ):
        bundle(["runner/tiny:latest"], out, docker=engine)
    assert list(small_disk.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# the images pass through each disk once


@pytest.fixture
def five_mib_disk(tmp_path: Path):
    with tmpfs(tmp_path / "five", "size=5m") as disk:
        yield disk


def test_bundle_writes_the_images_once_on_a_disk_that_holds_them_once(five_mib_disk: Path):
    """3 MiB of images on a 5 MiB disk: a copy through a temporary file would not fit."""
    from runner.host.images.bundle import bundle, inspect

    engine = FakeDocker(TAGS, size=3 << 20)
    out = five_mib_disk / "x.bundle"
    bundle(["runner/tiny:latest"], out, docker=engine)
    assert sorted(p.name for p in five_mib_disk.iterdir()) == ["x.bundle"]
    assert inspect(out).sizes["images.tar"] == 3 << 20


def test_load_reads_the_images_from_inside_the_archive(good_bundle: Path, tmp_path: Path, monkeypatch):
    """The archive on read-only media and no temporary directory at all: a load without --to
    writes nothing but what the engine stores."""
    import shutil
    import tempfile

    from runner.host.images.bundle import load

    with tmpfs(tmp_path / "media", "size=16m") as media:
        archive = media / good_bundle.name
        shutil.copyfile(good_bundle, archive)
        remount(media, "ro")
        monkeypatch.setattr(tempfile, "tempdir", "/nonexistent/tmp")
        engine = FakeDocker()
        load(archive, docker=engine)
        assert engine.loaded == 1 and engine.tags == TAGS


def test_load_refuses_an_archive_that_changed_after_it_was_verified(good_bundle: Path, tmp_path: Path):
    """The checksums are read before `docker load`; the images are hashed again as the engine
    reads them, so bytes that changed in between are still caught."""
    import shutil

    from runner.host.images.bundle import BundleError, load

    archive = tmp_path / "changing.bundle"
    shutil.copyfile(good_bundle, archive)

    class Swapping(FakeDocker):
        def load(self, tar: BinaryIO) -> list[str]:
            with open(archive, "r+b") as f:  # another process rewrites the archive meanwhile
                f.seek(archive.stat().st_size // 2)
                f.write(b"\xff" * 64)
            return super().load(tar)

    with pytest.raises(BundleError, match=rf"^{archive} changed while it was loaded: images.tar no longer"):
        load(archive, docker=Swapping())
