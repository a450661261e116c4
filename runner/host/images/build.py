"""`runner build IMAGE`: context = rendered Dockerfile + verified wheelhouse + runner's wheel.

The build runs with the network off, so a successful build proves the wheelhouse complete.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import runner
from runner.core.errors import RunnerError
from runner.core.jobspec.image import ImageSpec, image_ref
from runner.host.docker_api import Docker
from runner.host.images import licenses
from runner.host.images.lock import lock_path, parse_lock, spec_hash, via
from runner.host.images.wheels import (
    WheelhouseError,
    dists,
    install_requirements,
    judge_licenses,
    sha256,
    verify,
    wheel_dir,
)
from runner.host.render.dockerfile import render_dockerfile


class BaseImageMissing(RunnerError):
    exit_code = 4


@dataclass
class Built:
    tag: str
    image_id: str
    seconds: float


def project_root() -> Path:
    root = Path(runner.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").exists():
        raise RunnerError("runner build needs runner's source tree (pyproject.toml beside the package)")
    return root


def runner_wheel(out: Path) -> Path:
    """runner's own wheel, built reproducibly so unchanged code gives identical bytes.

    The build uses the setuptools installed beside runner, with no index, so it works on a
    machine without network. Only where setuptools is missing does pip fetch a build backend.
    """
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SOURCE_DATE_EPOCH": "315532800"}
    offline = ["--no-build-isolation", "--no-index"] if importlib.util.find_spec("setuptools") else []
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", *offline, "-w", str(out), str(project_root())],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RunnerError(f"building runner's wheel failed:\n{proc.stderr[-2000:]}")
    (wheel,) = out.glob("runner-*.whl")
    return wheel


def make_context(spec: ImageSpec, images_dir: Path, wheels_root: Path, ctx: Path) -> dict[str, str]:
    """Fill ctx; returns the provenance labels of the image.

    Refused before anything is written: a wheelhouse that is not the lock's (WheelhouseError), and
    a package whose license the spec's policy refuses (LicenseError; unknown ones are warnings).
    """
    problems = verify(spec, images_dir, wheels_root)
    if problems:
        raise WheelhouseError(
            f"the wheelhouse of image {spec.name} is not complete; the build would fail offline:\n  "
            + "\n  ".join(problems)
        )
    entries = parse_lock(lock_path(images_dir, spec).read_text(encoding="utf-8"))
    licenses.enforce(
        spec.licenses, judge_licenses(spec, wheels_root), f"{images_dir / spec.name}.yaml",
        lambda name: via(entries, name),
    )  # fmt: skip
    (ctx / "Dockerfile").write_text(render_dockerfile(spec), encoding="utf-8")
    # The context mirrors the project root, so the top-level Dockerfile builds from it as well.
    src = wheel_dir(wheels_root, spec)
    wheels = ctx / "offline_wheels" / spec.name
    wheels.mkdir(parents=True)
    for wheel in dists(src):
        try:
            os.link(wheel, wheels / wheel.name)  # no copy of gigabytes
        except OSError:
            shutil.copy2(wheel, wheels / wheel.name)
    (wheels / "requirements.txt").write_text(install_requirements(src), encoding="utf-8")
    if sdists := install_requirements(src, sdists=True):
        (wheels / "sdists.txt").write_text(sdists, encoding="utf-8")
    wheel = runner_wheel(ctx / "dist")
    return {
        "org.opencontainers.image.title": image_ref(spec.name).rpartition(":")[0],
        "org.opencontainers.image.base.name": spec.base,
        "runner.version": runner.__version__,
        "runner.image-spec": spec.model_dump_json(),
        "runner.image-spec-sha256": spec_hash(spec),
        "runner.lock-sha256": sha256(lock_path(images_dir, spec)),
        "runner.wheel-sha256": sha256(wheel),
        "runner.requirements": (wheels / "requirements.txt").read_text().replace(" --hash=sha256:", "@")
        + sdists.replace(" --hash=sha256:", "@"),
    }


def content_tag(spec: ImageSpec, labels: dict[str, str], dockerfile: str) -> str:
    h = hashlib.sha256(dockerfile.encode())
    for key in ("runner.lock-sha256", "runner.wheel-sha256", "runner.requirements"):
        h.update(labels[key].encode())
    return image_ref(spec.name, h.hexdigest()[:12])


def build(
    spec: ImageSpec, images_dir: Path, wheels_root: Path, log: Callable[[str], None] = lambda s: None,
    docker: Docker | None = None, record_host: bool = False,
) -> Built:  # fmt: skip
    """Build the image; `record_host` adds this machine's name as the `runner.build-host` label
    (left out otherwise: a host name can say more than a site wants to ship)."""
    docker = docker or Docker()
    if not docker.image_id(spec.base):
        raise BaseImageMissing(
            f"base image {spec.base} is not in the Docker engine, and nothing is ever pulled. On a "
            f"connected machine: docker pull {spec.base} && docker save {spec.base} -o base.tar; "
            "carry base.tar over, then: docker load -i base.tar"
        )
    start = time.time()
    # The context sits beside the wheelhouse: same file system, so wheels are hard-linked.
    with tempfile.TemporaryDirectory(prefix=".build-", dir=wheels_root) as tmp:
        ctx = Path(tmp)
        labels = make_context(spec, images_dir, wheels_root, ctx)
        if record_host:
            labels["runner.build-host"] = socket.gethostname()
        tag = content_tag(spec, labels, (ctx / "Dockerfile").read_text())
        image_id = docker.build(ctx, tag, labels, log)
    docker.tag(image_id, image_ref(spec.name))
    return Built(tag, image_id, time.time() - start)
