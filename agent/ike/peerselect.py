"""Which peer a responder talks to, decided at IKE_AUTH by identity when IKE_SA_INIT's source address
cannot tell (several peers behind NATs, or roaming without fixed endpoints).

RFC 7296 §2.15: the responder learns who the initiator claims to be (IDi, and optionally which of our
identities it wants, IDr) only in IKE_AUTH.  strongSwan therefore splits its configuration in two: the
ike_cfg (proposals) chosen by address at IKE_SA_INIT, the peer_cfg (authentication, identities,
children) chosen by IDi/IDr at IKE_AUTH.  This module does the same for IkeConfig: `deferred_config`
builds the IKE_SA_INIT config that stands for several candidate peers (the union of their IKE
proposals, all of their trusted CAs for CERTREQ) whose `resolve` hook picks the candidate by identity
(`pick`).  The session (establish.py) then checks that the resolved peer allows the IKE proposal
already chosen and authenticates the peer against the resolved config alone (peerauth.py).

Pure functions; no I/O, no clock.  It compares identities only: no secret is looked at here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from . import certs
from .config import IkeConfig
from .events import Addr
from .identity import Identity, IdentityError, IdentityPattern, identities_equal

K = TypeVar("K")

# How well an IDi satisfies a configured remote ID, worst first (strongSwan's ID_MATCH_ANY <
# ID_MATCH_ONE_WILDCARD < ID_MATCH_PERFECT): a peer configured with exactly this ID wins over one
# configured with a wildcard, which wins over one that takes any authenticated ID.
NO_MATCH, ANY, WILDCARD, EXACT = 0, 1, 2, 3


def id_rank(want: Any, got: Identity) -> int:
    """The match quality of the peer's ID `got` against a configured remote ID (any form that
    IkeConfig.remote_id takes: None, an (id type, data) tuple, or an IdentityPattern)."""
    if want is None:
        return ANY
    if isinstance(want, IdentityPattern):
        if not want.matches(got):
            return NO_MATCH
        if want.kind == "any":
            return ANY
        return EXACT if want.identity is not None else WILDCARD
    # a tuple is compared as peerauth compares it later (type and octets), so that the peer picked
    # here is never one whose own identity check would then refuse the same ID
    return EXACT if (got.id_type, got.data) == (want[0], want[1]) else NO_MATCH


def _is_local(local_id: tuple[int, bytes], idr: Identity | None) -> bool:
    """Is `idr` (the identity the initiator wants us to be) our `local_id`?  True when it sent none."""
    if idr is None:
        return True
    try:
        return identities_equal(Identity(local_id[0], local_id[1]), idr)
    except IdentityError:
        return False


def pick(
    candidates: Sequence[tuple[K, IkeConfig]], idi: Identity, idr: Identity | None
) -> tuple[K, IkeConfig] | None:
    """The candidate whose remote ID best matches IDi, among those whose local ID is the IDr the peer
    asked for (when it sent one); on a tie the first (configured order).  None: nobody has that ID."""
    best: tuple[K, IkeConfig] | None = None
    best_rank = NO_MATCH
    for item in candidates:
        cfg = item[1]
        if not _is_local(cfg.local_id, idr):
            continue
        rank = id_rank(cfg.remote_id, idi)
        if rank > best_rank:
            best, best_rank = item, rank
    return best


def deferred_config(
    candidates: Sequence[tuple[K, IkeConfig]],
    *,
    local_addr: Addr | None = None,
    on_resolved: Callable[[K, IkeConfig], None] | None = None,
) -> IkeConfig:
    """A responder config for IKE_SA_INIT from one of several possible peers, to be resolved at IKE_AUTH.

    It offers the union of the candidates' IKE proposals (those all of them allow first, otherwise in
    the candidates' order) and asks for certificates from all of their CAs.  At IKE_AUTH its `resolve`
    picks the candidate by IDi/IDr and returns a fresh copy of its config (with this local address), so
    that an owner which maps configs to peers by object identity sees one config per IKE SA;
    `on_resolved(key, copy)` is called first.  Timers come from the candidates (the longest half-open
    timeout).
    """
    if not candidates:
        raise ValueError("deferred_config: at least one candidate peer")
    cfgs = [c for _, c in candidates]
    first = cfgs[0]
    addr = local_addr or first.local_addr
    union = list(dict.fromkeys(p for c in cfgs for p in c.ike_proposals))
    # proposals every candidate allows first: when an initiator's offer fits several of ours, the
    # choice should not be one its own profile then refuses at IKE_AUTH
    proposals = tuple(sorted(union, key=lambda p: not all(p in c.ike_proposals for c in cfgs)))
    cas = tuple(dict.fromkeys(ca for c in cfgs if c.trust is not None for ca in c.trust.cas))
    items = tuple(candidates)

    def resolve(idi: Identity, idr: Identity | None) -> IkeConfig | None:
        hit = pick(items, idi, idr)
        if hit is None:
            return None
        key, cfg = hit
        fresh = dataclasses.replace(cfg, local_addr=addr, remote_addr=None, resolve=None)
        if on_resolved is not None:
            on_resolved(key, fresh)
        return fresh

    return IkeConfig(
        local_addr=addr,
        remote_addr=None,
        local_id=first.local_id,
        ike_proposals=proposals,
        esp_proposals=tuple(first.esp_proposals),
        trust=certs.TrustStore(cas) if cas else None,
        half_open_timeout=max(c.half_open_timeout for c in cfgs),
        retransmit_timeout=first.retransmit_timeout,
        retransmit_base=first.retransmit_base,
        retransmit_tries=first.retransmit_tries,
        seed=first.seed,
        wall_clock=first.wall_clock,
        resolve=resolve,
        # RFC 7383: announced if any candidate wants it; the IKE_AUTH request is reassembled before
        # the peer is known, so within the most generous candidate's limits
        fragmentation=any(c.fragmentation for c in cfgs),
        fragment_size=min(c.fragment_size for c in cfgs),
        max_fragments=max(c.max_fragments for c in cfgs),
        max_reassembly=max(c.max_reassembly for c in cfgs),
        fragment_timeout=max(c.fragment_timeout for c in cfgs),
    )
