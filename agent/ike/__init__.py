"""IKEv2 (RFC 7296) engine, sans-I/O: bytes + now in, bytes + events + next deadline out.

Owns the wire codec, key derivation, proposal negotiation and the session state machine.
Sockets, the non-ESP marker on port 4500 and the clock belong to the adapter (adapter.py) and the
data plane; AUTH computation, identities, certificates and cookies live in auth/identity/certs/cookies.
"""
