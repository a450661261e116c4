"""lock -> wheels -> offline build -> run in the image -> bundle -> load, on the real engine."""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.docker

JOB = """\
name: in-image
model:
  path: /models/tiny
method:
  type: lora
data:
  datasets:
    - path: /data/identity.json
  placeholders: {name: 小R, author: Runner Team}
  cutoff_len: 64
training:
  max_steps: 3
  logging_steps: 1
output:
  dir: /out
"""


def test_lock_is_pinned_and_hashed_for_the_target(locked: Path):
    from runner.host.images.lock import parse_lock

    entries = parse_lock(locked.read_text())
    assert entries["torch"]["version"] == "2.13.0+cpu"
    assert {"transformers", "peft", "accelerate", "datasets"} <= set(entries)
    assert all(e["hashes"] for e in entries.values())


def test_base_carried_torch_is_left_out_of_the_lock(tmp_path: Path):
    from runner.core.jobspec.load import load_image
    from runner.host.images.lock import lock, parse_lock

    shutil.copy(ROOT / "images" / "default.yaml", tmp_path / "default.yaml")
    spec = load_image(tmp_path / "default.yaml")
    entries = parse_lock(lock(spec, tmp_path).read_text())
    assert "torch" not in entries and not any(n.startswith("nvidia-") for n in entries)
    assert {"transformers", "deepspeed", "bitsandbytes"} <= set(entries)


def test_wheelhouse_missing_a_wheel_fails_verify_and_build(
    cpu_spec, images_dir, wheelhouse, tmp_path, docker
):
    from runner.host.images.build import build
    from runner.host.images.wheels import WheelhouseError, verify

    assert verify(cpu_spec, images_dir, wheelhouse.parent) == []
    broken = tmp_path / "wheels" / cpu_spec.name
    broken.mkdir(parents=True)
    for f in wheelhouse.iterdir():
        if f.name.startswith("tokenizers-"):
            continue
        os.link(f, broken / f.name)
    problems = verify(cpu_spec, images_dir, broken.parent)
    assert len(problems) == 1 and "missing wheel: tokenizers==" in problems[0]
    with pytest.raises(WheelhouseError, match="tokenizers=="):
        build(cpu_spec, images_dir, broken.parent, docker=docker)


def _train_in(docker, image: str, tiny_model: Path, out: Path, job_dir: Path) -> tuple[int, str]:
    """A 3-step job in the image, network off, as a non-root uid, model and data read-only."""
    (job_dir / "job.yaml").write_text(JOB, encoding="utf-8")
    model = job_dir / "tiny"
    if not model.exists():
        shutil.copytree(tiny_model, model)
    for path in (job_dir, model, *model.iterdir(), job_dir / "job.yaml"):
        path.chmod(0o755 if path.is_dir() else 0o644)  # pytest's tmp dirs are private to root
    out.mkdir(parents=True, exist_ok=True)
    uid = os.getuid() if os.getuid() != 0 else 4242
    if os.getuid() == 0:
        os.chown(out, uid, uid)
    return docker.run(
        image, ["python", "-m", "runner.train", "/job/job.yaml"],
        network_mode="none", user=f"{uid}:{uid}",
        volumes={str(model): {"bind": "/models/tiny", "mode": "ro"},
                 str(ROOT / "data"): {"bind": "/data", "mode": "ro"},
                 str(job_dir): {"bind": "/job", "mode": "ro"},
                 str(out): {"bind": "/out", "mode": "rw"}},
    )  # fmt: skip


def test_image_runs_env_and_trains_offline(docker, cpu_image, tiny_model, tmp_path):
    code, log = docker.run(cpu_image.tag, ["runner", "env"], network_mode="none")
    assert code == 0, log
    assert "transformers   5." in log and "CPU only" in log
    code, log = _train_in(docker, cpu_image.tag, tiny_model, tmp_path / "out", tmp_path)
    assert code == 0, log[-3000:]
    (run_dir,) = (tmp_path / "out" / "in-image").iterdir()
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert '"status": "succeeded"' in (run_dir / "run.json").read_text()
    if os.getuid() == 0:
        assert (run_dir / "adapter").stat().st_uid == 4242  # written as the user we ran as


