"""Message classes of `proto/cilia/redirect/v1/redirect.proto` (package `cilia.redirect.v1`).

The classes are protoc's, generated with grpcio-tools into `cilia.api.redirect.v1.redirect_pb2`
(`make proto`; a test checks the checked-in code equals a fresh generation). This module keeps the
short names the translators and the node agent use. Importing it registers the file in protobuf's
default pool, so `Any.Unpack`, `json_format` and `type.googleapis.com/cilia.redirect.v1.*` type URLs
resolve like any other message.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2

from cilia.api.redirect.v1 import redirect_pb2 as _pb

PROTO_FILE = "cilia/redirect/v1/redirect.proto"
PACKAGE = "cilia.redirect.v1"
TYPE_URL = "type.googleapis.com/cilia.redirect.v1.NodeRedirectPolicy"

DESCRIPTOR = _pb.DESCRIPTOR
MeshPod = _pb.MeshPod
MeshService = _pb.MeshService
NodeRedirectPolicy = _pb.NodeRedirectPolicy
CaptureMode = _pb.CaptureMode
Protocol = _pb.Protocol

CAPTURE_MODE_UNSPECIFIED = _pb.CAPTURE_MODE_UNSPECIFIED
NODE = _pb.NODE
SIDECAR = _pb.SIDECAR
PROTOCOL_UNSPECIFIED = _pb.PROTOCOL_UNSPECIFIED
TCP = _pb.TCP
UDP = _pb.UDP


def file_descriptor_proto() -> descriptor_pb2.FileDescriptorProto:
    """The FileDescriptorProto of redirect.proto, as protoc compiled it."""
    fdp = descriptor_pb2.FileDescriptorProto()
    DESCRIPTOR.CopyToProto(fdp)
    return fdp


__all__ = [
    "CAPTURE_MODE_UNSPECIFIED",
    "DESCRIPTOR",
    "NODE",
    "PROTOCOL_UNSPECIFIED",
    "SIDECAR",
    "TCP",
    "TYPE_URL",
    "UDP",
    "CaptureMode",
    "MeshPod",
    "MeshService",
    "NodeRedirectPolicy",
    "Protocol",
    "file_descriptor_proto",
]
