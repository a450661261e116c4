"""Offline Ed25519 keys and detached signatures in OpenSSH's SSHSIG format.

A bundle is signed by signing its checksums.txt (which holds the sha256 of every member,
manifest and SBOMs included): the signature is `checksums.txt.sig`, the armored SSHSIG that
`ssh-keygen -Y sign -n runner-bundle` writes, so `ssh-keygen -Y verify` checks it by hand with
no runner involved. The keys are OpenSSH's own formats: a key made by `ssh-keygen -t ed25519`
signs as well, and `runner keygen`'s `.pub` reads as any OpenSSH public key.

SSHSIG (OpenSSH PROTOCOL.sshsig): the signature is over
  "SSHSIG" || string(namespace) || string(reserved="") || string(hash_alg) || string(H(message))
and the armored blob is
  "SSHSIG" || uint32(1) || string(public key) || string(namespace) || string(reserved)
  || string(hash_alg) || string(string("ssh-ed25519") || string(64-byte signature))
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import struct
import textwrap
from dataclasses import dataclass
from pathlib import Path

from runner.core.errors import RunnerError

NAMESPACE = "runner-bundle"
_MAGIC = b"SSHSIG"
_KEY_TYPE = b"ssh-ed25519"
_ARMOR = ("-----BEGIN SSH SIGNATURE-----", "-----END SSH SIGNATURE-----")
_HASHES = {b"sha256": hashlib.sha256, b"sha512": hashlib.sha512}


class SignatureError(RunnerError):
    """A key that cannot be used, or a signature that does not hold."""

    exit_code = 5


class BadSignature(SignatureError):
    """The signature itself is at fault: malformed, or made by a key that is not trusted."""


class ChangedSince(SignatureError):
    """A well-formed signature by the key it names, over other bytes: the message changed."""


@dataclass(frozen=True)
class PublicKey:
    raw: bytes  # the 32 bytes of an Ed25519 public key
    comment: str = ""

    @property
    def blob(self) -> bytes:
        return _string(_KEY_TYPE) + _string(self.raw)

    @property
    def fingerprint(self) -> str:
        """As `ssh-keygen -l` prints it: SHA256:<unpadded base64 of the key blob's sha256>."""
        return "SHA256:" + base64.b64encode(hashlib.sha256(self.blob).digest()).decode().rstrip("=")

    @property
    def openssh(self) -> str:
        line = f"{_KEY_TYPE.decode()} {base64.b64encode(self.blob).decode()}"
        return f"{line} {self.comment}" if self.comment else line


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise ValueError("truncated")
        out, self.at = self.data[self.at : self.at + n], self.at + n
        return out

    def uint32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def string(self) -> bytes:
        return self.take(self.uint32())


# ----------------------------------------------------------------------------------------------
# keys


