"""Envoy bootstrap for each proxy role: admin on loopback, everything else over ADS from cilia."""

from __future__ import annotations

import os
from typing import Any

from cilia.identity import ProxyId

XDS_CLUSTER = "cilia-xds"


def _split_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--xds must be HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def bootstrap_config(proxy: ProxyId, xds: str = "127.0.0.1:18000", admin_port: int = 19901, delta: bool = True,
                     pod_ip: str | None = None, extra_metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """A bootstrap as a plain dict (YAML/JSON-ready). `pod_ip` defaults to $POD_IP when set."""
    host, port = _split_hostport(xds)
    is_ip = host.replace(".", "").isdigit() or ":" in host
    metadata: dict[str, str] = {"role": proxy.role, "cilia.io/proxy-name": proxy.name}
    pod_ip = pod_ip if pod_ip is not None else os.environ.get("POD_IP", "")
    if pod_ip:
        metadata["pod_ip"] = pod_ip
    if proxy.namespace:
        metadata["namespace"] = proxy.namespace
    metadata.update(extra_metadata or {})
    ads_source = {"ads": {}, "resource_api_version": "V3"}
    return {
        "node": {
            "id": str(proxy),
            "cluster": f"cilia-{proxy.role}",
            "metadata": metadata,
        },
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}},
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
                "set_node_on_first_message_only": True,
            },
            "cds_config": ads_source,
            "lds_config": ads_source,
        },
        "static_resources": {
            "clusters": [{
                "name": XDS_CLUSTER,
                "type": "STATIC" if is_ip else "STRICT_DNS",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {
                            "connection_keepalive": {"interval": "30s", "timeout": "5s"}}},
                    },
                },
                "load_assignment": {
                    "cluster_name": XDS_CLUSTER,
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                        "socket_address": {"address": host, "port_value": port}}}}]}],
                },
            }],
        },
        "stats_config": {
            "stats_tags": [
                {"tag_name": "cilia_role", "fixed_value": proxy.role},
                {"tag_name": "cilia_proxy", "fixed_value": proxy.name},
            ],
        },
        "layered_runtime": {"layers": [{"name": "static", "static_layer": {
            "overload.global_downstream_max_connections": 50000}}]},
    }
