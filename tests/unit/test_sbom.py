"""The SBOM of an image from what the engine says of it (a stand-in engine here; the CPU image in
tests/docker/test_security_review.py): valid CycloneDX 1.6 by the library's own bundled schema,
and every package where it should be, with its hash and license."""

from __future__ import annotations

import json

import pytest

from runner.host.images import sbom

IMAGE_ID = "sha256:" + "ab" * 32
BASE_ID = "sha256:" + "cd" * 32
TORCH_SHA, RUNNER_SHA = "1" * 64, "2" * 64
SPEC = (
    '{"name":"cpu","base":"runner-test/base:bookworm-py311","python":"3.11","torch":"2.13.0+cpu",'
    '"licenses":{"deny":["GPL-*"],"unknown":"warn"}}'
)
DPKG = """Package: libc6
Status: install ok installed
Architecture: amd64
Source: glibc
Version: 2.36-9+deb12u14
Description: GNU C Library
 a continuation line: with a colon

Package: removed-one
Status: deinstall ok config-files
Version: 1.0

Package: python3.11
Status: install ok installed
Architecture: amd64
Version: 3.11.2-6+deb12u6
"""
OS_RELEASE = b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'
PYTHON = [
    {"name": "torch", "version": "2.13.0+cpu", "license_expression": "BSD-3-Clause", "license": None,
     "classifier": [], "location": "/opt/venv/lib/python3.11/site-packages"},
    {"name": "runner", "version": "0.1.0", "license_expression": "Apache-2.0", "license": None,
     "classifier": [], "location": "/opt/venv/lib/python3.11/site-packages"},
    {"name": "pip", "version": "23.0.1", "license_expression": None, "license": "MIT", "classifier": [],
     "location": "/opt/venv/lib/python3.11/site-packages"},
    {"name": "Jinja2", "version": "3.1.6", "license_expression": None, "license": None,
     "classifier": ["License :: OSI Approved :: BSD License"], "location": "/opt/venv/lib/python3.11/site-packages"},
    {"name": "readline-gpl", "version": "1.0", "license_expression": "GPL-3.0-only", "license": None,
     "classifier": [], "location": "/usr/lib/python3/dist-packages"},
    {"name": "mystery", "version": "0.1", "license_expression": None, "license": None, "classifier": [],
     "location": "/opt/venv/lib/python3.11/site-packages"},
]  # fmt: skip
FREEZE = b"torch==2.13.0+cpu\nrunner @ file:///tmp/runner/runner-0.1.0-py3-none-any.whl\nJinja2==3.1.6\nmystery==0.1\n"


class Engine:
    """What sbom.read_image asks of the engine, for one image built by runner on a known base."""

    def __init__(self, base_layers: list[str] | None = None):
        self.base_layers = ["sha256:l1"] if base_layers is None else base_layers
        self.ran: list[dict] = []

    def image_id(self, ref: str) -> str | None:
        return {"localhost/runner/cpu:latest": IMAGE_ID, "runner-test/base:bookworm-py311": BASE_ID}.get(
            ref, ref if ref in (IMAGE_ID, BASE_ID) else None
        )

    def image_attrs(self, ref: str) -> dict:
        if self.image_id(ref) == BASE_ID:
            return {"Id": BASE_ID, "RepoDigests": [], "RootFS": {"Layers": self.base_layers}}
        labels = {
            "org.opencontainers.image.base.name": "runner-test/base:bookworm-py311",
            "runner.version": "0.1.0", "runner.lock-sha256": "3" * 64, "runner.image-spec": SPEC,
            "runner.image-spec-sha256": "4" * 16, "runner.wheel-sha256": RUNNER_SHA,
            "runner.requirements": f"torch==2.13.0+cpu@{TORCH_SHA}\njinja2==3.1.6@{'5' * 64}\n",
        }  # fmt: skip
        return {
            "Id": IMAGE_ID, "RepoTags": ["localhost/runner/cpu:latest", "localhost/runner/cpu:0123456789ab"],
            "Created": "2026-01-02T03:04:05Z", "Os": "linux", "Architecture": "amd64",
            "Config": {"Labels": labels}, "RootFS": {"Layers": ["sha256:l1", "sha256:l2"]},
        }  # fmt: skip

    def read_files(self, image: str, paths: list[str]) -> dict[str, bytes]:
        files = {sbom.DPKG_STATUS: DPKG.encode(), sbom.OS_RELEASE: OS_RELEASE, sbom.FREEZE: FREEZE}
        return {p: files[p] for p in paths if p in files}

    def output(self, image: str, command: list[str], **kwargs) -> tuple[int, str, str]:
        self.ran.append({"image": image, "command": command, **kwargs})
        return 0, json.dumps(PYTHON), ""


def validate(text: str) -> None:
    """Against CycloneDX 1.6's JSON schema as cyclonedx-python-lib bundles it: no network."""
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    assert error is None, error


@pytest.fixture(scope="module")
def made() -> tuple[dict, Engine]:
    engine = Engine()
    text, _facts = sbom.image_sbom("localhost/runner/cpu:latest", engine)  # type: ignore[arg-type]
    validate(text)
    return json.loads(text), engine


