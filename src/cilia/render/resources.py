"""Rendered resources: each serialised once, versioned by content hash, reused for every proxy.

The wire helpers build `Any`, discovery `Resource` and whole discovery responses by concatenating
pre-serialised fields, so sending one resource to a thousand proxies costs a thousand writes and no
protobuf work at all.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any, Final

TYPE_PREFIX: Final = "type.googleapis.com/"
NOT_FOUND: Final = 5  # google.rpc.Code
LISTENER: Final = TYPE_PREFIX + "envoy.config.listener.v3.Listener"
ROUTE: Final = TYPE_PREFIX + "envoy.config.route.v3.RouteConfiguration"
CLUSTER: Final = TYPE_PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT: Final = TYPE_PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET: Final = TYPE_PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"
REDIRECT_POLICY: Final = TYPE_PREFIX + "cilia.redirect.v1.NodeRedirectPolicy"

# Make-before-break: a proxy gets what is referenced before what refers to it.
TYPE_ORDER: Final = (SECRET, CLUSTER, ENDPOINT, LISTENER, ROUTE, REDIRECT_POLICY)
SHORT_NAMES: Final = {LISTENER: "listeners", ROUTE: "routes", CLUSTER: "clusters", ENDPOINT: "endpoints",
                      SECRET: "secrets", REDIRECT_POLICY: "redirects"}
SHORT_TO_TYPE: Final = {v: k for k, v in SHORT_NAMES.items()}


_ONE_BYTE: Final = tuple(bytes((i,)) for i in range(0x80))


def varint(n: int) -> bytes:
    if n < 0x80:  # tags and most lengths: no loop (this runs several times per resource and response)
        return _ONE_BYTE[n]
    if n < 0x4000:
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_bytes(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return varint((number << 3) | 2) + varint(len(payload)) + payload


def _length(n: int) -> bytes:
    return _ONE_BYTE[n] if n < 0x80 else varint(n)


_ANY_PREFIX: dict[str, bytes] = {}  # type URL -> its Any.type_url field


def content_version(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


class Resource:
    """One Envoy resource at one version. Immutable after construction. Its wire forms (as an `Any`, as a
    discovery `Resource`) are made on first use: most of a large config's resources are only ever sent
    through responses built once per selection, and some (what no connected proxy asks for) never."""

    __slots__ = ("_any_bytes", "_delta_bytes", "body", "message", "name", "type_url", "version")

    def __init__(self, type_url: str, name: str, body: bytes, message: Any = None) -> None:
        self.type_url = type_url
        self.name = name
        self.body = body
        self.message = message
        self.version = hashlib.blake2b(body, digest_size=8).hexdigest()  # content_version
        self._any_bytes: bytes | None = None
        self._delta_bytes: bytes | None = None

    @property
    def any_bytes(self) -> bytes:
        """Serialised `google.protobuf.Any`: type_url=1, value=2."""
        out = self._any_bytes
        if out is None:
            prefix = _ANY_PREFIX.get(self.type_url)
            if prefix is None:
                prefix = _ANY_PREFIX[self.type_url] = field_bytes(1, self.type_url.encode())
            body = self.body
            out = self._any_bytes = prefix + b"\x12" + _length(len(body)) + body
        return out

    @property
    def delta_bytes(self) -> bytes:
        """Serialised envoy.service.discovery.v3.Resource: version=1 (16 hex digits), resource=2, name=3."""
        out = self._delta_bytes
        if out is None:
            any_bytes = self.any_bytes
            encoded = self.name.encode()
            out = self._delta_bytes = b"\x0a\x10" + self.version.encode() + b"\x12" + _length(len(any_bytes)) + \
                any_bytes + b"\x1a" + _length(len(encoded)) + encoded
        return out

    def __repr__(self) -> str:
        return f"Resource({self.type_url.rsplit('.', 1)[-1]} {self.name!r} v{self.version})"

    @classmethod
    def of(cls, type_url: str, name: str, message: Any) -> Resource:
        """The message is not kept: nothing reads it back, and holding tens of thousands of them makes
        every full garbage collection of a large config slower."""
        return cls(type_url, name, message.SerializeToString(deterministic=True))


def sotw_response(version_info: str, resources: Iterable[Resource], type_url: str, nonce: str) -> bytes:
    """Serialised envoy.service.discovery.v3.DiscoveryResponse."""
    parts = [field_bytes(1, version_info.encode())]
    parts.extend(field_bytes(2, r.any_bytes) for r in resources)
    parts.append(field_bytes(4, type_url.encode()))
    parts.append(field_bytes(5, nonce.encode()))
    return b"".join(parts)


def delta_response(system_version: str, resources: Iterable[Resource], type_url: str,
                   removed: Iterable[str], nonce: str) -> bytes:
    """Serialised envoy.service.discovery.v3.DeltaDiscoveryResponse."""
    parts = [field_bytes(1, system_version.encode())]
    parts.extend(field_bytes(2, r.delta_bytes) for r in resources)
    parts.append(field_bytes(4, type_url.encode()))
    parts.append(field_bytes(5, nonce.encode()))
    parts.extend(field_bytes(6, name.encode()) for name in removed)
    return b"".join(parts)


def not_found_errors(names: Iterable[str]) -> bytes:
    """DiscoveryResponse.resource_errors (field 7): NOT_FOUND for each name, so a client that subscribed to
    a name that does not exist learns it at once (gRPC: xDS data error handling, A88)."""
    parts = []
    for name in names:
        status = varint(1 << 3) + varint(NOT_FOUND) + field_bytes(2, b"does not exist")
        error = field_bytes(1, field_bytes(1, name.encode())) + field_bytes(2, status)  # ResourceName, Status
        parts.append(field_bytes(7, error))
    return b"".join(parts)


def set_version(resources: Iterable[Resource]) -> str:
    """A version for a set of resources: changes when any member or membership changes."""
    h = hashlib.blake2b(digest_size=8)
    for r in sorted(resources, key=lambda r: r.name):
        h.update(r.name.encode())
        h.update(b"\0")
        h.update(r.version.encode())
        h.update(b"\n")
    return h.hexdigest()
