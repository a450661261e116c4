"""torch <-> CUDA <-> python <-> base image: one data file, one lookup."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from runner.core.jobspec.image import ImageSpec
from runner.core.jobspec.yaml_loader import Loc

TABLE = Path(__file__).with_name("compat.json")


@cache
def table() -> dict[str, Any]:
    return json.loads(TABLE.read_text(encoding="utf-8"))


def base_entry(image: str) -> dict[str, str] | None:
    """What a known base image carries, or None for a base the table does not know."""
    return next((b for b in table()["bases"] if b["image"] == image), None)


def image_checks(spec: ImageSpec, base: Path) -> list[tuple[Loc, str]]:
    """Spec checks hook: table contradictions, on the validated spec."""
    return contradictions(spec)


def contradictions(spec: ImageSpec) -> list[tuple[Loc, str]]:
    """Every way the image spec disagrees with the table (empty when consistent)."""
    found: list[tuple[Loc, str]] = []
    entry = base_entry(spec.base)
    if entry:
        for key in ("torch", "cuda", "python"):
            if getattr(spec, key) != entry[key]:
                found.append(((key,), f"{spec.base} carries {key} {entry[key]} (got {getattr(spec, key)!r}); "
                                      f"write {key}: '{entry[key]}' or choose another base"))  # fmt: skip
        if spec.torch_from != "base":
            found.append((("torch_from",), f"{spec.base} already carries torch; use torch_from: base"))
    minor = ".".join(spec.torch.split("+")[0].split(".")[:2])
    cudas = table()["torch_cuda"].get(minor)
    if spec.cuda and cudas is not None and spec.cuda not in cudas:
        found.append((("cuda",), f"torch {minor} is built for CUDA {', '.join(cudas)} (got {spec.cuda})"))
    if spec.cuda is None and "bitsandbytes" in spec.extras:
        found.append((("extras",), "bitsandbytes needs CUDA; set cuda or drop the extra"))
    if spec.cuda is None and "flash-attn" in spec.extras:
        found.append((("extras",), "flash-attn needs CUDA; set cuda or drop the extra"))
    return found
