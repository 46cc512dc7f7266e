import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from meshsec.api.v1 import spec_pb2 as _spec_pb2
from meshsec.api.v1 import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExportFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPORT_FORMAT_UNSPECIFIED: _ClassVar[ExportFormat]
    EXPORT_FORMAT_SWANCTL: _ClassVar[ExportFormat]
EXPORT_FORMAT_UNSPECIFIED: ExportFormat
EXPORT_FORMAT_SWANCTL: ExportFormat

class ApplyRequest(_message.Message):
    __slots__ = ("spec_yaml", "filename", "dry_run")
    SPEC_YAML_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    spec_yaml: str
    filename: str
    dry_run: bool
    def __init__(self, spec_yaml: _Optional[str] = ..., filename: _Optional[str] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class SpecError(_message.Message):
    __slots__ = ("file", "line", "field", "reason")
    FILE_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    file: str
    line: int
    field: str
    reason: str
    def __init__(self, file: _Optional[str] = ..., line: _Optional[int] = ..., field: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class NodePlan(_message.Message):
    __slots__ = ("node", "peers_added", "peers_changed", "peers_removed", "sas_added", "sas_removed")
    NODE_FIELD_NUMBER: _ClassVar[int]
    PEERS_ADDED_FIELD_NUMBER: _ClassVar[int]
    PEERS_CHANGED_FIELD_NUMBER: _ClassVar[int]
    PEERS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    SAS_ADDED_FIELD_NUMBER: _ClassVar[int]
    SAS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    node: str
    peers_added: _containers.RepeatedScalarFieldContainer[str]
    peers_changed: _containers.RepeatedScalarFieldContainer[str]
    peers_removed: _containers.RepeatedScalarFieldContainer[str]
    sas_added: _containers.RepeatedScalarFieldContainer[str]
    sas_removed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node: _Optional[str] = ..., peers_added: _Optional[_Iterable[str]] = ..., peers_changed: _Optional[_Iterable[str]] = ..., peers_removed: _Optional[_Iterable[str]] = ..., sas_added: _Optional[_Iterable[str]] = ..., sas_removed: _Optional[_Iterable[str]] = ...) -> None: ...

class ApplyResponse(_message.Message):
    __slots__ = ("errors", "plan", "version")
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    errors: _containers.RepeatedCompositeFieldContainer[SpecError]
    plan: _containers.RepeatedCompositeFieldContainer[NodePlan]
    version: int
    def __init__(self, errors: _Optional[_Iterable[_Union[SpecError, _Mapping]]] = ..., plan: _Optional[_Iterable[_Union[NodePlan, _Mapping]]] = ..., version: _Optional[int] = ...) -> None: ...

class GetSpecRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetSpecResponse(_message.Message):
    __slots__ = ("spec", "version")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    spec: _spec_pb2.MeshSpec
    version: int
    def __init__(self, spec: _Optional[_Union[_spec_pb2.MeshSpec, _Mapping]] = ..., version: _Optional[int] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeView(_message.Message):
    __slots__ = ("node", "cert_fingerprint", "cert_not_after", "connected", "applied_version")
    NODE_FIELD_NUMBER: _ClassVar[int]
    CERT_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    CERT_NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    APPLIED_VERSION_FIELD_NUMBER: _ClassVar[int]
    node: _spec_pb2.Node
    cert_fingerprint: str
    cert_not_after: _timestamp_pb2.Timestamp
    connected: bool
    applied_version: int
    def __init__(self, node: _Optional[_Union[_spec_pb2.Node, _Mapping]] = ..., cert_fingerprint: _Optional[str] = ..., cert_not_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., connected: _Optional[bool] = ..., applied_version: _Optional[int] = ...) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeView]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeView, _Mapping]]] = ...) -> None: ...

class GetNodeRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteNodeRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteNodeResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: str
    def __init__(self, node: _Optional[str] = ...) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[_status_pb2.NodeStatus]
    def __init__(self, nodes: _Optional[_Iterable[_Union[_status_pb2.NodeStatus, _Mapping]]] = ...) -> None: ...

class CreateTokenRequest(_message.Message):
    __slots__ = ("node", "ttl_seconds", "uses")
    NODE_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    USES_FIELD_NUMBER: _ClassVar[int]
    node: str
    ttl_seconds: int
    uses: int
    def __init__(self, node: _Optional[str] = ..., ttl_seconds: _Optional[int] = ..., uses: _Optional[int] = ...) -> None: ...

