"""Child SA records and the pure decisions around them: traffic selector narrowing (RFC 7296 §2.9),
which Child SA policy a request falls under, keying material split (§2.17) and the simultaneous-rekey
tie-break (§2.8.1).

Owns no I/O and sends nothing; session.py drives the exchanges. Sizes come from agent/esp transforms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from meshsec.agent.esp import transforms as esp_transforms

from .config import ChildPolicy
from .events import Addr, ChildSaEstablished
from .payloads import TrafficSelector
from .proposals import ProposalSpec, Suite


def keymat_sizes(s: Suite) -> tuple[int, int]:
    """(encryption key incl. salt, per-direction total) as the ESP core defines them."""
    spec = esp_transforms.transform_spec(s.encr_id, s.key_bits or 0, s.integ_id)
    return spec.enc_key_len, spec.keymat_len


def split_keymat(keymat: bytes, per_dir: int, we_initiated: bool) -> tuple[bytes, bytes]:
    """(inbound, outbound): the initiator→responder direction is taken first (§2.17)."""
    i2r, r2i = keymat[:per_dir], keymat[per_dir : 2 * per_dir]
    return (r2i, i2r) if we_initiated else (i2r, r2i)


def narrow(
    proposed: Sequence[TrafficSelector], allowed: Sequence[TrafficSelector]
) -> tuple[TrafficSelector, ...]:
    """Every non-empty intersection of what the initiator proposed with what our policy allows."""
    out: list[TrafficSelector] = []
    for p in proposed:
        for a in allowed:
            x = p.intersect(a)
            if x is not None and x not in out:
                out.append(x)
    return tuple(out)


def rank_policies(
    policies: Sequence[ChildPolicy], tsi: Sequence[TrafficSelector], tsr: Sequence[TrafficSelector]
) -> list[tuple[ChildPolicy, tuple[TrafficSelector, ...], tuple[TrafficSelector, ...]]]:
    """Responder side: (policy, narrowed TSi, narrowed TSr) for every policy the proposed selectors
    overlap; those that contain the proposal unchanged first, then those that narrow it, each group
    in configured order (a specific policy must not lose to a wider one listed earlier that narrows)."""
    exact, narrowed = [], []
    for p in policies:
        ts_i, ts_r = narrow(tsi, p.remote_ts), narrow(tsr, p.local_ts)
        if not ts_i or not ts_r:
            continue
        whole = set(ts_i) == set(tsi) and set(ts_r) == set(tsr)
        (exact if whole else narrowed).append((p, ts_i, ts_r))
    return exact + narrowed


def policy_for(
    policies: Sequence[ChildPolicy], tsl: Sequence[TrafficSelector], tsr: Sequence[TrafficSelector]
) -> ChildPolicy | None:
    """Initiator side: the first policy whose selectors contain the ones we are about to propose."""
    for p in policies:
        if all_within(tsl, p.local_ts) and all_within(tsr, p.remote_ts):
            return p
    return None


def all_within(got: Sequence[TrafficSelector], offered: Sequence[TrafficSelector]) -> bool:
    return bool(got) and all(any(g.is_subset_of(o) for o in offered) for g in got)


def lowest_nonce_is_ours(mine: tuple[bytes, bytes], theirs: tuple[bytes, bytes]) -> bool:
    """§2.8.1: the SA created with the lowest of the four nonces is the redundant one."""
    return min(mine) < min(theirs)


@dataclass
class ChildSa:
    spi_in: bytes
    spi_out: bytes
    suite: Suite
    mode: str
    ts_local: tuple[TrafficSelector, ...]
    ts_remote: tuple[TrafficSelector, ...]
    keymat_in: bytes = field(repr=False)
    keymat_out: bytes = field(repr=False)
    created: float
    rekey_at: float
    expire_at: float
    state: str = "installed"  # installed | rekeying | rekeyed | deleting
    # set when the peer rekeyed this SA while our own rekey of it was in flight (§2.8.1)
    collision: tuple[bytes, bytes] | None = None
    collision_child: ChildSa | None = None
    policy: str = ""  # the ChildPolicy it was negotiated under; its rekeys offer the same
    specs: tuple[ProposalSpec, ...] = field(default=(), repr=False)  # ESP proposals its rekeys offer

    @property
    def spi_in_int(self) -> int:
        return int.from_bytes(self.spi_in, "big")

    @property
    def spi_out_int(self) -> int:
        return int.from_bytes(self.spi_out, "big")

    def event(
        self, peer: Addr, local_port: int, encap: bool, nat_local: bool, nat_remote: bool, lifetime: float
    ) -> ChildSaEstablished:
        enc_len, _ = keymat_sizes(self.suite)
        return ChildSaEstablished(
            spi_in=self.spi_in_int,
            spi_out=self.spi_out_int,
            encr_id=self.suite.encr_id,
            key_bits=self.suite.key_bits,
            integ_id=self.suite.integ_id,
            esn=self.suite.esn,
            mode=self.mode,
            ts_local=self.ts_local,
            ts_remote=self.ts_remote,
            peer=peer,
            local_port=local_port,
            encap=encap,
            nat_local=nat_local,
            nat_remote=nat_remote,
            lifetime=lifetime,
            keymat_in=self.keymat_in,
            keymat_out=self.keymat_out,
            encr_key_len=enc_len,
        )
