"""Benchmark of the offline image pipeline (a report, not a test).

    .venv/bin/python bench/image_build.py [IMAGE]   (default: cpu; needs the engine and the base)

Measures, in one run: lock, wheels (from the local cache after the first run), a cold build
(no layer cache), a rebuild after a change to runner's own code, the image size over its base,
the bundle size, and the load time. Prints a markdown table.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from runner.core.jobspec.load import load_image
from runner.host.docker_api import Docker
from runner.host.images import build as image_mod
from runner.host.images.bundle import bundle, load
from runner.host.images.lock import lock
from runner.host.images.wheels import fill

ROOT = Path(__file__).resolve().parent.parent


def timed(fn, *args, **kwargs):
    start = time.time()
    result = fn(*args, **kwargs)
    return result, time.time() - start


def main(name: str = "cpu") -> None:
    docker = Docker()
    spec = load_image(name)
    rows = []
    with tempfile.TemporaryDirectory(dir=ROOT / "offline_wheels") as tmp:
        tmp = Path(tmp)
        images = tmp / "images"
        images.mkdir()
        shutil.copy(ROOT / "images" / f"{name}.yaml", images)
        _, t = timed(lock, spec, images, ["/opt/wheels"])
        rows.append(("lock (uv, target platform)", f"{t:.1f} s"))
        wheels_root = ROOT / "offline_wheels" / ".test"
        _, t = timed(fill, spec, images, wheels_root, ["/opt/wheels"])
        size = sum(p.stat().st_size for p in (wheels_root / name).glob("*.whl"))
        rows.append(("wheels (cached after the first run)", f"{t:.1f} s, {size / 2**20:.0f} MiB"))

        real_build = docker.api.build

        def nocache_build(**kw):
            return real_build(nocache=True, **kw)

        docker.api.build = nocache_build
        cold = image_mod.build(spec, images, wheels_root, docker=docker)
        docker.api.build = real_build
        rows.append(("cold build, network off, no layer cache", f"{cold.seconds:.0f} s"))

        src = tmp / "src"
        shutil.copytree(ROOT / "runner", src / "runner", ignore=shutil.ignore_patterns("__pycache__"))
        for f in ("pyproject.toml", "README.md"):
            shutil.copy(ROOT / f, src / f)
        (src / "runner" / "__init__.py").write_text(
            (src / "runner" / "__init__.py").read_text() + "\n# changed\n"
        )
        original = image_mod.project_root
        image_mod.project_root = lambda: src
        warm = image_mod.build(spec, images, wheels_root, docker=docker)
        image_mod.project_root = original
        rows.append(("rebuild after a change to runner's code", f"{warm.seconds:.0f} s"))

        base_size = docker.client.images.get(spec.base).attrs["Size"]
        img_size = docker.client.images.get(cold.image_id).attrs["Size"]
        rows.append(
            (
                "image size over its base",
                f"{(img_size - base_size) / 2**20:.0f} MiB (base {base_size / 2**20:.0f} MiB)",
            )
        )

        archive = tmp / "bench.bundle"
        _, t = timed(bundle, [cold.tag], archive, docker=docker)
        rows.append(("bundle (docker save + sha256)", f"{t:.0f} s, {archive.stat().st_size / 2**20:.0f} MiB"))
        docker.remove_image(cold.tag)
        _, t = timed(load, archive, docker=docker)
        rows.append(("load (verify + docker load + id check)", f"{t:.0f} s"))
        docker.remove_image(warm.tag)

    print(f"| step ({name} image, {Path('/proc/cpuinfo').read_text().count('processor')} cores) | measured |")
    print("| --- | --- |")
    for step, value in rows:
        print(f"| {step} | {value} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
