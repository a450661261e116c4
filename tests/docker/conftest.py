"""Docker tier: the real engine, the project's own base image, no registry.

`scripts/provision-docker.sh` starts an engine and `scripts/make-test-base.sh` makes the base
image (CI runs both). Without them these tests skip, except under CI, where they fail.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT

BASE = "runner-test/base:bookworm-py311"
FIND_LINKS = [p for p in ("/opt/wheels",) if Path(p).is_dir()]  # where this machine keeps CPU torch


def _missing(why: str):
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI must provision it: scripts/provision-docker.sh, scripts/make-test-base.sh)")
    pytest.skip(why)


@pytest.fixture(scope="session")
def docker():
    from runner.docker_api import Docker, DockerUnavailable

    try:
        client = Docker()
    except DockerUnavailable as e:
        _missing(str(e))
    if not client.image_id(BASE):
        _missing(f"the test base image {BASE} is missing; run scripts/make-test-base.sh")
    return client


@pytest.fixture(scope="session")
def images_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("images")
    shutil.copy(ROOT / "images" / "cpu.yaml", out / "cpu.yaml")
    return out


@pytest.fixture(scope="session")
def wheels_root() -> Path:
    # Kept between runs (git ignores it) so the suite fetches the wheels once per machine.
    root = ROOT / "offline_wheels" / ".test"
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture(scope="session")
def cpu_spec(images_dir):
    from runner.spec import load_image

    return load_image(images_dir / "cpu.yaml")


@pytest.fixture(scope="session")
def locked(cpu_spec, images_dir) -> Path:
    from runner.build.lock import lock

    return lock(cpu_spec, images_dir, FIND_LINKS)


@pytest.fixture(scope="session")
def wheelhouse(cpu_spec, images_dir, wheels_root, locked) -> Path:
    from runner.build.wheels import fill, wheel_dir

    fill(cpu_spec, images_dir, wheels_root, FIND_LINKS)
    return wheel_dir(wheels_root, cpu_spec)


@pytest.fixture(scope="session")
def cpu_image(docker, cpu_spec, images_dir, wheels_root, wheelhouse):
    from runner.build.image import build

    return build(cpu_spec, images_dir, wheels_root, docker=docker)
