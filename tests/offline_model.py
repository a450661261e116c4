"""A model whose own code (trust_remote_code) reaches for the hub when it is imported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

CODE = """from huggingface_hub import hf_hub_download
from transformers import LlamaConfig

# Like some models' remote code: fetch a file from another hub repository at import time.
hf_hub_download("someorg/extra-vocab", "merges.bin")


class NetConfig(LlamaConfig):
    model_type = "llama"
"""


def reaching_model(tiny_model: Path, out: Path) -> Path:
    shutil.copytree(tiny_model, out)
    (out / "configuration_net.py").write_text(CODE, encoding="utf-8")
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    config["auto_map"] = {"AutoConfig": "configuration_net.NetConfig"}
    (out / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return out
