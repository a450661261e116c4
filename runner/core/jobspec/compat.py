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
    for key in ("cuda_arch", "deepspeed_ops"):
        if key in spec.model_fields_set and spec.cuda is None:
            found.append(((key,), f"{key} is for compiling DeepSpeed's CUDA ops; set cuda or drop {key}"))
        elif key in spec.model_fields_set and spec.deepspeed_ops and "deepspeed" not in spec.extras:
            found.append(
                ((key,), f"{key} is for compiling DeepSpeed's ops; add deepspeed to extras or drop {key}")
            )
    return found


def carried_libraries(spec: ImageSpec) -> list[str]:
    """The libraries of the table's pinned stack that the image carries."""
    always = {"transformers", "accelerate", "peft"}
    return [name for name in table()["torch_needed"] if name in always or name in spec.extras]


def torch_outside(spec: ImageSpec) -> list[str]:
    """Every pinned library whose declared torch range excludes the image's torch, as one line each
    naming the base, the library and the range (empty when the torch fits them all)."""
    have = _version(spec.torch)
    where = f"base {spec.base}" if spec.torch_from == "base" else f"image {spec.name}"
    lines = []
    for name in carried_libraries(spec):
        need = table()["torch_needed"][name]
        if not all(_satisfies(have, clause) for clause in need["torch"].split(",")):
            lines.append(
                f"{where} carries torch {spec.torch}, but {name} {need['version']} (pinned) needs "
                f"torch{need['torch']}; choose a base whose torch is in that range (runner/core/jobspec/"
                "compat.json lists the known ones)"
            )
    return lines


def _version(text: str) -> tuple[int, ...]:
    """'2.8.0+cu128' -> (2, 8, 0): release numbers only, enough for the table's ranges."""
    release = text.split("+")[0]
    return tuple(int(part) for part in release.split(".") if part.isdigit())


def _satisfies(have: tuple[int, ...], clause: str) -> bool:
    op = next(o for o in (">=", "<=", "==", "!=", ">", "<") if clause.strip().startswith(o))
    want = _version(clause.strip()[len(op) :])
    width = max(len(have), len(want))
    a, b = have + (0,) * (width - len(have)), want + (0,) * (width - len(want))
    return {">=": a >= b, "<=": a <= b, "==": a == b, "!=": a != b, ">": a > b, "<": a < b}[op]
