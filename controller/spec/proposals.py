"""strongSwan-style proposal strings ("aes128gcm16-prfsha256-x25519"): which algorithms meshsec speaks.

Owns the allowed algorithm names and the rules for combining them.  The IKE and ESP engines map the
same names to transforms; this module only decides whether a proposal string is acceptable.
"""

from __future__ import annotations

import difflib
from typing import Literal

__all__ = ["AEAD", "DH", "ENCR", "ESN", "INTEG", "PRF", "check_proposal"]

AEAD = ("aes128gcm16", "aes256gcm16", "chacha20poly1305")
ENCR = ("aes128", "aes256")
INTEG = ("sha256", "sha384", "sha512")
PRF = ("prfsha256", "prfsha384", "prfsha512")
DH = ("modp2048", "ecp256", "ecp384", "x25519")
ESN = ("esn", "noesn")


def check_proposal(text: str, kind: Literal["ike", "esp"]) -> str | None:
    """Return None when `text` is a valid proposal of `kind`, else the reason it is not."""
    allowed = (*AEAD, *ENCR, *INTEG, *DH, *(PRF if kind == "ike" else ESN))
    tokens = text.split("-")
    for token in tokens:
        if token not in allowed:
            hint = difflib.get_close_matches(token, allowed, n=1, cutoff=0.6)
            if token in (PRF if kind == "esp" else ESN):
                return f"{token!r} is not allowed in an {kind} proposal {text!r}"
            more = f"; did you mean {hint[0]!r}?" if hint else f" (known: {' '.join(allowed)})"
            return f"unknown algorithm {token!r} in {kind} proposal {text!r}{more}"
    aead = [t for t in tokens if t in AEAD]
    encr = [t for t in tokens if t in ENCR]
    integ = [t for t in tokens if t in INTEG]
    if not aead and not encr:
        return f"{kind} proposal {text!r} has no encryption algorithm (e.g. aes128gcm16)"
    if aead and encr:
        return f"{kind} proposal {text!r} mixes AEAD and non-AEAD encryption; split it into two proposals"
    if aead and integ:
        return (
            f"{kind} proposal {text!r} combines an AEAD cipher with an integrity algorithm; drop {integ[0]!r}"
        )
    if encr and not integ:
        return (
            f"{kind} proposal {text!r} needs an integrity algorithm with {encr[0]!r} (e.g. {encr[0]}-sha256)"
        )
    if kind == "ike":
        if not any(t in DH for t in tokens):
            return f"ike proposal {text!r} has no key exchange group (e.g. x25519)"
        if aead and not any(t in PRF for t in tokens):
            return f"ike proposal {text!r} needs a PRF with an AEAD cipher (e.g. {aead[0]}-prfsha256-x25519)"
    return None