class CreateTokenResponse(_message.Message):
    __slots__ = ("token", "expires_at", "ca_cert_sha256")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    CA_CERT_SHA256_FIELD_NUMBER: _ClassVar[int]
    token: str
    expires_at: _timestamp_pb2.Timestamp
    ca_cert_sha256: str
    def __init__(self, token: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ca_cert_sha256: _Optional[str] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("since_version",)
    SINCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    since_version: int
    def __init__(self, since_version: _Optional[int] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("version", "time", "spec_changed", "status_changed", "node_deleted")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    SPEC_CHANGED_FIELD_NUMBER: _ClassVar[int]
    STATUS_CHANGED_FIELD_NUMBER: _ClassVar[int]
    NODE_DELETED_FIELD_NUMBER: _ClassVar[int]
    version: int
    time: _timestamp_pb2.Timestamp
    spec_changed: SpecChanged
    status_changed: _status_pb2.NodeStatus
    node_deleted: str
    def __init__(self, version: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., spec_changed: _Optional[_Union[SpecChanged, _Mapping]] = ..., status_changed: _Optional[_Union[_status_pb2.NodeStatus, _Mapping]] = ..., node_deleted: _Optional[str] = ...) -> None: ...

class SpecChanged(_message.Message):
    __slots__ = ("plan",)
    PLAN_FIELD_NUMBER: _ClassVar[int]
    plan: _containers.RepeatedCompositeFieldContainer[NodePlan]
    def __init__(self, plan: _Optional[_Iterable[_Union[NodePlan, _Mapping]]] = ...) -> None: ...

class RevokeNodeRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RevokeNodeResponse(_message.Message):
    __slots__ = ("fingerprints", "version")
    FINGERPRINTS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    fingerprints: _containers.RepeatedScalarFieldContainer[str]
    version: int
    def __init__(self, fingerprints: _Optional[_Iterable[str]] = ..., version: _Optional[int] = ...) -> None: ...

class RotateCARequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RotateCAResponse(_message.Message):
    __slots__ = ("started", "status")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    started: bool
    status: CAStatus
    def __init__(self, started: _Optional[bool] = ..., status: _Optional[_Union[CAStatus, _Mapping]] = ...) -> None: ...

class GetCARequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CACertificate(_message.Message):
    __slots__ = ("sha256", "subject", "not_after", "signing")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    SIGNING_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    subject: str
    not_after: _timestamp_pb2.Timestamp
    signing: bool
    def __init__(self, sha256: _Optional[str] = ..., subject: _Optional[str] = ..., not_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., signing: _Optional[bool] = ...) -> None: ...

class CAStatus(_message.Message):
    __slots__ = ("phase", "phase_since", "next_step_at", "cas", "reason")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    PHASE_SINCE_FIELD_NUMBER: _ClassVar[int]
    NEXT_STEP_AT_FIELD_NUMBER: _ClassVar[int]
    CAS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    phase: str
    phase_since: _timestamp_pb2.Timestamp
    next_step_at: _timestamp_pb2.Timestamp
    cas: _containers.RepeatedCompositeFieldContainer[CACertificate]
    reason: str
    def __init__(self, phase: _Optional[str] = ..., phase_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., next_step_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cas: _Optional[_Iterable[_Union[CACertificate, _Mapping]]] = ..., reason: _Optional[str] = ...) -> None: ...

class ExportRequest(_message.Message):
    __slots__ = ("name", "format", "include_secrets")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SECRETS_FIELD_NUMBER: _ClassVar[int]
    name: str
    format: ExportFormat
    include_secrets: bool
    def __init__(self, name: _Optional[str] = ..., format: _Optional[_Union[ExportFormat, str]] = ..., include_secrets: _Optional[bool] = ...) -> None: ...

class ExportFile(_message.Message):
    __slots__ = ("path", "content")
    PATH_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    path: str
    content: str
    def __init__(self, path: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class ExportResponse(_message.Message):
    __slots__ = ("config", "files", "has_secrets", "has_placeholders", "version")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    HAS_SECRETS_FIELD_NUMBER: _ClassVar[int]
    HAS_PLACEHOLDERS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    config: str
    files: _containers.RepeatedCompositeFieldContainer[ExportFile]
    has_secrets: bool
    has_placeholders: bool
    version: int
    def __init__(self, config: _Optional[str] = ..., files: _Optional[_Iterable[_Union[ExportFile, _Mapping]]] = ..., has_secrets: _Optional[bool] = ..., has_placeholders: _Optional[bool] = ..., version: _Optional[int] = ...) -> None: ...
