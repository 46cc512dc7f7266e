"""The session's side of IKE fragmentation (RFC 7383): when to split what it sends, and how a received
fragment is verified, counted and reassembled before the message is processed.

A mixin of IkeSession, like establish.py and exchanges.py: owns the decisions (negotiated or not, the
size limit from fragment_size and the address family/port, §2.6.1 retransmission rules) and the
counters; the wire format and the bounded store live in fragments.py.  No sockets, no clock.
"""

from __future__ import annotations

import logging
from typing import Any

from . import fragments
from . import payloads as P
from .constants import NATT_PORT
from .crypto import IntegrityError
from .message import Message, decrypt_message
from .sastate import IkeSaState, exchange_name

log = logging.getLogger(__name__)


class FragmentingMixin:
    """RFC 7383 hooks of IkeSession (_seal on the way out, _open on the way in)."""

    def _seal(self, sa: IkeSaState, msg: Message) -> tuple[bytes, ...]:
        """Encrypt `msg` into one SK message, or into RFC 7383 fragments when both sides support
        them and it exceeds the configured fragment size."""
        assert sa.out is not None and self.remote is not None
        limit = None
        if self.fragmentation:
            limit = fragments.max_message_len(
                self.config.fragment_size, ipv6=":" in self.remote[0], natt=self.local_port == NATT_PORT
            )
        wire = fragments.protect(msg, sa.out, limit)
        if len(wire) > 1:
            self.stats["messages_fragmented"] += 1
            self.stats["fragments_sent"] += len(wire)
            log.debug(
                "IKE %s: %s %d split into %d fragments",
                sa.name,
                exchange_name(msg.exchange),
                msg.message_id,
                len(wire),
            )
        return wire

    def _open(self, sa: IkeSaState, msg: Message, now: float) -> list[Any] | None:
        """The inner payloads of an encrypted message, or None when there is nothing to process yet
        (dropped, or a fragment of an incomplete message).  Raises ParseError for authenticated but
        malformed content, which the callers answer as before."""
        assert sa.inb is not None
        what = "response" if msg.is_response else "request"
        if msg.frag is None:
            try:
                inner = decrypt_message(msg, sa.inb)
            except IntegrityError as exc:
                self._drop("integrity", f"{what} {msg.message_id}: {exc}")
                return None
            if sa.reassembly is not None:  # a whole copy makes any partial one moot
                sa.reassembly.discard(msg.is_response)
            return inner
        done = self._collect(sa, msg, now)
        if done is None:
            return None
        inner = P.parse_chain(done.first, done.data)
        msg.payloads = msg.payloads + inner
        self.stats["messages_reassembled"] += 1
        log.debug("IKE %s: %s %d reassembled (%d fragments)", sa.name, what, msg.message_id, done.fragments)
        return inner

    def _collect(self, sa: IkeSaState, msg: Message, now: float) -> fragments.Reassembled | None:
        """Verify one fragment and add it to its message (RFC 7383 §2.6): integrity first, then
        the bounded store; every drop is counted."""
        if not self.fragmentation:
            self._drop("fragment_unnegotiated", f"fragment of message {msg.message_id} without RFC 7383")
            return None
        try:
            num, total = fragments.check_numbers(msg)
        except fragments.FragmentError as exc:
            self._drop("fragment_malformed", str(exc))
            return None
        cfg = self.config
        if sa.reassembly is None:
            limits = fragments.Limits(cfg.max_fragments, cfg.max_reassembly, cfg.fragment_timeout)
            sa.reassembly = fragments.Reassembler(limits)
        why = sa.reassembly.precheck(msg.is_response, msg.message_id, num, total)
        if why is not None:
            self._drop("fragment_" + why, f"fragment {num}/{total} of message {msg.message_id}")
            return None
        try:
            frag = fragments.open_fragment(msg, sa.inb)
        except IntegrityError as exc:
            self._drop("fragment_integrity", f"fragment {num}/{total} of message {msg.message_id}: {exc}")
            return None
        except (fragments.FragmentError, P.ParseError) as exc:
            self._drop("fragment_malformed", f"fragment {num}/{total} of message {msg.message_id}: {exc}")
            return None
        self.stats["fragments_received"] += 1
        res = sa.reassembly.add(msg.is_response, msg.message_id, frag, now)
        if isinstance(res, str):
            if res == "restarted":
                self.stats["fragments_reassembly_restarted"] += 1
            elif res != "stored":
                self._drop("fragment_" + res, f"fragment {num}/{total} of message {msg.message_id}")
            return None
        return res

    def _fragment_retransmitted(self, sa: IkeSaState, msg: Message) -> None:
        """A fragment of a request we already answered: resend the whole response only for an
        authentic fragment number 1, ignore the others (RFC 7383 §2.6.1)."""
        assert sa.cache is not None
        if msg.frag is None or msg.frag[0] != 1 or not self.fragmentation or sa.inb is None:
            self.stats["fragments_retransmit_ignored"] += 1
            return
        try:
            fragments.open_fragment(msg, sa.inb)
        except (IntegrityError, fragments.FragmentError, P.ParseError) as exc:
            self._drop("fragment_integrity", f"retransmitted fragment of {msg.message_id}: {exc}")
            return
        self.stats["retransmit_answered"] += 1
        for raw in sa.cache[2]:
            self._send(raw)
