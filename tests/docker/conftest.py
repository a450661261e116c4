"""Docker tier: the real engine, the project's own base image, no registry.

`scripts/provision-docker.sh` starts an engine and `scripts/make-test-base.sh` makes the base
image (CI runs both). Without them these tests skip, except under CI, where they fail.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import DOCKER_SOCKET, ROOT

BASE = "runner-test/base:bookworm-py311"
FIND_LINKS = [p for p in ("/opt/wheels",) if Path(p).is_dir()]  # where this machine keeps CPU torch


def _missing(why: str):
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI must provision it: scripts/provision-docker.sh, scripts/make-test-base.sh)")
    pytest.skip(why)


@pytest.fixture(scope="session")
def docker():
    from runner.host.docker_api import Docker, DockerUnavailable

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
    from runner.core.jobspec.load import load_image

    return load_image(images_dir / "cpu.yaml")


@pytest.fixture(scope="session")
def locked(cpu_spec, images_dir) -> Path:
    from runner.host.images.lock import lock

    return lock(cpu_spec, images_dir, FIND_LINKS)


@pytest.fixture(scope="session")
def wheelhouse(cpu_spec, images_dir, wheels_root, locked) -> Path:
    from runner.host.images.wheels import fill, wheel_dir

    fill(cpu_spec, images_dir, wheels_root, FIND_LINKS)
    return wheel_dir(wheels_root, cpu_spec)


@pytest.fixture(scope="session")
def cpu_image(docker, cpu_spec, images_dir, wheels_root, wheelhouse):
    from runner.host.images.build import build

    return build(cpu_spec, images_dir, wheels_root, docker=docker)


PLAIN_USER, PLAIN_ID = "runner-test", 1234


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int


@pytest.fixture(scope="session")
def plain_user(docker) -> User:
    """An unprivileged user (runner-test, uid 1234, its own group) in the group of the engine's
    socket, as a real user of a GPU server is; created here when missing, which needs root."""
    if os.geteuid() != 0:
        _missing(f"the non-root tests switch to the user {PLAIN_USER} (useradd, setpriv), which needs "
                 f"root; this session runs as uid {os.geteuid()}")  # fmt: skip
    if not DOCKER_SOCKET.exists():
        _missing(f"the engine's socket {DOCKER_SOCKET} is missing; the plain user reaches Docker through it")
    socket_gid = DOCKER_SOCKET.stat().st_gid
    if socket_gid == 0:
        _missing(f"{DOCKER_SOCKET} belongs to group root; give it a docker group (dockerd --group docker)")
    docker_group = grp.getgrgid(socket_gid).gr_name

    def run(*argv: str) -> None:
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode:
            pytest.fail(f"{' '.join(argv)} failed: {proc.stderr.strip()}")

    try:
        grp.getgrnam(PLAIN_USER)
    except KeyError:
        run("groupadd", "--force", f"--gid={PLAIN_ID}", PLAIN_USER)  # another gid if 1234 is taken
    try:
        entry = pwd.getpwnam(PLAIN_USER)
    except KeyError:
        run("useradd", "--no-create-home", "--home-dir=/nonexistent", "--shell=/usr/sbin/nologin",
            f"--uid={PLAIN_ID}", f"--gid={PLAIN_USER}", f"--groups={docker_group}", PLAIN_USER)  # fmt: skip
        entry = pwd.getpwnam(PLAIN_USER)
    if PLAIN_USER not in grp.getgrgid(socket_gid).gr_mem:
        run("usermod", "--append", f"--groups={docker_group}", PLAIN_USER)
    assert entry.pw_uid != 0 and entry.pw_gid != 0, f"{PLAIN_USER} must not be root ({entry})"
    return User(PLAIN_USER, entry.pw_uid, entry.pw_gid)
