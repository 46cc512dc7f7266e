"""Per-peer IKE configuration handed to an IkeSession (compiled by the agent from the pushed profile).

Owns defaults and validation of the numbers, and the Child SA policies (ChildPolicy): one IKE SA may
carry children of different modes, proposals and selectors, as RFC 7296 §1.3.1/§2.9 allow; the
responder matches each Child SA request against them.  Proposal strings are parsed by proposals.py.
A responder config may leave the peer undecided (`resolve`): the peer's own config is then looked up
by IDi/IDr at IKE_AUTH (peerselect.py builds such configs).  Fragmentation settings (RFC 7383) are
per peer, too; the defaults match strongSwan's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .constants import IdType
from .events import Addr
from .payloads import TrafficSelector

if TYPE_CHECKING:
    from .identity import Identity

MODES = ("tunnel", "transport")


@dataclass(frozen=True)
class ChildPolicy:
    """One kind of Child SA this peer pair may have: its mode, ESP proposals and selectors.

    The responder picks, for each Child SA request, the first policy whose selectors contain the
    proposed ones (else the first that narrows them, RFC 7296 §2.9) and whose mode is the one asked
    for (USE_TRANSPORT_MODE present or not).  Rekeys keep the policy of the SA they replace.
    """

    name: str
    mode: str = "tunnel"
    esp_proposals: Sequence[str] = ("aes128gcm16",)
    local_ts: Sequence[TrafficSelector] = ()
    remote_ts: Sequence[TrafficSelector] = ()
    lifetime: float | None = None  # hard expiry, seconds; None: IkeConfig.child_lifetime
    # strongSwan's rekey_time / rand_time of this child: start a rekey `rekey_time` seconds after the
    # SA is made, minus up to `rekey_jitter` at random.  None: lifetime * IkeConfig.rekey_fraction
    # minus up to lifetime * IkeConfig.rekey_jitter (the session-wide ratios).  rekey_jitter None
    # with a rekey_time: strongSwan's default rand_time, life - rekey (here at most rekey / 2).
    rekey_time: float | None = None
    rekey_jitter: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"child {self.name!r}: mode {self.mode!r}: must be 'tunnel' or 'transport'")
        if self.lifetime is not None and self.lifetime <= 0:
            raise ValueError(f"child {self.name!r}: lifetime must be positive")
        if self.rekey_time is not None:
            if self.rekey_time <= 0:
                raise ValueError(f"child {self.name!r}: rekey_time must be positive")
            if self.lifetime is not None and self.rekey_time >= self.lifetime:
                raise ValueError(
                    f"child {self.name!r}: rekey_time {self.rekey_time:g} s must be shorter than"
                    f" lifetime {self.lifetime:g} s"
                )
        if self.rekey_jitter is not None:
            if self.rekey_time is None:
                raise ValueError(f"child {self.name!r}: rekey_jitter needs a rekey_time")
            if not 0 <= self.rekey_jitter < self.rekey_time:
                raise ValueError(f"child {self.name!r}: rekey_jitter must be in [0, rekey_time)")
        if not self.esp_proposals:
            raise ValueError(f"child {self.name!r}: esp_proposals: at least one proposal")


@dataclass
class IkeConfig:
    local_addr: Addr
    remote_addr: Addr | None
    local_id: tuple[int, bytes]
    remote_id: Any = None  # (id type, data), an identity.IdentityPattern, or None: any authenticated ID
    psk: bytes | None = field(default=None, repr=False)
    ike_proposals: Sequence[str] = ("aes128gcm16-prfsha256-x25519",)
    esp_proposals: Sequence[str] = ("aes128gcm16",)
    local_ts: Sequence[TrafficSelector] = ()
    remote_ts: Sequence[TrafficSelector] = ()
    mode: str = "tunnel"  # or "transport" (USE_TRANSPORT_MODE, RFC 7296 §1.3.1)
    # Child SA policies. Empty: one implicit policy from mode/esp_proposals/local_ts/remote_ts (and a
    # responder answers a transport request with a tunnel-mode SA, as before).  Given: the initiator
    # proposes the first one in IKE_AUTH, and the responder matches every request against all of them.
    children: Sequence[ChildPolicy] = ()
    ike_lifetime: float = 4 * 3600.0
    child_lifetime: float = 3600.0
    # The IKE SA (and a child whose policy has no rekey_time) rekeys at 90 % of its lifetime minus up
    # to 5 % at random, so both peers rarely rekey together.  Children with a rekey_time use their own.
    rekey_fraction: float = 0.9
    rekey_jitter: float = 0.05
    dpd_interval: float | None = 30.0  # idle seconds before an empty INFORMATIONAL probes the peer
    retransmit_timeout: float = 2.0
    retransmit_base: float = 1.8
    retransmit_tries: int = 5
    half_open_timeout: float = 30.0
    seed: int | None = None  # for the jitter RNG; tests pass one for determinism
    # Tell the peer to drop SAs it still holds with us (RFC 7296 §2.4). Off by default: it is only
    # right when we hold no other SA with the peer, which the owner knows (the runtime sets it).
    initial_contact: bool = False
    # Certificate authentication (RFC 7427): sign with private_key and send cert_chain (leaf first);
    # verify peers against trust (certs.TrustStore) and revoked (certs.RevocationSet).
    private_key: Any = field(default=None, repr=False)
    cert_chain: Sequence[Any] = ()
    trust: Any = None
    revoked: Any = None
    # Maps the engine's monotonic `now` to POSIX time, needed only for certificate validity.
    wall_clock: Callable[[float], float] = field(default=lambda now: time.time(), repr=False)
    # Responder only: the peer is not known at IKE_SA_INIT (several peers may come from anywhere, e.g.
    # behind NATs).  Then this config serves IKE_SA_INIT alone (addresses, ike_proposals, trust for
    # CERTREQ, timers) and resolve(IDi, IDr or None) returns the peer's own config at IKE_AUTH, or None
    # to refuse with AUTHENTICATION_FAILED (RFC 7296 §2.15; strongSwan's ike_cfg vs peer_cfg).  The
    # chosen IKE proposal must be one the resolved config allows.  No credentials are needed here.
    resolve: Callable[[Identity, Identity | None], IkeConfig | None] | None = field(
        default=None, repr=False, compare=False
    )
    # IKE fragmentation (RFC 7383), announced in IKE_SA_INIT: encrypted messages larger than one
    # fragment go as SKF fragments when the peer announced it too (strongSwan: fragmentation = yes).
    fragmentation: bool = True
    # largest IP datagram of one IKE message or fragment, IP and UDP headers included (strongSwan's
    # charon.fragment_size, default 1280 for IPv4 and IPv6; RFC 7383 §2.5.1 suggests 576 for IPv4
    # paths of unknown MTU, 1280 for IPv6)
    fragment_size: int = 1280
    max_fragments: int = 64  # reassembly: Total Fragments above this is dropped
    max_reassembly: int = 64 * 1024  # reassembly: content octets held per message
    fragment_timeout: float = 30.0  # reassembly: seconds without a new fragment before it is dropped

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r}: must be 'tunnel' or 'transport'")
        if self.psk is None and self.private_key is None and self.resolve is None:
            raise ValueError("configure a psk or a private_key (with cert_chain) to authenticate ourselves")
        if self.private_key is not None and not self.cert_chain:
            raise ValueError("private_key needs cert_chain (our certificate first)")
        if self.psk is not None and len(self.psk) < 16:
            raise ValueError("psk: use at least 16 octets of shared secret")
        if not self.ike_proposals or not self.esp_proposals:
            raise ValueError("ike_proposals/esp_proposals: at least one proposal each")
        if not 256 <= self.fragment_size <= 65535:
            raise ValueError(f"fragment_size {self.fragment_size}: must be 256..65535 octets")
        if self.max_fragments < 1 or self.max_reassembly < 1 or self.fragment_timeout <= 0:
            raise ValueError("max_fragments, max_reassembly and fragment_timeout must be positive")
        names = [c.name for c in self.children]
        if len(set(names)) != len(names):
            raise ValueError(f"children: names must be unique, got {names}")
        for c in self.children:
            if c.rekey_time is not None and c.lifetime is None and c.rekey_time >= self.child_lifetime:
                raise ValueError(
                    f"child {c.name!r}: rekey_time {c.rekey_time:g} s must be shorter than"
                    f" child_lifetime {self.child_lifetime:g} s"
                )

    def policies(self) -> tuple[ChildPolicy, ...]:
        """The Child SA policies: the configured ones, or the one implied by the flat fields."""
        if self.children:
            return tuple(self.children)
        esp, lts, rts = tuple(self.esp_proposals), tuple(self.local_ts), tuple(self.remote_ts)
        return (ChildPolicy("", self.mode, esp, lts, rts),)


def fqdn(name: str) -> tuple[int, bytes]:
    """Convenience ID value for ID_FQDN."""
    return (IdType.FQDN, name.encode())
