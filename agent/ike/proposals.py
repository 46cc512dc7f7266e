"""strongSwan-style proposal strings and SA negotiation (RFC 7296 §2.7, §3.3).

Owns: parsing "aes128gcm16-prfsha256-x25519" / "aes256-sha256-modp2048-esn" into transform sets,
building SA proposals from them, the responder's choice (first acceptable proposal in the initiator's
order, each transform the initiator's first one our config allows) and the initiator's check that the
answer is one of its offers. No I/O, no keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .constants import Encr, Esn, Group, Integ, Prf, Proto, TransformType
from .crypto import AEAD
from .payloads import Proposal, Transform


class ProposalError(ValueError):
    """A proposal string we cannot use; the message names the token and why."""


_ENCR = {
    "aes128": (Encr.AES_CBC, 128),
    "aes256": (Encr.AES_CBC, 256),
    "aes128gcm16": (Encr.AES_GCM_16, 128),
    "aes128gcm128": (Encr.AES_GCM_16, 128),
    "aes256gcm16": (Encr.AES_GCM_16, 256),
    "aes256gcm128": (Encr.AES_GCM_16, 256),
    "chacha20poly1305": (Encr.CHACHA20_POLY1305, None),
}
_INTEG = {
    "sha256": Integ.HMAC_SHA2_256_128,
    "sha2_256": Integ.HMAC_SHA2_256_128,
    "sha384": Integ.HMAC_SHA2_384_192,
    "sha2_384": Integ.HMAC_SHA2_384_192,
    "sha512": Integ.HMAC_SHA2_512_256,
    "sha2_512": Integ.HMAC_SHA2_512_256,
}
_PRF = {"prfsha256": Prf.HMAC_SHA2_256, "prfsha384": Prf.HMAC_SHA2_384, "prfsha512": Prf.HMAC_SHA2_512}
_PRF_FOR_INTEG = {
    Integ.HMAC_SHA2_256_128: Prf.HMAC_SHA2_256,
    Integ.HMAC_SHA2_384_192: Prf.HMAC_SHA2_384,
    Integ.HMAC_SHA2_512_256: Prf.HMAC_SHA2_512,
}
_DH = {
    "modp2048": Group.MODP2048,
    "ecp256": Group.ECP256,
    "ecp384": Group.ECP384,
    "x25519": Group.CURVE25519,
    "curve25519": Group.CURVE25519,
}
_ORDER = (TransformType.ENCR, TransformType.PRF, TransformType.INTEG, TransformType.DH, TransformType.ESN)


@dataclass(frozen=True)
class ProposalSpec:
    """One configured proposal: acceptable transforms per type, in preference order."""

    protocol: int
    transforms: dict[int, tuple[Transform, ...]]
    text: str

    @property
    def dh_groups(self) -> tuple[int, ...]:
        return tuple(t.id for t in self.transforms.get(TransformType.DH, ()) if t.id)

    def to_wire(self, num: int, spi: bytes, include_dh: bool = True) -> Proposal:
        out: list[Transform] = []
        for ttype in _ORDER:
            if ttype == TransformType.DH and not include_dh:
                continue
            out.extend(self.transforms.get(ttype, ()))
        return Proposal(num, self.protocol, spi, tuple(out))


def parse_proposal(text: str, protocol: int = Proto.IKE) -> ProposalSpec:
    """Parse one strongSwan-style proposal string for IKE (protocol 1) or ESP (protocol 3)."""
    encr: list[Transform] = []
    integ: list[Transform] = []
    prf: list[Transform] = []
    dh: list[Transform] = []
    esn: list[Transform] = []
    for tok in text.strip().lower().split("-"):
        if tok in _ENCR:
            eid, bits = _ENCR[tok]
            encr.append(Transform(TransformType.ENCR, eid, bits))
        elif tok in _INTEG:
            integ.append(Transform(TransformType.INTEG, _INTEG[tok]))
        elif tok in _PRF and protocol == Proto.IKE:
            prf.append(Transform(TransformType.PRF, _PRF[tok]))
        elif tok in _DH:
            dh.append(Transform(TransformType.DH, _DH[tok]))
        elif tok in ("esn", "noesn") and protocol == Proto.ESP:
            esn.append(Transform(TransformType.ESN, Esn.YES if tok == "esn" else Esn.NO))
        else:
            raise ProposalError(f"proposal {text!r}: unknown or misplaced algorithm {tok!r}")
    if not encr:
        raise ProposalError(f"proposal {text!r}: no encryption algorithm")
    aead = {t.id in AEAD for t in encr}
    if len(aead) > 1:
        raise ProposalError(f"proposal {text!r}: mixes AEAD and non-AEAD encryption; split it in two")
    is_aead = aead.pop()
    if is_aead and integ:
        raise ProposalError(f"proposal {text!r}: AEAD encryption takes no integrity algorithm")
    if not is_aead and not integ:
        raise ProposalError(f"proposal {text!r}: non-AEAD encryption needs an integrity algorithm")
    transforms: dict[int, tuple[Transform, ...]] = {TransformType.ENCR: tuple(encr)}
    if integ:
        transforms[TransformType.INTEG] = tuple(integ)
    if protocol == Proto.IKE:
        if not prf:
            prf = [Transform(TransformType.PRF, _PRF_FOR_INTEG[t.id]) for t in integ]
        if not prf:
            raise ProposalError(f"proposal {text!r}: AEAD IKE proposal needs a prf (e.g. prfsha256)")
        if not dh:
            raise ProposalError(f"proposal {text!r}: IKE proposal needs a DH group")
        transforms[TransformType.PRF] = tuple(dict.fromkeys(prf))
        transforms[TransformType.DH] = tuple(dh)
    else:
        if dh:
            transforms[TransformType.DH] = tuple(dh)
        transforms[TransformType.ESN] = tuple(esn) or (Transform(TransformType.ESN, Esn.NO),)
    return ProposalSpec(protocol, transforms, text)


def parse_proposals(texts: Sequence[str], protocol: int = Proto.IKE) -> list[ProposalSpec]:
    return [parse_proposal(t, protocol) for t in texts]


def offer(specs: Sequence[ProposalSpec], spi: bytes, include_dh: bool = True) -> tuple[Proposal, ...]:
    return tuple(s.to_wire(i + 1, spi, include_dh) for i, s in enumerate(specs))


def _by_type(p: Proposal) -> dict[int, list[Transform]]:
    out: dict[int, list[Transform]] = {}
    for t in p.transforms:
        out.setdefault(t.type, []).append(t)
    return out


def _match(
    offered: dict[int, list[Transform]], spec: ProposalSpec, ignore_dh: bool
) -> list[Transform] | None:
    chosen: list[Transform] = []
    for ttype in _ORDER:
        if ttype == TransformType.DH and ignore_dh:
            continue
        theirs = offered.get(ttype, [])
        ours = spec.transforms.get(ttype, ())
        if not theirs and not ours:
            continue
        if not ours:  # we want none of this type: only acceptable if they allow NONE (0)
            if any(t.id == 0 for t in theirs) or not theirs:
                continue
            return None
        if not theirs:
            if ttype == TransformType.ESN and any(t.id == Esn.NO for t in ours):
                continue  # a missing ESN transform means "no ESN"
            return None
        pick = next((t for t in theirs if not t.other_attrs and t in ours), None)
        if pick is None:
            return None
        chosen.append(pick)
    return chosen


def select(
    offered: Sequence[Proposal],
    ours: Sequence[ProposalSpec],
    protocol: int,
    spi: bytes,
    ignore_dh: bool = False,
) -> Proposal | None:
    """Responder choice per RFC 7296 §2.7: first offered proposal (their order) we can accept."""
    for p in offered:
        if p.protocol != protocol:
            continue
        their = _by_type(p)
        if set(their) - set(_ORDER):
            continue  # unknown transform type: the whole proposal is unusable
        for spec in ours:
            chosen = _match(their, spec, ignore_dh)
            if chosen is not None:
                return Proposal(p.num, protocol, spi, tuple(chosen))
    return None


def check_answer(
    answer: Sequence[Proposal], offered: Sequence[Proposal], ignore_dh: bool = False
) -> Proposal:
    """Initiator side: the response must hold exactly one proposal, one transform of each type we
    offered, all taken from the offer with that number. Raises ProposalError otherwise."""
    if len(answer) != 1:
        raise ProposalError(f"responder returned {len(answer)} proposals, expected 1")
    a = answer[0]
    mine = next((p for p in offered if p.num == a.num), None)
    if mine is None or a.protocol != mine.protocol:
        raise ProposalError(f"responder chose proposal #{a.num}, which we did not offer")
    got = _by_type(a)
    want = _by_type(mine)
    for ttype, ts in got.items():
        if len(ts) != 1 or ts[0] not in want.get(ttype, []):
            raise ProposalError(f"responder chose transform type {ttype} we did not offer in #{a.num}")
    for ttype in want:
        if ttype == TransformType.DH and ignore_dh:
            continue
        if ttype not in got and not (ttype == TransformType.DH and any(t.id == 0 for t in want[ttype])):
            raise ProposalError(f"responder omitted transform type {ttype}")
    return a


@dataclass(frozen=True)
class Suite:
    """The negotiated algorithms of one SA, flattened for key derivation and the data plane."""

    encr_id: int
    key_bits: int | None
    integ_id: int
    prf_id: int | None
    dh_group: int
    esn: bool


def suite(p: Proposal) -> Suite:
    t = {x.type: x for x in p.transforms}
    encr = t[TransformType.ENCR]
    return Suite(
        encr_id=encr.id,
        key_bits=encr.key_bits if encr.id != Encr.CHACHA20_POLY1305 else 256,
        integ_id=t[TransformType.INTEG].id if TransformType.INTEG in t else Integ.NONE,
        prf_id=t[TransformType.PRF].id if TransformType.PRF in t else None,
        dh_group=t[TransformType.DH].id if TransformType.DH in t else Group.NONE,
        esn=TransformType.ESN in t and t[TransformType.ESN].id == Esn.YES,
    )
