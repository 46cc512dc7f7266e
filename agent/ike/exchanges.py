"""CREATE_CHILD_SA (new Child SA, Child SA rekey, IKE SA rekey) and INFORMATIONAL (DELETE, liveness).

A mixin of IkeSession: owns Child SA negotiation (choice of child policy, proposal choice, PFS, §2.9
narrowing, transport or tunnel mode per Child SA), make-before-break rekeying with the §2.8.1
simultaneous-rekey rule, IKE SA rekeying (§2.18) and deletion. Pure decisions live in child.py; no
sockets, no clock.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from . import dh
from . import payloads as P
from .child import ChildSa, all_within, keymat_sizes, lowest_nonce_is_ours, rank_policies, split_keymat
from .config import ChildPolicy
from .constants import Exchange, Notify, Proto
from .crypto import child_keymat, derive_ike_keys, rekey_skeyseed
from .events import ChildSaDeleted, ChildSaFailed, ChildSaRekeyed, DpdRtt, IkeSaRekeyed
from .message import Message
from .proposals import ProposalError, ProposalSpec, Suite, check_answer, offer, select, suite
from .sastate import GROUP, NONCE_LEN, IkeSaState, Request, notify_name

log = logging.getLogger(__name__)


class ExchangesMixin:
    """CREATE_CHILD_SA and INFORMATIONAL handlers of IkeSession."""

    def _accept_child(
        self,
        inner: list[Any],
        ni: bytes,
        nr: bytes,
        now: float,
        ignore_dh: bool,
        nonce: bytes | None,
        old: ChildSa | None = None,
        ike: IkeSaState | None = None,
    ) -> tuple[list[Any], ChildSa | None, str]:
        """Responder side of a Child SA negotiation: (response payloads, new child or None, failure).

        The request is matched against the child policies: selectors first (TS_UNACCEPTABLE when no
        policy overlaps them), then mode (USE_TRANSPORT_MODE or not) and ESP proposals
        (NO_PROPOSAL_CHOSEN).  A rekey of `old` prefers old's policy and must keep its mode.
        """
        cfg = self.config
        sas, tsis, tsrs = P.find(inner, P.SA), P.find(inner, P.TSi), P.find(inner, P.TSr)
        if not (sas and tsis and tsrs):
            return (
                [P.Notify(Notify.INVALID_SYNTAX)],
                None,
                "INVALID_SYNTAX: Child SA request lacks SA/TSi/TSr",
            )
        policies = list(self._policies)
        if old is not None:  # the SA being replaced keeps its policy when it still fits
            policies.sort(key=lambda p: p.name != old.policy)
        ranked = rank_policies(policies, tsis[0].selectors, tsrs[0].selectors)
        if not ranked:
            why = (
                "TS_UNACCEPTABLE: proposed TSi "
                + ", ".join(map(str, tsis[0].selectors))
                + " / TSr "
                + ", ".join(map(str, tsrs[0].selectors))
                + " outside policy"
            )
            log.warning("IKE %s: %s", self.sa.name, why)
            return [P.Notify(Notify.TS_UNACCEPTABLE)], None, why
        wants_transport = Notify.USE_TRANSPORT_MODE in P.notifies(inner)
        asked = "transport" if wants_transport else "tunnel"
        if cfg.children:
            fits = [r for r in ranked if r[0].mode == asked and (old is None or old.mode == asked)]
            if not fits:
                allowed = ", ".join(f"{r[0].name} ({r[0].mode})" for r in ranked)
                why = f"NO_PROPOSAL_CHOSEN: peer asked for {asked} mode; its selectors match {allowed}"
                if old is not None and old.mode != asked:
                    why = f"NO_PROPOSAL_CHOSEN: rekey asks for {asked} mode, the SA it replaces is {old.mode}"
                log.warning("IKE %s: %s", self.sa.name, why)
                return [P.Notify(Notify.NO_PROPOSAL_CHOSEN)], None, why
        else:  # one implicit policy: a transport request to a tunnel policy gets tunnel mode (§1.3.1)
            fits = ranked[:1]
            if fits[0][0].mode == "transport" and not wants_transport:
                why = "NO_PROPOSAL_CHOSEN: peer asked for tunnel mode, policy requires transport mode"
                log.warning("IKE %s: %s", self.sa.name, why)
                return [P.Notify(Notify.NO_PROPOSAL_CHOSEN)], None, why

        def specs_of(pol: ChildPolicy) -> tuple[ProposalSpec, ...]:
            # a rekey also accepts what the SA it replaces was created with (e.g. by an explicit
            # create_child(esp_proposals=...) on our side)
            if old is not None and old.specs and pol.name == old.policy:
                extra = [x for x in self._policy_specs[pol.name] if x.text not in {o.text for o in old.specs}]
                return (*old.specs, *extra)
            return self._policy_specs[pol.name]

        chosen = None
        for fit in fits:
            chosen = select(sas[0].proposals, specs_of(fit[0]), Proto.ESP, b"", ignore_dh)
            if chosen is not None:
                break
        if chosen is None:
            why = "NO_PROPOSAL_CHOSEN: no offered ESP proposal matches " + "; ".join(
                ", ".join(s.text for s in specs_of(f[0])) for f in fits
            )
            log.warning("IKE %s: %s", self.sa.name, why)
            return [P.Notify(Notify.NO_PROPOSAL_CHOSEN)], None, why
        pol, ts_remote, ts_local = fit
        mode = "transport" if wants_transport and pol.mode == "transport" else "tunnel"
        theirs = next(p for p in sas[0].proposals if p.num == chosen.num and p.protocol == Proto.ESP)
        if len(theirs.spi) != 4:
            return [P.Notify(Notify.INVALID_SYNTAX)], None, "INVALID_SYNTAX: ESP proposal SPI is not 4 octets"
        st = suite(chosen)
        gir = None
        ke_out: list[Any] = []
        if not ignore_dh and st.dh_group:
            kes = P.find(inner, P.KE)
            if not kes or kes[0].group != st.dh_group:
                why = f"INVALID_KE_PAYLOAD: PFS needs group {st.dh_group}"
                log.info("IKE %s: %s", self.sa.name, why)
                return [P.Notify(Notify.INVALID_KE_PAYLOAD, data=GROUP.pack(st.dh_group))], None, why
            x = dh.new(st.dh_group)
            try:
                gir = x.shared_secret(kes[0].data)
            except dh.DhError as exc:
                return [P.Notify(Notify.INVALID_SYNTAX)], None, f"INVALID_SYNTAX: {exc}"
            ke_out = [P.KE(x.group, x.public_bytes())]
        spi_in = self._alloc_spi()  # only now: a refused request must not hold an SPI
        chosen = P.Proposal(chosen.num, chosen.protocol, spi_in, chosen.transforms)
        child = self._make_child(
            st,
            ni,
            nr,
            gir,
            spi_in,
            theirs.spi,
            mode,
            ts_local,
            ts_remote,
            now,
            we_initiated=False,
            policy=pol.name,
            ike=ike,
        )
        child.specs = specs_of(pol)
        out: list[Any] = [P.Notify(Notify.USE_TRANSPORT_MODE)] if mode == "transport" else []
        out.append(P.SA((chosen,)))
        if nonce is not None:
            out.append(P.Nonce(nonce))
        out += [*ke_out, P.TSi(ts_remote), P.TSr(ts_local)]
        return out, child, ""

    def _make_child(
        self,
        st: Suite,
        ni: bytes,
        nr: bytes,
        gir: bytes | None,
        spi_in: bytes,
        spi_out: bytes,
        mode: str,
        ts_local: tuple[P.TrafficSelector, ...],
        ts_remote: tuple[P.TrafficSelector, ...],
        now: float,
        we_initiated: bool,
        policy: str = "",
        ike: IkeSaState | None = None,
    ) -> ChildSa:
        # KEYMAT comes from SK_d of the IKE SA this CREATE_CHILD_SA exchange runs on (RFC 7296
        # §2.17), which is not self.sa when an IKE rekey completed while the exchange was in flight
        ike = ike or self.sa
        assert ike.keys is not None and ike.suite is not None and ike.suite.prf_id is not None
        _, per_dir = keymat_sizes(st)
        km = child_keymat(ike.suite.prf_id, ike.keys.sk_d, ni, nr, 2 * per_dir, gir)
        kin, kout = split_keymat(km, per_dir, we_initiated)
        rekey_at, expire_at = self._child_times(now, policy)
        c = ChildSa(spi_in, spi_out, st, mode, ts_local, ts_remote, kin, kout, now, rekey_at, expire_at)
        c.policy = policy
        return c

    def _complete_child(
        self,
        ctx: dict[str, Any],
        inner: list[Any],
        ni: bytes,
        nr: bytes,
        now: float,
        ignore_dh: bool,
        ike: IkeSaState | None = None,
    ) -> ChildSa | str:
        """Initiator side: check the responder's answer and derive the child, or say what is wrong."""
        n = P.notifies(inner)
        errs = [t for t in n if Notify.is_error(t)]
        if errs:
            return f"{notify_name(errs[0])} from peer"
        sas, tsis, tsrs = P.find(inner, P.SA), P.find(inner, P.TSi), P.find(inner, P.TSr)
        if not (sas and tsis and tsrs):
            return "INVALID_SYNTAX: Child SA response lacks SA/TSi/TSr"
        try:
            chosen = check_answer(sas[0].proposals, ctx["offer"], ignore_dh)
        except ProposalError as exc:
            return f"NO_PROPOSAL_CHOSEN: {exc}"
        if chosen.protocol != Proto.ESP or len(chosen.spi) != 4:
            return "INVALID_SYNTAX: answer is not an ESP proposal with a 4-octet SPI"
        st = suite(chosen)
        gir = None
        if not ignore_dh and st.dh_group:
            kes = P.find(inner, P.KE)
            x = ctx["dh"]
            if not kes or x is None or kes[0].group != x.group:
                return "INVALID_KE_PAYLOAD: responder's KE does not match the group we sent"
            try:
                gir = x.shared_secret(kes[0].data)
            except dh.DhError as exc:
                return f"INVALID_SYNTAX: {exc}"
        if not all_within(tsis[0].selectors, ctx["tsi"]) or not all_within(tsrs[0].selectors, ctx["tsr"]):
            return "TS_UNACCEPTABLE: responder returned traffic selectors wider than we proposed"
        mode = "transport" if Notify.USE_TRANSPORT_MODE in n else "tunnel"
        child = self._make_child(
            st,
            ni,
            nr,
            gir,
            ctx["spi_in"],
            chosen.spi,
            mode,
            tsis[0].selectors,
            tsrs[0].selectors,
            now,
            we_initiated=True,
            policy=ctx["policy"],
            ike=ike,
        )
        child.specs = ctx["specs"]
        if mode != ctx["mode"]:
            # §1.3.1: the responder declined transport mode; the SA exists on its side and an
            # initiator that cannot use it MUST delete it.
            self._reserved.discard(child.spi_in)
            self.children[child.spi_in] = child
            self._delete_children([child], now, "mode refused", announce=False)
            return f"responder chose {mode} mode, policy requires {ctx['mode']}"
        return child

    def _child_event(self, c: ChildSa) -> Any:
        assert self.remote is not None
        return c.event(
            self.remote,
            self.local_port,
            self.encap,
            self.nat_local,
            self.nat_remote,
            c.expire_at - c.created,  # its policy's lifetime
        )

    def _child_result(self, child: ChildSa | None, reason: str, old: ChildSa | None) -> None:
        if child is None:
            log.warning("IKE %s: Child SA not created: %s", self.sa.name, reason)
            self._emit(ChildSaFailed(reason))
            return
        self._reserved.discard(child.spi_in)  # now owned by self.children
        self.children[child.spi_in] = child
        ev = self._child_event(child)
        if old is None:
            self._emit(ev)
        else:
            self._emit(ChildSaRekeyed(old.spi_in_int, old.spi_out_int, ev))
        log.info(
            "IKE %s: Child SA %08x/%08x %s %s",
            self.sa.name,
            child.spi_in_int,
            child.spi_out_int,
            child.mode,
            "rekeyed" if old else "established",
        )

    def _send_create_child(
        self,
        now: float,
        tsl: tuple[P.TrafficSelector, ...],
        tsr: tuple[P.TrafficSelector, ...],
        old: ChildSa | None,
        group: int | None,
        retried: bool = False,
        *,
        mode: str,
        specs: tuple[ProposalSpec, ...],
        policy: str,
    ) -> None:
        spi_in = self._alloc_spi()
        props = offer(specs, spi_in, include_dh=True)
        pfs = group or next((g for s in specs for g in s.dh_groups), None)
        x = dh.new(pfs) if pfs else None
        ni = os.urandom(NONCE_LEN)
        pl: list[Any] = []
        if old is not None:
            pl.append(P.Notify(Notify.REKEY_SA, Proto.ESP, old.spi_in))
        if mode == "transport":
            pl.append(P.Notify(Notify.USE_TRANSPORT_MODE))
        pl += [P.SA(props), P.Nonce(ni)]
        if x is not None:
            pl.append(P.KE(x.group, x.public_bytes()))
        pl += [P.TSi(tsl), P.TSr(tsr)]
        ctx = {
            "spi_in": spi_in,
            "offer": props,
            "tsi": tsl,
            "tsr": tsr,
            "dh": x,
            "ni": ni,
            "rekey": old,
            "group": pfs,
            "retried": retried,
            "mode": mode,
            "specs": specs,
            "policy": policy,
        }
        self._request(
            self.sa, Request(Exchange.CREATE_CHILD_SA, pl, self._on_create_child_response, "child", ctx), now
        )

    def _on_create_child_response(self, req: Request, msg: Message, inner: list[Any], now: float) -> None:
        ctx = req.ctx
        old: ChildSa | None = ctx["rekey"]
        n = P.notifies(inner)
        if Notify.INVALID_KE_PAYLOAD in n and not ctx.get("retried"):
            data = n[Notify.INVALID_KE_PAYLOAD].data
            g = GROUP.unpack(data[:2])[0] if len(data) >= 2 else 0
            if g in {x for s in ctx["specs"] for x in s.dh_groups} and g != ctx["group"]:
                log.info("IKE %s: peer wants PFS group %d; retrying CREATE_CHILD_SA", self.sa.name, g)
                self._release_spi(ctx["spi_in"])
                self._send_create_child(
                    now,
                    ctx["tsi"],
                    ctx["tsr"],
                    old,
                    g,
                    retried=True,
                    mode=ctx["mode"],
                    specs=ctx["specs"],
                    policy=ctx["policy"],
                )
                return
        nonces = P.find(inner, P.Nonce)
        res: ChildSa | str
        if not nonces and not any(Notify.is_error(t) for t in n):
            res = "INVALID_SYNTAX: CREATE_CHILD_SA response lacks Nr"
        else:
            ike = next((x for x in self._all_sas() if (x.spi_i, x.spi_r) == (msg.spi_i, msg.spi_r)), None)
            res = self._complete_child(
                ctx, inner, ctx["ni"], nonces[0].data if nonces else b"", now, ignore_dh=False, ike=ike
            )
        if isinstance(res, str):
            self._release_spi(ctx["spi_in"])
            if old is not None and old.spi_in in self.children and old.state == "rekeying":
                if old.collision is not None:  # the peer's rekey of it succeeded: the peer deletes it
                    old.state = "rekeyed"
                else:
                    old.state = "installed"
                    old.rekey_at = now + self._rng.uniform(5.0, 15.0)  # try again a little later
            self._child_result(None, res, None)
            return
        child = res
        if old is None or old.spi_in not in self.children:
            self._child_result(child, "", None)
            return
        if old.collision is not None and lowest_nonce_is_ours((ctx["ni"], nonces[0].data), old.collision):
            # §2.8.1: ours is the redundant SA; the peer's rekey survives and the peer deletes `old`.
            log.info(
                "IKE %s: simultaneous rekey of %08x: our new SA is redundant (lowest nonce), deleting it",
                self.sa.name,
                old.spi_in_int,
            )
            self._child_result(child, "", None)
            old.state = "rekeyed"
            self._delete_children([child], now, "redundant after simultaneous rekey")
            return
        self._child_result(child, "", old)
        old.state = "rekeyed"
        self._delete_children([old], now, "rekeyed")

    def _on_create_child_request(self, sa: IkeSaState, msg: Message, inner: list[Any], now: float) -> None:
        sas, nonces = P.find(inner, P.SA), P.find(inner, P.Nonce)
        if not sas or not nonces:
            log.warning("IKE %s: CREATE_CHILD_SA request lacks SA or Nonce", sa.name)
            self._respond(sa, msg, [P.Notify(Notify.INVALID_SYNTAX)])
            return
        if sas[0].proposals[0].protocol == Proto.IKE:
            self._on_ike_rekey_request(sa, msg, inner, now)
            return
        if self.state != "established":
            self._respond(sa, msg, [P.Notify(Notify.TEMPORARY_FAILURE)])
            return
        n = P.notifies(inner)
        old = None
        if Notify.REKEY_SA in n:
            spi = n[Notify.REKEY_SA].spi
            old = next((c for c in self.children.values() if c.spi_out == spi), None)
            if old is None:  # §2.25.1
                log.info("IKE %s: peer rekeys unknown Child SA %s", sa.name, spi.hex())
                self._respond(sa, msg, [P.Notify(Notify.CHILD_SA_NOT_FOUND, Proto.ESP, spi)])
                return
            if old.state in ("deleting", "rekeyed"):  # §2.25.1: being closed by us
                self._respond(sa, msg, [P.Notify(Notify.TEMPORARY_FAILURE)])
                return
        nr = os.urandom(NONCE_LEN)
        ni = nonces[0].data
        out, child, reason = self._accept_child(
            inner, ni, nr, now, ignore_dh=False, nonce=nr, old=old, ike=sa
        )
        self._respond(sa, msg, out)
        if child is not None and old is not None and old.state == "rekeying":
            old.collision = (ni, nr)  # both of us are rekeying `old`: decide when our exchange completes
        self._child_result(child, reason, old)

    def _delete_children(
        self, children: list[ChildSa], now: float, reason: str, announce: bool = True
    ) -> None:
        """DELETE Child SAs; `announce` False for one our owner never heard of (refused mode)."""
        for c in children:
            c.state = "deleting"

        def done(req: Request, msg: Message, inner: list[Any], now: float) -> None:
            for c in children:
                if self._forget_child(c) and announce:
                    self._emit(ChildSaDeleted(c.spi_in_int, c.spi_out_int, reason))

        pl = [P.Delete(Proto.ESP, tuple(c.spi_in for c in children))]
        self._request(self.sa, Request(Exchange.INFORMATIONAL, pl, done, "delete-child"), now)

    # ------------------------------------------------------------------ IKE rekey
    def _on_ike_rekey_response(self, req: Request, msg: Message, inner: list[Any], now: float) -> None:
        ctx = req.ctx
        self._ike_rekeying = False
        old = self.sa
        assert old.suite is not None and old.keys is not None and old.suite.prf_id is not None
        n = P.notifies(inner)
        errs = [t for t in n if Notify.is_error(t)]
        if Notify.INVALID_KE_PAYLOAD in n:
            data = n[Notify.INVALID_KE_PAYLOAD].data
            g = GROUP.unpack(data[:2])[0] if len(data) >= 2 else 0
            if g in {x for s in self._ike_specs for x in s.dh_groups} and g != ctx["dh"].group:
                self.rekey_ike(now, g)
                return
        sas, nonces, kes = P.find(inner, P.SA), P.find(inner, P.Nonce), P.find(inner, P.KE)
        why = None
        if errs:
            why = f"{notify_name(errs[0])} from peer"
        elif not (sas and nonces and kes):
            why = "INVALID_SYNTAX: response lacks SA, Nonce or KE"
        else:
            try:
                chosen = check_answer(sas[0].proposals, ctx["offer"])
            except ProposalError as exc:
                why = str(exc)
            else:
                st = suite(chosen)
                if len(chosen.spi) != 8 or kes[0].group != ctx["dh"].group or st.dh_group != ctx["dh"].group:
                    why = "INVALID_SYNTAX: bad SPI size or KE group in IKE rekey response"
        gir = b""
        if why is None:
            try:
                gir = ctx["dh"].shared_secret(kes[0].data)
            except dh.DhError as exc:
                why = str(exc)
        collision, self._ike_collision = self._ike_collision, None
        if why is not None:
            if collision is not None:  # ours failed, the peer's rekey stands: it deletes the old SA
                self._switch_to(collision[0], now)
                return
            log.warning("IKE %s: IKE SA rekey failed: %s; retrying later", old.name, why)
            old.rekey_at = now + self._rng.uniform(5.0, 15.0)
            return
        ours = IkeSaState(ctx["spi"], chosen.spi, initiator=True)
        mine = (ctx["ni"], nonces[0].data)
        self._derive_rekeyed(ours, st, gir, *mine, now)
        if collision is not None and lowest_nonce_is_ours(mine, collision[1:]):
            # §2.8.2: our new SA holds the lowest nonce, so it is redundant; we created it, we delete it.
            # The peer's new SA survives and the peer deletes the old one.
            log.info("IKE %s: simultaneous IKE rekey: ours is redundant (lowest nonce)", old.name)
            self._switch_to(collision[0], now)
            self.old_sas.append(ours)
            self._delete_ike_sa(ours, now)
            return
        self._switch_to(ours, now)
        if collision is not None:  # the peer's new SA is redundant: the peer deletes it
            log.info("IKE %s: simultaneous IKE rekey: ours survives", old.name)
            self.old_sas.append(collision[0])
        self._delete_ike_sa(old, now)

    def _delete_ike_sa(self, sa: IkeSaState, now: float) -> None:
        """DELETE an old or redundant IKE SA on itself; forget it when answered."""

        def done(req: Request, msg: Message, inner: list[Any], now: float) -> None:
            self._retire(sa)

        self._request(sa, Request(Exchange.INFORMATIONAL, [P.Delete(Proto.IKE)], done, "delete-old"), now)

    def _derive_rekeyed(
        self, new: IkeSaState, st: Suite, gir: bytes, ni: bytes, nr: bytes, now: float
    ) -> None:
        """Keys of a rekeyed IKE SA: SKEYSEED from the OLD SA's SK_d and prf (§2.18)."""
        old = self.sa
        assert old.suite is not None and old.keys is not None and old.suite.prf_id is not None
        assert st.prf_id is not None
        seed = rekey_skeyseed(old.suite.prf_id, old.keys.sk_d, gir, ni, nr)
        keys = derive_ike_keys(
            st.prf_id, seed, ni, nr, new.spi_i, new.spi_r, st.encr_id, st.key_bits, st.integ_id
        )
        new.install(st, keys)
        new.rekey_at, new.expire_at = self._ike_times(now)

    def _switch_to(self, new: IkeSaState, now: float) -> None:
        """Make `new` the IKE SA; the current one waits in old_sas for its DELETE."""
        old = self.sa
        new.queue.extend(old.queue)
        old.queue.clear()
        self.old_sas.append(old)
        self.sa = new
        log.info("IKE %s: rekeyed, now %s", old.name, new.name)
        self._emit(IkeSaRekeyed(old.spi_i, old.spi_r, new.spi_i, new.spi_r))
        self._pump(new, now)

    def _on_ike_rekey_request(self, sa: IkeSaState, msg: Message, inner: list[Any], now: float) -> None:
        if sa is not self.sa or self.state != "established" or self._ike_collision is not None:
            # §2.25.2: an SA we are closing (or already replacing) is not rekeyed again
            self._respond(sa, msg, [P.Notify(Notify.TEMPORARY_FAILURE)])
            return
        sas, nonces, kes = P.find(inner, P.SA), P.find(inner, P.Nonce), P.find(inner, P.KE)
        new_spi = self._new_ike_spi()
        chosen = select(sas[0].proposals, self._ike_specs, Proto.IKE, new_spi)
        if chosen is None:
            log.warning("IKE %s: IKE rekey: NO_PROPOSAL_CHOSEN", sa.name)
            self._respond(sa, msg, [P.Notify(Notify.NO_PROPOSAL_CHOSEN)])
            return
        theirs = next(p for p in sas[0].proposals if p.num == chosen.num and p.protocol == Proto.IKE)
        st = suite(chosen)
        if not kes or kes[0].group != st.dh_group:
            self._respond(sa, msg, [P.Notify(Notify.INVALID_KE_PAYLOAD, data=GROUP.pack(st.dh_group))])
            return
        if len(theirs.spi) != 8:
            self._respond(sa, msg, [P.Notify(Notify.INVALID_SYNTAX)])
            return
        x = dh.new(st.dh_group)
        try:
            gir = x.shared_secret(kes[0].data)
        except dh.DhError:
            self._respond(sa, msg, [P.Notify(Notify.INVALID_SYNTAX)])
            return
        nr = os.urandom(NONCE_LEN)
        self._respond(sa, msg, [P.SA((chosen,)), P.Nonce(nr), P.KE(x.group, x.public_bytes())])
        theirs_sa = IkeSaState(theirs.spi, new_spi, initiator=False)
        self._derive_rekeyed(theirs_sa, st, gir, nonces[0].data, nr, now)
        if self._ike_rekeying:  # §2.8.2 collision: decide when our own rekey exchange completes
            self._ike_collision = (theirs_sa, nonces[0].data, nr)
        else:
            self._switch_to(theirs_sa, now)

    # ------------------------------------------------------------------ INFORMATIONAL
    def _on_informational_request(self, sa: IkeSaState, msg: Message, inner: list[Any], now: float) -> None:
        deletes = P.find(inner, P.Delete)
        n = P.notifies(inner)
        if any(d.protocol == Proto.IKE for d in deletes):
            self._respond(sa, msg, [])
            if sa is not self.sa:
                self._retire(sa)
            else:
                self._close(now, "deleted by peer")
            return
        if Notify.AUTHENTICATION_FAILED in n:
            self._respond(sa, msg, [])
            self._fail("AUTHENTICATION_FAILED: the initiator rejected our AUTH", now)
            return
        answer: list[bytes] = []
        for d in deletes:
            if d.protocol != Proto.ESP:
                continue
            for spi in d.spis:
                c = next((c for c in self.children.values() if c.spi_out == spi), None)
                if c is None:
                    continue
                if c.state != "deleting":
                    answer.append(c.spi_in)
                self._forget_child(c)
                self._emit(ChildSaDeleted(c.spi_in_int, c.spi_out_int, "deleted by peer"))
        self._respond(sa, msg, [P.Delete(Proto.ESP, tuple(answer))] if answer else [])

    def _on_dpd_response(self, req: Request, msg: Message, inner: list[Any], now: float) -> None:
        rtt = now - req.last_sent
        self.rtt_history.append(rtt)
        self._emit(DpdRtt(rtt))

    def _on_ike_delete_response(self, req: Request, msg: Message, inner: list[Any], now: float) -> None:
        self._close(now, "deleted locally")
