"""The wheelhouse of an image that compiles DeepSpeed's ops at build time keeps deepspeed's sdist
(hash-checked against the lock) instead of a wheel built without them; everything else is as for
any image: only this lock's files stay, each named with its sha256 for the build."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from runner.host.images import wheels
from runner.host.images.lock import seal
from tests.conftest import ROOT

FILES = {"alpha-1.0-py3-none-any.whl": b"alpha's wheel", "deepspeed-0.19.8.tar.gz": b"deepspeed's sdist"}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _project(tmp_path: Path):
    from runner.core.jobspec.load import load_image

    (tmp_path / "images").mkdir()
    shutil.copy(ROOT / "images" / "default.yaml", tmp_path / "images" / "default.yaml")
    spec = load_image(tmp_path / "images" / "default.yaml")
    header = "# lock of image 'default' (spec 0), for python 3.11 on x86_64-manylinux_2_28; written by `runner lock default`\n"
    body = "".join(
        f"{name.split('-')[0]}=={name.split('-')[1].removesuffix('.tar.gz')} \\\n"
        f"    --hash=sha256:{_sha(data)}\n    # via -r requirements.in\n"
        for name, data in FILES.items()
    )
    (tmp_path / "images" / "default.lock").write_text(seal(header + body), encoding="utf-8")
    out = tmp_path / "offline_wheels" / "default"
    out.mkdir(parents=True)
    return spec, out


def test_deepspeed_stays_an_sdist_where_its_ops_are_compiled_in_the_image(tmp_path: Path, monkeypatch):
    spec, out = _project(tmp_path)
    assert spec.prebuilt_ops == ["fused_adam", "cpu_adam"]
    (out / "alpha-1.0-py3-none-any.whl").write_bytes(FILES["alpha-1.0-py3-none-any.whl"])
    (out / "deepspeed-0.19.8-py3-none-any.whl").write_bytes(b"a wheel built without the ops, earlier")
    missing = iter(["deepspeed", None])  # pip finds no wheel of deepspeed, then all the others
    monkeypatch.setattr(wheels, "_download", lambda *a, **k: next(missing))
    monkeypatch.setattr(
        wheels, "_build_sdists", lambda *a, **k: (_ for _ in ()).throw(AssertionError("nothing is built"))
    )
    monkeypatch.setattr(
        wheels, "_download_sdists",
        lambda entries, dest, links: (dest / "deepspeed-0.19.8.tar.gz").write_bytes(FILES["deepspeed-0.19.8.tar.gz"]),
    )  # fmt: skip
    wheels.fill(spec, tmp_path / "images", tmp_path / "offline_wheels")
    assert sorted(p.name for p in wheels.dists(out)) == sorted(FILES)  # the ops-less wheel is gone
    sha = {name: _sha(data) for name, data in FILES.items()}
    assert (
        out / "requirements.txt"
    ).read_text() == f"alpha==1.0 --hash=sha256:{sha['alpha-1.0-py3-none-any.whl']}\n"
    assert (
        out / "sdists.txt"
    ).read_text() == f"deepspeed==0.19.8 --hash=sha256:{sha['deepspeed-0.19.8.tar.gz']}\n"
    assert wheels.verify(spec, tmp_path / "images", tmp_path / "offline_wheels") == []

    (out / "deepspeed-0.19.8.tar.gz").write_bytes(b"tampered")
    problems = wheels.verify(spec, tmp_path / "images", tmp_path / "offline_wheels")
    assert len(problems) == 1 and problems[0].startswith("deepspeed-0.19.8.tar.gz: sha256")
    (out / "deepspeed-0.19.8.tar.gz").unlink()
    problems = wheels.verify(spec, tmp_path / "images", tmp_path / "offline_wheels")
    assert problems == [
        f"missing sdist: deepspeed==0.19.8 (its ops are compiled in the image; not in {out}); "
        "run `runner wheels default`"
    ]


def test_without_prebuilt_ops_deepspeed_is_a_wheel_as_before(tmp_path: Path):
    spec, _ = _project(tmp_path)
    assert wheels.kept_as_sdist(spec) == {"deepspeed"}
    assert wheels.kept_as_sdist(spec.model_copy(update={"deepspeed_ops": []})) == set()
    assert wheels.kept_as_sdist(spec.model_copy(update={"cuda": None})) == set()
