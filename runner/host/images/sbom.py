"""`runner sbom IMAGE`: what an image holds, as a CycloneDX 1.6 JSON SBOM (cyclonedx-python-lib).

Read from the engine, with no network and without trusting anything outside the image:
  the image       its id, tags, creation time and runner's provenance labels (lock, wheel hashes)
  the base image  its name (label), and its id where the engine holds an image of that name whose
                  layers are the first layers of this one
  OS packages     /var/lib/dpkg/status and /etc/os-release, copied out of a container that is
                  created and never started
  Python packages every distribution the image's Python sees (its venv and, where the venv sees
                  them, the base's own packages), read by that Python in a container with no network:
                  name, version, license fields, where it is installed. The sha256 of each wheel
                  installed from the wheelhouse comes from the image's `runner.requirements` label.
The licenses are judged under the image's own license policy (its `runner.image-spec` label).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

import runner
from runner.core.errors import RunnerError
from runner.core.jobspec.image import ImageSpec, LicensePolicy
from runner.host.docker_api import Docker
from runner.host.images import distmeta, licenses
from runner.host.images.distmeta import normalize

VENV_PYTHON = "/opt/venv/bin/python"
FREEZE = "/opt/venv/pip-freeze.txt"
DPKG_STATUS = "/var/lib/dpkg/status"
OS_RELEASE = "/etc/os-release"

# Run by the image's own Python (stdlib only): every distribution it sees, in the order of its
# sys.path (the one that wins comes first), with the metadata fields a license is read from.
_READ_PACKAGES = """
import importlib.metadata as md, json, sys
out = []
for d in md.distributions():
    m = d.metadata
    if m is None or not m["Name"]:
        continue
    out.append({"name": m["Name"], "version": m["Version"], "license_expression": m.get("License-Expression"),
                "license": m.get("License"), "location": str(d.locate_file("")),
                "classifier": [c for c in (m.get_all("Classifier") or []) if c.startswith("License ::")]})
