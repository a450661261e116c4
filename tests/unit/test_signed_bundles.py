"""Signed bundles with a stand-in engine (the real one: tests/docker/test_security_review.py): a
bundle signed with `--sign KEY` loads under `--require-signature KEY.pub`; an unsigned one, one
signed by another key, and one with any byte changed (manifest, SBOM, license report, images,
model, data, checksums, signature) are refused before anything is loaded or put in place, each
with the member named.

Prints the figures of the reliability table:
  RELIABILITY signed-bundle tamper: N/N refused
"""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from runner.host.images import signing
from runner.host.images.bundle import CHECKSUMS, SIGNATURE, BundleError, aggregate, bundle, load
from tests.conftest import runner_cli
from tests.unit.test_bundle_errors import NO_ENGINE, TAGS, FakeDocker, _leftovers


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    signing.keygen(folder / "key")
    signing.keygen(folder / "other")
    return folder


@pytest.fixture(scope="module")
def carried(tmp_path_factory) -> tuple[Path, Path]:
    src = tmp_path_factory.mktemp("carried")
    (src / "model").mkdir()
    (src / "model" / "config.json").write_text('{"model_type": "llama"}\n')
    (src / "model" / "weights.bin").write_bytes(bytes(range(256)) * 64)
    (src / "data").mkdir()
    (src / "data" / "train.jsonl").write_text('{"instruction": "hi", "output": "hello"}\n' * 20)
    return src / "model", src / "data"


@pytest.fixture(scope="module")
def signed(tmp_path_factory, keys: Path, carried) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "signed.bundle"
    bundle(["runner/tiny:latest"], out, *carried, docker=FakeDocker(TAGS, size=1 << 20), sign=keys / "key")
    return out


def trusted(keys: Path, name: str = "key") -> list[signing.PublicKey]:
    return signing.load_public(keys / f"{name}.pub")


