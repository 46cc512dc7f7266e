from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NodeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_KIND_UNSPECIFIED: _ClassVar[NodeKind]
    NODE_KIND_AGENT: _ClassVar[NodeKind]
    NODE_KIND_EXTERNAL: _ClassVar[NodeKind]

class AuthMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUTH_METHOD_UNSPECIFIED: _ClassVar[AuthMethod]
    AUTH_METHOD_CERTIFICATE: _ClassVar[AuthMethod]
    AUTH_METHOD_PSK: _ClassVar[AuthMethod]

class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODE_UNSPECIFIED: _ClassVar[Mode]
    MODE_TUNNEL: _ClassVar[Mode]
    MODE_TRANSPORT: _ClassVar[Mode]

class Topology(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TOPOLOGY_UNSPECIFIED: _ClassVar[Topology]
    TOPOLOGY_FULL_MESH: _ClassVar[Topology]
    TOPOLOGY_HUB_AND_SPOKE: _ClassVar[Topology]
    TOPOLOGY_PAIRS: _ClassVar[Topology]
NODE_KIND_UNSPECIFIED: NodeKind
NODE_KIND_AGENT: NodeKind
NODE_KIND_EXTERNAL: NodeKind
AUTH_METHOD_UNSPECIFIED: AuthMethod
AUTH_METHOD_CERTIFICATE: AuthMethod
AUTH_METHOD_PSK: AuthMethod
MODE_UNSPECIFIED: Mode
MODE_TUNNEL: Mode
MODE_TRANSPORT: Mode
TOPOLOGY_UNSPECIFIED: Topology
TOPOLOGY_FULL_MESH: Topology
TOPOLOGY_HUB_AND_SPOKE: Topology
TOPOLOGY_PAIRS: Topology

class Node(_message.Message):
    __slots__ = ("name", "kind", "endpoints", "subnets", "labels", "site", "identity", "behind_nat", "auth", "external_ca_pem", "accept_announced_subnets")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    SUBNETS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    BEHIND_NAT_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    EXTERNAL_CA_PEM_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_ANNOUNCED_SUBNETS_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: NodeKind
    endpoints: _containers.RepeatedScalarFieldContainer[str]
    subnets: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    site: str
    identity: str
    behind_nat: bool
    auth: AuthMethod
    external_ca_pem: str
    accept_announced_subnets: bool
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[_Union[NodeKind, str]] = ..., endpoints: _Optional[_Iterable[str]] = ..., subnets: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., site: _Optional[str] = ..., identity: _Optional[str] = ..., behind_nat: _Optional[bool] = ..., auth: _Optional[_Union[AuthMethod, str]] = ..., external_ca_pem: _Optional[str] = ..., accept_announced_subnets: _Optional[bool] = ...) -> None: ...

