"""IKEv2 key derivation and Encrypted-payload protection.

Owns prf/prf+ (RFC 7296 §2.13), SKEYSEED and the seven IKE keys (§2.14), Child SA keying material
(§2.17), rekeyed SKEYSEED (§2.18), and SkCipher: AES-GCM-16 and ChaCha20-Poly1305 (RFC 5282,
RFC 7634) or AES-CBC + HMAC-SHA2 (RFC 4868). Every primitive comes from `cryptography`; ICVs are
compared in constant time. Knows nothing of sessions or sockets; never logs key material.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as chmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from .constants import Encr, Integ, Prf
from .payloads import ParseError


class IntegrityError(Exception):
    """An Encrypted payload failed authentication (or was too mangled to authenticate): drop it."""


PRF_HASH: dict[int, type[hashes.HashAlgorithm]] = {
    Prf.HMAC_SHA1: hashes.SHA1,
    Prf.HMAC_SHA2_256: hashes.SHA256,
    Prf.HMAC_SHA2_384: hashes.SHA384,
    Prf.HMAC_SHA2_512: hashes.SHA512,
}
# integrity transform -> (hash, key octets, truncated ICV octets)   RFC 4868 §2.1-2.3
INTEG_ALG: dict[int, tuple[type[hashes.HashAlgorithm], int, int]] = {
    Integ.HMAC_SHA1_96: (hashes.SHA1, 20, 12),
    Integ.HMAC_SHA2_256_128: (hashes.SHA256, 32, 16),
    Integ.HMAC_SHA2_384_192: (hashes.SHA384, 48, 24),
    Integ.HMAC_SHA2_512_256: (hashes.SHA512, 64, 32),
}
AEAD = (Encr.AES_GCM_16, Encr.CHACHA20_POLY1305)
SALT_LEN = 4  # RFC 5282 / RFC 4106 / RFC 7634: the last 4 octets of an AEAD key are the nonce salt


def prf_len(prf_id: int) -> int:
    return PRF_HASH[prf_id].digest_size


def prf(prf_id: int, key: bytes, data: bytes) -> bytes:
    h = chmac.HMAC(key, PRF_HASH[prf_id]())
    h.update(data)
    return h.finalize()


def prf_plus(prf_id: int, key: bytes, seed: bytes, length: int) -> bytes:
    """T1 = prf(K, S|0x01), Tn = prf(K, Tn-1|S|n); at most 255 rounds (RFC 7296 §2.13)."""
    out = b""
    t = b""
    n = 1
    while len(out) < length:
        if n > 255:
            raise ValueError("prf+ cannot produce more than 255 blocks")
        t = prf(prf_id, key, t + seed + bytes([n]))
        out += t
        n += 1
    return out[:length]


def encr_key_len(encr_id: int, key_bits: int | None) -> int:
    """Octets of keying material one direction of `encr_id` consumes (AEAD: key + 4-octet salt)."""
    if encr_id == Encr.CHACHA20_POLY1305:
        return 32 + SALT_LEN
    if encr_id == Encr.AES_GCM_16:
        return (key_bits or 0) // 8 + SALT_LEN
    if encr_id == Encr.AES_CBC:
        return (key_bits or 0) // 8
    raise ValueError(f"unsupported encryption transform {encr_id}")


def integ_key_len(integ_id: int) -> int:
    return 0 if integ_id == Integ.NONE else INTEG_ALG[integ_id][1]


def skeyseed(prf_id: int, ni: bytes, nr: bytes, gir: bytes) -> bytes:
    return prf(prf_id, ni + nr, gir)


def rekey_skeyseed(old_prf_id: int, old_sk_d: bytes, gir_new: bytes, ni: bytes, nr: bytes) -> bytes:
    """§2.18: the rekeying exchange belongs to the old SA, so the OLD SA's prf is used here."""
    return prf(old_prf_id, old_sk_d, gir_new + ni + nr)


@dataclass(frozen=True, repr=False)
class IkeKeys:
    sk_d: bytes
    sk_ai: bytes
    sk_ar: bytes
    sk_ei: bytes
    sk_er: bytes
    sk_pi: bytes
    sk_pr: bytes

    def __repr__(self) -> str:  # never print key material
        return "IkeKeys(<redacted>)"


def derive_ike_keys(
    prf_id: int,
    seed: bytes,
    ni: bytes,
    nr: bytes,
    spi_i: bytes,
    spi_r: bytes,
    encr_id: int,
    key_bits: int | None,
    integ_id: int,
) -> IkeKeys:
    """{SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, Ni|Nr|SPIi|SPIr)."""
    p = prf_len(prf_id)
    a = integ_key_len(integ_id)
    e = encr_key_len(encr_id, key_bits)
    km = prf_plus(prf_id, seed, ni + nr + spi_i + spi_r, 3 * p + 2 * a + 2 * e)
    sizes = (p, a, a, e, e, p, p)
    parts = []
    off = 0
    for s in sizes:
        parts.append(km[off : off + s])
        off += s
    return IkeKeys(*parts)


