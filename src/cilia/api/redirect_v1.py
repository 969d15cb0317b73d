"""Message classes for `proto/cilia/redirect/v1/redirect.proto` (package `cilia.redirect.v1`).

The descriptor is built here from a FileDescriptorProto and added to protobuf's default pool, so
the classes work with the upb runtime without protoc-generated code, and `Any.Unpack`,
`json_format` and `type.googleapis.com/cilia.redirect.v1.*` type URLs resolve like any other
message. `tests/kernel/test_redirect_api.py` checks this module against the .proto file.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PROTO_FILE = "cilia/redirect/v1/redirect.proto"
PACKAGE = "cilia.redirect.v1"
TYPE_URL = "type.googleapis.com/cilia.redirect.v1.NodeRedirectPolicy"

_F = descriptor_pb2.FieldDescriptorProto
_STRING = _F.TYPE_STRING
_UINT32 = _F.TYPE_UINT32
_ENUM = _F.TYPE_ENUM
_MESSAGE = _F.TYPE_MESSAGE
_OPTIONAL = _F.LABEL_OPTIONAL
_REPEATED = _F.LABEL_REPEATED

# (message, [(field name, number, type, label, type name)]) in .proto order.
_MESSAGES: list[tuple[str, list[tuple[str, int, int, int, str]]]] = [
    (
        "MeshPod",
        [
            ("namespace", 1, _STRING, _OPTIONAL, ""),
            ("name", 2, _STRING, _OPTIONAL, ""),
            ("cgroup_path", 3, _STRING, _OPTIONAL, ""),
            ("uid", 4, _STRING, _OPTIONAL, ""),
            ("pod_ips", 5, _STRING, _REPEATED, ""),
            ("mode", 6, _ENUM, _OPTIONAL, ".cilia.redirect.v1.CaptureMode"),
            ("sidecar_address", 7, _STRING, _OPTIONAL, ""),
            ("sidecar_port", 8, _UINT32, _OPTIONAL, ""),
            ("inbound_port", 9, _UINT32, _OPTIONAL, ""),
            ("sidecar_cgroup_path", 10, _STRING, _OPTIONAL, ""),
        ],
    ),
    (
        "MeshService",
        [
            ("namespace", 1, _STRING, _OPTIONAL, ""),
            ("name", 2, _STRING, _OPTIONAL, ""),
            ("vip", 3, _STRING, _OPTIONAL, ""),
            ("port", 4, _UINT32, _OPTIONAL, ""),
            ("protocol", 5, _ENUM, _OPTIONAL, ".cilia.redirect.v1.Protocol"),
            ("listener_port", 6, _UINT32, _OPTIONAL, ""),
        ],
    ),
    (
        "NodeRedirectPolicy",
        [
            ("node_name", 1, _STRING, _OPTIONAL, ""),
            ("proxy_address", 2, _STRING, _OPTIONAL, ""),
            ("proxy_port", 3, _UINT32, _OPTIONAL, ""),
            ("inbound_port", 4, _UINT32, _OPTIONAL, ""),
            ("pods", 5, _MESSAGE, _REPEATED, ".cilia.redirect.v1.MeshPod"),
            ("services", 6, _MESSAGE, _REPEATED, ".cilia.redirect.v1.MeshService"),
            ("node_inbound_port", 7, _UINT32, _OPTIONAL, ""),
            ("node_inbound_mark", 8, _UINT32, _OPTIONAL, ""),
            ("node_inbound_address", 9, _STRING, _OPTIONAL, ""),
        ],
    ),
]

_ENUMS: list[tuple[str, list[tuple[str, int]]]] = [
    ("CaptureMode", [("CAPTURE_MODE_UNSPECIFIED", 0), ("NODE", 1), ("SIDECAR", 2)]),
    ("Protocol", [("PROTOCOL_UNSPECIFIED", 0), ("TCP", 1), ("UDP", 2)]),
]


def file_descriptor_proto() -> descriptor_pb2.FileDescriptorProto:
    """The FileDescriptorProto that protoc would produce for redirect.proto (sans comments)."""
    fdp = descriptor_pb2.FileDescriptorProto(name=PROTO_FILE, package=PACKAGE, syntax="proto3")
    for enum_name, values in _ENUMS:
        enum = fdp.enum_type.add(name=enum_name)
        for value_name, number in values:
            enum.value.add(name=value_name, number=number)
    for msg_name, fields in _MESSAGES:
        msg = fdp.message_type.add(name=msg_name)
        for field_name, number, ftype, label, type_name in fields:
            field = msg.field.add(name=field_name, number=number, type=ftype, label=label)
            field.json_name = _json_name(field_name)
            if type_name:
                field.type_name = type_name
    return fdp


def _json_name(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _register() -> Any:
    pool = descriptor_pool.Default()
    try:
        return pool.FindFileByName(PROTO_FILE)
    except KeyError:
        return pool.AddSerializedFile(file_descriptor_proto().SerializeToString())


DESCRIPTOR = _register()

# Message classes are created at runtime, so type checkers see them as Any.
MeshPod: Any = message_factory.GetMessageClass(DESCRIPTOR.message_types_by_name["MeshPod"])
MeshService: Any = message_factory.GetMessageClass(DESCRIPTOR.message_types_by_name["MeshService"])
NodeRedirectPolicy: Any = message_factory.GetMessageClass(
    DESCRIPTOR.message_types_by_name["NodeRedirectPolicy"]
)

CAPTURE_MODE_UNSPECIFIED = 0
NODE = 1
SIDECAR = 2
PROTOCOL_UNSPECIFIED = 0
TCP = 1
UDP = 2

__all__ = [
    "CAPTURE_MODE_UNSPECIFIED",
    "DESCRIPTOR",
    "NODE",
    "PROTOCOL_UNSPECIFIED",
    "SIDECAR",
    "TCP",
    "TYPE_URL",
    "UDP",
    "MeshPod",
    "MeshService",
    "NodeRedirectPolicy",
    "file_descriptor_proto",
]
