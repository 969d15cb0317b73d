from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CaptureMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CAPTURE_MODE_UNSPECIFIED: _ClassVar[CaptureMode]
    NODE: _ClassVar[CaptureMode]
    SIDECAR: _ClassVar[CaptureMode]

class Protocol(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROTOCOL_UNSPECIFIED: _ClassVar[Protocol]
    TCP: _ClassVar[Protocol]
    UDP: _ClassVar[Protocol]
CAPTURE_MODE_UNSPECIFIED: CaptureMode
NODE: CaptureMode
SIDECAR: CaptureMode
PROTOCOL_UNSPECIFIED: Protocol
TCP: Protocol
UDP: Protocol

class MeshPod(_message.Message):
    __slots__ = ("namespace", "name", "cgroup_path", "uid", "pod_ips", "mode", "sidecar_address", "sidecar_port", "inbound_port", "sidecar_cgroup_path", "egress_cidrs")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CGROUP_PATH_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    POD_IPS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SIDECAR_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SIDECAR_PORT_FIELD_NUMBER: _ClassVar[int]
    INBOUND_PORT_FIELD_NUMBER: _ClassVar[int]
    SIDECAR_CGROUP_PATH_FIELD_NUMBER: _ClassVar[int]
    EGRESS_CIDRS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    cgroup_path: str
    uid: str
    pod_ips: _containers.RepeatedScalarFieldContainer[str]
    mode: CaptureMode
    sidecar_address: str
    sidecar_port: int
    inbound_port: int
    sidecar_cgroup_path: str
    egress_cidrs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., cgroup_path: _Optional[str] = ..., uid: _Optional[str] = ..., pod_ips: _Optional[_Iterable[str]] = ..., mode: _Optional[_Union[CaptureMode, str]] = ..., sidecar_address: _Optional[str] = ..., sidecar_port: _Optional[int] = ..., inbound_port: _Optional[int] = ..., sidecar_cgroup_path: _Optional[str] = ..., egress_cidrs: _Optional[_Iterable[str]] = ...) -> None: ...

class MeshService(_message.Message):
    __slots__ = ("namespace", "name", "vip", "port", "protocol", "listener_port")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VIP_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    LISTENER_PORT_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    vip: str
    port: int
    protocol: Protocol
    listener_port: int
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., vip: _Optional[str] = ..., port: _Optional[int] = ..., protocol: _Optional[_Union[Protocol, str]] = ..., listener_port: _Optional[int] = ...) -> None: ...

class NodeRedirectPolicy(_message.Message):
    __slots__ = ("node_name", "proxy_address", "proxy_port", "inbound_port", "pods", "services", "node_inbound_port", "node_inbound_mark", "node_inbound_address")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    PROXY_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PROXY_PORT_FIELD_NUMBER: _ClassVar[int]
    INBOUND_PORT_FIELD_NUMBER: _ClassVar[int]
    PODS_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    NODE_INBOUND_PORT_FIELD_NUMBER: _ClassVar[int]
    NODE_INBOUND_MARK_FIELD_NUMBER: _ClassVar[int]
    NODE_INBOUND_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    proxy_address: str
    proxy_port: int
    inbound_port: int
    pods: _containers.RepeatedCompositeFieldContainer[MeshPod]
    services: _containers.RepeatedCompositeFieldContainer[MeshService]
    node_inbound_port: int
    node_inbound_mark: int
    node_inbound_address: str
    def __init__(self, node_name: _Optional[str] = ..., proxy_address: _Optional[str] = ..., proxy_port: _Optional[int] = ..., inbound_port: _Optional[int] = ..., pods: _Optional[_Iterable[_Union[MeshPod, _Mapping]]] = ..., services: _Optional[_Iterable[_Union[MeshService, _Mapping]]] = ..., node_inbound_port: _Optional[int] = ..., node_inbound_mark: _Optional[int] = ..., node_inbound_address: _Optional[str] = ...) -> None: ...
