"""Per-SA cryptographic engines: seal/open one ESP packet for each supported transform family.

Owns the use of `cryptography` for ESP: the AAD/nonce construction of RFC 4106 (AES-GCM), RFC 4543
(AES-GMAC), RFC 7634 (ChaCha20-Poly1305) and the encrypt-then-MAC layout of RFC 3602 + RFC 4868
(AES-CBC + HMAC-SHA-256-128), ESN high bits included in the ICV but not sent (RFC 4303 §2.2.1,
RFC 4304). Cipher objects are built once per SA. Must not parse IP packets, track sequence numbers or
count anything: sa.py does that.

seal(spi, seq, iv, plaintext) -> whole ESP packet (SPI..ICV); `plaintext` is payload||padding||trailer,
`iv` None means the engine's default IV. open(esp, seq) -> plaintext, or EspDrop(ICV_FAILURE).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import constant_time, hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from meshsec.agent.esp.errors import DropReason, EspDrop
from meshsec.agent.esp.transforms import EncrId, TransformSpec

Buffer = bytes | bytearray | memoryview

_MASK32 = 0xFFFF_FFFF
_HDR = struct.Struct("!II")  # SPI, low 32 bits of the sequence number
_HDR_IV = struct.Struct("!IIQ")  # header followed by an 8-byte counter IV (= the 64-bit sequence number)
_AAD_ESN = struct.Struct("!IQ")  # SPI, full 64-bit ESN (RFC 4106 §5, RFC 7634 §2.1)
_NONCE = struct.Struct("!4sQ")  # salt, 8-byte IV
_SEQ_HI = struct.Struct("!I")


class AeadEngine:
    """AES-GCM (RFC 4106) and ChaCha20-Poly1305 (RFC 7634): nonce = salt||IV, AAD = SPI||seq(32 or 64)."""

    __slots__ = ("_aead", "_esn", "_salt")

    def __init__(self, spec: TransformSpec, enc_key: bytearray, esn: bool) -> None:
        key = memoryview(enc_key)[: spec.enc_key_len - spec.salt_len]
        self._aead: AESGCM | ChaCha20Poly1305 = (
            ChaCha20Poly1305(key) if spec.encr_id is EncrId.ENCR_CHACHA20_POLY1305 else AESGCM(key)
        )
        self._salt = bytearray(enc_key[-spec.salt_len :])
        self._esn = esn

    def seal(self, spi: int, seq: int, iv: bytes | None, plaintext: Buffer) -> bytes:
        # encrypt() + one concatenation measured faster than bytearray + encrypt_into on 1400 bytes.
        aad = _AAD_ESN.pack(spi, seq) if self._esn else _HDR.pack(spi, seq & _MASK32)
        if iv is None:
            return _HDR_IV.pack(spi, seq & _MASK32, seq) + self._aead.encrypt(
                _NONCE.pack(self._salt, seq), plaintext, aad
            )
        return _HDR.pack(spi, seq & _MASK32) + iv + self._aead.encrypt(self._salt + iv, plaintext, aad)

    def open(self, esp: Buffer, spi: int, seq: int) -> bytes:
        aad = _AAD_ESN.pack(spi, seq) if self._esn else esp[:8]
        try:
            return self._aead.decrypt(self._salt + esp[8:16], esp[16:], aad)
        except InvalidTag:
            raise EspDrop(DropReason.ICV_FAILURE) from None

    def sealer(self, spi: int) -> Callable[[int, Buffer], bytes]:
        """`seal` specialised for one SPI and the default IV (= seq): (seq, plaintext) -> ESP packet.

        The data plane's per-packet path: one Python frame instead of three, nothing looked up per
        call.  The closure holds the cipher object: whoever keeps it must drop it on wipe.
        """
        encrypt = self._aead.encrypt
        salt = self._salt  # the SA's bytearray: wiped in place
        hdr_iv, nonce = _HDR_IV.pack, _NONCE.pack
        if self._esn:
            aad = _AAD_ESN.pack

            def seal_esn(seq: int, plaintext: Buffer) -> bytes:
                return hdr_iv(spi, seq & _MASK32, seq) + encrypt(nonce(salt, seq), plaintext, aad(spi, seq))

            return seal_esn
        hdr = _HDR.pack

        def seal(seq: int, plaintext: Buffer) -> bytes:
            low = seq & _MASK32
            return hdr_iv(spi, low, seq) + encrypt(nonce(salt, seq), plaintext, hdr(spi, low))

        return seal

    def wipe(self) -> None:
        self._aead = None  # type: ignore[assignment]
        self._salt[:] = bytes(len(self._salt))


class GmacEngine:
    """ENCR_NULL_AUTH_AES_GMAC (RFC 4543 §3): payload in clear, tag over AAD = SPI||seq||IV||plaintext."""

    __slots__ = ("_aead", "_esn", "_salt")

    def __init__(self, spec: TransformSpec, enc_key: bytearray, esn: bool) -> None:
        self._aead = AESGCM(memoryview(enc_key)[: spec.enc_key_len - spec.salt_len])
        self._salt = bytearray(enc_key[-spec.salt_len :])
        self._esn = esn

    def _tag(self, spi: int, seq: int, iv: Buffer, plaintext: Buffer) -> bytes:
        head = _AAD_ESN.pack(spi, seq) if self._esn else _HDR.pack(spi, seq & _MASK32)
        return self._aead.encrypt(self._salt + iv, b"", b"".join((head, iv, plaintext)))

    def seal(self, spi: int, seq: int, iv: bytes | None, plaintext: Buffer) -> bytes:
        if iv is None:
            iv = seq.to_bytes(8, "big")
        tag = self._tag(spi, seq, iv, plaintext)
        return b"".join((_HDR.pack(spi, seq & _MASK32), iv, plaintext, tag))

    def open(self, esp: Buffer, spi: int, seq: int) -> bytes:
        plaintext = esp[16:-16]
        if not constant_time.bytes_eq(self._tag(spi, seq, esp[8:16], plaintext), bytes(esp[-16:])):
            raise EspDrop(DropReason.ICV_FAILURE)
        return bytes(plaintext)

    def wipe(self) -> None:
        self._aead = None  # type: ignore[assignment]
        self._salt[:] = bytes(len(self._salt))


class CbcHmacEngine:
    """AES-CBC (RFC 3602) with HMAC-SHA-256-128 (RFC 4868), encrypt-then-MAC; ESN high bits appended to
    the ICV input only (RFC 4303 §3.3.2.1).

    The CBC contexts live as long as the SA: `cryptography` binds the IV at Cipher construction, which
    costs ~12 µs per packet. A long-lived encryptor chains from the previous packet's last block, so
    each packet starts with a fresh random block R: its ciphertext C0 = E(R xor previous) is uniformly
    random and unpredictable, and is sent as the packet's IV (the rest is CBC with IV C0, exactly RFC
    3602). The decryptor is fed the IV block first (output discarded) so it chains from the IV.
    An injected IV (tests) takes the slow per-packet path.
    """

    __slots__ = ("_dec", "_enc", "_esn", "_hmac", "_key")

    def __init__(self, spec: TransformSpec, enc_key: bytearray, integ_key: bytearray, esn: bool) -> None:
        self._key = enc_key
        cipher = Cipher(algorithms.AES(enc_key), modes.CBC(os.urandom(16)))
        self._enc = cipher.encryptor()
        self._dec = cipher.decryptor()
        self._hmac = hmac.HMAC(integ_key, hashes.SHA256())
        self._esn = esn

    def seal(self, spi: int, seq: int, iv: bytes | None, plaintext: Buffer) -> bytes:
        hdr = _HDR.pack(spi, seq & _MASK32)
        if iv is None:
            iv = self._enc.update(os.urandom(16))
            ct = self._enc.update(plaintext)
        else:
            ct = Cipher(algorithms.AES(self._key), modes.CBC(iv)).encryptor().update(plaintext)
        mac = self._hmac.copy()
        mac.update(hdr)
        mac.update(iv)
        mac.update(ct)
        if self._esn:
            mac.update(_SEQ_HI.pack(seq >> 32))
        return b"".join((hdr, iv, ct, mac.finalize()[:16]))

    def open(self, esp: Buffer, spi: int, seq: int) -> bytes:
        esp = memoryview(esp)  # two slices of ~1.4 kB below: views, not copies
        mac = self._hmac.copy()
        mac.update(esp[:-16])
        if self._esn:
            mac.update(_SEQ_HI.pack(seq >> 32))
        if not constant_time.bytes_eq(mac.finalize()[:16], bytes(esp[-16:])):
            raise EspDrop(DropReason.ICV_FAILURE)
        self._dec.update(esp[8:24])
        return self._dec.update(esp[24:-16])

    def wipe(self) -> None:
        self._enc = self._dec = self._hmac = None  # type: ignore[assignment]


Engine = AeadEngine | GmacEngine | CbcHmacEngine


def make_engine(spec: TransformSpec, enc_key: bytearray, integ_key: bytearray, esn: bool) -> Engine:
    """Build the engine for a transform; keys are the SA's own bytearrays (sizes already checked)."""
    if spec.encr_id is EncrId.ENCR_AES_CBC:
        return CbcHmacEngine(spec, enc_key, integ_key, esn)
    if spec.encr_id is EncrId.ENCR_NULL_AUTH_AES_GMAC:
        return GmacEngine(spec, enc_key, esn)
    return AeadEngine(spec, enc_key, esn)
