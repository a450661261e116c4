"""Tampering with the lock or the wheelhouse is refused before an image is built: by the build
itself (its context step), and by `runner wheels --verify`, each naming what was changed.

Prints the figures of the reliability table:
  RELIABILITY tamper: N/N refused
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from runner.host.images.lock import seal
from runner.host.images.wheels import MANIFEST, WheelhouseError, verify, write_manifest
from tests.conftest import ROOT, runner_cli

WHEELS = {"alpha-1.0-py3-none-any.whl": b"alpha's wheel", "beta-2.1-py3-none-any.whl": b"beta's wheel"}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def lock_text(wheels: dict[str, bytes]) -> str:
    header = "# lock of image 'cpu' (spec 0), for python 3.11 on x86_64-manylinux_2_28; written by `runner lock cpu`\n"
    body = "".join(
        f"{name.split('-')[0]}=={name.split('-')[1]} \\\n    --hash=sha256:{_sha(data)}\n    # via -r requirements.in\n"
        for name, data in wheels.items()
    )
    return seal(header + body)


@pytest.fixture
def project(tmp_path: Path):
    """images/cpu.yaml, its sealed lock, and a wheelhouse filled for it (offline_wheels/cpu)."""
    from runner.core.jobspec.load import load_image

    (tmp_path / "images").mkdir()
    shutil.copy(ROOT / "images" / "cpu.yaml", tmp_path / "images" / "cpu.yaml")
    spec = load_image(tmp_path / "images" / "cpu.yaml")
    lock_file = tmp_path / "images" / "cpu.lock"
    lock_file.write_text(lock_text(WHEELS), encoding="utf-8")
    out = tmp_path / "offline_wheels" / "cpu"
    out.mkdir(parents=True)
    for name, data in WHEELS.items():
        (out / name).write_bytes(data)
    write_manifest(spec, lock_file, out)
    return tmp_path, spec, lock_file, out


# --- the cases: each changes one thing, and says what the refusal must name ----------------


def swapped_wheel(lock_file: Path, out: Path, spec) -> str:
    (out / "alpha-1.0-py3-none-any.whl").write_bytes(b"something else")
    return "alpha-1.0-py3-none-any.whl"


def swapped_wheel_and_manifest(lock_file: Path, out: Path, spec) -> str:
    (out / "beta-2.1-py3-none-any.whl").write_bytes(b"something else")
    write_manifest(spec, lock_file, out)  # whoever swapped it covered their tracks
    return "beta-2.1-py3-none-any.whl: sha256"


def removed_wheel(lock_file: Path, out: Path, spec) -> str:
    (out / "beta-2.1-py3-none-any.whl").unlink()
    return "missing wheel: beta==2.1"


def hash_edited_in_the_lock(lock_file: Path, out: Path, spec) -> str:
    text = lock_file.read_text()
    lock_file.write_text(text.replace(_sha(WHEELS["alpha-1.0-py3-none-any.whl"]), _sha(b"something else")))
    return "cpu.lock was edited by hand"


def version_edited_in_the_lock(lock_file: Path, out: Path, spec) -> str:
    lock_file.write_text(lock_file.read_text().replace("beta==2.1", "beta==2.2"))
    return "cpu.lock was edited by hand"


def seal_removed(lock_file: Path, out: Path, spec) -> str:
    lines = lock_file.read_text().splitlines(keepends=True)
    lock_file.write_text(lines[0] + "".join(lines[2:]))
    return "cpu.lock carries no sha256 of its own"


def lock_edited_and_resealed(lock_file: Path, out: Path, spec) -> str:
    """Anyone can recompute the seal; the wheelhouse was filled for the lock as it was."""
    lock_file.write_text(lock_text({**WHEELS, "alpha-1.0-py3-none-any.whl": b"something else"}))
    return "was filled for another version of"


def manifest_edited(lock_file: Path, out: Path, spec) -> str:
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["files"]["alpha-1.0-py3-none-any.whl"]["sha256"] = _sha(b"something else")
    (out / MANIFEST).write_text(json.dumps(manifest))
    return "alpha-1.0-py3-none-any.whl: sha256"


CASES: list[Callable[[Path, Path, object], str]] = [
    swapped_wheel, swapped_wheel_and_manifest, removed_wheel, hash_edited_in_the_lock,
    version_edited_in_the_lock, seal_removed, lock_edited_and_resealed, manifest_edited,
]  # fmt: skip
REFUSED: dict[str, bool] = {}


def test_the_untouched_wheelhouse_passes(project):
    root, spec, lock_file, out = project
    assert verify(spec, root / "images", root / "offline_wheels") == []
    done = runner_cli("wheels", "cpu", "--verify", cwd=root)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("tamper", CASES, ids=[c.__name__ for c in CASES])
def test_tampering_is_refused_at_build_and_verify(project, tamper, tmp_path: Path):
    from runner.host.images.build import make_context

    root, spec, lock_file, out = project
    named = tamper(lock_file, out, spec)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    with pytest.raises(WheelhouseError) as refused:
        make_context(spec, root / "images", root / "offline_wheels", ctx)  # the build's first step
    assert named in str(refused.value)
    assert not (ctx / "Dockerfile").exists()  # refused before anything of the build exists
    cli = runner_cli("wheels", "cpu", "--verify", cwd=root)
    assert cli.returncode != 0 and named in cli.stderr and "Traceback" not in cli.stderr, cli.stderr
    REFUSED[tamper.__name__] = True


def test_reliability_figures():
    """Runs after the cases (file order); the line the reliability table is assembled from."""
    refused = sum(REFUSED.get(c.__name__, False) for c in CASES)
    print(f"\nRELIABILITY tamper: {refused}/{len(CASES)} refused")
    assert refused == len(CASES)


def test_wheels_after_a_new_lock_keep_only_its_wheels(project, monkeypatch):
    """A lock that moved a package to another version (or dropped one): `runner wheels` leaves
    the wheelhouse with this lock's wheels alone, so the image never installs both versions."""
    from runner.host.images import wheels

    root, spec, lock_file, out = project
    (out / "alpha-0.9-py3-none-any.whl").write_bytes(b"the wheel an earlier lock pinned")
    (out / "gamma-3.0-py3-none-any.whl").write_bytes(b"a package no longer locked")
    monkeypatch.setattr(wheels, "_download", lambda *a, **k: None)  # every locked wheel is there
    wheels.fill(spec, root / "images", root / "offline_wheels")
    assert sorted(p.name for p in out.glob("*.whl")) == sorted(WHEELS)
    assert (out / "requirements.txt").read_text().splitlines() == [
        f"alpha==1.0 --hash=sha256:{_sha(WHEELS['alpha-1.0-py3-none-any.whl'])}",
        f"beta==2.1 --hash=sha256:{_sha(WHEELS['beta-2.1-py3-none-any.whl'])}",
    ]
    assert verify(spec, root / "images", root / "offline_wheels") == []