json.dump(out, sys.stdout)
"""


class SbomError(RunnerError):
    pass


@dataclass
class ImageFacts:
    """Everything the SBOM says, as read from the engine; `bom()` turns it into CycloneDX."""

    ref: str
    image_id: str
    tags: list[str]
    created: str
    platform: str  # os/architecture
    labels: dict[str, str]
    base: dict | None = None  # name, id (or None), digests
    os_release: dict[str, str] = field(default_factory=dict)
    dpkg: list[dict[str, str]] = field(default_factory=list)
    python: list[dict] = field(default_factory=list)  # as _READ_PACKAGES writes them
    freeze: list[str] | None = None  # the image's pip-freeze.txt, where it has one

    @property
    def policy(self) -> LicensePolicy:
        """The license policy the image was built under (the default one for an image without)."""
        try:
            return ImageSpec.model_validate_json(self.labels["runner.image-spec"]).licenses
        except (KeyError, ValueError):
            return LicensePolicy()

    def judged(self) -> list[licenses.Judged]:
        """The Python packages' licenses under the image's policy, one per package as installed."""
        return licenses.judge_all(
            self.policy, [(p["name"], p["version"], distmeta.from_json(p)) for p in self.python]
        )


def read_image(ref: str, docker: Docker) -> ImageFacts:
    """Read what the SBOM of `ref` says; SbomError if the engine lacks the image."""
    if not docker.image_id(ref):
        raise SbomError(f"image {ref} is not in the Docker engine; build or load it first")
    attrs = docker.image_attrs(ref)
    labels = dict((attrs.get("Config") or {}).get("Labels") or {})
    facts = ImageFacts(
        ref=ref,
        image_id=attrs["Id"],
        tags=sorted(attrs.get("RepoTags") or []),
        created=attrs.get("Created", ""),
        platform=f"{attrs.get('Os', '')}/{attrs.get('Architecture', '')}",
        labels=labels,
    )
    files = docker.read_files(ref, [DPKG_STATUS, OS_RELEASE, FREEZE])
    facts.os_release = parse_os_release(files.get(OS_RELEASE, b"").decode("utf-8", "replace"))
    facts.dpkg = parse_dpkg_status(files.get(DPKG_STATUS, b"").decode("utf-8", "replace"))
    if FREEZE in files:
        facts.freeze = files[FREEZE].decode("utf-8", "replace").splitlines()
        facts.python = _python_packages(ref, docker)
    if base := labels.get("org.opencontainers.image.base.name"):
        facts.base = _base(base, attrs, docker)
    return facts


def _python_packages(ref: str, docker: Docker) -> list[dict]:
    code, out, err = docker.output(
        ref, ["-I", "-c", _READ_PACKAGES], entrypoint=[VENV_PYTHON], network_mode="none", read_only=True
    )
    if code != 0:
        raise SbomError(
            f"reading the Python packages of {ref} with its {VENV_PYTHON} failed: {err.strip()[-500:]}"
        )
    try:
        return json.loads(out)
    except ValueError:
        raise SbomError(f"reading the Python packages of {ref}: its Python wrote no package list") from None


def _base(name: str, attrs: dict, docker: Docker) -> dict:
    """The base as named in the image's label; its id only if the engine's image of that name is
    the one this image was built on (its layers are this image's first layers)."""
    base = {"name": name, "id": None, "digests": []}
    if docker.image_id(name):
        got = docker.image_attrs(name)
        layers, ours = got.get("RootFS", {}).get("Layers", []), attrs.get("RootFS", {}).get("Layers", [])
        if layers and ours[: len(layers)] == layers:
            base.update(id=got["Id"], digests=sorted(got.get("RepoDigests") or []), layers=len(layers))
    return base


def parse_os_release(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            found[key.strip()] = value.strip().strip('"').strip("'")
    return found


def parse_dpkg_status(text: str) -> list[dict[str, str]]:
    """The installed packages of a dpkg status file: Package, Version, Architecture, Source."""
    packages = []
    for paragraph in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in paragraph.splitlines():
            if line[:1] not in (" ", "\t") and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields.get("Package") and fields.get("Status", "").endswith(" installed"):
            packages.append(fields)
    return sorted(packages, key=lambda p: p["Package"])


def freeze_names(lines: list[str]) -> dict[str, str]:
    """name -> version (or the direct URL) of the lines of a `pip freeze`."""
    found = {}
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if m := re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:==\s*(\S+)|@\s*(\S+))", line):
            found[normalize(m[1])] = m[2] or m[3]
    return found


# ----------------------------------------------------------------------------------------------
# CycloneDX


def bom(facts: ImageFacts):
    """The CycloneDX BOM (cyclonedx.model.bom.Bom) of an image's facts."""
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.bom import Bom, BomMetaData
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.model.tool import ToolRepository
    from packageurl import PackageURL

    def props(**values: object) -> list:
        return [Property(name=f"runner:{k.replace('_', '-')}", value=str(v)) for k, v in values.items() if v]

    def sha256(hexdigest: str | None) -> list:
        return [HashType(alg=HashAlgorithm.SHA_256, content=hexdigest)] if hexdigest else []

    labels = facts.labels
    named = facts.ref if not facts.ref.startswith("sha256:") or not facts.tags else facts.tags[0]
    repo, tag = _split_ref(named)
    root = Component(
        type=ComponentType.CONTAINER, name=repo, version=_content_tag(facts.tags, repo) or tag,
        bom_ref=facts.image_id, hashes=sha256(facts.image_id.removeprefix("sha256:")),
        properties=props(
            image_id=facts.image_id, tags=" ".join(facts.tags), created=facts.created, platform=facts.platform,
            built_by_runner=labels.get("runner.version"), built_on=labels.get("runner.build-host"),
            lock_sha256=labels.get("runner.lock-sha256"),
            image_spec_sha256=labels.get("runner.image-spec-sha256"),
            runner_wheel_sha256=labels.get("runner.wheel-sha256"),
        ),
    )  # fmt: skip
    components = []
    if facts.base:
        base_repo, base_tag = _split_ref(facts.base["name"])
        base_id = facts.base["id"]
        components.append(Component(
            type=ComponentType.CONTAINER, name=base_repo, version=base_tag, bom_ref=f"base:{facts.base['name']}",
            hashes=sha256(base_id.removeprefix("sha256:") if base_id else None),
            properties=props(
                image_id=base_id or "unknown: the engine holds no image of that name whose layers this image starts with",
                repo_digests=" ".join(facts.base.get("digests", [])), layers=facts.base.get("layers"),
            ),
        ))  # fmt: skip
    os_id, os_version = facts.os_release.get("ID", ""), facts.os_release.get("VERSION_ID", "")
    if os_id:
        components.append(Component(
            type=ComponentType.OPERATING_SYSTEM, name=os_id, version=os_version or None, bom_ref=f"os:{os_id}",
            description=facts.os_release.get("PRETTY_NAME"),
        ))  # fmt: skip
    for p in facts.dpkg:
        qualifiers = {"arch": p.get("Architecture", "")}
        if os_id and os_version:
            qualifiers["distro"] = f"{os_id}-{os_version}"
        purl = PackageURL(type="deb", namespace=os_id or None, name=p["Package"], version=p.get("Version"),
                          qualifiers={k: v for k, v in qualifiers.items() if v})  # fmt: skip
        components.append(Component(
            type=ComponentType.LIBRARY, name=p["Package"], version=p.get("Version"), purl=purl,
            bom_ref=f"deb:{p['Package']}:{p.get('Architecture', '')}", properties=props(package_type="deb", source=p.get("Source")),
        ))  # fmt: skip
    wheel_hashes = _wheel_hashes(labels.get("runner.requirements", ""))
    seen: set[str] = set()
    for p, judged in zip(facts.python, facts.judged(), strict=True):
        name, version = p["name"], p["version"]
        ref = f"pypi:{normalize(name)}@{version}"
        ref = ref if ref not in seen else f"{ref}@{p.get('location', '')}"
        seen.add(ref)
        digest = wheel_hashes.get((normalize(name), version))
        if normalize(name) == "runner" and not digest:
            digest = labels.get("runner.wheel-sha256")
        components.append(Component(
            type=ComponentType.LIBRARY, name=name, version=version, bom_ref=ref,
            purl=PackageURL(type="pypi", name=normalize(name), version=version), hashes=sha256(digest),
            licenses=_licenses(judged.declared),
            properties=props(
                package_type="python", installed_from=_installed_from(p, digest, labels),
                location=p.get("location"), license_source=judged.declared.source,
                license_candidates="; ".join(" | ".join(f) for f in judged.declared.families),
                license_verdict=judged.verdict,
            ),
        ))  # fmt: skip
    try:
        from cyclonedx.contrib.this.builders import this_component
    except ImportError:  # before the library's contrib package (11.x)
        from cyclonedx.builder.this import this_component
    tool = Component(
        type=ComponentType.APPLICATION, name="runner", version=runner.__version__,
        description="runner sbom: fine-tune open LLMs on GPU servers that have no internet",
    )  # fmt: skip
    document = Bom(
        serial_number=uuid.uuid4(),
        metadata=BomMetaData(
            component=root, timestamp=datetime.now(timezone.utc),
            tools=ToolRepository(components=[tool, this_component()]),
            properties=props(license_policy=facts.policy.model_dump_json()),
        ),
        components=components,
    )  # fmt: skip
    document.register_dependency(root, components)
    return document


def to_json(document) -> str:
    from cyclonedx.output.json import JsonV1Dot6

    return JsonV1Dot6(document).output_as_string(indent=2) + "\n"


def image_sbom(ref: str, docker: Docker | None = None) -> tuple[str, ImageFacts]:
    """The SBOM of `ref` as CycloneDX JSON, and the facts it was made from."""
    facts = read_image(ref, docker or Docker())
    return to_json(bom(facts)), facts


def _licenses(decl: licenses.Declared) -> list:
    from cyclonedx.model.license import DisjunctiveLicense, LicenseAcknowledgement, LicenseExpression
    from cyclonedx.spdx import is_supported_id

    ack = LicenseAcknowledgement.CONCLUDED if decl.source == "reviewed" else LicenseAcknowledgement.DECLARED
    if decl.expression and is_supported_id(decl.expression):
        return [DisjunctiveLicense(id=decl.expression, acknowledgement=ack)]
    if decl.expression:
        return [LicenseExpression(decl.expression, acknowledgement=ack)]
    if decl.source != "none":
        return [DisjunctiveLicense(name=decl.text, acknowledgement=ack)]
    return []


def _installed_from(p: dict, digest: str | None, labels: dict[str, str]) -> str:
    if normalize(p["name"]) == "runner" and digest == labels.get("runner.wheel-sha256"):
        return "runner's own wheel"
    if digest:
        return "the wheelhouse (hash-checked)"
    if p.get("location", "").startswith("/opt/venv/"):
        return "the image's venv (not from the wheelhouse: put there by python -m venv)"
    return "the base image"


def _wheel_hashes(requirements: str) -> dict[tuple[str, str], str]:
    """(name, version) -> sha256 from the `runner.requirements` label (`name==version@sha256` lines)."""
    found = {}
    for m in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+?)@([0-9a-f]{64})$", requirements, re.M):
        found[(normalize(m[1]), m[2])] = m[3]
    return found


def _split_ref(ref: str) -> tuple[str, str | None]:
    if "@" in ref:
        name, _, digest = ref.partition("@")
        return name, digest
    repo, sep, tag = ref.rpartition(":")
    if sep and "/" not in tag:
        return repo, tag
    return ref, None


def _content_tag(tags: list[str], repo: str) -> str | None:
    """The content-hash tag runner gives an image (`:<12 hex>`), where it has one."""
    return next(
        (t.rpartition(":")[2] for t in tags if re.fullmatch(rf"{re.escape(repo)}:[0-9a-f]{{12}}", t)), None
    )
