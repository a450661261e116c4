"""`runner lock`: the same resolution gives the same bytes, and a torch build PyPI lacks gets a
hint on what to pass. The resolving tests reach PyPI (as `runner lock` does on the connected
side) and skip where it cannot be reached."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
from pathlib import Path

import pytest

from tests.conftest import ROOT, runner_cli

WHEELS = Path("/opt/wheels")  # where this machine keeps the CPU torch build (as tests/docker does)


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
        return True
    except OSError:
        return False


needs_pypi = pytest.mark.skipif(not _pypi_reachable(), reason="pypi.org cannot be reached")


def _project(tmp_path: Path, name: str = "cpu") -> Path:
    """A directory laid out as the project root (images/NAME.yaml), for the CLI to run in."""
    (tmp_path / "images").mkdir(parents=True)
    shutil.copy(ROOT / "images" / f"{name}.yaml", tmp_path / "images" / f"{name}.yaml")
    return tmp_path


@needs_pypi
def test_the_same_resolution_gives_the_same_bytes(tmp_path: Path):
    if not list(WHEELS.glob("torch-*+cpu-*.whl")):
        pytest.skip(f"no CPU torch wheel in {WHEELS}")
    first = _project(tmp_path / "a")
    second = _project(tmp_path / "b")
    result = runner_cli("lock", "cpu", "--find-links", str(WHEELS), cwd=first)
    assert result.returncode == 0, result.stderr
    # From another directory, with the wheel folder given by a relative path.
    result = runner_cli("lock", "cpu", "--find-links", os.path.relpath(WHEELS, second), cwd=second)
    assert result.returncode == 0, result.stderr
    a, b = (p / "images" / "cpu.lock" for p in (first, second))
    text = a.read_text()
    assert "torch==2.13.0+cpu" in text and "--hash=sha256:" in text
    assert "# via -r requirements.in" in text or "#   -r requirements.in" in text
    assert "/tmp" not in text and str(tmp_path) not in text
    assert hashlib.sha256(a.read_bytes()).hexdigest() == hashlib.sha256(b.read_bytes()).hexdigest()


@needs_pypi
def test_a_torch_build_pypi_lacks_gets_a_hint(tmp_path: Path):
    project = _project(tmp_path)
    result = runner_cli("lock", "cpu", cwd=project)  # no --find-links: PyPI has no torch+cpu
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "no version of torch==2.13.0+cpu" in result.stderr
    hint = result.stderr.strip().splitlines()[-1]
    assert hint.startswith("hint: torch==2.13.0+cpu is a PyTorch build that PyPI does not carry")
    assert "`runner lock cpu --find-links DIR`" in hint
    assert "`--find-links https://download.pytorch.org/whl/cpu/torch/`" in hint
    assert not (project / "images" / "cpu.lock").exists()


def test_torch_hint_names_the_build_and_stays_quiet_otherwise():
    from runner.core.jobspec.load import load_image
    from runner.host.images.lock import torch_hint

    spec = load_image(ROOT / "images" / "cpu.yaml")
    cuda = spec.model_copy(update={"torch": "2.6.0+cu124"})
    said = "Because there is no version of torch==2.6.0+cu124 and you require torch==2.6.0+cu124, ..."
    assert "https://download.pytorch.org/whl/cu124/torch/" in torch_hint(cuda, said)
    assert torch_hint(cuda, "Because there is no version of numpy==9.9 and you require ...") is None
    plain = spec.model_copy(update={"torch": "2.6.0"})
    assert torch_hint(plain, "Because there is no version of torch==2.6.0 and you require ...") is None


def test_a_missing_find_links_folder_is_named(tmp_path: Path):
    project = _project(tmp_path)
    result = runner_cli("lock", "cpu", "--find-links", "no/such/wheels", cwd=project)
    assert result.returncode == 1
    assert result.stderr == "error: --find-links no/such/wheels: no such directory\n"


def test_a_base_whose_torch_is_below_a_pinned_library_is_refused_naming_both(tmp_path: Path):
    project = _project(tmp_path, "default")
    spec = project / "images" / "default.yaml"
    text = spec.read_text().replace(
        "pytorch/pytorch:2.8.0-cuda12.8-cudnn9-devel", "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-devel"
    )
    spec.write_text(text.replace('torch: "2.8.0"', 'torch: "2.5.1"').replace('cuda: "12.8"', 'cuda: "12.4"'))
    result = runner_cli("lock", "default", cwd=project)  # refused before anything is resolved
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: images/default.yaml: base pytorch/pytorch:2.5.1-cuda12.4-cudnn9-devel carries torch 2.5.1, "
        "but transformers 5.24.0 (pinned) needs torch>=2.6; choose a base whose torch is in that range "
        "(runner/core/jobspec/compat.json lists the known ones)"
    ]
    assert not (project / "images" / "default.lock").exists()


def test_the_torch_ranges_hold_the_versions_the_default_lock_pins():
    from runner.core.jobspec.compat import table
    from runner.host.images.lock import parse_lock

    pinned = parse_lock((ROOT / "images" / "default.lock").read_text(encoding="utf-8"))
    for name, need in table()["torch_needed"].items():
        assert pinned[name]["version"] == need["version"], f"compat.json torch_needed.{name} is stale"


def test_torch_ranges_compare_release_numbers():
    from runner.core.jobspec.compat import torch_outside
    from runner.core.jobspec.load import load_image

    spec = load_image(ROOT / "images" / "default.yaml")
    assert torch_outside(spec) == []
    assert torch_outside(spec.model_copy(update={"torch": "2.10.0+cu128"})) == []  # 2.10 > 2.6, not < 2.6
    assert [
        x.split(", but ")[1].split(" (")[0] for x in torch_outside(spec.model_copy(update={"torch": "3.0.0"}))
    ] == ["bitsandbytes 0.50.2"]
    lines = torch_outside(spec.model_copy(update={"torch": "2.2.0"}))
    assert [x.split(", but ")[1].split(" (")[0] for x in lines] == [
        "transformers 5.24.0",
        "bitsandbytes 0.50.2",
    ]
    cpu = load_image(ROOT / "images" / "cpu.yaml")  # carries neither bitsandbytes nor liger-kernel
    assert [
        x.split(", but ")[1].split(" (")[0] for x in torch_outside(cpu.model_copy(update={"torch": "2.2.0"}))
    ] == ["transformers 5.24.0"]
    assert torch_outside(cpu.model_copy(update={"torch": "2.2.0"}))[0].startswith(
        "image cpu carries torch 2.2.0"
    )


@needs_pypi
@pytest.mark.slow
def test_a_real_lock_with_a_policy_refuses_a_denied_license_from_the_index(tmp_path: Path):
    """The first lock of an image, before any wheelhouse: the licenses come from the index (the
    wheels' metadata only, PEP 658; the sdists' PKG-INFO). The shipped cpu lock's certifi and tqdm
    are under MPL-2.0."""
    if not list(WHEELS.glob("torch-*+cpu-*.whl")):
        pytest.skip(f"no CPU torch wheel in {WHEELS}")
    project = _project(tmp_path)
    spec = project / "images" / "cpu.yaml"
    spec.write_text(spec.read_text() + "licenses:\n  deny: [MPL-*]\n")
    shutil.copy(ROOT / "images" / "cpu.lock", project / "images" / "cpu.lock")  # keep its pins
    result = runner_cli("lock", "cpu", "--find-links", str(WHEELS), cwd=project)
    assert result.returncode == 6, result.stderr
    assert "images/cpu.yaml licenses.deny: the policy refuses the license of " in result.stderr
    assert "  certifi " in result.stderr and ": MPL-2.0 (License), denied by MPL-*" in result.stderr
    assert (project / "images" / "cpu.lock").read_bytes() == (ROOT / "images" / "cpu.lock").read_bytes()
