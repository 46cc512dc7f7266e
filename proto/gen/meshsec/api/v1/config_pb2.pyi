from meshsec.api.v1 import spec_pb2 as _spec_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Initiation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INITIATION_UNSPECIFIED: _ClassVar[Initiation]
    INITIATION_INITIATE: _ClassVar[Initiation]
    INITIATION_RESPOND: _ClassVar[Initiation]
INITIATION_UNSPECIFIED: Initiation
INITIATION_INITIATE: Initiation
INITIATION_RESPOND: Initiation

class IkeConfig(_message.Message):
    __slots__ = ("proposals", "lifetime", "dpd_interval_seconds", "dpd_timeout_seconds")
    PROPOSALS_FIELD_NUMBER: _ClassVar[int]
    LIFETIME_FIELD_NUMBER: _ClassVar[int]
    DPD_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DPD_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    proposals: _containers.RepeatedScalarFieldContainer[str]
    lifetime: _spec_pb2.Lifetime
    dpd_interval_seconds: int
    dpd_timeout_seconds: int
    def __init__(self, proposals: _Optional[_Iterable[str]] = ..., lifetime: _Optional[_Union[_spec_pb2.Lifetime, _Mapping]] = ..., dpd_interval_seconds: _Optional[int] = ..., dpd_timeout_seconds: _Optional[int] = ...) -> None: ...

class ChildSaConfig(_message.Message):
    __slots__ = ("name", "mode", "local_ts", "remote_ts", "esp_proposals", "lifetime")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    LOCAL_TS_FIELD_NUMBER: _ClassVar[int]
    REMOTE_TS_FIELD_NUMBER: _ClassVar[int]
    ESP_PROPOSALS_FIELD_NUMBER: _ClassVar[int]
    LIFETIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    mode: _spec_pb2.Mode
    local_ts: _containers.RepeatedScalarFieldContainer[str]
    remote_ts: _containers.RepeatedScalarFieldContainer[str]
    esp_proposals: _containers.RepeatedScalarFieldContainer[str]
    lifetime: _spec_pb2.Lifetime
    def __init__(self, name: _Optional[str] = ..., mode: _Optional[_Union[_spec_pb2.Mode, str]] = ..., local_ts: _Optional[_Iterable[str]] = ..., remote_ts: _Optional[_Iterable[str]] = ..., esp_proposals: _Optional[_Iterable[str]] = ..., lifetime: _Optional[_Union[_spec_pb2.Lifetime, _Mapping]] = ...) -> None: ...

class PeerConfig(_message.Message):
    __slots__ = ("name", "kind", "endpoints", "remote_identity", "auth", "psk", "ike", "children", "initiation", "behind_nat", "digest")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    REMOTE_IDENTITY_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    PSK_FIELD_NUMBER: _ClassVar[int]
    IKE_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    INITIATION_FIELD_NUMBER: _ClassVar[int]
    BEHIND_NAT_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: _spec_pb2.NodeKind
    endpoints: _containers.RepeatedScalarFieldContainer[str]
    remote_identity: str
    auth: _spec_pb2.AuthMethod
    psk: bytes
    ike: IkeConfig
    children: _containers.RepeatedCompositeFieldContainer[ChildSaConfig]
    initiation: Initiation
    behind_nat: bool
    digest: str
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[_Union[_spec_pb2.NodeKind, str]] = ..., endpoints: _Optional[_Iterable[str]] = ..., remote_identity: _Optional[str] = ..., auth: _Optional[_Union[_spec_pb2.AuthMethod, str]] = ..., psk: _Optional[bytes] = ..., ike: _Optional[_Union[IkeConfig, _Mapping]] = ..., children: _Optional[_Iterable[_Union[ChildSaConfig, _Mapping]]] = ..., initiation: _Optional[_Union[Initiation, str]] = ..., behind_nat: _Optional[bool] = ..., digest: _Optional[str] = ...) -> None: ...

class LocalConfig(_message.Message):
    __slots__ = ("name", "identity", "listen_addresses", "subnets", "behind_nat", "trusted_ca_pem", "revoked_fingerprints")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    LISTEN_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    SUBNETS_FIELD_NUMBER: _ClassVar[int]
    BEHIND_NAT_FIELD_NUMBER: _ClassVar[int]
    TRUSTED_CA_PEM_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FINGERPRINTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    identity: str
    listen_addresses: _containers.RepeatedScalarFieldContainer[str]
    subnets: _containers.RepeatedScalarFieldContainer[str]
    behind_nat: bool
    trusted_ca_pem: str
    revoked_fingerprints: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., identity: _Optional[str] = ..., listen_addresses: _Optional[_Iterable[str]] = ..., subnets: _Optional[_Iterable[str]] = ..., behind_nat: _Optional[bool] = ..., trusted_ca_pem: _Optional[str] = ..., revoked_fingerprints: _Optional[_Iterable[str]] = ...) -> None: ...

class NodeConfig(_message.Message):
    __slots__ = ("version", "local", "peers")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LOCAL_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    version: int
    local: LocalConfig
    peers: _containers.RepeatedCompositeFieldContainer[PeerConfig]
    def __init__(self, version: _Optional[int] = ..., local: _Optional[_Union[LocalConfig, _Mapping]] = ..., peers: _Optional[_Iterable[_Union[PeerConfig, _Mapping]]] = ...) -> None: ...

class NodeConfigDelta(_message.Message):
    __slots__ = ("from_version", "to_version", "local", "upsert_peers", "remove_peers")
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    LOCAL_FIELD_NUMBER: _ClassVar[int]
    UPSERT_PEERS_FIELD_NUMBER: _ClassVar[int]
    REMOVE_PEERS_FIELD_NUMBER: _ClassVar[int]
    from_version: int
    to_version: int
    local: LocalConfig
    upsert_peers: _containers.RepeatedCompositeFieldContainer[PeerConfig]
    remove_peers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, from_version: _Optional[int] = ..., to_version: _Optional[int] = ..., local: _Optional[_Union[LocalConfig, _Mapping]] = ..., upsert_peers: _Optional[_Iterable[_Union[PeerConfig, _Mapping]]] = ..., remove_peers: _Optional[_Iterable[str]] = ...) -> None: ...
