"""The image spec: what `runner build` turns into an offline training image.

One file in images/ per image. The base image carries python (and, for CUDA bases, torch);
everything else comes from the pinned, hashed wheelhouse in offline_wheels/<name>/.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

EXTRAS = ("deepspeed", "bitsandbytes", "flash-attn", "liger-kernel", "trl")

# DeepSpeed ops a CUDA image compiles at build time, by the name DeepSpeed's op builders use
# (DS_BUILD_<NAME> switches each one on). fused_adam is the optimizer of ZeRO on the GPU; cpu_adam
# (and cpu_adagrad, cpu_lion) the optimizers of ZeRO-Offload; the others are further optimizers.
DEEPSPEED_OPS = ("fused_adam", "cpu_adam", "cpu_adagrad", "cpu_lion", "fused_lamb", "fused_lion")
# A100, A10/A40/RTX 30xx, L4/L40/RTX 40xx, H100/H200: the cards a fine-tuning site runs today.
DEFAULT_CUDA_ARCH = ["8.0", "8.6", "8.9", "9.0"]


# An SPDX license identifier (MIT, Apache-2.0, GPL-3.0-or-later, LicenseRef-...), a pattern over
# them with `*` (GPL-*, AGPL-*), or one with its exception (GPL-2.0-only WITH Classpath-exception-2.0):
# what a license policy lists.
_LICENSE_ID = r"^[A-Za-z0-9*][A-Za-z0-9.+*-]*( WITH [A-Za-z0-9*][A-Za-z0-9.+*-]*)?$"
LicenseId = Annotated[str, StringConstraints(pattern=_LICENSE_ID)]


class LicensePolicy(BaseModel):
    """Which licenses the packages of an image may carry. `runner lock` and `runner build` refuse
    a denied one, naming the package and its license; an unknown one is warned about or refused."""

    model_config = ConfigDict(extra="forbid")

    allow: list[LicenseId] = Field(
        default_factory=list,
        description="SPDX identifiers (or patterns such as BSD-*) the site has approved. When given, a "
        "license it does not cover counts as unknown; empty: every license not denied is allowed.",
    )
    deny: list[LicenseId] = Field(
        default_factory=list,
        description="SPDX identifiers (or patterns such as GPL-*, AGPL-*) no package may be licensed "
        "under; a package offering a choice (MIT OR GPL-3.0-only) passes if one choice is not denied.",
    )
    unknown: Literal["warn", "refuse"] = Field(
        "warn",
        description="What a license that cannot be read, or that the allow list does not cover, does: "
        "warn (the image builds, the report and SBOM say so) or refuse.",
    )
    reviewed: dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")], str] = Field(
        default_factory=dict,
        description="Licenses the site's own review established, package -> SPDX expression, for packages "
        "whose metadata states none or states it wrongly; used instead of the metadata and marked so.",
    )


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
    cuda_arch: list[Annotated[str, StringConstraints(pattern=r"^\d{1,2}\.\d(a|\+PTX)?$")]] = Field(
        default_factory=lambda: list(DEFAULT_CUDA_ARCH),
        min_length=1,
        description="GPU architectures (compute capabilities) the image compiles CUDA code for, e.g. "
        "['8.0', '9.0']: DeepSpeed's ops at build time (TORCH_CUDA_ARCH_LIST). A card outside the list "
        "compiles the op on a job's first use instead. Used only with cuda and the deepspeed extra.",
    )
    deepspeed_ops: list[Literal[DEEPSPEED_OPS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["fused_adam", "cpu_adam"],
        description="DeepSpeed ops compiled into the image at build time (needs cuda and the deepspeed "
        f"extra): any of {', '.join(DEEPSPEED_OPS)}; [] leaves every op to compile on first use.",
    )
    extras: list[Literal["deepspeed", "bitsandbytes", "flash-attn", "liger-kernel", "trl"]] = Field(
        default_factory=list, description="Optional dependency groups to carry."
    )
    requirements: list[str] = Field(
        default_factory=list, description="Further requirement specifiers to carry, e.g. 'jieba>=0.42'."
    )
    user: str = Field("runner", pattern=r"^[a-z_][a-z0-9_-]*$", description="Non-root user jobs run as.")
    uid: int = Field(1000, ge=1, description="That user's uid (runner submit overrides it with yours).")
    licenses: LicensePolicy = Field(
        default_factory=LicensePolicy,
        description="License policy of the image's packages: allow and deny lists of SPDX identifiers, "
        "what an unknown license does, and licenses established by review.",
    )

    @property
    def prebuilt_ops(self) -> list[str]:
        """The DeepSpeed ops the image compiles at build time: none without CUDA or DeepSpeed."""
        return list(self.deepspeed_ops) if self.cuda and "deepspeed" in self.extras else []


# Images runner builds are named under localhost/: a reference no client can resolve to a public
# registry, so a compose file or `docker run` whose image is not loaded fails instead of pulling
# somebody else's image of the same name.
REPOSITORY = "localhost/runner"


def image_ref(name: str, tag: str = "latest") -> str:
    """The reference of an image spec's image (`cpu` -> localhost/runner/cpu:latest); a full
    reference (with ':' or '/') is taken as given."""
    return name if ":" in name or "/" in name else f"{REPOSITORY}/{name}:{tag}"