def keygen(private: Path, comment: str = "runner-bundle") -> PublicKey:
    """A new Ed25519 key pair: `private` (OpenSSH format, mode 0600, never overwritten) and
    `private`.pub (OpenSSH public key line)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public_path = private.with_name(private.name + ".pub")
    for path in (private, public_path):
        if path.exists() or path.is_symlink():
            raise SignatureError(f"{path} exists already; choose another name (a key is never overwritten)")
    if not private.parent.is_dir():
        raise SignatureError(f"{private}: the directory {private.parent} does not exist")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    public = PublicKey(raw, comment)
    try:
        # 0600 from the start: the key is never readable by others, not even for a moment.
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        fd = os.open(public_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(public.openssh + "\n")
    except OSError as e:
        private.unlink(missing_ok=True)
        raise SignatureError(f"writing the key pair failed: {e.filename}: {e.strerror}") from None
    return public


def load_private(path: Path):
    """An Ed25519 private key from an OpenSSH or PEM (PKCS#8) file, unencrypted."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        data = path.read_bytes()
    except OSError as e:
        raise SignatureError(f"--sign {path}: cannot read it ({e.strerror})") from None
    try:
        if b"OPENSSH PRIVATE KEY" in data:
            key = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # cryptography's word for "it is encrypted and no password was given"
        raise SignatureError(
            f"--sign {path}: the key is protected by a passphrase; runner signs with an unencrypted Ed25519 "
            "key kept on offline media (runner keygen)"
        ) from None
    except (ValueError, binascii.Error) as e:
        raise SignatureError(f"--sign {path}: not a private key ({e})") from None
    except Exception as e:  # e.g. an encrypted OpenSSH key needs the bcrypt package to even be read
        raise SignatureError(f"--sign {path}: cannot load the key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"--sign {path}: a {type(key).__name__}; bundles are signed with Ed25519 keys")
    return key


def public_of(key) -> PublicKey:
    from cryptography.hazmat.primitives import serialization

    return PublicKey(
        key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


def load_public(path: Path) -> list[PublicKey]:
    """The Ed25519 public keys in a file: OpenSSH lines (`ssh-ed25519 AAAA... comment`, as in a
    .pub, an authorized_keys or an allowed_signers file) or a PEM public key."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise SignatureError(f"--require-signature {path}: cannot read it ({e.strerror})") from None
    keys = []
    if "-----BEGIN PUBLIC KEY-----" in text:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            key = serialization.load_pem_public_key(text.encode())
        except ValueError as e:
            raise SignatureError(f"--require-signature {path}: not a public key ({e})") from None
        if isinstance(key, Ed25519PublicKey):
            keys.append(
                PublicKey(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
            )
    for line in text.splitlines():
        words = line.split()
        if line.lstrip().startswith("#") or _KEY_TYPE.decode() not in words:
            continue
        at = words.index(_KEY_TYPE.decode())
        try:
            blob = _Reader(base64.b64decode(words[at + 1], validate=True))
            if blob.string() == _KEY_TYPE:
                keys.append(PublicKey(blob.string(), " ".join(words[at + 2 :])))
        except (IndexError, ValueError, binascii.Error):
            continue
    if not keys:
        raise SignatureError(
            f"--require-signature {path}: no Ed25519 public key in it (expected a line `ssh-ed25519 AAAA...`, "
            "as `runner keygen` writes to KEY.pub)"
        )
    return keys


# ----------------------------------------------------------------------------------------------
# signatures


def _signed_data(message: bytes, hash_alg: bytes) -> bytes:
    digest = _HASHES[hash_alg](message).digest()
    return _MAGIC + _string(NAMESPACE.encode()) + _string(b"") + _string(hash_alg) + _string(digest)


def sign(message: bytes, key) -> bytes:
    """The armored SSHSIG of `message` (namespace runner-bundle, sha512), as `ssh-keygen -Y sign`
    writes it."""
    signature = key.sign(_signed_data(message, b"sha512"))
    blob = (
        _MAGIC + struct.pack(">I", 1) + _string(public_of(key).blob) + _string(NAMESPACE.encode())
        + _string(b"") + _string(b"sha512") + _string(_string(_KEY_TYPE) + _string(signature))
    )  # fmt: skip
    body = textwrap.fill(base64.b64encode(blob).decode(), 70)
    return f"{_ARMOR[0]}\n{body}\n{_ARMOR[1]}\n".encode()


def signer(armored: bytes) -> PublicKey:
    """The public key a signature names (not yet checked: see `verify`)."""
    return _parse(armored)[0]


def _parse(armored: bytes) -> tuple[PublicKey, bytes, bytes]:
    """(the signer's key, hash algorithm, signature bytes); ValueError on anything malformed."""
    text = armored.decode("ascii")
    start, end = text.index(_ARMOR[0]) + len(_ARMOR[0]), text.index(_ARMOR[1])
    r = _Reader(base64.b64decode("".join(text[start:end].split()), validate=True))
    if r.take(6) != _MAGIC or r.uint32() != 1:
        raise ValueError("not an SSHSIG signature of version 1")
    key = _Reader(r.string())
    if key.string() != _KEY_TYPE:
        raise ValueError("not signed with an Ed25519 key")
    public = PublicKey(key.string())
    namespace, _reserved, hash_alg = r.string(), r.string(), r.string()
    if namespace != NAMESPACE.encode():
        raise ValueError(f"made for the namespace {namespace.decode(errors='replace')!r}, not {NAMESPACE!r}")
    if hash_alg not in _HASHES:
        raise ValueError(f"unknown hash algorithm {hash_alg!r}")
    sig = _Reader(r.string())
    if sig.string() != _KEY_TYPE:
        raise ValueError("not an Ed25519 signature")
    raw = sig.string()
    if len(public.raw) != 32 or len(raw) != 64 or r.at != len(r.data):
        raise ValueError("malformed")
    return public, hash_alg, raw


def verify(message: bytes, armored: bytes, trusted: list[PublicKey] | None = None) -> PublicKey:
    """Check an armored SSHSIG of `message`; returns the signer's key. With `trusted`, the signer
    must be one of them. SignatureError says what is wrong."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        public, hash_alg, raw = _parse(armored)
    except (ValueError, UnicodeDecodeError, binascii.Error) as e:
        raise BadSignature(f"the signature is malformed ({e})") from None
    if trusted is not None and public.raw not in {k.raw for k in trusted}:
        names = ", ".join(k.fingerprint for k in trusted)
        raise BadSignature(
            f"it is signed by the key {public.fingerprint}, which is not the trusted key ({names})"
        )
    try:
        Ed25519PublicKey.from_public_bytes(public.raw).verify(raw, _signed_data(message, hash_alg))
    except InvalidSignature:
        raise ChangedSince(
            f"the signature by {public.fingerprint} does not match: one of them changed after it was signed"
        ) from None
    return public
