"""IKE_SA_INIT and IKE_AUTH, as initiator and responder (RFC 7296 §1.2, §2.6, §2.10, §2.15, §2.23).

A mixin of IkeSession: owns DH + nonces + SKEYSEED for a new SA, COOKIE and INVALID_KE_PAYLOAD
retries, NAT detection and the float to 4500, the RFC 7383 fragmentation announcement, and
authentication through peerauth.py (after adopting the peer's own config by IDi/IDr when the
responder's peer was undecided at IKE_SA_INIT). Must not touch sockets or the clock; it only calls the
session's plumbing (_request/_respond/_emit/_fail).
"""

from __future__ import annotations

import logging
import os
from math import inf
from typing import Any

from . import auth, dh, peerauth
from . import payloads as P
from .constants import NATT_PORT, Exchange, Flag, Notify, Proto
from .crypto import derive_ike_keys, skeyseed
from .events import IkeSaEstablished
from .identity import Identity, IdentityError
from .message import Message, encode_plain
from .proposals import ProposalError, Suite, check_answer, offer, select, suite
from .sastate import GROUP, NONCE_LEN, Request, nat_hash, notify_name, suite_name

log = logging.getLogger(__name__)


class EstablishMixin:
    """IKE_SA_INIT/IKE_AUTH handlers of IkeSession."""

    def _send_init(self, now: float, group: int) -> None:
        assert self.remote is not None
        sa = self.sa
        sa.next_mid = 0
        sa.pending = None
        self.state = "init"
        if self._dh is None or self._dh.group != group:
            self._dh = dh.new(group)
        self._ni = self._ni or os.urandom(NONCE_LEN)  # a COOKIE retry must repeat Ni (§2.6)
        local = (self.config.local_addr[0], self.local_port)
        props = offer(self._ike_specs, b"")
        pl: list[Any] = [P.Notify(Notify.COOKIE, data=self._cookie)] if self._cookie else []
        pl += [
            P.SA(props),
            P.KE(group, self._dh.public_bytes()),
            P.Nonce(self._ni),
            P.Notify(Notify.NAT_DETECTION_SOURCE_IP, data=nat_hash(sa.spi_i, bytes(8), local)),
            P.Notify(Notify.NAT_DETECTION_DESTINATION_IP, data=nat_hash(sa.spi_i, bytes(8), self.remote)),
            *peerauth.init_notifies(self.config),
        ]
        if self.config.fragmentation:  # RFC 7383 §2.3
            pl.append(P.Notify(Notify.IKEV2_FRAGMENTATION_SUPPORTED))
        self._request(
            sa,
            Request(Exchange.IKE_SA_INIT, pl, self._on_init_response, "init", {"offer": props}),
            now,
        )

    def _on_init_response(self, req: Request, msg: Message, pl: list[Any], now: float) -> None:
        n = P.notifies(pl)
        sa = self.sa
        if Notify.COOKIE in n and self._init_tries < 3:
            self._init_tries += 1
            self._cookie = n[Notify.COOKIE].data
            log.info("IKE %s: responder demands a COOKIE; retrying IKE_SA_INIT", sa.name)
            assert self._dh is not None
            self._send_init(now, self._dh.group)
            return
        if Notify.INVALID_KE_PAYLOAD in n:
            data = n[Notify.INVALID_KE_PAYLOAD].data
            group = GROUP.unpack(data[:2])[0] if len(data) >= 2 else 0
            allowed = {g for s in self._ike_specs for g in s.dh_groups}
            if group in allowed and self._init_tries < 3 and self._dh is not None and group != self._dh.group:
                self._init_tries += 1
                log.info("IKE %s: responder wants DH group %d (INVALID_KE_PAYLOAD); retrying", sa.name, group)
                self._send_init(now, group)
                return
            self._fail(f"INVALID_KE_PAYLOAD: responder wants DH group {group}, which we cannot use", now)
            return
        errs = [t for t in n if Notify.is_error(t)]
        if errs:
            self._fail(f"{notify_name(errs[0])} from responder in IKE_SA_INIT", now)
            return
        sas, kes, nonces = P.find(pl, P.SA), P.find(pl, P.KE), P.find(pl, P.Nonce)
        if not (sas and kes and nonces) or not any(msg.spi_r):
            self._fail("INVALID_SYNTAX: IKE_SA_INIT response lacks SA, KE, Nonce or SPIr", now)
            return
        try:
            chosen = check_answer(sas[0].proposals, req.ctx["offer"])
        except ProposalError as exc:
            self._fail(f"IKE_SA_INIT response: {exc}", now)
            return
        st = suite(chosen)
        assert self._dh is not None
        if kes[0].group != st.dh_group or st.dh_group != self._dh.group:
            self._fail(f"IKE_SA_INIT response: KE group {kes[0].group} does not match chosen/sent group", now)
            return
        try:
            self._gir = self._dh.shared_secret(kes[0].data)
        except dh.DhError as exc:
            self._fail(f"IKE_SA_INIT response: invalid responder public value: {exc}", now)
            return
        sa.spi_r = msg.spi_r
        self._nr = nonces[0].data
        self._init_req, self._init_resp = req.raw, msg.raw
        self._derive_ike(st)
        self._detect_nat(n, msg, responder=False)
        self._peer_hashes = peerauth.peer_hashes(n)
        self.fragmentation = self.config.fragmentation and Notify.IKEV2_FRAGMENTATION_SUPPORTED in n
        if self.encap:
            assert self.remote is not None
            self.remote = (self.remote[0], NATT_PORT)
            self.local_port = NATT_PORT
        self.state = "auth"
        self._send_auth(now)

    def _derive_ike(self, st: Suite) -> None:
        assert st.prf_id is not None
        seed = skeyseed(st.prf_id, self._ni, self._nr, self._gir)
        sa = self.sa
        keys = derive_ike_keys(
            st.prf_id, seed, self._ni, self._nr, sa.spi_i, sa.spi_r, st.encr_id, st.key_bits, st.integ_id
        )
        sa.install(st, keys)

    def _detect_nat(self, n: dict[int, P.Notify], msg: Message, responder: bool) -> None:
        src, dst = n.get(Notify.NAT_DETECTION_SOURCE_IP), n.get(Notify.NAT_DETECTION_DESTINATION_IP)
        if src is None or dst is None:
            return
        assert self.remote is not None
        local = (self.config.local_addr[0], self.local_port)
        self.nat_remote = src.data != nat_hash(msg.spi_i, msg.spi_r, self.remote)
        self.nat_local = dst.data != nat_hash(msg.spi_i, msg.spi_r, local)
        if self.encap:
            log.info(
                "IKE %s: NAT detected (local=%s remote=%s)", self.sa.name, self.nat_local, self.nat_remote
            )

    def _on_init_request(self, msg: Message, now: float) -> None:
        sa = self.sa
        sa.spi_i = msg.spi_i
        pl = msg.payloads
        n = P.notifies(pl)
        sas, kes, nonces = P.find(pl, P.SA), P.find(pl, P.KE), P.find(pl, P.Nonce)
        if not (sas and kes and nonces):
            self._init_refuse(msg, P.Notify(Notify.INVALID_SYNTAX), "request lacks SA, KE or Nonce", now)
            return
        chosen = select(sas[0].proposals, self._ike_specs, Proto.IKE, b"")
        if chosen is None:
            self._init_refuse(
                msg,
                P.Notify(Notify.NO_PROPOSAL_CHOSEN),
                "NO_PROPOSAL_CHOSEN: no offered IKE proposal matches "
                + ", ".join(s.text for s in self._ike_specs),
                now,
            )
            return
        st = suite(chosen)
        if kes[0].group != st.dh_group:
            self._init_refuse(
                msg,
                P.Notify(Notify.INVALID_KE_PAYLOAD, data=GROUP.pack(st.dh_group)),
                f"INVALID_KE_PAYLOAD: KE is group {kes[0].group}, we chose {st.dh_group}",
                now,
                quiet=True,
            )
            return
        self._dh = dh.new(st.dh_group)
        try:
            self._gir = self._dh.shared_secret(kes[0].data)
        except dh.DhError as exc:
            self._init_refuse(
                msg, P.Notify(Notify.INVALID_SYNTAX), f"invalid initiator public value: {exc}", now
            )
            return
        self._ni = nonces[0].data
        self._nr = os.urandom(NONCE_LEN)
        self._detect_nat(n, msg, responder=True)
        local = (self.config.local_addr[0], self.local_port)
        assert self.remote is not None
        out = [
            P.SA((chosen,)),
            P.KE(st.dh_group, self._dh.public_bytes()),
            P.Nonce(self._nr),
            P.Notify(Notify.NAT_DETECTION_SOURCE_IP, data=nat_hash(sa.spi_i, sa.spi_r, local)),
            P.Notify(Notify.NAT_DETECTION_DESTINATION_IP, data=nat_hash(sa.spi_i, sa.spi_r, self.remote)),
            *peerauth.certreqs(self.config),
            *peerauth.init_notifies(self.config),
        ]
        # RFC 7383 §2.3: announce it back only to an initiator that announced it
        self.fragmentation = self.config.fragmentation and Notify.IKEV2_FRAGMENTATION_SUPPORTED in n
        if self.fragmentation:
            out.append(P.Notify(Notify.IKEV2_FRAGMENTATION_SUPPORTED))
        self._peer_hashes = peerauth.peer_hashes(n)
        self._init_chosen = chosen
        self._derive_ike(st)
        self._respond(sa, msg, out)
        self._init_req, self._init_resp = msg.raw, sa.cache[2][0] if sa.cache else b""
        self.state = "half_open"
        self._half_open_deadline = now + self.config.half_open_timeout

    def _init_refuse(
        self, msg: Message, notify: P.Notify, reason: str, now: float, quiet: bool = False
    ) -> None:
        """Answer an IKE_SA_INIT with one error notify and keep no state (RFC 7296 §2.21.1): SPIr
        stays zero, as no SA exists on our side."""
        reply = Message(msg.spi_i, bytes(8), msg.exchange, Flag.RESPONSE, msg.message_id, [notify])
        self._send(encode_plain(reply))
        self._fail(f"IKE_SA_INIT from {self.remote}: {reason}", now, quiet=quiet)

    # ------------------------------------------------------------------ IKE_AUTH
    def _send_auth(self, now: float) -> None:
        cfg = self.config
        assert self.sa.keys is not None
        spi_in = self._alloc_spi()
        pol = self._policies[0]  # the first child policy rides in IKE_AUTH; the rest follow later
        specs = self._policy_specs[pol.name]
        props = offer(specs, spi_in, include_dh=False)
        idi = P.IDi(*cfg.local_id)
        pl: list[Any] = [idi]
        if isinstance(cfg.remote_id, tuple):
            pl.append(P.IDr(*cfg.remote_id))
        try:
            creds = peerauth.local_auth(
                cfg,
                self._prf_id(),
                self._init_req,
                self._nr,
                self.sa.keys.sk_pi,
                idi.body(),
                self._peer_hashes,
            )
        except auth.AuthError as exc:
            self._fail(f"cannot compute our AUTH: {exc}", now)
            return
        pl += [*creds[:-1], *peerauth.certreqs(cfg), creds[-1]]
        if cfg.initial_contact:
            pl.append(P.Notify(Notify.INITIAL_CONTACT))
        if pol.mode == "transport":
            pl.append(P.Notify(Notify.USE_TRANSPORT_MODE))
        tsi, tsr = tuple(pol.local_ts), tuple(pol.remote_ts)
        pl += [P.SA(props), P.TSi(tsi), P.TSr(tsr)]
        ctx = {
            "spi_in": spi_in,
            "offer": props,
            "tsi": tsi,
            "tsr": tsr,
            "dh": None,
            "ni": self._ni,
            "rekey": None,
            "mode": pol.mode,
            "specs": specs,
            "policy": pol.name,
        }
        self._request(self.sa, Request(Exchange.IKE_AUTH, pl, self._on_auth_response, "auth", ctx), now)

    def _check_peer(
        self, inner: list[Any], id_cls: type, message: bytes, nonce: bytes, sk_p: bytes, now: float
    ) -> str | None:
        """None when the peer's ID, certificates and AUTH check out, else which check failed."""
        ids, auths = P.find(inner, id_cls), P.find(inner, P.Auth)
        got, why = peerauth.check_peer(
            self.config,
            self._prf_id(),
            ids[0] if ids else None,
            auths[0] if auths else None,
            P.find(inner, P.Cert),
            message,
            nonce,
            sk_p,
            self.config.wall_clock(now),
        )
        if got is not None:
            self.peer_id = (int(got.id_type), got.data)
            self.peer_cert = peerauth.authenticated_leaf(auths[0] if auths else None, P.find(inner, P.Cert))
        return why

    def _on_auth_request(self, msg: Message, inner: list[Any], now: float) -> None:
        sa = self.sa
        assert sa.keys is not None
        why = self._resolve_peer(inner) if self.config.resolve is not None else None
        if why is None:
            why = self._check_peer(inner, P.IDi, self._init_req, self._nr, sa.keys.sk_pi, now)
        if why is not None:
            self._respond(sa, msg, [P.Notify(Notify.AUTHENTICATION_FAILED)])
            self._fail(f"AUTHENTICATION_FAILED: {why}", now)
            return
        idr = P.IDr(*self.config.local_id)
        try:
            creds = peerauth.local_auth(
                self.config,
                self._prf_id(),
                self._init_resp,
                self._ni,
                sa.keys.sk_pr,
                idr.body(),
                self._peer_hashes,
            )
        except auth.AuthError as exc:
            self._respond(sa, msg, [P.Notify(Notify.AUTHENTICATION_FAILED)])
            self._fail(f"AUTHENTICATION_FAILED: cannot compute our AUTH: {exc}", now)
            return
        child_pl, child, reason = self._accept_child(
            inner, self._ni, self._nr, now, ignore_dh=True, nonce=None
        )
        self._respond(sa, msg, [idr, *creds, *child_pl])
        # RFC 7296 §2.4: the peer restarted; its older IKE SAs with us are stale (the dispatcher acts)
        self.initial_contact = Notify.INITIAL_CONTACT in P.notifies(inner)
        self._established(now)
        self._child_result(child, reason, None)

    def _resolve_peer(self, inner: list[Any]) -> str | None:
        """A responder whose peer was undecided at IKE_SA_INIT: adopt the config that the owner's
        `resolve` hook picks by IDi (and IDr, if sent), or say why there is none.  The IKE proposal
        chosen at IKE_SA_INIT (from the union of the candidates') must be one that peer allows."""
        resolve = self.config.resolve
        assert resolve is not None
        ids, idrs = P.find(inner, P.IDi), P.find(inner, P.IDr)
        if not ids:
            return "peer sent no ID payload"
        try:
            idi = Identity(ids[0].id_type, ids[0].data)
            idr = Identity(idrs[0].id_type, idrs[0].data) if idrs else None
        except IdentityError as exc:
            return f"unusable peer ID: {exc}"
        try:
            cfg = resolve(idi, idr)
        except Exception as exc:  # the owner's lookup failing must refuse this SA, not break the engine
            return f"looking up the peer with identity {idi} failed: {type(exc).__name__}: {exc}"
        if cfg is None:
            self.stats["refused_unknown_identity"] += 1
            asked = f" (asking for us as {idr})" if idr is not None else ""
            return f"no configured peer has identity {idi}{asked}"
        try:
            self._load(cfg)
        except ValueError as exc:
            return f"configuration of the peer with identity {idi}: {exc}"
        chosen = self._init_chosen
        assert chosen is not None and self.sa.suite is not None
        if select((chosen,), self._ike_specs, Proto.IKE, b"") is None:
            return (
                f"NO_PROPOSAL_CHOSEN: IKE_SA_INIT chose {suite_name(self.sa.suite)}, which the profile of "
                f"{idi} does not allow ({', '.join(s.text for s in self._ike_specs)})"
            )
        log.debug("IKE %s: peer with identity %s resolved at IKE_AUTH", self.sa.name, idi)
        return None

    def _on_auth_response(self, req: Request, msg: Message, inner: list[Any], now: float) -> None:
        sa = self.sa
        assert sa.keys is not None
        n = P.notifies(inner)
        if Notify.AUTHENTICATION_FAILED in n:
            self._fail(
                "AUTHENTICATION_FAILED: the responder rejected our AUTH (wrong PSK, certificate or ID?)", now
            )
            return
        if not P.find(inner, P.Auth):
            errs = [t for t in n if Notify.is_error(t)]
            self._fail(f"{notify_name(errs[0]) if errs else 'INVALID_SYNTAX'} in IKE_AUTH response", now)
            return
        why = self._check_peer(inner, P.IDr, self._init_resp, self._ni, sa.keys.sk_pr, now)
        if why is not None:
            # Tell the responder, which already considers the SA up (RFC 7296 §2.21.2), then give up.
            note = [P.Notify(Notify.AUTHENTICATION_FAILED)]
            self._request(sa, Request(Exchange.INFORMATIONAL, note, lambda *a: None, "auth-failed"), now)
            self._fail(f"AUTHENTICATION_FAILED: {why}", now)
            return
        self._established(now)
        res = self._complete_child(req.ctx, inner, self._ni, self._nr, now, ignore_dh=True)
        if isinstance(res, str):
            self._release_spi(req.ctx["spi_in"])
            self._child_result(None, res, None)
        else:
            self._child_result(res, "", None)

    def _established(self, now: float) -> None:
        sa = self.sa
        self.state = "established"
        self._half_open_deadline = inf
        self._last_seen = now
        sa.rekey_at, sa.expire_at = self._ike_times(now)
        assert sa.suite is not None and self.remote is not None
        log.info(
            "IKE %s: established with %s:%d (%s)",
            sa.name,
            self.remote[0],
            self.remote[1],
            suite_name(sa.suite),
        )
        self._emit(
            IkeSaEstablished(
                sa.spi_i,
                sa.spi_r,
                self.remote,
                tuple(self.config.local_id),
                self.peer_id or (0, b""),
                suite_name(sa.suite),
            )
        )