def test_image_is_offline_and_labelled(docker, cpu_image):
    code, log = docker.run(
        cpu_image.tag,
        ["python", "-c", "import socket; socket.create_connection(('pypi.org', 443), timeout=3)"],
        network_mode="none",
    )
    assert code != 0
    labels = docker.client.images.get(cpu_image.tag).labels
    assert labels["runner.version"] and len(labels["runner.lock-sha256"]) == 64
    assert "torch==2.13.0+cpu@" in labels["runner.requirements"]
    code, log = docker.run(cpu_image.tag, ["sh", "-c", "id -u; env | grep -c OFFLINE=1"], network_mode="none")
    assert log.split() == ["1000", "3"]


def test_a_change_to_runner_rebuilds_only_the_last_layer(
    docker, cpu_image, cpu_spec, images_dir, wheels_root, tmp_path, monkeypatch
):
    from runner.host.images import build as image_mod

    src = tmp_path / "src"
    shutil.copytree(ROOT / "runner", src / "runner", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    init = src / "runner" / "__init__.py"
    init.write_text(init.read_text() + "\n# a change to runner's own code\n")
    monkeypatch.setattr(image_mod, "project_root", lambda: src)
    rebuilt = image_mod.build(cpu_spec, images_dir, wheels_root, docker=docker)
    assert rebuilt.image_id != cpu_image.image_id
    old = [h["Id"] for h in reversed(docker.history(cpu_image.image_id))]
    new = [h["Id"] for h in reversed(docker.history(rebuilt.image_id))]
    shared = next(i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b)
    changed = [h for h in reversed(docker.history(rebuilt.image_id))][shared:]
    sizes = [h["Size"] for h in changed]
    assert sum(sizes) < 5 * 2**20, sizes  # what rebuilt is runner's own thin layer


def _rewrite(
    src: Path, dst: Path, *, drop: str | None = None, add: str | None = None, flip: str | None = None
):
    with tarfile.open(src) as tin, tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as tout:
        for m in tin.getmembers():
            if m.name == drop:
                continue
            data = tin.extractfile(m).read() if m.isfile() else None
            if m.name == flip:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            tout.addfile(m, None if data is None else __import__("io").BytesIO(data))
        if add:
            info = tarfile.TarInfo(add)
            info.size = 5
            tout.addfile(info, __import__("io").BytesIO(b"extra"))


def test_bundle_refuses_tampering(docker, tiny_model, tmp_path):
    from runner.host.images.bundle import BundleError, bundle, load

    archive = tmp_path / "base.bundle"
    bundle(["runner-test/base:bookworm-py311"], archive, model=tiny_model, docker=docker)
    cases = {
        "flip": ({"flip": "model/config.json"}, "model/config.json"),
        "extra": ({"add": "model/extra.bin"}, "model/extra.bin"),
        "missing": ({"drop": "model/tokenizer.json"}, "model/tokenizer.json"),
    }
    for name, (change, named) in cases.items():
        bad = tmp_path / f"{name}.bundle"
        _rewrite(archive, bad, **change)
        with pytest.raises(BundleError, match=named.replace(".", r"\.")):
            load(bad, docker=docker)
    manifest = load(archive, extract_to=tmp_path / "carried", docker=docker)
    assert (tmp_path / "carried" / "model" / "config.json").read_bytes() == (
        tiny_model / "config.json"
    ).read_bytes()
    assert len(manifest["aggregate"]) == 64


def test_bundle_remove_load_run_again(docker, cpu_image, tiny_model, tmp_path):
    from runner.host.images.bundle import bundle, load

    archive = tmp_path / "cpu.bundle"
    bundle([cpu_image.tag], archive, docker=docker)
    docker.remove_image(cpu_image.tag)
    docker.remove_image("runner/cpu:latest")
    assert docker.image_id(cpu_image.tag) is None
    manifest = load(archive, docker=docker)
    docker.tag(cpu_image.image_id, "runner/cpu:latest")  # as the build left it, for later tests
    (image,) = manifest["images"]
    assert (image["ref"], image["id"]) == (cpu_image.tag, cpu_image.image_id)
    assert cpu_image.tag in image["tags"]  # with every other tag the image had when bundled
    code, log = _train_in(docker, cpu_image.tag, tiny_model, tmp_path / "out", tmp_path)
    assert code == 0, log[-3000:]


def test_missing_base_image_says_how_to_load_it(docker, cpu_spec, images_dir, wheels_root):
    from runner.host.images.build import BaseImageMissing, build

    spec = cpu_spec.model_copy(update={"base": "example.invalid/absent:1"})
    with pytest.raises(BaseImageMissing, match=r"docker save example.invalid/absent:1 .* docker load -i"):
        build(spec, images_dir, wheels_root, docker=docker)
