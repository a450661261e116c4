"""The GPU image (images/default.yaml), built and proven on a machine with no GPU and no registry.

`scripts/make-gpu-stand-in.sh` makes a stand-in for the image's CUDA devel base (the base's Python
at its path, the same torch CUDA build from PyPI, an nvcc of the same CUDA major); then this tier
does what a user does, `runner lock`, `runner wheels` and `runner build default` with the network off
(DeepSpeed's CUDA ops compiled at build time), and proves the image: every pinned module imports,
torch is the spec's CUDA build, bitsandbytes finds its CUDA library, the ops load without compiling,
a LoRA sft and a dpo job train in it through `runner submit` (on the CPU), chat answers, and the
image survives bundle and load. What only a GPU server can show (kernels running, NCCL) is not here.

It downloads about 6 GB once (the stand-in's and the image's wheels, kept under offline_wheels/) and
takes tens of minutes on two cores, so `make test` leaves it out: run it with `make test-gpu-image`.
Its figures (sizes, build and load times) are written to offline_wheels/.test/gpu-image.json.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from runner.core.jobspec.load import load_image
from runner.core.rundir import read_record
from tests.conftest import ROOT, runner_cli, write_job
from tests.docker.conftest import _missing

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.gpu_image]

SPEC = load_image(ROOT / "images" / "default.yaml")
IMAGE = "localhost/runner/default:latest"
WHEELS = ROOT / "offline_wheels" / ".test"  # kept between runs: the several GB are fetched once
FIGURES = WHEELS / "gpu-image.json"


def _ok(result) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _gib(n: int) -> float:
    return round(n / 2**30, 2)


@pytest.fixture(scope="module")
def figures():
    """This run's figures, over the last run's: a cold build time measured once stays."""
    found: dict[str, object] = json.loads(FIGURES.read_text(encoding="utf-8")) if FIGURES.exists() else {}
    yield found
    WHEELS.mkdir(parents=True, exist_ok=True)
    FIGURES.write_text(json.dumps(found, indent=1) + "\n", encoding="utf-8")
    print(f"\ngpu image figures ({FIGURES}):\n" + json.dumps(found, indent=1))


@pytest.fixture(scope="module")
def project(tmp_path_factory, docker) -> Path:
    """A directory laid out as the project root, its offline_wheels/ the persistent cache."""
    if not docker.image_id(SPEC.base):
        _missing(f"the base image {SPEC.base} is not loaded; run scripts/make-gpu-stand-in.sh")
    root = tmp_path_factory.mktemp("gpu-project")
    (root / "images").mkdir()
    for suffix in ("yaml", "lock"):  # with the shipped lock, `runner lock` keeps its pins
        shutil.copy(ROOT / "images" / f"default.{suffix}", root / "images" / f"default.{suffix}")
    WHEELS.mkdir(parents=True, exist_ok=True)
    (root / "offline_wheels").symlink_to(WHEELS)
    return root


@pytest.fixture(scope="module")
def built(project: Path, docker, figures) -> str:
    """lock, wheels and two builds of the default image, as a user runs them; the image's id."""
    from runner.host.images.lock import parse_lock

    _ok(runner_cli("lock", "default", cwd=project))
    shipped = parse_lock((ROOT / "images" / "default.lock").read_text(encoding="utf-8"))
    again = parse_lock((project / "images" / "default.lock").read_text(encoding="utf-8"))
    assert {n: e["version"] for n, e in again.items()} == {n: e["version"] for n, e in shipped.items()}
    start = time.monotonic()
    _ok(runner_cli("wheels", "default", cwd=project))
    figures["wheels_s"] = round(time.monotonic() - start)
    cached = docker.image_id(IMAGE)
    start = time.monotonic()
    _ok(runner_cli("build", "default", "--quiet", cwd=project))
    # Cold only where no layer of this image was in the engine before (the first run on a machine).
    figures["first_build_s" if cached else "cold_build_s"] = round(time.monotonic() - start)
    start = time.monotonic()
    _ok(runner_cli("build", "default", "--quiet", cwd=project))
    figures["unchanged_rebuild_s"] = round(time.monotonic() - start)
    image = docker.client.images.get(IMAGE)
    base = docker.client.images.get(SPEC.base)
    figures["image_gib"] = _gib(image.attrs["Size"])
    figures["base_gib"] = _gib(base.attrs["Size"])
    figures["wheelhouse_mib"] = round(sum(p.stat().st_size for p in (WHEELS / "default").iterdir()) / 2**20)
    figures["base"] = SPEC.base + (" (stand-in)" if base.labels.get("runner.stand-in.for") else "")
    return image.id


