"""What a site's security review receives, on the real engine: the SBOM of the CPU image (valid
CycloneDX, every package `pip freeze` and dpkg list in the image), and signed bundles: loaded
with the right key; refused unsigned, with another key, or with one byte changed in the
manifest, an SBOM, an image layer, the model or the data, naming the member, with nothing
loaded; the signature checked by hand with ssh-keygen."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.conftest import runner_cli

pytestmark = pytest.mark.docker

REPO = "runner-test/signed-bundle"
LATEST = f"{REPO}:latest"


def _validate(text: str) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    assert error is None, error


# ---------------------------------------------------------------------------------------------
# the SBOM of the CPU image


@pytest.fixture(scope="module")
def cpu_sbom(cpu_image, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("sbom") / "cpu.cdx.json"
    result = runner_cli("sbom", cpu_image.tag, "-o", str(out))
    assert result.returncode == 0, result.stderr
    _validate(out.read_text())
    return json.loads(out.read_text())


def _in_image(docker, image: str, *argv: str) -> str:
    code, out, err = docker.output(image, list(argv), network_mode="none")
    assert code == 0, err
    return out


def test_the_cpu_images_sbom_lists_every_package_pip_freeze_lists(docker, cpu_image, cpu_sbom):
    from runner.host.images.sbom import freeze_names, normalize

    listed = {
        (normalize(c["name"]), c["version"])
        for c in cpu_sbom["components"]
        if c.get("purl", "").startswith("pkg:pypi/")
    }
    # pip's own view of the image, run in it now (--all: pip and setuptools too)
    frozen = freeze_names(
        _in_image(docker, cpu_image.tag, "python", "-m", "pip", "freeze", "--all").splitlines()
    )
    versions = dict(listed)
    assert set(frozen) == {name for name, _ in listed}
    assert all(versions[n] == v for n, v in frozen.items() if "://" not in v), (frozen, versions)
    assert versions["runner"] == frozen["runner"] or frozen["runner"].startswith("file://")


def test_the_cpu_images_sbom_has_the_wheelhouse_hashes_licenses_base_and_os_packages(
    docker, cpu_image, cpu_sbom, wheelhouse
):
    from runner.host.images.sbom import normalize
    from runner.host.images.wheels import MANIFEST, wheel_project

    components = {
        normalize(c["name"]): c for c in cpu_sbom["components"] if c.get("purl", "").startswith("pkg:pypi/")
    }
    files = json.loads((wheelhouse / MANIFEST).read_text())["files"]
    for filename, info in files.items():
        name, version = wheel_project(filename)
        assert components[name]["version"] == version
        assert components[name]["hashes"] == [{"alg": "SHA-256", "content": info["sha256"]}], name
    with_license = [c for c in components.values() if c.get("licenses")]
    assert len(with_license) >= len(files) - 2, "a license for (nearly) every package"
    base = next(c for c in cpu_sbom["components"] if c["type"] == "container")
    assert (base["name"], base["version"]) == ("runner-test/base", "bookworm-py311")
    assert base["hashes"][0]["content"] == docker.image_id("runner-test/base:bookworm-py311").removeprefix(
        "sha256:"
    )
    dpkg = _in_image(docker, cpu_image.tag, "dpkg-query", "-W", "-f", "${Package} ${Version}\\n").split("\n")
    debs = {
        c["name"]: c["version"] for c in cpu_sbom["components"] if c.get("purl", "").startswith("pkg:deb/")
    }
    assert debs == dict(line.split(" ", 1) for line in dpkg if line)
    root = cpu_sbom["metadata"]["component"]
    # the image the tag names now (a rebuild to the same content tag, as the lockdown test does, may
    # give a new id where the build cache was removed)
    assert root["bom-ref"] == docker.image_id(cpu_image.tag) and root["type"] == "container"


# ---------------------------------------------------------------------------------------------
# signed bundles


def _rootfs() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, payload in (
            ("hello.txt", b"a tiny image for signed bundles\n" * 64),
            ("etc/os-release", b"ID=tiny\n"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


@pytest.fixture(scope="module")
def signed_image(docker):
    docker.remove_image(LATEST)
    docker.api.import_image_from_data(_rootfs(), repository=REPO, tag="latest")
    yield docker.image_id(LATEST)
    docker.remove_image(LATEST)


@pytest.fixture(scope="module")
def made(docker, signed_image, tmp_path_factory) -> Path:
    """keys (key, other), model/ and data/, and the signed bundle, made through the CLI."""
    root = tmp_path_factory.mktemp("signed")
    for name in ("key", "other"):
        assert runner_cli("keygen", str(root / name)).returncode == 0
    (root / "model").mkdir()
    (root / "model" / "config.json").write_text('{"model_type": "llama"}\n')
    (root / "model" / "weights.bin").write_bytes(bytes(range(256)) * 256)
    (root / "data").mkdir()
    (root / "data" / "train.jsonl").write_text('{"instruction": "hi", "output": "hello"}\n' * 50)
    result = runner_cli("bundle", LATEST, "--model", str(root / "model"), "--data", str(root / "data"),
                        "--sign", str(root / "key"), "-o", str(root / "signed.bundle"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    result = runner_cli("bundle", LATEST, "-o", str(root / "unsigned.bundle"))
    assert result.returncode == 0, result.stderr
    return root


def _load(bundle: Path, key: Path, to: Path) -> subprocess.CompletedProcess:
    return runner_cli("load", str(bundle), "--to", str(to), "--require-signature", str(key))


def test_signed_and_verified(docker, made, tmp_path):
    docker.remove_image(LATEST)
    result = _load(made / "signed.bundle", made / "key.pub", tmp_path / "dest")
    assert result.returncode == 0, result.stderr
    assert "signature: good, by SHA256:" in result.stdout and docker.image_id(LATEST)
    assert (tmp_path / "dest" / "data" / "train.jsonl").is_file()


def _layer_offset(bundle: Path) -> int:
    """Where, in the bundle, a byte of the image's layer lies (images.tar holds `docker save`)."""
    with tarfile.open(bundle) as outer:
        images = outer.getmember("images.tar")
        inner = tarfile.open(fileobj=outer.extractfile(images))
        (entry,) = json.loads(inner.extractfile("manifest.json").read())
        layer = inner.getmember(entry["Layers"][0])
        return images.offset_data + layer.offset_data + layer.size // 2


