"""Limits on what an xDS request may carry in the fields cilia interprets: pure checks, no I/O.

A proxy, or anything that can open a stream, chooses every byte of its requests. The server stores the
node id (per-proxy status, `/debug/proxies`), keeps subscribed names per stream, shows NACK texts, and
reads the node agent's report out of `node.metadata`; each of these is bounded here, so that a request
over a limit ends that stream with INVALID_ARGUMENT and a message naming the field, instead of costing
memory or time in proportion to what the peer sent. Values are far above anything Envoy, gRPC or the
node agent send (a node id is `ROLE~NAMESPACE/POD`: at most about 330 bytes for Kubernetes names).

The checks accept the generated protobuf messages (`DiscoveryRequest`, `DeltaDiscoveryRequest`) or any
object with the same fields, and read nothing else. A request whose whole encoding is at most
MAX_VERSION_BYTES (the smallest limit) and that has no node is let through on its size alone: no field of
it can be over a limit. That is every ACK a proxy sends, so the fan-out does not pay the field walk per ACK.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from cilia.errors import XdsProtocolError

MAX_NODE_ID_BYTES: Final = 512
"""Longest `node.id` (UTF-8 bytes)."""
MAX_TYPE_URL_BYTES: Final = 256
"""Longest `type_url`; every type cilia serves is under 100."""
MAX_RESOURCE_NAME_BYTES: Final = 1024
"""Longest resource name in `resource_names`, `resource_names_(un)subscribe`, `initial_resource_versions`."""
MAX_RESOURCE_NAMES_PER_REQUEST: Final = 100_000
"""Most names in one of those fields of one request (the same figure as names subscribed per stream and type)."""
MAX_VERSION_BYTES: Final = 256
"""Longest `version_info`, `response_nonce`, and version in `initial_resource_versions`; cilia's are < 70."""
MAX_NODE_METADATA_BYTES: Final = 64 * 1024
"""Largest encoded `node.metadata` (a Struct)."""
MAX_NODE_METADATA_DEPTH: Final = 32
"""Deepest nesting of Structs and lists inside `node.metadata` (the Struct itself is level 1)."""
SMALL_REQUEST_BYTES: Final = min(MAX_NODE_ID_BYTES, MAX_TYPE_URL_BYTES, MAX_RESOURCE_NAME_BYTES, MAX_VERSION_BYTES,
                                 MAX_RESOURCE_NAMES_PER_REQUEST)
"""A request without node encoded in at most this many bytes has no field over any limit (see `_small`)."""
MAX_ERROR_DETAIL_BYTES: Final = 4096
"""Longest NACK text (`error_detail.message`) kept; longer texts are cut, not refused (Envoy's can be long)."""


class RequestLimitError(XdsProtocolError):
    """A request field is over a limit above; `field` names it. Answer with INVALID_ARGUMENT."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _utf8_len(text: str) -> int:
    # A character is at most 4 bytes: most strings are known short without encoding them.
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def check_string(value: str, field: str, limit: int) -> None:
    """`value` is at most `limit` UTF-8 bytes."""
    if len(value) > limit or (len(value) * 4 > limit and _utf8_len(value) > limit):
        raise RequestLimitError(field, f"is {_utf8_len(value)} bytes, over the limit of {limit}")


def check_node_id(node_id: str) -> None:
    check_string(node_id, "node.id", MAX_NODE_ID_BYTES)


def check_type_url(type_url: str) -> None:
    check_string(type_url, "type_url", MAX_TYPE_URL_BYTES)


def check_resource_names(names: Iterable[str], field: str) -> None:
    """At most MAX_RESOURCE_NAMES_PER_REQUEST names, each at most MAX_RESOURCE_NAME_BYTES."""
    count = 0
    for count, name in enumerate(names, 1):
        if count > MAX_RESOURCE_NAMES_PER_REQUEST:
            raise RequestLimitError(field, f"has more than {MAX_RESOURCE_NAMES_PER_REQUEST} names")
        if len(name) * 4 > MAX_RESOURCE_NAME_BYTES:
            check_string(name, f"{field}[{count - 1}]", MAX_RESOURCE_NAME_BYTES)


def check_resource_versions(versions: Mapping[str, str], field: str = "initial_resource_versions") -> None:
    """Delta's name -> version map: names as in check_resource_names, versions at most MAX_VERSION_BYTES."""
    check_resource_names(versions.keys(), field)
    for name, version in versions.items():
        if len(version) * 4 > MAX_VERSION_BYTES:
            check_string(version, f"{field}[{name!r}]", MAX_VERSION_BYTES)


