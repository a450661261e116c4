"""`runner bundle` / `runner load` through the real CLI and engine, on a tiny imported image:
every tag of an image travels, and a damaged archive or a refused `--to` loads nothing."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.conftest import runner_cli

pytestmark = pytest.mark.docker

REPO = "runner-test/bundle-errors"
LATEST, HASHED = f"{REPO}:latest", f"{REPO}:0123456789ab"  # as `runner build` tags an image


def _tiny_rootfs() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        payload = b"a tiny image for bundle tests\n"
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def _remove(docker) -> None:
    for ref in (HASHED, LATEST):
        docker.remove_image(ref)


@pytest.fixture(scope="module")
def tiny_image(docker):
    """A one-file image (`docker import`), tagged :latest and with a content-hash-like tag."""
    _remove(docker)
    docker.api.import_image_from_data(_tiny_rootfs(), repository=REPO, tag="latest")
    image_id = docker.image_id(LATEST)
    docker.tag(image_id, HASHED)
    yield image_id
    _remove(docker)


@pytest.fixture(scope="module")
def tiny_bundle(docker, tiny_image, tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("tiny")
    (src / "model").mkdir()
    (src / "model" / "config.json").write_text('{"model_type": "llama"}\n')
    out = src / "tiny.bundle"
    result = runner_cli("bundle", LATEST, "--model", str(src / "model"), "-o", str(out))
    assert result.returncode == 0, result.stderr
    return out


def _refused(result: subprocess.CompletedProcess, *named: str) -> None:
    assert result.returncode == 5, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    for text in named:
        assert text in result.stderr, result.stderr


def _nothing_loaded(docker) -> None:
    assert docker.image_id(LATEST) is None and docker.image_id(HASHED) is None


def test_bundle_carries_every_tag_and_load_restores_them(docker, tiny_image, tiny_bundle, tmp_path):
    with tarfile.open(tiny_bundle) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())
    assert manifest["images"] == [{"ref": LATEST, "id": tiny_image, "tags": [HASHED, LATEST]}]
    _remove(docker)
    _nothing_loaded(docker)
    result = runner_cli("load", str(tiny_bundle), "--to", str(tmp_path / "dest"))
    assert result.returncode == 0, result.stderr
    assert docker.image_id(LATEST) == docker.image_id(HASHED) == tiny_image
    assert f"loaded {LATEST} ({tiny_image[:19]}), also tagged {HASHED}" in result.stdout
    assert (tmp_path / "dest" / "model" / "config.json").is_file()


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_load_of_a_damaged_bundle_loads_nothing(docker, tiny_bundle, tmp_path, damage):
    data = bytearray(tiny_bundle.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]  # as `head -c N good.bundle > bad.bundle`
        message = "is truncated or damaged (unexpected end of data)"
    else:
        middle = len(data) // 2  # inside images.tar: only its checksum can tell
        data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
        message = "images.tar in {bad} is damaged: its sha256 differs from checksums.txt"
    bad = tmp_path / f"{damage}.bundle"
    bad.write_bytes(bytes(data))
    _remove(docker)
    result = runner_cli("load", str(bad), "--to", str(tmp_path / "dest"))
    _refused(result, str(bad), message.format(bad=bad))
    _nothing_loaded(docker)
    assert sorted(p.name for p in tmp_path.iterdir()) == [bad.name]


def test_load_refuses_an_existing_target_before_docker_load(docker, tiny_bundle, tmp_path):
    (tmp_path / "dest" / "model").mkdir(parents=True)
    _remove(docker)
    result = runner_cli("load", str(tiny_bundle), "--to", str(tmp_path / "dest"))
    _refused(result, f"{tmp_path / 'dest' / 'model'} exists already; choose another --to")
    _nothing_loaded(docker)
    assert list((tmp_path / "dest" / "model").iterdir()) == []


def test_load_refuses_a_missing_to_parent_before_docker_load(docker, tiny_bundle, tmp_path):
    dest = tmp_path / "absent" / "dest"
    _remove(docker)
    result = runner_cli("load", str(tiny_bundle), "--to", str(dest))
    _refused(result, f"--to {dest}: the directory {dest.parent} does not exist")
    _nothing_loaded(docker)


def test_bundle_refuses_an_existing_output_before_docker_save(docker, tmp_path):
    (tmp_path / "taken.bundle").write_text("mine")
    result = runner_cli("bundle", LATEST, "-o", str(tmp_path / "taken.bundle"))
    _refused(result, f"-o {tmp_path / 'taken.bundle'}: a file of that name exists already")
    assert (tmp_path / "taken.bundle").read_text() == "mine"
    result = runner_cli("bundle", LATEST, "-o", str(tmp_path / "absent" / "x.bundle"))
    _refused(result, f"the directory {tmp_path / 'absent'} does not exist")