def _flip(src: Path, dst: Path, member: str) -> None:
    if member == "image layer":
        at = _layer_offset(src)
    else:
        with tarfile.open(src) as tar:
            m = tar.getmember(member)
        at = m.offset_data + m.size // 2
    data = bytearray(src.read_bytes())
    data[at] ^= 0x01
    dst.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "change, named",
    [
        ("unsigned", "is not signed (it has no checksums.txt.sig), and --require-signature refuses"),
        ("wrong key", "checksums.txt.sig in {bad}: it is signed by the key SHA256:"),
        ("manifest.json", "manifest.json in {bad} is damaged: its sha256 differs from checksums.txt"),
        ("sbom/signed-bundle.cdx.json", "sbom/signed-bundle.cdx.json in {bad} is damaged"),
        ("image layer", "images.tar in {bad} is damaged: its sha256 differs from checksums.txt"),
        ("model/weights.bin", "model/weights.bin in {bad} is damaged"),
        ("data/train.jsonl", "data/train.jsonl in {bad} is damaged"),
        ("checksums.txt", "checksums.txt in {bad} does not match its signature checksums.txt.sig"),
    ],
)
def test_refused_before_anything_is_loaded(docker, made, tmp_path, change, named):
    bad, key = tmp_path / "bad.bundle", made / "key.pub"
    if change == "unsigned":
        shutil.copy(made / "unsigned.bundle", bad)
    elif change == "wrong key":
        shutil.copy(made / "signed.bundle", bad)
        key = made / "other.pub"
    else:
        _flip(made / "signed.bundle", bad, change)
    docker.remove_image(LATEST)
    result = _load(bad, key, tmp_path / "dest")
    assert result.returncode == 5, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert named.format(bad=bad) in result.stderr, result.stderr
    assert docker.image_id(LATEST) is None and not (tmp_path / "dest").exists()


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen (openssh-client) is missing")
def test_the_signature_is_checked_by_hand_with_ssh_keygen(made, tmp_path):
    """The README's commands for a reviewer, word for word."""
    shutil.copy(made / "key.pub", tmp_path / "key.pub")
    script = f"""set -e
echo "runner $(cat key.pub)" > allowed_signers
tar -xf {made / "signed.bundle"} checksums.txt checksums.txt.sig
ssh-keygen -Y verify -f allowed_signers -I runner -n runner-bundle -s checksums.txt.sig < checksums.txt
tar -xf {made / "signed.bundle"}
grep -v '^aggregate' checksums.txt | sha256sum -c
"""
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert 'Good "runner-bundle" signature for runner with ED25519 key SHA256:' in done.stdout
    for member in ("images.tar", "manifest.json", "sbom/signed-bundle.cdx.json", "model/weights.bin"):
        assert f"{member}: OK" in done.stdout


def test_inspect_shows_provenance_and_loads_nothing(docker, made):
    docker.remove_image(LATEST)
    result = runner_cli(
        "load", "--inspect", str(made / "signed.bundle"), "--require-signature", str(made / "key.pub")
    )
    assert result.returncode == 0, result.stderr
    assert f"image {LATEST} (sha256:" in result.stdout and "sbom sbom/signed-bundle.cdx.json" in result.stdout
    assert "signature: good, by SHA256:" in result.stdout and docker.image_id(LATEST) is None


def test_a_bundle_carries_the_same_sbom_and_a_license_report_of_the_cpu_image(docker, cpu_image, cpu_sbom):
    """What `runner bundle` puts in sbom/ for a real image (here without saving the image itself)."""
    from runner.host.images.bundle import _describe

    reports, provenance = _describe(
        [{"ref": cpu_image.tag, "id": cpu_image.image_id}], docker, lambda s: None
    )
    bundled = json.loads(reports["sbom/cpu.cdx.json"])
    _validate(reports["sbom/cpu.cdx.json"].decode())
    for document in (bundled, cpu_sbom):  # made at different times: their serial numbers and times differ
        del document["serialNumber"], document["metadata"]["timestamp"]
    assert bundled == cpu_sbom
    report = reports["sbom/cpu.licenses.txt"].decode()
    assert report.startswith(f"# license report of {cpu_image.tag} ({cpu_image.image_id})\n")
    assert "\ntorch " in report and "denied" in report.splitlines()[-1]
    (image,) = provenance["images"]
    labels = docker.image_attrs(cpu_image.image_id)["Config"]["Labels"]
    assert (
        image["lock_sha256"] == labels["runner.lock-sha256"]
        and image["base"] == "runner-test/base:bookworm-py311"
    )
