"""IKEv2 message fragmentation (RFC 7383): the Encrypted Fragment payload (SKF) and bounded reassembly.

Why: an IKE_AUTH carrying certificate chains exceeds the path MTU, and IP fragments of UDP are dropped
by many NATs and firewalls; RFC 7383 splits the message above IP instead, each fragment separately
encrypted and integrity-protected with the IKE SA keys.

Owns: splitting an encrypted message into SKF fragments (`protect`), opening one fragment
(`open_fragment`), and `Reassembler`, which holds at most one partial message per direction with
limits on fragments, octets and idle time.  Knows nothing of sessions, sockets or the clock (time is
an argument); the session decides when fragmentation is negotiated and counts every outcome.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import inf

from .constants import IKE_HEADER_LEN, PT
from .message import HEADER, SKF_HEADER, Message, SealCipher, encode_encrypted, encode_header
from .payloads import GENERIC, encode_chain

#: next payload, critical|reserved, payload length, Fragment Number, Total Fragments (RFC 7383 §2.5)
SKF = SKF_HEADER
IPV4_HEADER, IPV6_HEADER, UDP_HEADER, NON_ESP_MARKER_LEN = 20, 40, 8, 4
MAX_TOTAL = 0xFFFF


class FragmentError(ValueError):
    """A fragment is malformed (bad numbering, not an SKF message, too short): drop and count it."""


def max_message_len(fragment_size: int, *, ipv6: bool, natt: bool) -> int:
    """Largest IKE message (header included) whose IP datagram stays within `fragment_size`
    (strongSwan's `charon.fragment_size` is the whole IP datagram, too; RFC 7383 §2.5.1)."""
    ip = IPV6_HEADER if ipv6 else IPV4_HEADER
    return fragment_size - ip - UDP_HEADER - (NON_ESP_MARKER_LEN if natt else 0)


def _sealed_len(cipher: SealCipher, plain_len: int) -> int:
    """Octets of IV | ciphertext (padded, with pad length) | ICV for `plain_len` octets of content."""
    block = getattr(cipher, "block", 1)
    padded = plain_len + 1 + (-(plain_len + 1)) % block
    return cipher.iv_len + padded + cipher.icv_len


def chunk_size(cipher: SealCipher, max_len: int) -> int:
    """Most content octets one fragment of at most `max_len` octets can carry."""
    block = getattr(cipher, "block", 1)
    room = max_len - IKE_HEADER_LEN - SKF.size - cipher.iv_len - cipher.icv_len
    size = (room // block) * block - 1  # the pad length octet always takes one
    if size < 1:
        raise ValueError(f"fragment size leaves no room for content ({max_len} octets per IKE message)")
    return size


def protect(msg: Message, cipher: SealCipher, max_len: int | None) -> tuple[bytes, ...]:
    """The datagrams carrying `msg`: one SK message, or SKF fragments when `max_len` is given and the
    SK message would exceed it (RFC 7383 §2.5: only then)."""
    first, body = encode_chain(msg.payloads)
    whole = IKE_HEADER_LEN + GENERIC.size + _sealed_len(cipher, len(body))
    if max_len is None or whole <= max_len:
        return (encode_encrypted(msg, cipher),)
    size = chunk_size(cipher, max_len)
    chunks = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    total = len(chunks)
    if total > MAX_TOTAL:
        raise ValueError(f"message of {len(body)} octets needs {total} fragments (more than {MAX_TOTAL})")
    out = []
    for num, chunk in enumerate(chunks, start=1):
        plaintext = cipher.pad(chunk)
        skf_len = SKF.size + cipher.iv_len + len(plaintext) + cipher.icv_len
        # the first fragment names the first inner payload; the others carry 0 (§2.5)
        nxt = first if num == 1 else PT.NONE
        aad = encode_header(msg, PT.SKF, HEADER.size + skf_len) + SKF.pack(nxt, 0, skf_len, num, total)
        out.append(aad + cipher.seal(aad, plaintext))
    return tuple(out)


@dataclass(frozen=True)
class Fragment:
    """One authenticated, decrypted fragment."""

    number: int
    total: int
    first: int  # the first inner payload's type (meaningful in fragment 1 only)
    content: bytes


def check_numbers(msg: Message) -> tuple[int, int]:
    """(Fragment Number, Total Fragments) of an SKF message, or FragmentError (RFC 7383 §2.5: both
    non-zero, number <= total).  Cheap: done before any decryption."""
    if msg.frag is None:
        raise FragmentError("not an Encrypted Fragment message")
    num, total = msg.frag
    if num == 0 or total == 0 or num > total:
        raise FragmentError(f"fragment number {num} of {total}")
    return num, total


def open_fragment(msg: Message, cipher: object) -> Fragment:
    """Authenticate and decrypt one SKF message (raises crypto.IntegrityError, FragmentError, or
    ParseError for a bad pad length inside an authenticated fragment)."""
    num, total = check_numbers(msg)
    assert msg.sk_first is not None
    aad = msg.raw[: msg.sk_aad_end]
    content = cipher.open(aad, msg.raw[msg.sk_aad_end :])  # type: ignore[attr-defined]
    return Fragment(num, total, msg.sk_first if num == 1 else PT.NONE, content)


@dataclass(frozen=True)
class Limits:
    """Bounds on one message in reassembly: a peer (or an attacker with the keys' help, never
    without) cannot make us hold more than max_octets per direction per IKE SA."""

    max_fragments: int = 64
    max_octets: int = 64 * 1024
    timeout: float = 30.0  # seconds without a new fragment before a partial message is dropped


@dataclass(frozen=True)
class Reassembled:
    """A complete message: its inner payload chain, as if it had come in one SK payload."""

    message_id: int
    first: int
    data: bytes
    fragments: int


@dataclass
class _Partial:
    message_id: int
    total: int
    deadline: float
    parts: dict[int, bytes] = field(default_factory=dict)
    first: int = PT.NONE
    octets: int = 0


class Reassembler:
    """Fragments of the messages in reassembly on one IKE SA: at most one request from the peer and
    one response to us (window size 1), keyed by direction.

    `precheck` is asked before decrypting (numbers, limits, duplicates, stale Total Fragments) and
    `add` after the fragment's integrity was verified (RFC 7383 §2.6: never store unverified data).
    Both return a short outcome name the session counts; `add` returns Reassembled when complete.
    """

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._partial: dict[bool, _Partial] = {}

    def precheck(self, response: bool, message_id: int, number: int, total: int) -> str | None:
        """Why this fragment is dropped before decryption, or None to go on."""
        if total > self.limits.max_fragments:
            return "limit"
        p = self._partial.get(response)
        if p is None or p.message_id != message_id:
            return None
        if total < p.total:
            return "stale_total"  # §2.6.2: an older, longer-fragment copy of the message
        if total == p.total and number in p.parts:
            return "duplicate"
        return None

    def add(self, response: bool, message_id: int, frag: Fragment, now: float) -> Reassembled | str:
        """Store a verified fragment; the complete message, or what happened ("stored",
        "restarted", "too_big", and the precheck outcomes)."""
        why = self.precheck(response, message_id, frag.number, frag.total)
        if why is not None:
            return why
        outcome = "stored"
        p = self._partial.get(response)
        if p is None or p.message_id != message_id or frag.total > p.total:
            if p is not None and p.message_id == message_id:
                outcome = "restarted"  # §2.6.2: a larger Total Fragments restarts reassembly
            p = _Partial(message_id, frag.total, now + self.limits.timeout)
            self._partial[response] = p
        if p.octets + len(frag.content) > self.limits.max_octets:
            del self._partial[response]
            return "too_big"
        p.parts[frag.number] = frag.content
        p.octets += len(frag.content)
        p.deadline = now + self.limits.timeout
        if frag.number == 1:
            p.first = frag.first
        if len(p.parts) < p.total:
            return outcome
        del self._partial[response]
        data = b"".join(p.parts[i] for i in range(1, p.total + 1))
        return Reassembled(message_id, p.first, data, p.total)

    def discard(self, response: bool) -> None:
        """Forget the partial message of one direction (an unfragmented copy arrived, or it is obsolete)."""
        self._partial.pop(response, None)

    def clear(self) -> None:
        self._partial.clear()

    def expire(self, now: float) -> int:
        """Drop partial messages idle past the timeout; how many were dropped."""
        gone = [k for k, p in self._partial.items() if p.deadline <= now]
        for k in gone:
            del self._partial[k]
        return len(gone)

    def deadline(self) -> float:
        return min((p.deadline for p in self._partial.values()), default=inf)

    @property
    def octets(self) -> int:
        """Content octets held, over both directions (tests check the bound)."""
        return sum(p.octets for p in self._partial.values())

    def held(self, response: bool) -> tuple[int, int, int] | None:
        """(message id, total, fragments held) of one direction's partial message, for tests and logs."""
        p = self._partial.get(response)
        return None if p is None else (p.message_id, p.total, len(p.parts))