def by_name(document: dict) -> dict[str, dict]:
    return {c["name"]: c for c in document["components"]}


def props(component: dict) -> dict[str, str]:
    return {p["name"]: p["value"] for p in component.get("properties", [])}


def test_the_image_and_what_built_it(made):
    document, engine = made
    assert document["bomFormat"] == "CycloneDX" and document["specVersion"] == "1.6"
    root = document["metadata"]["component"]
    assert (root["type"], root["name"], root["version"]) == (
        "container",
        "localhost/runner/cpu",
        "0123456789ab",
    )
    assert root["hashes"] == [{"alg": "SHA-256", "content": "ab" * 32}]
    assert (
        props(root)["runner:lock-sha256"] == "3" * 64
        and props(root)["runner:created"] == "2026-01-02T03:04:05Z"
    )
    tools = {t["name"] for t in document["metadata"]["tools"]["components"]}
    assert tools == {"runner", "cyclonedx-python-lib"}
    # the image's Python ran with no network, read-only, as itself
    (ran,) = engine.ran
    assert ran["network_mode"] == "none" and ran["read_only"] and ran["entrypoint"] == [sbom.VENV_PYTHON]


def test_the_base_its_os_and_the_os_packages(made):
    document, _ = made
    components = by_name(document)
    base = components["runner-test/base"]
    assert (base["type"], base["version"], base["hashes"][0]["content"]) == (
        "container",
        "bookworm-py311",
        "cd" * 32,
    )
    assert components["debian"]["type"] == "operating-system" and components["debian"]["version"] == "12"
    libc = components["libc6"]
    assert libc["purl"] == "pkg:deb/debian/libc6@2.36-9%2Bdeb12u14?arch=amd64&distro=debian-12"
    assert props(libc)["runner:source"] == "glibc"
    assert "removed-one" not in components  # only what is installed


def test_every_python_package_with_its_hash_license_and_verdict(made):
    document, _ = made
    components = by_name(document)
    torch = components["torch"]
    assert torch["purl"] == "pkg:pypi/torch@2.13.0%2Bcpu" and torch["hashes"][0]["content"] == TORCH_SHA
    assert torch["licenses"] == [{"license": {"acknowledgement": "declared", "id": "BSD-3-Clause"}}]
    assert props(torch)["runner:installed-from"] == "the wheelhouse (hash-checked)"
    runner_ = components["runner"]
    assert (
        runner_["hashes"][0]["content"] == RUNNER_SHA
        and props(runner_)["runner:installed-from"] == "runner's own wheel"
    )
    assert (
        "hashes" not in components["pip"]
        and "python -m venv" in props(components["pip"])["runner:installed-from"]
    )
    jinja = components["Jinja2"]
    assert jinja["licenses"] == [{"license": {"acknowledgement": "declared", "name": "BSD License"}}]
    assert props(jinja)["runner:license-candidates"].startswith("0BSD | BSD-1-Clause")
    # judged under the image's own policy (its runner.image-spec label): GPL-* denied
    gpl = components["readline-gpl"]
    assert (
        props(gpl)["runner:license-verdict"] == "denied"
        and props(gpl)["runner:installed-from"] == "the base image"
    )
    assert (
        props(components["mystery"])["runner:license-verdict"] == "unknown"
        and "licenses" not in components["mystery"]
    )


def test_the_sbom_lists_every_package_of_pip_freeze(made):
    document, _ = made
    listed = {
        sbom.normalize(c["name"]) for c in document["components"] if c.get("purl", "").startswith("pkg:pypi/")
    }
    assert set(sbom.freeze_names(FREEZE.decode().splitlines())) <= listed


def test_a_base_the_engine_holds_under_that_name_but_not_the_one_built_on_gets_no_id():
    text, facts = sbom.image_sbom("localhost/runner/cpu:latest", Engine(base_layers=["sha256:other"]))  # type: ignore[arg-type]
    validate(text)
    assert facts.base == {"name": "runner-test/base:bookworm-py311", "id": None, "digests": []}
    base = by_name(json.loads(text))["runner-test/base"]
    assert "hashes" not in base and props(base)["runner:image-id"].startswith("unknown")


def test_freeze_lines_and_dpkg_paragraphs():
    assert sbom.freeze_names(["# comment", "Foo_Bar==1.0", "baz @ file:///x.whl", "", "-e git+https://x"]) == {
        "foo-bar": "1.0", "baz": "file:///x.whl",
    }  # fmt: skip
    assert [p["Package"] for p in sbom.parse_dpkg_status(DPKG)] == ["libc6", "python3.11"]
    assert sbom.parse_os_release(OS_RELEASE.decode())["VERSION_ID"] == "12"


def test_an_image_that_is_not_there_is_named():
    from runner.host.images.sbom import SbomError

    with pytest.raises(SbomError, match="image localhost/runner/gone:latest is not in the Docker engine"):
        sbom.read_image("localhost/runner/gone:latest", Engine())  # type: ignore[arg-type]