def test_the_image_builds_offline_and_an_unchanged_rebuild_is_cached(built, figures, docker):
    assert figures["unchanged_rebuild_s"] < 120
    labels = docker.client.images.get(IMAGE).labels
    assert "runner.stand-in.for" not in labels or labels["runner.stand-in.for"] == SPEC.base  # says so
    code, log = docker.run(IMAGE, ["sh", "-c", "id -u; command -v nvcc"], network_mode="none")
    assert code == 0 and log.split()[0] == "1000", log  # a devel base: nvcc is there for JIT fallback


PROBE = r"""
import ctypes, importlib, importlib.metadata as md, json, os, sys, warnings
warnings.simplefilter("ignore")
import torch

pinned = json.loads(sys.argv[1])


def top_level(dist):  # the modules a distribution installs at the top: its own files only
    names = set()
    for f in dist.files or ():
        first = f.parts[0]
        if first.endswith((".dist-info", ".data")) or first in ("..", "bin"):
            continue
        if len(f.parts) > 1 or f.suffix in (".py", ".so"):
            names.add(first.split(".")[0] if len(f.parts) == 1 else first)
    return names


failed, checked = {}, 0
for name in pinned:
    for module in sorted(top_level(md.distribution(name))):
        if module.startswith("_") or "." in module:  # private, or vendored libraries (numpy.libs)
            continue
        checked += 1
        try:
            importlib.import_module(module)
        except Exception as e:
            failed[module] = f"{type(e).__name__}: {e}"[:300]
import bitsandbytes, liger_kernel.transformers, triton
lib = os.path.join(os.path.dirname(bitsandbytes.__file__), f"libbitsandbytes_cuda{torch.version.cuda.replace('.', '')}.so")
ctypes.CDLL(lib)  # loads: its CUDA libraries (cudart, cuBLAS, cuSPARSE) are the ones torch brought
print(json.dumps({
    "torch": torch.__version__, "cuda": torch.version.cuda, "arch": torch._C._cuda_getArchFlags(),
    "checked": checked, "failed": failed,
    "bitsandbytes_lib": os.path.basename(lib), "triton": triton.__version__,
}))
"""


def test_every_pinned_module_imports_and_the_cuda_parts_are_there(built, docker, figures):
    from runner.host.images.lock import parse_lock

    pinned = sorted(parse_lock((ROOT / "images" / "default.lock").read_text(encoding="utf-8")))
    code, log = docker.run(IMAGE, ["python", "-c", PROBE, json.dumps(pinned)], network_mode="none")
    assert code == 0, log[-3000:]
    found = json.loads(log.strip().splitlines()[-1])
    assert found["failed"] == {}
    assert found["checked"] > 60
    assert found["cuda"] == SPEC.cuda and found["torch"].startswith(SPEC.torch)
    assert found["bitsandbytes_lib"] == f"libbitsandbytes_cuda{SPEC.cuda.replace('.', '')}.so"
    figures["torch"], figures["torch_arch"] = found["torch"], found["arch"]


OPS = r"""
import os, sys, time
from deepspeed.accelerator import get_accelerator
names = {"fused_adam": "FusedAdamBuilder", "cpu_adam": "CPUAdamBuilder", "cpu_adagrad": "CPUAdagradBuilder",
         "cpu_lion": "CPULionBuilder", "fused_lamb": "FusedLambBuilder", "fused_lion": "FusedLionBuilder"}
for op in sys.argv[1:]:
    start = time.monotonic()
    get_accelerator().create_op_builder(names[op]).load(verbose=False)
    print(op, "loaded in", round(time.monotonic() - start, 1), "s")
built = os.listdir(os.environ["TORCH_EXTENSIONS_DIR"]) if os.path.isdir(os.environ["TORCH_EXTENSIONS_DIR"]) else []
print("compiled:", built)
"""


