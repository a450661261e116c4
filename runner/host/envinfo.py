"""`runner env`: what is installed and what hardware is visible, for bug reports."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from importlib import metadata

PACKAGES = (
    "runner", "click", "pydantic", "ruamel.yaml", "jinja2", "docker", "rich",
    "torch", "transformers", "peft", "trl", "accelerate", "deepspeed", "datasets",
    "tokenizers", "safetensors", "bitsandbytes", "flash-attn", "liger-kernel", "numpy",
)  # fmt: skip

# Run in a child so the CLI itself never imports torch.
_TORCH_PROBE = """
import json, torch
info = {"cuda": torch.cuda.is_available(), "torch_cuda": torch.version.cuda, "devices": []}
if info["cuda"]:
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        info["devices"].append(f"{i}: {p.name}, {p.total_memory / 2**30:.1f} GiB, sm_{p.major}{p.minor}")
info["bf16"] = bool(info["cuda"] and torch.cuda.is_bf16_supported())
print(json.dumps(info))
"""


def versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def torch_state() -> str:
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _TORCH_PROBE], capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        return "torch probe timed out"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        return f"unavailable ({last})"
    info = json.loads(proc.stdout)
    if not info["cuda"]:
        return "CPU only (no CUDA device visible)"
    devices = "; ".join(info["devices"])
    return f"CUDA {info['torch_cuda']}, {len(info['devices'])} GPU(s): {devices}; bf16={info['bf16']}"


def docker_state() -> str:
    try:
        import docker

        client = docker.from_env(timeout=5)
        v = client.version()
        return f"engine {v.get('Version', '?')} (API {v.get('ApiVersion', '?')})"
    except Exception as e:  # any failure means: no usable engine, and why
        return f"not reachable ({type(e).__name__}: {str(e).splitlines()[0][:160]})"


def report() -> list[tuple[str, str]]:
    rows = [("python", f"{platform.python_version()} ({sys.executable})"), ("platform", platform.platform())]
    rows += list(versions().items())
    rows += [("torch device", torch_state()), ("docker", docker_state())]
    return rows
