import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from meshsec.api.v1 import spec_pb2 as _spec_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class IkeSaState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IKE_SA_STATE_UNSPECIFIED: _ClassVar[IkeSaState]
    IKE_SA_STATE_DOWN: _ClassVar[IkeSaState]
    IKE_SA_STATE_CONNECTING: _ClassVar[IkeSaState]
    IKE_SA_STATE_ESTABLISHED: _ClassVar[IkeSaState]
    IKE_SA_STATE_REKEYING: _ClassVar[IkeSaState]
    IKE_SA_STATE_DELETING: _ClassVar[IkeSaState]
    IKE_SA_STATE_FAILED: _ClassVar[IkeSaState]

class ChildSaState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHILD_SA_STATE_UNSPECIFIED: _ClassVar[ChildSaState]
    CHILD_SA_STATE_INSTALLED: _ClassVar[ChildSaState]
    CHILD_SA_STATE_REKEYING: _ClassVar[ChildSaState]
    CHILD_SA_STATE_DELETING: _ClassVar[ChildSaState]
IKE_SA_STATE_UNSPECIFIED: IkeSaState
IKE_SA_STATE_DOWN: IkeSaState
IKE_SA_STATE_CONNECTING: IkeSaState
IKE_SA_STATE_ESTABLISHED: IkeSaState
IKE_SA_STATE_REKEYING: IkeSaState
IKE_SA_STATE_DELETING: IkeSaState
IKE_SA_STATE_FAILED: IkeSaState
CHILD_SA_STATE_UNSPECIFIED: ChildSaState
CHILD_SA_STATE_INSTALLED: ChildSaState
CHILD_SA_STATE_REKEYING: ChildSaState
CHILD_SA_STATE_DELETING: ChildSaState

class Counters(_message.Message):
    __slots__ = ("packets_in", "packets_out", "bytes_in", "bytes_out", "replay_drops", "icv_failures", "malformed", "policy_drops")
    PACKETS_IN_FIELD_NUMBER: _ClassVar[int]
    PACKETS_OUT_FIELD_NUMBER: _ClassVar[int]
    BYTES_IN_FIELD_NUMBER: _ClassVar[int]
    BYTES_OUT_FIELD_NUMBER: _ClassVar[int]
    REPLAY_DROPS_FIELD_NUMBER: _ClassVar[int]
    ICV_FAILURES_FIELD_NUMBER: _ClassVar[int]
    MALFORMED_FIELD_NUMBER: _ClassVar[int]
    POLICY_DROPS_FIELD_NUMBER: _ClassVar[int]
    packets_in: int
    packets_out: int
    bytes_in: int
    bytes_out: int
    replay_drops: int
    icv_failures: int
    malformed: int
    policy_drops: int
    def __init__(self, packets_in: _Optional[int] = ..., packets_out: _Optional[int] = ..., bytes_in: _Optional[int] = ..., bytes_out: _Optional[int] = ..., replay_drops: _Optional[int] = ..., icv_failures: _Optional[int] = ..., malformed: _Optional[int] = ..., policy_drops: _Optional[int] = ...) -> None: ...

class ChildSaStatus(_message.Message):
    __slots__ = ("name", "state", "mode", "spi_in", "spi_out", "transform", "established_at", "counters", "local_ts", "remote_ts")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SPI_IN_FIELD_NUMBER: _ClassVar[int]
    SPI_OUT_FIELD_NUMBER: _ClassVar[int]
    TRANSFORM_FIELD_NUMBER: _ClassVar[int]
    ESTABLISHED_AT_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    LOCAL_TS_FIELD_NUMBER: _ClassVar[int]
    REMOTE_TS_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: ChildSaState
    mode: _spec_pb2.Mode
    spi_in: int
    spi_out: int
    transform: str
    established_at: _timestamp_pb2.Timestamp
    counters: Counters
    local_ts: _containers.RepeatedScalarFieldContainer[str]
    remote_ts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., state: _Optional[_Union[ChildSaState, str]] = ..., mode: _Optional[_Union[_spec_pb2.Mode, str]] = ..., spi_in: _Optional[int] = ..., spi_out: _Optional[int] = ..., transform: _Optional[str] = ..., established_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., counters: _Optional[_Union[Counters, _Mapping]] = ..., local_ts: _Optional[_Iterable[str]] = ..., remote_ts: _Optional[_Iterable[str]] = ...) -> None: ...

class PeerStatus(_message.Message):
    __slots__ = ("peer", "ike_state", "remote_endpoint", "ike_transform", "established_at", "children", "dpd_rtt_us", "last_error", "last_error_at", "nat_detected", "rekeys")
    PEER_FIELD_NUMBER: _ClassVar[int]
    IKE_STATE_FIELD_NUMBER: _ClassVar[int]
    REMOTE_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    IKE_TRANSFORM_FIELD_NUMBER: _ClassVar[int]
    ESTABLISHED_AT_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    DPD_RTT_US_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_AT_FIELD_NUMBER: _ClassVar[int]
    NAT_DETECTED_FIELD_NUMBER: _ClassVar[int]
    REKEYS_FIELD_NUMBER: _ClassVar[int]
    peer: str
    ike_state: IkeSaState
    remote_endpoint: str
    ike_transform: str
    established_at: _timestamp_pb2.Timestamp
    children: _containers.RepeatedCompositeFieldContainer[ChildSaStatus]
    dpd_rtt_us: int
    last_error: str
    last_error_at: _timestamp_pb2.Timestamp
    nat_detected: bool
    rekeys: int
    def __init__(self, peer: _Optional[str] = ..., ike_state: _Optional[_Union[IkeSaState, str]] = ..., remote_endpoint: _Optional[str] = ..., ike_transform: _Optional[str] = ..., established_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., children: _Optional[_Iterable[_Union[ChildSaStatus, _Mapping]]] = ..., dpd_rtt_us: _Optional[int] = ..., last_error: _Optional[str] = ..., last_error_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., nat_detected: _Optional[bool] = ..., rekeys: _Optional[int] = ...) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("node", "applied_version", "reported_at", "agent_version", "peers", "counters", "errors", "connected", "announced_subnets")
    NODE_FIELD_NUMBER: _ClassVar[int]
    APPLIED_VERSION_FIELD_NUMBER: _ClassVar[int]
    REPORTED_AT_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    ANNOUNCED_SUBNETS_FIELD_NUMBER: _ClassVar[int]
    node: str
    applied_version: int
    reported_at: _timestamp_pb2.Timestamp
    agent_version: str
    peers: _containers.RepeatedCompositeFieldContainer[PeerStatus]
    counters: Counters
    errors: _containers.RepeatedScalarFieldContainer[str]
    connected: bool
    announced_subnets: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node: _Optional[str] = ..., applied_version: _Optional[int] = ..., reported_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., agent_version: _Optional[str] = ..., peers: _Optional[_Iterable[_Union[PeerStatus, _Mapping]]] = ..., counters: _Optional[_Union[Counters, _Mapping]] = ..., errors: _Optional[_Iterable[str]] = ..., connected: _Optional[bool] = ..., announced_subnets: _Optional[_Iterable[str]] = ...) -> None: ...
