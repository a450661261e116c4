"""Offline keys and SSHSIG signatures: runner's and OpenSSH's `ssh-keygen -Y` check each other's
signatures, and a changed message, another key or a malformed signature is refused."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from runner.host.images import signing

needs_ssh_keygen = pytest.mark.skipif(
    shutil.which("ssh-keygen") is None, reason="ssh-keygen (openssh-client) is missing"
)
MESSAGE = b"0123  images.tar\naggregate  abcd\n"


@pytest.fixture
def key(tmp_path: Path) -> Path:
    signing.keygen(tmp_path / "key")
    return tmp_path / "key"


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(key: Path):
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (key.parent / "key.pub").read_text().startswith("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5")
    before = key.read_bytes()
    with pytest.raises(signing.SignatureError, match="exists already"):
        signing.keygen(key)
    assert key.read_bytes() == before


def test_a_signature_verifies_with_its_key_and_with_no_other(key: Path, tmp_path: Path):
    signature = signing.sign(MESSAGE, signing.load_private(key))
    trusted = signing.load_public(key.parent / "key.pub")
    assert signing.verify(MESSAGE, signature, trusted).fingerprint == trusted[0].fingerprint
    with pytest.raises(signing.ChangedSince, match="changed after it was signed"):
        signing.verify(MESSAGE.replace(b"abcd", b"abce"), signature, trusted)
    signing.keygen(tmp_path / "other")
    with pytest.raises(signing.BadSignature, match="which is not the trusted key"):
        signing.verify(MESSAGE, signature, signing.load_public(tmp_path / "other.pub"))
    broken = bytearray(signature)
    broken[60] ^= 0x01  # inside the base64 of the blob
    with pytest.raises(signing.SignatureError):
        signing.verify(MESSAGE, bytes(broken), trusted)
    with pytest.raises(signing.BadSignature, match="malformed"):
        signing.verify(MESSAGE, b"not a signature", trusted)


def test_public_keys_are_read_from_pub_allowed_signers_and_pem_files(key: Path, tmp_path: Path):
    from cryptography.hazmat.primitives import serialization

    public = signing.load_public(key.parent / "key.pub")[0]
    (tmp_path / "allowed").write_text(f'# site keys\nrunner namespaces="runner-bundle" {public.openssh}\n')
    pem = (
        signing.load_private(key)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (tmp_path / "key.pem").write_bytes(pem)
    for path in (tmp_path / "allowed", tmp_path / "key.pem"):
        assert [k.raw for k in signing.load_public(path)] == [public.raw]
    (tmp_path / "empty").write_text("nothing here\n")
    with pytest.raises(signing.SignatureError, match="no Ed25519 public key in it"):
        signing.load_public(tmp_path / "empty")


@needs_ssh_keygen
def test_ssh_keygen_verifies_runners_signature_by_hand(key: Path, tmp_path: Path):
    (tmp_path / "checksums.txt").write_bytes(MESSAGE)
    (tmp_path / "checksums.txt.sig").write_bytes(signing.sign(MESSAGE, signing.load_private(key)))
    (tmp_path / "allowed_signers").write_text(f"runner {(key.parent / 'key.pub').read_text()}")
    argv = ["ssh-keygen", "-Y", "verify", "-f", "allowed_signers", "-I", "runner", "-n", "runner-bundle",
            "-s", "checksums.txt.sig"]  # fmt: skip
    good = subprocess.run(argv, input=MESSAGE, capture_output=True, cwd=tmp_path)
    assert good.returncode == 0 and b'Good "runner-bundle" signature for runner' in good.stdout, good
    changed = subprocess.run(argv, input=MESSAGE + b"x", capture_output=True, cwd=tmp_path)
    assert changed.returncode != 0


@needs_ssh_keygen
def test_runner_verifies_and_signs_with_ssh_keygens_own_keys(tmp_path: Path):
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "site", "-f", str(tmp_path / "k")], check=True
    )
    (tmp_path / "m").write_bytes(MESSAGE)
    subprocess.run(["ssh-keygen", "-Y", "sign", "-f", str(tmp_path / "k"), "-n", "runner-bundle", str(tmp_path / "m")],
                   check=True, capture_output=True)  # fmt: skip
    trusted = signing.load_public(tmp_path / "k.pub")
    assert signing.verify(MESSAGE, (tmp_path / "m.sig").read_bytes(), trusted).raw == trusted[0].raw
    assert signing.public_of(signing.load_private(tmp_path / "k")).raw == trusted[0].raw
    # a signature made for another purpose (namespace) does not pass for a bundle's
    subprocess.run(["ssh-keygen", "-Y", "sign", "-f", str(tmp_path / "k"), "-n", "file", "-O", "hashalg=sha256",
                    str(tmp_path / "m")], input=b"y\n", capture_output=True)  # fmt: skip
    with pytest.raises(signing.BadSignature, match="namespace 'file'"):
        signing.verify(MESSAGE, (tmp_path / "m.sig").read_bytes(), trusted)


@needs_ssh_keygen
def test_a_key_with_a_passphrase_or_of_another_type_is_refused_by_name(tmp_path: Path):
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret", "-f", str(tmp_path / "locked")], check=True
    )
    with pytest.raises(signing.SignatureError, match=f"--sign {tmp_path / 'locked'}: "):
        signing.load_private(tmp_path / "locked")
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", str(tmp_path / "ec")], check=True)
    with pytest.raises(signing.SignatureError, match="bundles are signed with Ed25519 keys"):
        signing.load_private(tmp_path / "ec")
