"""Shared fixtures. The whole suite is offline: no test may reach a model hub."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# Runs the suite submits are indexed here, not in the user's own ~/.local/state/runner.
os.environ["RUNNER_HOME"] = tempfile.mkdtemp(prefix="runner-test-home-")
# DeepSpeed compiles its CPU collectives on first use: once for the whole suite, as a user's own
# TORCH_EXTENSIONS_DIR serves all of their local runs (each output directory would compile again).
if "TORCH_EXTENSIONS_DIR" not in os.environ:
    os.environ["TORCH_EXTENSIONS_DIR"] = tempfile.mkdtemp(prefix="runner-test-torch-ext-")
    atexit.register(shutil.rmtree, os.environ["TORCH_EXTENSIONS_DIR"], ignore_errors=True)

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Specs name paths relative to the project root, as a user's commands do."""
    monkeypatch.chdir(ROOT)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's own tiny Llama model, built once per session (no download)."""
    pytest.importorskip("torch", reason="the in-container dependencies (.[train]) are not installed")
    out = tmp_path_factory.mktemp("models") / "tiny"
    subprocess.run([sys.executable, "-m", "runner.train.tools.tiny", str(out)], check=True, cwd=ROOT)
    return out


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's own tiny BERT (WordPiece tokenizer, every CJK character a token), built once
    per session (no download): the classification stages' encoder."""
    pytest.importorskip("torch", reason="the in-container dependencies (.[train]) are not installed")
    out = tmp_path_factory.mktemp("models") / "tiny-bert"
    subprocess.run(
        [sys.executable, "-m", "runner.train.tools.tiny", str(out), "--kind", "bert"], check=True, cwd=ROOT
    )
    return out


def runner_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT, user: str | tuple[int, int] | None = None
) -> subprocess.CompletedProcess:
    """The real `runner` command in a child process.

    With `user` (a name, or `(uid, gid)`) it runs as that user, as a real user's shell would:
    its own uid, gid and groups (setpriv, which needs root), and a HOME and RUNNER_HOME it owns;
    `env` still has the last word."""
    argv, base = [sys.executable, "-m", "runner.host.cli", *args], dict(os.environ)
    if user is not None:
        uid, gid, switch = as_user(user)
        home = user_home(uid, gid)
        argv = [*switch, *argv]
        base.update(HOME=str(home), RUNNER_HOME=str(home / "runner"))
    return subprocess.run(
        argv, capture_output=True, text=True, cwd=cwd, env={**base, **(env or {})},
    )  # fmt: skip


DOCKER_SOCKET = Path("/var/run/docker.sock")
_homes: dict[tuple[int, int], Path] = {}


def as_user(user: str | tuple[int, int]) -> tuple[int, int, list[str]]:
    """uid, gid and the setpriv prefix that runs a command as `user`. A user in the passwd file
    gets its groups from the group file; a bare uid none but the Docker socket's group."""
    import pwd

    if isinstance(user, str):
        entry = pwd.getpwnam(user)
        uid, gid = entry.pw_uid, entry.pw_gid
    else:
        uid, gid = user
    try:
        pwd.getpwuid(uid)
        groups = ["--init-groups"]
    except KeyError:
        groups = [f"--groups={DOCKER_SOCKET.stat().st_gid}"] if DOCKER_SOCKET.exists() else ["--clear-groups"]
    setpriv = shutil.which("setpriv") or "setpriv"
    return uid, gid, [setpriv, f"--reuid={uid}", f"--regid={gid}", *groups, "--"]


def user_home(uid: int, gid: int) -> Path:
    """A HOME that uid:gid owns, one per user for the session, outside pytest's private tmp."""
    if (uid, gid) not in _homes:
        home = Path(tempfile.mkdtemp(prefix=f"runner-test-home-{uid}-"))
        os.chown(home, uid, gid)
        atexit.register(shutil.rmtree, home, ignore_errors=True)
        _homes[uid, gid] = home
    return _homes[uid, gid]


def write_job(path: Path, model_dir: Path, **sections) -> Path:
    """A small LoRA job on the identity data, CPU only; keyword sections replace or extend it.

    Written as JSON, which every YAML reader accepts.
    """

    job = {
        "name": "job",
        "model": {"path": str(model_dir)},
        "method": {"type": "lora"},
        "data": {"datasets": [{"path": str(ROOT / "data" / "identity.json")}], "cutoff_len": 64},
        "training": {"max_steps": 3, "logging_steps": 1},
        "resources": {"gpus": 0},
        "output": {"dir": str(path.parent / "out")},
    }
    for key, value in sections.items():
        job[key] = (
            {**job[key], **value} if isinstance(value, dict) and isinstance(job.get(key), dict) else value
        )
    path.write_text(json.dumps(job, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


@contextlib.contextmanager
def tmpfs(where: Path, options: str):
    """A tmpfs mounted at `where` (made here) for the block, e.g. a disk of a given size; skips
    the test where none can be mounted (it needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def remount(where: Path, options: str) -> None:
    """Change a mounted tmpfs in place (`size=...`, `ro`)."""
    proc = subprocess.run(["mount", "-o", f"remount,{options}", str(where)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
