"""Client Status Discovery Service: what every proxy was sent and whether it took it.

`envoy.service.status.v3.ClientStatusDiscoveryService` on the xDS port. For each proxy that matches the
request's `node_matchers` (all proxies when there are none) one `ClientConfig` lists, per resource last
sent, a `GenericXdsConfig` with the resource as sent (an `Any`), its version and the type's sync state:
SYNCED (ACKed), STALE (sent, no answer yet), ERROR + client_status NACKED (rejected; error_state has
the proxy's message), NOT_SENT (subscribed, nothing sent yet). A type with no resources still gets one
entry with an empty name, so its state is always visible.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from envoy.admin.v3 import config_dump_shared_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.status.v3 import csds_pb2
from envoy.type.matcher.v3 import node_pb2, string_pb2, value_pb2
from google.protobuf import struct_pb2

from cilia.render.dump import public_any
from cilia.render.resources import Resource
from cilia.xds.status import ProxyStatus, TypeStatus

SentLookup = Callable[[str, str], list[tuple[str, str, Resource | None]]]  # (proxy id, type) -> sent

CONFIG_STATUS = {"SYNCED": csds_pb2.SYNCED, "STALE": csds_pb2.STALE, "NACKED": csds_pb2.ERROR,
                 "NOT_SENT": csds_pb2.NOT_SENT}
CLIENT_STATUS = {"SYNCED": config_dump_shared_pb2.ACKED, "STALE": config_dump_shared_pb2.REQUESTED,
                 "NACKED": config_dump_shared_pb2.NACKED, "NOT_SENT": config_dump_shared_pb2.REQUESTED}


class MatcherError(ValueError):
    """A node matcher cilia cannot evaluate (names the unsupported field)."""


def string_matches(m: string_pb2.StringMatcher, value: str) -> bool:
    kind = m.WhichOneof("match_pattern")
    a = value.lower() if m.ignore_case else value
    if kind == "exact":
        return a == (m.exact.lower() if m.ignore_case else m.exact)
    if kind == "prefix":
        return a.startswith(m.prefix.lower() if m.ignore_case else m.prefix)
    if kind == "suffix":
        return a.endswith(m.suffix.lower() if m.ignore_case else m.suffix)
    if kind == "contains":
        return (m.contains.lower() if m.ignore_case else m.contains) in a
    if kind == "safe_regex":
        try:
            return re.fullmatch(m.safe_regex.regex, value) is not None
        except re.error as exc:
            raise MatcherError(f"node_matchers: safe_regex {m.safe_regex.regex!r}: {exc}") from None
    raise MatcherError(f"node_matchers: string matcher {kind!r} is not supported")


def _value_matches(m: value_pb2.ValueMatcher, v: struct_pb2.Value | None) -> bool:
    kind = m.WhichOneof("match_pattern")
    if kind == "present_match":
        return (v is not None) == m.present_match
    if v is None:
        return False
    if kind == "null_match":
        return v.WhichOneof("kind") == "null_value"
    if kind == "string_match":
        return v.WhichOneof("kind") == "string_value" and string_matches(m.string_match, v.string_value)
    if kind == "bool_match":
        return v.WhichOneof("kind") == "bool_value" and v.bool_value == m.bool_match
    if kind == "double_match" and m.double_match.WhichOneof("match_pattern") == "exact":
        return v.WhichOneof("kind") == "number_value" and v.number_value == m.double_match.exact
    if kind == "or_match":
        return any(_value_matches(x, v) for x in m.or_match.value_matchers)
    raise MatcherError(f"node_matchers: value matcher {kind!r} is not supported")


def node_matches(matcher: node_pb2.NodeMatcher, node_id: str, metadata: struct_pb2.Struct | None) -> bool:
    if matcher.HasField("node_id") and not string_matches(matcher.node_id, node_id):
        return False
    for sm in matcher.node_metadatas:
        value: struct_pb2.Value | None = None
        current: Any = metadata
        for seg in sm.path:
            key = seg.key
            if isinstance(current, struct_pb2.Struct) and key in current.fields:
                value = current.fields[key]
                current = value.struct_value if value.WhichOneof("kind") == "struct_value" else None
            else:
                value = None
                break
        if not _value_matches(sm.value, value):
            return False
    return True


def _type_entries(ts: TypeStatus, type_url: str, sent: Sequence[tuple[str, str, Resource | None]],
                  exclude_contents: bool) -> Iterable[csds_pb2.ClientConfig.GenericXdsConfig]:
    state = ts.state
    base: dict[str, Any] = {"type_url": type_url, "config_status": CONFIG_STATUS[state],
                            "client_status": CLIENT_STATUS[state]}
    error_state = None
    if state == "NACKED":
        error_state = config_dump_shared_pb2.UpdateFailureState(details=ts.last_nack,
                                                                version_info=ts.last_nack_version)
        if ts.last_nack_time:
            error_state.last_update_attempt.FromNanoseconds(int(ts.last_nack_time * 1e9))
    rows = list(sent) or [("", ts.version_sent, None)]
    for name, version, res in rows:
        g = csds_pb2.ClientConfig.GenericXdsConfig(name=name, version_info=version, **base)
        if ts.sent_time:
            g.last_updated.FromNanoseconds(int(ts.sent_time * 1e9))
        if res is not None and not exclude_contents:
            g.xds_config.CopyFrom(public_any(res))
        if error_state is not None:
            g.error_state.CopyFrom(error_state)
        yield g


def client_status(request: csds_pb2.ClientStatusRequest, proxies: Iterable[ProxyStatus],
                  sent: SentLookup) -> csds_pb2.ClientStatusResponse:
    """The CSDS answer for `request`. Raises MatcherError for matchers it cannot evaluate."""
    out = csds_pb2.ClientStatusResponse()
    for ps in proxies:
        metadata = ps.node.metadata if ps.node is not None else None
        if request.node_matchers and not any(node_matches(m, ps.proxy_id, metadata)
                                             for m in request.node_matchers):
            continue
        cc = out.config.add()
        if ps.node is not None:
            cc.node.CopyFrom(ps.node)
        else:
            cc.node.CopyFrom(base_pb2.Node(id=ps.proxy_id))
        for type_url, ts in sorted(ps.types.items()):
            cc.generic_xds_configs.extend(_type_entries(ts, type_url, sent(ps.proxy_id, type_url),
                                                        request.exclude_resource_contents))
    return out


__all__ = ["MatcherError", "client_status", "node_matches", "string_matches"]
