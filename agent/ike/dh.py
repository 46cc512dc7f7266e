"""Key exchange groups for IKEv2, all behind one interface: `new(group) -> KeyExchange`.

Owns group encodings and peer public value validation: MODP-2048 (RFC 3526 group 14), ECP-256/384
(RFC 5903: public value x||y, shared secret x) and Curve25519 (RFC 8031). cryptography's finite-field
`dh` module is announced for removal; replacing it means editing only _Modp below.
"""

from __future__ import annotations

from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import ec, x25519

from .constants import Group


class DhError(ValueError):
    """Unsupported group or an invalid peer public value (RFC 7296 §2.12 / RFC 5903 / RFC 8031)."""


class KeyExchange(Protocol):
    group: int

    def public_bytes(self) -> bytes: ...

    def shared_secret(self, peer: bytes) -> bytes: ...


_MODP2048_P = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F"
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510"
    "15728E5A8AACAA68FFFFFFFFFFFFFFFF",
    16,
)


class _Modp:
    """RFC 3526 group 14; values are padded to the modulus length (RFC 7296 §3.4, §2.14)."""

    _params = None
    size = 256

    def __init__(self, group: int) -> None:
        from cryptography.hazmat.primitives.asymmetric import dh

        self._dh = dh
        if _Modp._params is None:
            _Modp._params = dh.DHParameterNumbers(_MODP2048_P, 2).parameters()
        self.group = group
        self._key = _Modp._params.generate_private_key()

    def public_bytes(self) -> bytes:
        y = self._key.public_key().public_numbers().y
        return y.to_bytes(self.size, "big")

    def shared_secret(self, peer: bytes) -> bytes:
        if len(peer) != self.size:
            raise DhError(f"MODP-2048 public value has {len(peer)} octets, expected {self.size}")
        y = int.from_bytes(peer, "big")
        if not 1 < y < _MODP2048_P - 1:  # rejects 0, 1, p-1 (small-subgroup confinement)
            raise DhError("MODP-2048 public value out of range (must be 1 < y < p-1)")
        pub = self._dh.DHPublicNumbers(y, _Modp._params.parameter_numbers()).public_key()  # type: ignore[union-attr]
        try:
            return self._key.exchange(pub).rjust(self.size, b"\x00")
        except ValueError as exc:
            raise DhError(f"MODP-2048 exchange failed: {exc}") from None


class _Ecp:
    def __init__(self, group: int, curve: ec.EllipticCurve, size: int) -> None:
        self.group = group
        self._curve = curve
        self.size = size
        self._key = ec.generate_private_key(curve)

    def public_bytes(self) -> bytes:
        n = self._key.public_key().public_numbers()
        return n.x.to_bytes(self.size, "big") + n.y.to_bytes(self.size, "big")

    def shared_secret(self, peer: bytes) -> bytes:
        if len(peer) != 2 * self.size:
            raise DhError(f"ECP public value has {len(peer)} octets, expected {2 * self.size} (x||y)")
        try:  # from_encoded_point checks the point is on the curve
            pub = ec.EllipticCurvePublicKey.from_encoded_point(self._curve, b"\x04" + peer)
            return self._key.exchange(ec.ECDH(), pub)
        except ValueError as exc:
            raise DhError(f"ECP public value is not a valid curve point: {exc}") from None


class _X25519:
    group = Group.CURVE25519

    def __init__(self) -> None:
        self._key = x25519.X25519PrivateKey.generate()

    def public_bytes(self) -> bytes:
        return self._key.public_key().public_bytes_raw()

    def shared_secret(self, peer: bytes) -> bytes:
        if len(peer) != 32:
            raise DhError(f"Curve25519 public value has {len(peer)} octets, expected 32")
        try:  # cryptography refuses an all-zero result (RFC 8031 §2.3 check)
            return self._key.exchange(x25519.X25519PublicKey.from_public_bytes(peer))
        except ValueError as exc:
            raise DhError(f"Curve25519 exchange failed (low-order point?): {exc}") from None


SUPPORTED = (Group.MODP2048, Group.ECP256, Group.ECP384, Group.CURVE25519)


def new(group: int) -> KeyExchange:
    """A fresh ephemeral key for `group`."""
    if group == Group.MODP2048:
        return _Modp(group)
    if group == Group.ECP256:
        return _Ecp(group, ec.SECP256R1(), 32)
    if group == Group.ECP384:
        return _Ecp(group, ec.SECP384R1(), 48)
    if group == Group.CURVE25519:
        return _X25519()
    raise DhError(f"unsupported DH group {group}")
