"""Names of every etcd key meshsec uses (the layout is documented in the package docstring).

Owns key spelling only: no I/O.  Node names are DNS labels, so they never contain '/'.
"""

from __future__ import annotations

ROOT = "/meshsec/v1/"


class Keys:
    """Key and prefix constructors; the one place a key string is spelled."""

    ROOT = ROOT
    SPEC = ROOT + "spec"
    NODES = ROOT + "nodes/"
    STATUS = ROOT + "status/"
    CONNECTED = ROOT + "connected/"
    CA = ROOT + "ca/"
    CA_CERT = ROOT + "ca/cert"
    CA_KEY = ROOT + "ca/key"
    PSK_MASTER = ROOT + "ca/psk-master"
    TOKENS = ROOT + "tokens/"
    CERTS_ISSUED = ROOT + "certs/issued/"
    CERTS_REVOKED = ROOT + "certs/revoked/"
    # Node-level revocations (`meshctl node revoke`): every certificate of the node issued up to a
    # time, listed or not (controller/ca/revocation.py).  Not under CERTS_REVOKED: no fingerprint.
    REVOKED_NODES = ROOT + "certs/revoked-nodes/"
    # Subnets an agent announces (e.g. its Kubernetes podCIDRs); merged only for nodes that accept them.
    ANNOUNCED = ROOT + "announced/"

    @staticmethod
    def node(name: str) -> str:
        return Keys.NODES + name

    @staticmethod
    def status(name: str) -> str:
        return Keys.STATUS + name

    @staticmethod
    def connected(name: str) -> str:
        return Keys.CONNECTED + name

    @staticmethod
    def token(token_id: str) -> str:
        return Keys.TOKENS + token_id

    @staticmethod
    def issued(fingerprint: str) -> str:
        return Keys.CERTS_ISSUED + fingerprint

    @staticmethod
    def revoked(fingerprint: str) -> str:
        return Keys.CERTS_REVOKED + fingerprint

    @staticmethod
    def revoked_node(name: str) -> str:
        return Keys.REVOKED_NODES + name

    @staticmethod
    def is_compile_input(key: str) -> bool:
        """True for keys a NodeConfig depends on (a change means: recompile), and node-level
        revocations, which no NodeConfig contains but every replica must see as soon as they change."""
        return key == Keys.SPEC or key.startswith(
            (Keys.CA, Keys.CERTS_REVOKED, Keys.REVOKED_NODES, Keys.ANNOUNCED)
        )
