"""The fast JSON-to-message path in render/raw.py must give json_format.ParseDict's result, or step aside."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format, symbol_database

from cilia.render import raw
from cilia.render.resources import CLUSTER, LISTENER, ROUTE

CASES: list[tuple[str, dict[str, Any]]] = [
    (CLUSTER, {"name": "a", "type": "EDS", "connect_timeout": "1.5s", "connectTimeout": "2s"}),
    (CLUSTER, {"name": "a", "type": "EDS", "connect_timeout": "1s",
               "per_connection_buffer_limit_bytes": 1024, "lb_policy": "ROUND_ROBIN",
               "common_http_protocol_options": {"idle_timeout": "3s", "max_headers_count": 10}}),
    (CLUSTER, {"name": "a", "type": "STRICT_DNS", "dnsLookupFamily": "V4_ONLY",
               "load_assignment": {"cluster_name": "a", "endpoints": [{"lb_endpoints": [
                   {"endpoint": {"address": {"socket_address": {"address": "1.2.3.4", "port_value": 80}}}}]}]}}),
    (CLUSTER, {"name": "a", "type": 1}),  # enum as a number: json_format's call
    (CLUSTER, {"name": "a", "type": "NOPE"}),
    (CLUSTER, {"name": 3}),
    (CLUSTER, {"name": "a", "connect_timeout": 5}),
    (CLUSTER, {"name": "a", "type": "EDS", "cluster_type": {"name": "x"}}),  # two of one oneof
    (CLUSTER, {"name": "a", "per_connection_buffer_limit_bytes": -1}),
    (CLUSTER, {"name": "a", "per_connection_buffer_limit_bytes": None}),
    (CLUSTER, {"name": "é"}),
    (CLUSTER, {"name": "a", "metadata": {"filter_metadata": {"k": {"x": 1}}}}),
    (ROUTE, {"name": "r", "virtual_hosts": [{"name": "v", "domains": ["a", "b"], "routes": [
        {"match": {"prefix": "/x", "case_sensitive": False}, "route": {"cluster": "c", "timeout": "0s"}},
        {"match": {"path": "/y"}, "redirect": {"path_redirect": "/z"}}]}]}),
    (ROUTE, {"name": "r", "virtual_hosts": [{"name": "v", "domains": "a"}]}),
    (ROUTE, {"name": "r", "virtual_hosts": [None]}),
    (ROUTE, {"name": "r", "virtualHosts": [{"name": "v", "domains": ["a"], "unknown": 1}]}),
    (LISTENER, {"name": "l", "address": {"socket_address": {"address": "0.0.0.0", "port_value": 70000}}}),
    (LISTENER, {"name": "l", "filter_chains": [{"filters": [{"name": "f", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": "s", "cluster": "c"}}]}]}),
]


def _slow(type_url: str, body: dict[str, Any]) -> bytes | str:
    cls = symbol_database.Default().GetSymbol(type_url.rsplit("/", 1)[-1])
    msg = cls()
    try:
        json_format.ParseDict(body, msg)
    except Exception as exc:
        return type(exc).__name__
    return msg.SerializeToString(deterministic=True)


@pytest.mark.parametrize(("type_url", "body"), CASES)
def test_fast_path_agrees_with_json_format(type_url: str, body: dict[str, Any]) -> None:
    raw.load_all_envoy_types()
    want = _slow(type_url, body)
    cls = symbol_database.Default().GetSymbol(type_url.rsplit("/", 1)[-1])
    msg = cls()
    try:
        raw._fast_sub(body, msg, 0, None)
    except Exception:
        return
    assert msg.SerializeToString(deterministic=True) == want


def test_common_shapes_take_the_fast_path() -> None:
    raw.load_all_envoy_types()
    for type_url, body in CASES[:3] + CASES[12:13]:
        msg = symbol_database.Default().GetSymbol(type_url.rsplit("/", 1)[-1])()
        if body.get("connectTimeout"):
            continue
        raw._fast_sub(body, msg, 0, None)
        assert msg.ByteSize() > 0
