"""What the certificates behind established IKE SAs mean for them: the rules for revocation.

Owns the pure rules; the host (host.py) gathers the facts after every apply() and IKE event and
executes the result (an INFORMATIONAL DELETE and the peer error "peer certificate revoked"; or marking
a session for make-before-break replacement, which plan.py then carries out like a configuration
change).  No I/O, no clock (wall time is an argument), no IKE state changes here.  Fingerprints are
the controller's format (controller/ca/revocation.py): lowercase SHA-256 hex of the DER; the leaf is
what the IKE engine exposes as IkeSession.peer_cert.

The choice, and strongSwan's behaviour it follows:
- Renewal and CA rollover never end an SA.  The session digest (plan.session_digest) leaves trust and
  revocations out, so a new trust bundle does not replace SAs; a renewed certificate is used by the
  next IKE_AUTH (a new peer, a restart, a configuration change).  An IKE SA rekey (RFC 7296 §2.18)
  does not re-authenticate: the new IKE SA inherits the authentication of the one it replaces.  As in
  strongSwan, which re-authenticates only with `reauth_time` (off by default in swanctl), an SA whose
  peer certificate has expired, or chains to a CA retired after a rollover, stays up until it is
  deleted or set up again; every fresh IKE_AUTH is checked against the certificates, CAs and
  revocations of that moment.  Re-validating SAs on every trust change would tear down every SA at the
  end of each rollover; re-authenticating on every certificate expiry would replace every SA once per
  renewal, and each replacement risks the packets in flight (the responder moves its traffic to the
  new SA before the initiator has installed it).
- Revocation ends an SA at once: every established SA whose peer certificate is in the revoked list is
  deleted, and the revoked node's new attempts are refused in IKE_AUTH (the engine's RevocationSet,
  built into every new IKE SA).
- The gap between the two: the controller lists only unexpired certificates, so an SA still resting
  on an expired certificate of the revoked node is not named by the list.  When the list gains an
  entry, every SA whose peer certificate has expired is therefore re-authenticated make-before-break
  (the designated initiator starts a new IKE SA; a designated responder reaches out itself).  A peer
  that is not revoked gets a new SA and the old one goes; a revoked peer's new IKE_AUTH is refused as
  revoked, and that refusal deletes its SAs on expired certificates.  Revocations are rare, so this
  costs one replacement per old SA and revocation, not one per renewal.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from meshsec.agent.ike import certs

_HEX = frozenset(string.hexdigits)
#: How the IKE engine words a refusal of a revoked certificate (certs.RevocationSet.check via peerauth).
_REFUSED_REVOKED = re.compile(r"^AUTHENTICATION_FAILED: certificate .* revoked$")
#: Prefix the host puts on the digest of a session awaiting re-authentication (plan.py then sees a
#: session built from another configuration and replaces it make-before-break).
REAUTH_MARK = "reauth:"


@dataclass(frozen=True)
class SessionCert:
    """One IKE session as the rules see it: who, in which engine state, authenticated with what."""

    sid: int
    peer: str
    state: str  # the IkeSession state ("established", "deleting", ...)
    fingerprint: str = ""  # SHA-256 hex of the peer's leaf certificate; "" for PSK or not authenticated
    peer_not_after: float = math.inf  # wall time the peer's certificate expires (inf: none)
    marked: bool = False  # already waiting for its re-authentication


def fingerprint(cert: x509.Certificate | None) -> str:
    """The controller's fingerprint format: lowercase SHA-256 hex of the DER ("" for no certificate)."""
    return certs.fingerprint_sha256(cert).hex() if cert is not None else ""


def not_after(cert: x509.Certificate | None) -> float:
    """The certificate's expiry as a wall-clock timestamp (inf for no certificate)."""
    return cert.not_valid_after_utc.timestamp() if cert is not None else math.inf


def normalize(fingerprints: Iterable[str]) -> frozenset[str]:
    """Revoked fingerprints as lowercase hex without colons or a "sha256:" prefix; entries that are not
    64 hex digits are ignored here (the engine's RevocationSet refuses the whole config for them)."""
    out = set()
    for fp in fingerprints:
        text = fp.strip().lower().removeprefix("sha256:").replace(":", "")
        if len(text) == 64 and set(text) <= _HEX:
            out.add(text)
    return frozenset(out)


def refused_as_revoked(reason: str) -> bool:
    """Whether an IKE failure reason is our refusal of the peer's certificate for being revoked."""
    return bool(_REFUSED_REVOKED.match(reason))


def to_cut(
    sessions: Iterable[SessionCert], revoked: frozenset[str], refused: frozenset[str], wall_now: float
) -> list[SessionCert]:
    """Established sessions to delete, in sid order: the peer's certificate is in `revoked`
    (normalized), or it has expired and the peer's latest IKE_AUTH was refused as revoked (`refused`:
    peer names).  Sessions already deleting need nothing more; those still negotiating are checked in
    IKE_AUTH, and here again once they are established."""
    out = [
        s
        for s in sessions
        if s.state == "established"
        and s.fingerprint
        and (s.fingerprint in revoked or (s.peer in refused and s.peer_not_after <= wall_now))
    ]
    return sorted(out, key=lambda s: s.sid)


def to_reauthenticate(sessions: Iterable[SessionCert], wall_now: float) -> list[SessionCert]:
    """Established certificate sessions, not yet marked, whose peer certificate has expired: the ones a
    revocation list cannot name any more (see the module docstring for when the host asks)."""
    out = [
        s
        for s in sessions
        if s.state == "established" and s.fingerprint and not s.marked and s.peer_not_after <= wall_now
    ]
    return sorted(out, key=lambda s: s.sid)
