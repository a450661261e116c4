"""What a bundle records of what built it: runner, lock and spec hashes, build times, and a host
name only where asked (`runner build --record-host`, `runner bundle --record-host`)."""

from __future__ import annotations

import json
import socket
import tarfile
from pathlib import Path

from tests.unit.test_bundle_errors import TAGS, FakeDocker

LABELS = {
    "runner.version": "0.1.0", "runner.lock-sha256": "3" * 64, "runner.image-spec-sha256": "4" * 16,
    "runner.wheel-sha256": "5" * 64, "org.opencontainers.image.base.name": "runner-test/base:bookworm-py311",
}  # fmt: skip


class Labelled(FakeDocker):
    """An image runner built, with its provenance labels."""

    def __init__(self, labels: dict[str, str]):
        super().__init__(TAGS, size=1 << 16)
        self.labels = labels
        self.built_with: dict[str, str] = {}

    def image_attrs(self, ref: str) -> dict:
        attrs = super().image_attrs(ref)
        attrs["Config"]["Labels"] = self.labels
        return attrs

    def build(self, context, tag, labels, log) -> str:
        self.built_with = dict(labels)
        return "sha256:" + "ef" * 32

    def tag(self, image_id: str, ref: str) -> None:
        pass


def _manifest(archive: Path) -> dict:
    with tarfile.open(archive) as tar:
        return json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]


def test_the_manifest_records_what_built_each_image_and_no_host_unless_asked(tmp_path: Path):
    from runner.host.images.bundle import bundle

    bundle(["runner/tiny:latest"], tmp_path / "plain.bundle", docker=Labelled(LABELS))
    provenance = _manifest(tmp_path / "plain.bundle")["provenance"]
    (image,) = provenance["images"]
    assert image["lock_sha256"] == "3" * 64 and image["built_by_runner"] == "0.1.0"
    assert image["base"] == "runner-test/base:bookworm-py311" and image["built"] == "2026-01-01T00:00:00Z"
    assert "built_on" not in image and "host" not in provenance["bundled"]

    labels = {**LABELS, "runner.build-host": "builder-7"}
    bundle(["runner/tiny:latest"], tmp_path / "asked.bundle", docker=Labelled(labels), record_host=True)
    provenance = _manifest(tmp_path / "asked.bundle")["provenance"]
    assert provenance["bundled"]["host"] == socket.gethostname()
    assert provenance["images"][0]["built_on"] == "builder-7"


def test_build_labels_the_host_only_when_asked(tmp_path: Path, monkeypatch):
    from runner.core.jobspec.load import load_image
    from runner.host.images import build as build_mod

    def context(spec, images_dir, wheels_root, ctx):
        (ctx / "Dockerfile").write_text("FROM scratch\n")
        return {"runner.lock-sha256": "3", "runner.wheel-sha256": "5", "runner.requirements": ""}

    monkeypatch.setattr(build_mod, "make_context", context)
    spec = load_image("cpu")
    for asked in (False, True):
        engine = Labelled({})
        engine.image_id = lambda ref: "sha256:base"  # type: ignore[method-assign]
        build_mod.build(spec, Path("images"), tmp_path, docker=engine, record_host=asked)  # type: ignore[arg-type]
        assert engine.built_with.get("runner.build-host") == (socket.gethostname() if asked else None)