def child_keymat(
    prf_id: int, sk_d: bytes, ni: bytes, nr: bytes, length: int, gir: bytes | None = None
) -> bytes:
    """KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr) (§2.17)."""
    return prf_plus(prf_id, sk_d, (gir or b"") + ni + nr, length)


class SkCipher:
    """One direction of Encrypted-payload protection with fixed keys (one per IKE SA direction)."""

    def __init__(
        self, encr_id: int, key_bits: int | None, encr_key: bytes, integ_id: int, integ_key: bytes
    ) -> None:
        self.encr_id = encr_id
        self.aead = encr_id in AEAD
        if self.aead:
            key, self._salt = encr_key[:-SALT_LEN], encr_key[-SALT_LEN:]
            self._aead = AESGCM(key) if encr_id == Encr.AES_GCM_16 else ChaCha20Poly1305(key)
            self.iv_len, self.icv_len, self.block = 8, 16, 1
            self._counter = int.from_bytes(os.urandom(4), "big") << 32  # unique IVs per key
        elif encr_id == Encr.AES_CBC:
            if integ_id not in INTEG_ALG:
                raise ValueError("AES-CBC needs an integrity transform")
            self._key = encr_key
            self._hash, _, self.icv_len = INTEG_ALG[integ_id]
            self._integ_key = integ_key
            self.iv_len, self.block = 16, 16
        else:
            raise ValueError(f"unsupported encryption transform {encr_id}")

    def pad(self, body: bytes) -> bytes:
        padlen = (-(len(body) + 1)) % self.block
        return body + bytes(padlen) + bytes([padlen])

    def _mac(self, data: bytes) -> bytes:
        h = chmac.HMAC(self._integ_key, self._hash())
        h.update(data)
        return h.finalize()[: self.icv_len]

    def seal(self, aad: bytes, plaintext: bytes, iv: bytes | None = None) -> bytes:
        """Return IV | ciphertext | ICV for the SK payload whose preceding octets are `aad`."""
        if self.aead:
            if iv is None:
                self._counter = (self._counter + 1) & (2**64 - 1)
                iv = self._counter.to_bytes(8, "big")
            return iv + self._aead.encrypt(self._salt + iv, plaintext, aad)
        iv = iv or os.urandom(16)
        enc = Cipher(algorithms.AES(self._key), modes.CBC(iv)).encryptor()
        ct = enc.update(plaintext) + enc.finalize()
        return iv + ct + self._mac(aad + iv + ct)

    def open(self, aad: bytes, body: bytes) -> bytes:
        """Authenticate and decrypt IV|ciphertext|ICV; returns the inner payload chain (padding removed)."""
        if len(body) < self.iv_len + self.icv_len + 1:
            raise IntegrityError("Encrypted payload too short")
        iv = body[: self.iv_len]
        if self.aead:
            try:
                pt = self._aead.decrypt(self._salt + iv, body[self.iv_len :], aad)
            except Exception:  # cryptography.exceptions.InvalidTag
                raise IntegrityError("AEAD tag check failed") from None
        else:
            ct, icv = body[self.iv_len : -self.icv_len], body[-self.icv_len :]
            if len(ct) % 16:
                raise IntegrityError("CBC ciphertext is not a multiple of the block size")
            if not hmac.compare_digest(self._mac(aad + iv + ct), icv):
                raise IntegrityError("ICV check failed")
            dec = Cipher(algorithms.AES(self._key), modes.CBC(iv)).decryptor()
            pt = dec.update(ct) + dec.finalize()
        if not pt:
            raise ParseError("Encrypted payload has no pad length octet")
        padlen = pt[-1]
        if padlen + 1 > len(pt):
            raise ParseError("Encrypted payload pad length exceeds plaintext")
        return pt[: -(padlen + 1)]


def sk_ciphers(
    keys: IkeKeys, encr_id: int, key_bits: int | None, integ_id: int, initiator: bool
) -> tuple[SkCipher, SkCipher]:
    """(outbound, inbound) ciphers for our role: the initiator sends with SK_ei/SK_ai."""
    ci = SkCipher(encr_id, key_bits, keys.sk_ei, integ_id, keys.sk_ai)
    cr = SkCipher(encr_id, key_bits, keys.sk_er, integ_id, keys.sk_ar)
    return (ci, cr) if initiator else (cr, ci)
