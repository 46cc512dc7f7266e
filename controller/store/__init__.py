"""The controller's only view of etcd: a thin adapter over etcd3aio, the key layout, the embedded etcd.

Owns every etcd key the controller reads or writes; nothing else in meshsec talks to etcd directly, and
this package knows nothing about gRPC, certificates or the mesh compiler.

Key layout (all under ``/meshsec/v1/``; see keys.py):

====================================  =====================================================  ==========
key                                   value                                                  lifetime
====================================  =====================================================  ==========
``spec``                              ``MeshSpec`` (protobuf binary): the whole applied spec  permanent
``nodes/<name>``                      enrollment record, JSON: cert fingerprint, not_after    permanent
``status/<name>``                     ``NodeStatus`` (protobuf binary), last Report           Report lease
``connected/<name>``                  JSON {replica, since}: an agent's Sync stream is open   Sync lease
``ca/cert``                           CA certificate(s) PEM (two during a rollover)            permanent
``ca/key``                            CA private key, AES-GCM encrypted with the state-dir KEK permanent
``ca/psk-master``                     32-byte PSK master secret, AES-GCM encrypted (KEK)      permanent
``tokens/<id>``                       JSON {sha256 of secret, node, expires_at}               TTL lease
``certs/issued/<sha256>``             JSON {node, role, serial, not_after}                    permanent
``certs/revoked/<sha256>``            JSON {node, at}: refused by controller and peers        permanent
``certs/revoked-nodes/<node>``      JSON {at, issued_until, reason}: every certificate of    permanent
                                      the node issued before the revoke is refused
``ca/rollover``                       JSON {phase, since, old, new, reason}: CA rollover      permanent
                                      state (absent when stable; controller/ca/rollover.py)
``ca/next-key``                       published, not yet signing CA's key, AES-GCM (KEK)      rollover
``ca/previous-key``                   switched-out CA's key (server TLS until retirement)     rollover
``election/<name>``                   identity of the replica holding election <name>          leader
                                      (``jobs``: the singleton jobs; controller/jobs)          lease
``gc/gone-since/<name>``              JSON {since}: node first seen without a Sync stream     permanent
``gc/stale/<name>``                   JSON {since}: node gone longer than the gc limit        permanent
``announced/<name>``                  JSON list of subnets the agent announces (podCIDRs)     permanent
====================================  =====================================================  ==========

The compile inputs are ``spec``, ``ca/``, ``certs/revoked/`` and ``announced/``: a NodeConfig is a
pure function of them at one etcd revision, which is what lets any replica (or a restarted one) serve a
resume from an old version by reading those keys at that revision.
"""

from meshsec.controller.store.client import (
    Compacted,
    KeyValue,
    Store,
    StoreError,
    StoreUnavailable,
    WatchEvent,
)
from meshsec.controller.store.keys import Keys

__all__ = ["Compacted", "KeyValue", "Keys", "Store", "StoreError", "StoreUnavailable", "WatchEvent"]