class Site(_message.Message):
    __slots__ = ("name", "subnets", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    SUBNETS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    subnets: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., subnets: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Lifetime(_message.Message):
    __slots__ = ("rekey_seconds", "life_seconds", "jitter_seconds", "rekey_bytes", "life_bytes", "rekey_packets", "life_packets")
    REKEY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LIFE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    JITTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REKEY_BYTES_FIELD_NUMBER: _ClassVar[int]
    LIFE_BYTES_FIELD_NUMBER: _ClassVar[int]
    REKEY_PACKETS_FIELD_NUMBER: _ClassVar[int]
    LIFE_PACKETS_FIELD_NUMBER: _ClassVar[int]
    rekey_seconds: int
    life_seconds: int
    jitter_seconds: int
    rekey_bytes: int
    life_bytes: int
    rekey_packets: int
    life_packets: int
    def __init__(self, rekey_seconds: _Optional[int] = ..., life_seconds: _Optional[int] = ..., jitter_seconds: _Optional[int] = ..., rekey_bytes: _Optional[int] = ..., life_bytes: _Optional[int] = ..., rekey_packets: _Optional[int] = ..., life_packets: _Optional[int] = ...) -> None: ...

class Profile(_message.Message):
    __slots__ = ("name", "ike_proposals", "esp_proposals", "ike_lifetime", "child_lifetime", "dpd_interval_seconds", "dpd_timeout_seconds", "auth")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IKE_PROPOSALS_FIELD_NUMBER: _ClassVar[int]
    ESP_PROPOSALS_FIELD_NUMBER: _ClassVar[int]
    IKE_LIFETIME_FIELD_NUMBER: _ClassVar[int]
    CHILD_LIFETIME_FIELD_NUMBER: _ClassVar[int]
    DPD_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DPD_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    name: str
    ike_proposals: _containers.RepeatedScalarFieldContainer[str]
    esp_proposals: _containers.RepeatedScalarFieldContainer[str]
    ike_lifetime: Lifetime
    child_lifetime: Lifetime
    dpd_interval_seconds: int
    dpd_timeout_seconds: int
    auth: AuthMethod
    def __init__(self, name: _Optional[str] = ..., ike_proposals: _Optional[_Iterable[str]] = ..., esp_proposals: _Optional[_Iterable[str]] = ..., ike_lifetime: _Optional[_Union[Lifetime, _Mapping]] = ..., child_lifetime: _Optional[_Union[Lifetime, _Mapping]] = ..., dpd_interval_seconds: _Optional[int] = ..., dpd_timeout_seconds: _Optional[int] = ..., auth: _Optional[_Union[AuthMethod, str]] = ...) -> None: ...

class Selector(_message.Message):
    __slots__ = ("nodes", "sites", "labels", "all")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODES_FIELD_NUMBER: _ClassVar[int]
    SITES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedScalarFieldContainer[str]
    sites: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    all: bool
    def __init__(self, nodes: _Optional[_Iterable[str]] = ..., sites: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., all: _Optional[bool] = ...) -> None: ...

class NodePair(_message.Message):
    __slots__ = ("a", "b")
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    a: str
    b: str
    def __init__(self, a: _Optional[str] = ..., b: _Optional[str] = ...) -> None: ...

class Policy(_message.Message):
    __slots__ = ("name", "topology", "members", "hubs", "pairs", "mode", "profile", "include_site_subnets")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOPOLOGY_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    HUBS_FIELD_NUMBER: _ClassVar[int]
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SITE_SUBNETS_FIELD_NUMBER: _ClassVar[int]
    name: str
    topology: Topology
    members: Selector
    hubs: Selector
    pairs: _containers.RepeatedCompositeFieldContainer[NodePair]
    mode: Mode
    profile: str
    include_site_subnets: bool
    def __init__(self, name: _Optional[str] = ..., topology: _Optional[_Union[Topology, str]] = ..., members: _Optional[_Union[Selector, _Mapping]] = ..., hubs: _Optional[_Union[Selector, _Mapping]] = ..., pairs: _Optional[_Iterable[_Union[NodePair, _Mapping]]] = ..., mode: _Optional[_Union[Mode, str]] = ..., profile: _Optional[str] = ..., include_site_subnets: _Optional[bool] = ...) -> None: ...

class MeshSpec(_message.Message):
    __slots__ = ("nodes", "sites", "profiles", "policies")
    NODES_FIELD_NUMBER: _ClassVar[int]
    SITES_FIELD_NUMBER: _ClassVar[int]
    PROFILES_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    sites: _containers.RepeatedCompositeFieldContainer[Site]
    profiles: _containers.RepeatedCompositeFieldContainer[Profile]
    policies: _containers.RepeatedCompositeFieldContainer[Policy]
    def __init__(self, nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ..., sites: _Optional[_Iterable[_Union[Site, _Mapping]]] = ..., profiles: _Optional[_Iterable[_Union[Profile, _Mapping]]] = ..., policies: _Optional[_Iterable[_Union[Policy, _Mapping]]] = ...) -> None: ...
