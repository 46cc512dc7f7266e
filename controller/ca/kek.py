"""The key-encryption key (KEK) file and AES-GCM sealing of secrets kept in etcd.

Owns the KEK file format (32 random bytes, hex, mode 0600, created once by `meshsec-controller init`
and copied to every replica) and the sealed-blob format.  etcd never sees a CA key or PSK master in
clear, so an etcd backup alone does not leak them.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEK_FILENAME = "kek"
_MAGIC = b"msk1"  # sealed blob: magic | 12-byte nonce | AES-256-GCM ciphertext+tag
_NONCE = 12


class KekError(Exception):
    """The KEK file is missing, malformed, too permissive, or does not open a sealed blob."""


def create_kek(path: Path) -> bool:
    """Create the KEK file if absent (mode 0600, never overwritten); True if it was created."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_bytes(32).hex() + "\n")
        f.flush()
        os.fsync(f.fileno())
    return True


def load_kek(path: Path) -> bytes:
    try:
        st = path.stat()
        text = path.read_text().strip()
    except OSError as exc:
        raise KekError(
            f"cannot read KEK {path}: {exc.strerror}; run `meshsec-controller init` first"
        ) from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise KekError(f"KEK {path} is readable by group/others; chmod 600 {path}")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise KekError(f"KEK {path} is malformed (want 64 hex digits)")
    return key


class Sealer:
    """AES-256-GCM with the KEK; aad binds a blob to its etcd key so blobs cannot be swapped."""

    def __init__(self, kek: bytes) -> None:
        self._aead = AESGCM(kek)

    def seal(self, plaintext: bytes, aad: str) -> bytes:
        nonce = secrets.token_bytes(_NONCE)
        return _MAGIC + nonce + self._aead.encrypt(nonce, plaintext, aad.encode())

    def open(self, blob: bytes, aad: str) -> bytes:
        if len(blob) < len(_MAGIC) + _NONCE + 16 or not blob.startswith(_MAGIC):
            raise KekError(f"sealed value at {aad} is malformed")
        nonce = blob[len(_MAGIC) : len(_MAGIC) + _NONCE]
        try:
            return self._aead.decrypt(nonce, blob[len(_MAGIC) + _NONCE :], aad.encode())
        except InvalidTag:
            raise KekError(
                f"cannot decrypt {aad}: wrong KEK for this etcd (copy the kek file written by init)"
            ) from None
