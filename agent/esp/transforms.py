"""ESP transforms by IANA IKEv2 transform ID: sizes, keying material layout and proposal names.

Owns the table of supported ESP transforms (what the IKE engine may negotiate), the keying-material
length per direction (RFC 7296 §2.17: encryption key incl. salt, then integrity key) and the parser for
strongSwan-style ESP proposal strings ("aes128gcm16", "chacha20poly1305-esn", "aes256-sha256-noesn").
Must not do any cryptography itself (see cipher.py) nor know about SAs.

Supported:
- ENCR_AES_GCM_16 (20), 128/192/256-bit keys, RFC 4106: keymat = key || 4-byte salt, 8-byte IV, 16-byte ICV
- ENCR_NULL_AUTH_AES_GMAC (21), 128/192/256, RFC 4543: integrity only, same keymat/IV/ICV layout as GCM
- ENCR_CHACHA20_POLY1305 (28), 256-bit key, RFC 7634: keymat = key(32) || salt(4), 8-byte IV, 16-byte ICV
- ENCR_AES_CBC (12), 128/256 (+192), RFC 3602, with AUTH_HMAC_SHA2_256_128 (12), RFC 4868: 16-byte IV,
  16-byte blocks, 32-byte integrity key, 16-byte ICV
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class TransformError(ValueError):
    """An unsupported or inconsistent transform or proposal string; the message names the culprit."""


class EncrId(enum.IntEnum):
    """IKEv2 Transform Type 1 (encryption) IDs, IANA "IKEv2 Parameters"."""

    ENCR_AES_CBC = 12
    ENCR_AES_GCM_16 = 20
    ENCR_NULL_AUTH_AES_GMAC = 21
    ENCR_CHACHA20_POLY1305 = 28


class IntegId(enum.IntEnum):
    """IKEv2 Transform Type 3 (integrity) IDs; NONE is what AEAD transforms carry."""

    NONE = 0
    AUTH_HMAC_SHA2_256_128 = 12


@dataclass(frozen=True, slots=True)
class TransformSpec:
    """Every size the codec, the key derivation and the MTU maths need for one transform.

    `enc_key_len` includes the salt; `block` is what padding aligns (payload||pad||2) to: 4 for
    AEAD/GMAC (RFC 4303 §2.4 32-bit alignment), the cipher block size for CBC.
    """

    name: str
    encr_id: EncrId
    key_bits: int
    integ_id: IntegId
    enc_key_len: int
    salt_len: int
    integ_key_len: int
    iv_len: int
    icv_len: int
    block: int
    aead: bool

    @property
    def keymat_len(self) -> int:
        """Bytes of keying material per direction (RFC 7296 §2.17)."""
        return self.enc_key_len + self.integ_key_len


_AES_BITS = (128, 192, 256)


def transform_spec(encr_id: int, key_bits: int, integ_id: int = IntegId.NONE) -> TransformSpec:
    """Return the sizes of a supported transform, or raise TransformError naming what is unsupported."""
    try:
        encr = EncrId(encr_id)
    except ValueError:
        raise TransformError(f"unsupported ESP encryption transform {encr_id}") from None
    try:
        integ = IntegId(integ_id)
    except ValueError:
        raise TransformError(f"unsupported ESP integrity transform {integ_id}") from None
    if encr in (EncrId.ENCR_AES_GCM_16, EncrId.ENCR_NULL_AUTH_AES_GMAC):
        if key_bits not in _AES_BITS:
            raise TransformError(f"{encr.name}: key length {key_bits} bits not one of {_AES_BITS}")
        if integ is not IntegId.NONE:
            raise TransformError(f"{encr.name} is combined-mode; integrity transform must be none")
        kind = "gcm16" if encr is EncrId.ENCR_AES_GCM_16 else "gmac"
        return TransformSpec(
            f"aes{key_bits}{kind}", encr, key_bits, integ, key_bits // 8 + 4, 4, 0, 8, 16, 4, True
        )
    if encr is EncrId.ENCR_CHACHA20_POLY1305:
        if key_bits not in (0, 256):
            raise TransformError(f"ENCR_CHACHA20_POLY1305 has a fixed 256-bit key, not {key_bits}")
        if integ is not IntegId.NONE:
            raise TransformError("ENCR_CHACHA20_POLY1305 is combined-mode; integrity transform must be none")
        return TransformSpec("chacha20poly1305", encr, 256, integ, 36, 4, 0, 8, 16, 4, True)
    # ENCR_AES_CBC
    if key_bits not in _AES_BITS:
        raise TransformError(f"ENCR_AES_CBC: key length {key_bits} bits not one of {_AES_BITS}")
    if integ is IntegId.NONE:
        raise TransformError("ENCR_AES_CBC needs an integrity transform (AUTH_HMAC_SHA2_256_128)")
    return TransformSpec(
        f"aes{key_bits}-sha256", encr, key_bits, integ, key_bits // 8, 0, 32, 16, 16, 16, False
    )


def keymat_length(encr_id: int, key_bits: int, integ_id: int = IntegId.NONE) -> int:
    """Bytes of keying material per direction: encryption key (with salt) then integrity key."""
    return transform_spec(encr_id, key_bits, integ_id).keymat_len


@dataclass(frozen=True, slots=True)
class EspProposal:
    """One ESP proposal as configured: a transform plus the ESN choices offered, preferred first."""

    encr_id: EncrId
    key_bits: int
    integ_id: IntegId
    esn: tuple[bool, ...]

    @property
    def spec(self) -> TransformSpec:
        return transform_spec(self.encr_id, self.key_bits, self.integ_id)

    def __str__(self) -> str:
        suffix = {
            (True,): "-esn",
            (False,): "-noesn",
            (True, False): "-esn-noesn",
            (False, True): "-noesn-esn",
        }
        return self.spec.name + suffix[self.esn]


_ENCR_NAMES: dict[str, tuple[EncrId, int]] = {"chacha20poly1305": (EncrId.ENCR_CHACHA20_POLY1305, 256)}
for _bits in _AES_BITS:
    _ENCR_NAMES[f"aes{_bits}gcm16"] = (EncrId.ENCR_AES_GCM_16, _bits)
    _ENCR_NAMES[f"aes{_bits}gcm128"] = (EncrId.ENCR_AES_GCM_16, _bits)  # strongSwan alias (ICV bits)
    _ENCR_NAMES[f"aes{_bits}gcm"] = (EncrId.ENCR_AES_GCM_16, _bits)
    _ENCR_NAMES[f"aes{_bits}gmac"] = (EncrId.ENCR_NULL_AUTH_AES_GMAC, _bits)
    _ENCR_NAMES[f"aes{_bits}"] = (EncrId.ENCR_AES_CBC, _bits)
_INTEG_NAMES = {"sha256": IntegId.AUTH_HMAC_SHA2_256_128, "sha2_256": IntegId.AUTH_HMAC_SHA2_256_128}


def parse_esp_proposal(text: str) -> EspProposal:
    """Parse one strongSwan-style ESP proposal, e.g. "aes128gcm16", "aes256-sha256-noesn".

    Tokens are '-'-separated: one encryption algorithm, an integrity algorithm for CBC only, then
    optional "esn"/"noesn" in preference order. Unlike strongSwan (where no token means "noesn"),
    no ESN token means "esn-noesn": ESN preferred, as meshsec SAs default to ESN, no-ESN still accepted.
    """
    tokens = [t for t in text.strip().lower().split("-")]
    if not tokens or not tokens[0]:
        raise TransformError(f"empty ESP proposal {text!r}")
    esn: list[bool] = []
    while tokens and tokens[-1] in ("esn", "noesn"):
        esn.insert(0, tokens.pop() == "esn")
    if len(set(esn)) != len(esn):
        raise TransformError(f"ESP proposal {text!r}: ESN option repeated")
    if not tokens or tokens[0] not in _ENCR_NAMES:
        raise TransformError(f"ESP proposal {text!r}: unknown encryption algorithm {tokens[:1]}")
    encr, bits = _ENCR_NAMES[tokens[0]]
    integ = IntegId.NONE
    rest = tokens[1:]
    if encr is EncrId.ENCR_AES_CBC:
        if len(rest) != 1 or rest[0] not in _INTEG_NAMES:
            raise TransformError(
                f"ESP proposal {text!r}: AES-CBC needs exactly one integrity algorithm (sha256)"
            )
        integ = _INTEG_NAMES[rest[0]]
    elif rest:
        raise TransformError(
            f"ESP proposal {text!r}: combined-mode cipher takes no integrity algorithm {rest}"
        )
    return EspProposal(encr, bits, integ, tuple(esn) if esn else (True, False))


def parse_esp_proposals(text: str) -> list[EspProposal]:
    """Parse a comma-separated list of proposals ("aes256gcm16,chacha20poly1305"), in preference order."""
    parts = [p for p in (s.strip() for s in text.split(",")) if p]
    if not parts:
        raise TransformError(f"no ESP proposal in {text!r}")
    return [parse_esp_proposal(p) for p in parts]
