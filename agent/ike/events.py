"""Events the IKE engine hands to its owner (the agent's reconcile loop and the ESP data plane).

Owns only these small records. Key material is excluded from repr so an event can be logged safely.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .payloads import TrafficSelector

Addr = tuple[str, int]


@dataclass(frozen=True)
class IkeSaEstablished:
    """IKE_AUTH completed: the peer is authenticated; the SA now carries CREATE_CHILD_SA/INFORMATIONAL."""

    spi_i: bytes
    spi_r: bytes
    peer: Addr
    local_id: tuple[int, bytes]
    remote_id: tuple[int, bytes]
    proposal: str  # negotiated IKE algorithms, e.g. "AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE25519"


@dataclass(frozen=True)
class ChildSaEstablished:
    """A Child SA pair is ready: everything the ESP data plane needs to install it.

    keymat_in/keymat_out are one direction each: encryption key (AEAD: key || 4-octet salt) followed
    by the integrity key, exactly the split of agent/esp transforms.keymat_length(encr_id, key_bits,
    integ_id). ESP to `peer` is UDP-encapsulated (RFC 3948) when `encap` is set.
    """

    spi_in: int
    spi_out: int
    encr_id: int
    key_bits: int | None
    integ_id: int
    esn: bool
    mode: str  # "tunnel" | "transport"
    ts_local: tuple[TrafficSelector, ...]
    ts_remote: tuple[TrafficSelector, ...]
    peer: Addr
    local_port: int
    encap: bool
    nat_local: bool  # we are behind a NAT: send NAT-T keepalives
    nat_remote: bool
    lifetime: float
    keymat_in: bytes = field(repr=False)
    keymat_out: bytes = field(repr=False)
    encr_key_len: int = 0

    @property
    def encr_key_in(self) -> bytes:
        return self.keymat_in[: self.encr_key_len]

    @property
    def integ_key_in(self) -> bytes:
        return self.keymat_in[self.encr_key_len :]

    @property
    def encr_key_out(self) -> bytes:
        return self.keymat_out[: self.encr_key_len]

    @property
    def integ_key_out(self) -> bytes:
        return self.keymat_out[self.encr_key_len :]


@dataclass(frozen=True)
class ChildSaRekeyed:
    """`new` replaces the SA with old_spi_in/old_spi_out; keep the old one until its ChildSaDeleted."""

    old_spi_in: int
    old_spi_out: int
    new: ChildSaEstablished


@dataclass(frozen=True)
class ChildSaDeleted:
    """Remove this SA pair from the SAD."""

    spi_in: int
    spi_out: int
    reason: str


@dataclass(frozen=True)
class ChildSaFailed:
    """A Child SA could not be created (the IKE SA itself may be fine)."""

    reason: str


@dataclass(frozen=True)
class IkeSaRekeyed:
    """The IKE SA continues under new SPIs and keys (RFC 7296 §2.18); Child SAs are unaffected."""

    old_spi_i: bytes
    old_spi_r: bytes
    spi_i: bytes
    spi_r: bytes


@dataclass(frozen=True)
class IkeSaDeleted:
    """The IKE SA is gone (deleted by either side, expired, or the peer died)."""

    reason: str


@dataclass(frozen=True)
class IkeSaFailed:
    """Setup failed before the IKE SA was established; `reason` names the check that failed."""

    reason: str


@dataclass(frozen=True)
class DpdRtt:
    """A liveness check (empty INFORMATIONAL) was answered after `rtt` seconds."""

    rtt: float


@dataclass(frozen=True)
class PeerDead:
    """Retransmissions were exhausted; `rtt_history` holds the last measured round trips, oldest first."""

    rtt_history: tuple[float, ...]


Event = (
    IkeSaEstablished
    | ChildSaEstablished
    | ChildSaRekeyed
    | ChildSaDeleted
    | ChildSaFailed
    | IkeSaRekeyed
    | IkeSaDeleted
    | IkeSaFailed
    | DpdRtt
    | PeerDead
)