def test_deepspeed_ops_are_installed_and_load_without_compiling(built, docker):
    # DS_ACCELERATOR=cuda: what a GPU server detects by itself; here there is no GPU to detect.
    code, report = docker.run(IMAGE, ["sh", "-c", "DS_ACCELERATOR=cuda ds_report"], network_mode="none")
    assert code == 0, report[-3000:]
    for op in SPEC.prebuilt_ops:
        line = next(x for x in report.splitlines() if x.startswith(op + " "))
        assert "[YES]" in line, line  # installed: compiled into the image
    code, log = docker.run(
        IMAGE, ["python", "-c", OPS, *SPEC.prebuilt_ops], network_mode="none",
        environment={"DS_ACCELERATOR": "cuda", "TORCH_EXTENSIONS_DIR": "/tmp/torch-extensions"},
    )  # fmt: skip
    assert code == 0, log[-3000:]
    assert "compiled: []" in log, log[-2000:]  # nothing went to the JIT build folder


def test_sft_lora_and_dpo_train_in_the_image_and_chat_answers(
    built, tiny_model: Path, tmp_path: Path, figures
):
    sft = write_job(
        tmp_path / "sft.yaml", tiny_model, name="gpu-image-sft", image="default", resources={"gpus": 0}
    )
    start = time.monotonic()
    _ok(runner_cli("submit", str(sft)))
    figures["sft_submit_s"] = round(time.monotonic() - start)
    (run_dir,) = (tmp_path / "out" / "gpu-image-sft").iterdir()
    record = read_record(run_dir)
    assert (record.executor, record.status) == ("docker", "succeeded")
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    chat = runner_cli("chat", str(run_dir), "-m", "你是谁？")
    _ok(chat)
    assert "assistant>" in chat.stdout

    dpo = write_job(
        tmp_path / "dpo.yaml", tiny_model, name="gpu-image-dpo", image="default", stage="dpo",
        data={"datasets": [{"path": str(ROOT / "data" / "preference.json")}], "cutoff_len": 64},
        training={"max_steps": 2, "logging_steps": 1, "per_device_train_batch_size": 2},
        resources={"gpus": 0},
    )  # fmt: skip
    _ok(runner_cli("submit", str(dpo)))
    (run_dir,) = (tmp_path / "out" / "gpu-image-dpo").iterdir()
    assert read_record(run_dir).status == "succeeded"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "rewards/margins" in r] == [1, 2]


def test_zero3_on_two_processes_trains_in_the_image(built, tiny_model: Path, tmp_path: Path, figures):
    """The multi-card default (jobs/sft-zero3.yaml: full fine-tuning under ZeRO-3) on the image's
    torch and DeepSpeed, with two CPU processes standing in for two cards."""
    job = write_job(
        tmp_path / "zero3.yaml", tiny_model, name="gpu-image-zero3", image="default", method={"type": "full"},
        resources={"gpus": 0, "procs_per_node": 2}, distributed={"deepspeed": {"zero": 3}},
    )  # fmt: skip
    start = time.monotonic()
    _ok(runner_cli("submit", str(job)))
    figures["zero3_submit_s"] = round(time.monotonic() - start)
    (run_dir,) = (tmp_path / "out" / "gpu-image-zero3").iterdir()
    assert read_record(run_dir).status == "succeeded"
    assert json.loads((run_dir / "results.json").read_text())["world_size"] == 2


def test_bundle_and_load(built, docker, tmp_path: Path, figures):
    archive = tmp_path / "default.bundle"
    start = time.monotonic()
    _ok(runner_cli("bundle", IMAGE, "-o", str(archive)))
    figures["bundle_s"] = round(time.monotonic() - start)
    figures["bundle_gib"] = _gib(archive.stat().st_size)
    try:
        start = time.monotonic()
        _ok(runner_cli("load", str(archive)))
        figures["load_s"] = round(time.monotonic() - start)
        assert docker.image_id(IMAGE) == built
    finally:
        archive.unlink()  # several GB; pytest keeps the last runs' tmp folders
