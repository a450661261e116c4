"""The image spec: what `runner build` turns into an offline training image.

One file in images/ per image. The base image carries python (and, for CUDA bases, torch);
everything else comes from the pinned, hashed wheelhouse in offline_wheels/<name>/.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

EXTRAS = ("deepspeed", "bitsandbytes", "flash-attn", "liger-kernel", "trl")


class ImageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9._-]*$", description="Image name; also the tag's repository part."
    )
    base: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$",
        description="Base image reference, e.g. pytorch/pytorch:2.6.0-cuda12.4-cudnn9-devel. "
        "It must already be loaded into the Docker engine (nothing is pulled).",
    )
    python: str = Field(pattern=r"^3\.\d{1,2}$", description="Python version of the base, e.g. '3.11'.")
    python_bin: str = Field("python3", description="The base's python interpreter (path or name).")
    platform: str = Field(
        "x86_64-manylinux_2_28", description="Target platform for wheels, e.g. x86_64-manylinux_2_28."
    )
    torch: str = Field(description="torch version, e.g. '2.6.0' (carried by the base, or installed).")
    torch_from: Literal["base", "wheelhouse"] = Field(
        "base", description="base: the base image carries torch; wheelhouse: install it from offline_wheels."
    )
    cuda: str | None = Field(
        None, pattern=r"^\d+\.\d+$", description="CUDA version of the base; null = CPU only."
    )
    extras: list[Literal["deepspeed", "bitsandbytes", "flash-attn", "liger-kernel", "trl"]] = Field(
        default_factory=list, description="Optional dependency groups to carry."
    )
    requirements: list[str] = Field(
        default_factory=list, description="Further requirement specifiers to carry, e.g. 'jieba>=0.42'."
    )
    user: str = Field("runner", pattern=r"^[a-z_][a-z0-9_-]*$", description="Non-root user jobs run as.")
    uid: int = Field(1000, ge=1, description="That user's uid (runner submit overrides it with yours).")


# Images runner builds are named under localhost/: a reference no client can resolve to a public
# registry, so a compose file or `docker run` whose image is not loaded fails instead of pulling
# somebody else's image of the same name.
REPOSITORY = "localhost/runner"


def image_ref(name: str, tag: str = "latest") -> str:
    """The reference of an image spec's image (`cpu` -> localhost/runner/cpu:latest); a full
    reference (with ':' or '/') is taken as given."""
    return name if ":" in name or "/" in name else f"{REPOSITORY}/{name}:{tag}"