def _members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def _write(archive: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def flip_one_byte(src: Path, dst: Path, member: str) -> None:
    """One byte in the middle of `member`'s data, in place: nothing else of the archive moves."""
    with tarfile.open(src) as tar:
        m = tar.getmember(member)
    data = bytearray(src.read_bytes())
    data[m.offset_data + m.size // 2] ^= 0x01
    dst.write_bytes(bytes(data))


def test_signed_and_verified(signed: Path, keys: Path, carried, tmp_path: Path):
    engine = FakeDocker()
    manifest = load(signed, extract_to=tmp_path / "dest", docker=engine, trusted=trusted(keys))
    assert engine.loaded == 1 and engine.tags == TAGS
    assert manifest["signature"] == {"signer": trusted(keys)[0].fingerprint, "trusted": True}
    assert manifest["signed_by"] == trusted(keys)[0].fingerprint
    assert (tmp_path / "dest" / "model" / "weights.bin").read_bytes() == (
        carried[0] / "weights.bin"
    ).read_bytes()
    assert sorted(n for n in _members(signed) if n.startswith("sbom/")) == [
        "sbom/tiny.cdx.json",
        "sbom/tiny.licenses.txt",
    ]


def test_the_cli_loads_a_signed_bundle_only_with_the_right_key(signed: Path, keys: Path):
    """Through the command, with no engine at all: each refusal is exit code 5, before the engine."""
    result = runner_cli("load", str(signed), "--require-signature", str(keys / "other.pub"), env=NO_ENGINE)
    assert result.returncode == 5 and result.stderr.count("\n") == 1, result.stderr
    assert (
        f"error: {SIGNATURE} in {signed}: it is signed by the key {trusted(keys)[0].fingerprint}, which is not the trusted key"
        in result.stderr
    )
    shown = runner_cli(
        "load", "--inspect", str(signed), "--require-signature", str(keys / "key.pub"), env=NO_ENGINE
    )
    assert shown.returncode == 0, shown.stderr
    assert f"signature: good, by {trusted(keys)[0].fingerprint} (a key in {keys / 'key.pub'})" in shown.stdout
    assert "sbom sbom/tiny.cdx.json: 0 Python packages, 0 OS packages" in shown.stdout
    assert "nothing was loaded" in shown.stdout


# --- the cases: each makes a bad bundle from the good one and says what the refusal must name ---


def unsigned(good: Path, bad: Path, keys: Path) -> str:
    members = _members(good)
    del members[SIGNATURE]
    _write(bad, members)
    return f"{bad} is not signed (it has no {SIGNATURE}), and --require-signature refuses an unsigned bundle"


def signed_by_another_key(good: Path, bad: Path, keys: Path) -> str:
    members = _members(good)
    members[SIGNATURE] = signing.sign(members[CHECKSUMS], signing.load_private(keys / "other"))
    _write(bad, members)
    return f"{SIGNATURE} in {bad}: it is signed by the key {trusted(keys, 'other')[0].fingerprint}, which is not the trusted key"


def model_changed_and_checksums_recomputed(good: Path, bad: Path, keys: Path) -> str:
    """Whoever changes the archive can recompute its checksums, but not sign them."""
    members = _members(good)
    members["model/config.json"] = b'{"model_type": "evil"}\n'
    lines = [line for line in members[CHECKSUMS].decode().splitlines() if not line.startswith("aggregate")]
    lines = [f"{hashlib.sha256(members['model/config.json']).hexdigest()}  model/config.json"
             if line.endswith("  model/config.json") else line for line in lines]  # fmt: skip
    members[CHECKSUMS] = ("\n".join(lines) + f"\naggregate  {aggregate(lines)}\n").encode()
    _write(bad, members)
    return f"{CHECKSUMS} in {bad} does not match its signature {SIGNATURE}"


def byte_in(member: str, named: str | None = None) -> Callable[[Path, Path, Path], str]:
    def case(good: Path, bad: Path, keys: Path) -> str:
        flip_one_byte(good, bad, member)
        return named or f"{member} in {bad} is damaged: its sha256 differs from {CHECKSUMS}"

    case.__name__ = f"byte_in_{member}"
    return case


CASES = [
    unsigned, signed_by_another_key, model_changed_and_checksums_recomputed,
    byte_in("manifest.json"), byte_in("sbom/tiny.cdx.json"), byte_in("sbom/tiny.licenses.txt"),
    byte_in("images.tar"), byte_in("model/weights.bin"), byte_in("data/train.jsonl"),
    byte_in(CHECKSUMS, f"{CHECKSUMS} in {{bad}} does not match its signature {SIGNATURE}"),
    byte_in(SIGNATURE, f"{SIGNATURE} in {{bad}}"),
]  # fmt: skip
REFUSED: dict[str, bool] = {}


@pytest.mark.parametrize("tamper", CASES, ids=[c.__name__ for c in CASES])
def test_a_changed_or_unsigned_bundle_is_refused_before_anything_is_loaded(
    signed, keys, tamper, tmp_path: Path
):
    bad = tmp_path / "bad.bundle"
    named = tamper(signed, bad, keys).format(bad=bad)
    engine = FakeDocker()
    dest = tmp_path / "dest"
    with pytest.raises(BundleError) as refused:
        load(bad, extract_to=dest, docker=engine, trusted=trusted(keys))
    assert named in str(refused.value), str(refused.value)
    if tamper.__name__ == f"byte_in_{SIGNATURE}":  # malformed, or a signature of other bytes
        assert re.search(rf"{SIGNATURE} in {bad}(: the signature is malformed| does not match)|"
                         rf"{CHECKSUMS} in {bad} does not match its signature", str(refused.value))  # fmt: skip
    assert engine.loaded == 0 and not dest.exists() and _leftovers(tmp_path) == []
    REFUSED[tamper.__name__] = True


def test_reliability_figures():
    """Runs after the cases (file order); the line the reliability table is assembled from."""
    refused = sum(REFUSED.get(c.__name__, False) for c in CASES)
    print(f"\nRELIABILITY signed-bundle tamper: {refused}/{len(CASES)} refused")
    assert refused == len(CASES)


def test_nothing_is_written_before_every_member_of_a_signed_bundle_is_checked(
    signed, keys, tmp_path, monkeypatch
):
    """With a signature required, the model is not unpacked (not even into the hidden directory)
    while a later member is still unchecked."""
    from runner.host.images import bundle as bundle_mod

    bad = tmp_path / "bad.bundle"
    flip_one_byte(signed, bad, "data/train.jsonl")  # data comes after the model in the archive
    opened: list[str] = []
    real_open = open

    def watching(path, mode="r", *args, **kwargs):
        if "w" in mode and str(tmp_path / "dest") in str(path):
            opened.append(str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", watching)
    with pytest.raises(BundleError, match="data/train.jsonl"):
        bundle_mod.load(bad, extract_to=tmp_path / "dest", docker=FakeDocker(), trusted=trusted(keys))
    assert opened == []


def test_an_unsigned_load_still_checks_a_signature_that_is_there(signed, tmp_path: Path):
    """Without --require-signature, a signature is checked against the key it names: a bundle whose
    checksums changed after signing is refused all the same."""
    bad = tmp_path / "bad.bundle"
    model_changed_and_checksums_recomputed(signed, bad, Path())
    with pytest.raises(BundleError, match=f"{CHECKSUMS} in {bad} does not match its signature"):
        load(bad, docker=FakeDocker())


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen (openssh-client) is missing")
def test_the_signature_and_every_member_check_out_by_hand(signed: Path, keys: Path, tmp_path: Path):
    """What the README tells a reviewer to run: tar, ssh-keygen -Y verify, sha256sum -c."""
    (tmp_path / "allowed_signers").write_text(f"runner {(keys / 'key.pub').read_text()}")
    script = f"""set -e
tar -xf {signed} checksums.txt checksums.txt.sig
ssh-keygen -Y verify -f allowed_signers -I runner -n runner-bundle -s checksums.txt.sig < checksums.txt
tar -xf {signed}
grep -v '^aggregate' checksums.txt | sha256sum -c --strict
"""
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert 'Good "runner-bundle" signature for runner with ED25519 key' in done.stdout
    assert "manifest.json: OK" in done.stdout and "sbom/tiny.cdx.json: OK" in done.stdout
