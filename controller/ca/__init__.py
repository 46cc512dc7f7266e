"""The controller's certificate authority: CA key custody, certificate issuance, bootstrap tokens.

Owns the CA certificate and key (stored in etcd, key sealed with the state-dir KEK), node/admin/server
certificate issuance, and one-time enrollment tokens.  It must not speak gRPC; controller/api calls it.
"""

from meshsec.controller.ca.authority import (
    ROLE_ADMIN,
    ROLE_CONTROLLER,
    ROLE_NODE,
    SERVER_NAME,
    CANotInitialized,
    CertificateAuthority,
    CsrInvalid,
    Identity,
    fingerprint,
    identity_of,
    load_ca,
    load_or_create_ca,
    load_psk_master,
)
from meshsec.controller.ca.kek import Sealer, create_kek, load_kek
from meshsec.controller.ca.tokens import TokenRefused, consume_token, create_token

__all__ = [
    "ROLE_ADMIN",
    "ROLE_CONTROLLER",
    "ROLE_NODE",
    "SERVER_NAME",
    "CANotInitialized",
    "CertificateAuthority",
    "CsrInvalid",
    "Identity",
    "Sealer",
    "TokenRefused",
    "consume_token",
    "create_kek",
    "create_token",
    "fingerprint",
    "identity_of",
    "load_ca",
    "load_kek",
    "load_or_create_ca",
    "load_psk_master",
]