def check_struct(struct: Any, field: str, *, max_bytes: int = MAX_NODE_METADATA_BYTES,
                 max_depth: int = MAX_NODE_METADATA_DEPTH) -> None:
    """A `google.protobuf.Struct` is at most `max_bytes` encoded and nests at most `max_depth` levels.

    Walks with an explicit stack (no recursion); the size is read from the message, not re-encoded.
    """
    size = struct.ByteSize()
    if size > max_bytes:
        raise RequestLimitError(field, f"is {size} bytes, over the limit of {max_bytes}")
    stack: list[tuple[Any, int, str]] = [(struct, 1, field)]
    while stack:
        node, depth, where = stack.pop()
        if depth > max_depth:
            raise RequestLimitError(where, f"nests deeper than {max_depth} levels")
        if hasattr(node, "fields"):  # Struct
            children: Iterable[tuple[str, Any]] = ((f".{k}", v) for k, v in node.fields.items())
        else:  # ListValue
            children = ((f"[{i}]", v) for i, v in enumerate(node.values))
        for step, value in children:
            kind = value.WhichOneof("kind")
            if kind == "struct_value":
                stack.append((value.struct_value, depth + 1, where + step))
            elif kind == "list_value":
                stack.append((value.list_value, depth + 1, where + step))


def check_node(node: Any) -> None:
    """The parts of an Envoy `Node` the server keeps or reads: id and metadata."""
    check_node_id(node.id)
    check_struct(node.metadata, "node.metadata")


def _small(req: Any) -> bool:
    """No node, and at most MAX_VERSION_BYTES encoded: every string (UTF-8) and every name count is within
    every limit above. Objects without `ByteSize` are checked field by field."""
    try:
        size = req.ByteSize()
    except AttributeError:
        return False
    return size <= SMALL_REQUEST_BYTES and not req.HasField("node")


def check_discovery_request(req: Any) -> None:
    """Every interpreted field of a SotW `DiscoveryRequest`; raises RequestLimitError naming the first
    one over its limit."""
    if _small(req):
        return
    if req.HasField("node"):
        check_node(req.node)
    check_type_url(req.type_url)
    check_string(req.version_info, "version_info", MAX_VERSION_BYTES)
    check_string(req.response_nonce, "response_nonce", MAX_VERSION_BYTES)
    check_resource_names(req.resource_names, "resource_names")


def check_delta_request(req: Any) -> None:
    """Every interpreted field of a `DeltaDiscoveryRequest`; raises RequestLimitError naming the first
    one over its limit."""
    if _small(req):
        return
    if req.HasField("node"):
        check_node(req.node)
    check_type_url(req.type_url)
    check_string(req.response_nonce, "response_nonce", MAX_VERSION_BYTES)
    check_resource_names(req.resource_names_subscribe, "resource_names_subscribe")
    check_resource_names(req.resource_names_unsubscribe, "resource_names_unsubscribe")
    check_resource_versions(req.initial_resource_versions)


def error_detail_text(req: Any) -> str:
    """The NACK text of a request ("" for an ACK or a first request), cut to MAX_ERROR_DETAIL_BYTES; a
    NACK with a code but no message reads "error code N"."""
    if not req.HasField("error_detail"):
        return ""
    text = str(req.error_detail.message)
    if not text:
        code = int(req.error_detail.code)
        return f"error code {code}" if code else ""
    if _utf8_len(text) <= MAX_ERROR_DETAIL_BYTES:
        return text
    cut = text.encode("utf-8", "surrogatepass")[:MAX_ERROR_DETAIL_BYTES].decode("utf-8", "ignore")
    return f"{cut}... (cut at {MAX_ERROR_DETAIL_BYTES} bytes)"
