"""Envoy filters given by name only: the config type each well-known filter name stands for.

Cilium's examples (and older Envoy configs) list filters such as `- name: envoy.filters.http.router`
with no `typed_config`. Envoy no longer accepts that ("Didn't find a registered implementation ...
with type URL: ''"), so cilia fills in the filter's empty typed config, as the name says. Names come
from the table below (the filters Envoy documents whose empty config is meaningful), else from the
protobuf registry by Envoy's naming convention: `envoy.filters.KIND.NAME` is configured by a message
in `envoy.extensions.filters.KIND.NAME.v3`.
"""

from __future__ import annotations

import importlib
from functools import lru_cache

TYPE_PREFIX = "type.googleapis.com/"

_H = "envoy.extensions.filters.http."
_N = "envoy.extensions.filters.network."
_L = "envoy.extensions.filters.listener."

# filter name -> full name of its config message (empty config allowed by Envoy for most of them;
# where it is not, Envoy's own rejection names the missing field).
WELL_KNOWN: dict[str, str] = {
    # HTTP filters
    "envoy.filters.http.router": _H + "router.v3.Router",
    "envoy.filters.http.cors": _H + "cors.v3.Cors",
    "envoy.filters.http.grpc_web": _H + "grpc_web.v3.GrpcWeb",
    "envoy.filters.http.grpc_stats": _H + "grpc_stats.v3.FilterConfig",
    "envoy.filters.http.grpc_http1_bridge": _H + "grpc_http1_bridge.v3.Config",
    "envoy.filters.http.grpc_http1_reverse_bridge": _H + "grpc_http1_reverse_bridge.v3.FilterConfig",
    "envoy.filters.http.grpc_json_transcoder": _H + "grpc_json_transcoder.v3.GrpcJsonTranscoder",
    "envoy.filters.http.health_check": _H + "health_check.v3.HealthCheck",
    "envoy.filters.http.buffer": _H + "buffer.v3.Buffer",
    "envoy.filters.http.compressor": _H + "compressor.v3.Compressor",
    "envoy.filters.http.decompressor": _H + "decompressor.v3.Decompressor",
    "envoy.filters.http.fault": _H + "fault.v3.HTTPFault",
    "envoy.filters.http.local_ratelimit": _H + "local_ratelimit.v3.LocalRateLimit",
    "envoy.filters.http.ratelimit": _H + "ratelimit.v3.RateLimit",
    "envoy.filters.http.ext_authz": _H + "ext_authz.v3.ExtAuthz",
    "envoy.filters.http.ext_proc": _H + "ext_proc.v3.ExternalProcessor",
    "envoy.filters.http.rbac": _H + "rbac.v3.RBAC",
    "envoy.filters.http.jwt_authn": _H + "jwt_authn.v3.JwtAuthentication",
    "envoy.filters.http.lua": _H + "lua.v3.Lua",
    "envoy.filters.http.header_to_metadata": _H + "header_to_metadata.v3.Config",
    "envoy.filters.http.header_mutation": _H + "header_mutation.v3.HeaderMutation",
    "envoy.filters.http.dynamic_forward_proxy": _H + "dynamic_forward_proxy.v3.FilterConfig",
    "envoy.filters.http.original_src": _H + "original_src.v3.OriginalSrc",
    "envoy.filters.http.on_demand": _H + "on_demand.v3.OnDemand",
    "envoy.filters.http.tap": _H + "tap.v3.Tap",
    "envoy.filters.http.csrf": _H + "csrf.v3.CsrfPolicy",
    "envoy.filters.http.adaptive_concurrency": _H + "adaptive_concurrency.v3.AdaptiveConcurrency",
    "envoy.filters.http.admission_control": _H + "admission_control.v3.AdmissionControl",
    "envoy.filters.http.bandwidth_limit": _H + "bandwidth_limit.v3.BandwidthLimit",
    "envoy.filters.http.cache": _H + "cache.v3.CacheConfig",
    "envoy.filters.http.stateful_session": _H + "stateful_session.v3.StatefulSession",
    "envoy.filters.http.upstream_codec": _H + "upstream_codec.v3.UpstreamCodec",
    "envoy.filters.http.wasm": _H + "wasm.v3.Wasm",
    "envoy.filters.http.oauth2": _H + "oauth2.v3.OAuth2",
    "envoy.filters.http.kill_request": _H + "kill_request.v3.KillRequest",
    "envoy.filters.http.connect_grpc_bridge": _H + "connect_grpc_bridge.v3.FilterConfig",
    "envoy.filters.http.set_metadata": _H + "set_metadata.v3.Config",
    "envoy.filters.http.alternate_protocols_cache": _H + "alternate_protocols_cache.v3.FilterConfig",
    # network filters
    "envoy.filters.network.http_connection_manager":
        _N + "http_connection_manager.v3.HttpConnectionManager",
    "envoy.filters.network.tcp_proxy": _N + "tcp_proxy.v3.TcpProxy",
    "envoy.filters.network.echo": _N + "echo.v3.Echo",
    "envoy.filters.network.connection_limit": _N + "connection_limit.v3.ConnectionLimit",
    "envoy.filters.network.local_ratelimit": _N + "local_ratelimit.v3.LocalRateLimit",
    "envoy.filters.network.ratelimit": _N + "ratelimit.v3.RateLimit",
    "envoy.filters.network.rbac": _N + "rbac.v3.RBAC",
    "envoy.filters.network.ext_authz": _N + "ext_authz.v3.ExtAuthz",
    "envoy.filters.network.sni_cluster": _N + "sni_cluster.v3.SniCluster",
    "envoy.filters.network.sni_dynamic_forward_proxy": _N + "sni_dynamic_forward_proxy.v3.FilterConfig",
    "envoy.filters.network.redis_proxy": _N + "redis_proxy.v3.RedisProxy",
    "envoy.filters.network.mongo_proxy": _N + "mongo_proxy.v3.MongoProxy",
    "envoy.filters.network.zookeeper_proxy": _N + "zookeeper_proxy.v3.ZooKeeperProxy",
    "envoy.filters.network.thrift_proxy": _N + "thrift_proxy.v3.ThriftProxy",
    "envoy.filters.network.dubbo_proxy": _N + "dubbo_proxy.v3.DubboProxy",
    "envoy.filters.network.direct_response": _N + "direct_response.v3.Config",
    "envoy.filters.network.wasm": _N + "wasm.v3.Wasm",
    "envoy.filters.network.set_filter_state": _N + "set_filter_state.v3.Config",
    # listener filters
    "envoy.filters.listener.tls_inspector": _L + "tls_inspector.v3.TlsInspector",
    "envoy.filters.listener.http_inspector": _L + "http_inspector.v3.HttpInspector",
    "envoy.filters.listener.original_dst": _L + "original_dst.v3.OriginalDst",
    "envoy.filters.listener.original_src": _L + "original_src.v3.OriginalSrc",
    "envoy.filters.listener.proxy_protocol": _L + "proxy_protocol.v3.ProxyProtocol",
    "envoy.filters.listener.local_ratelimit": _L + "local_ratelimit.v3.LocalRateLimit",
}

KINDS = ("http", "network", "listener")


def _camel(name: str) -> str:
    return "".join(p[:1].upper() + p[1:] for p in name.split("_"))


@lru_cache(maxsize=512)
def _from_registry(name: str) -> str | None:
    """`envoy.filters.KIND.NAME` -> the config message of `envoy.extensions.filters.KIND.NAME.v3`,
    when that package has one message spelled like the name (or exactly one message)."""
    parts = name.split(".")
    if len(parts) != 4 or parts[:2] != ["envoy", "filters"] or parts[2] not in KINDS or not parts[3]:
        return None
    kind, short = parts[2], parts[3]
    try:
        module = importlib.import_module(f"envoy.extensions.filters.{kind}.{short}.v3.{short}_pb2")
    except ImportError:
        return None
    messages = module.DESCRIPTOR.message_types_by_name
    wanted = _camel(short).lower()
    for msg_name, desc in messages.items():
        if msg_name.lower() == wanted:
            return str(desc.full_name)
    if len(messages) == 1:
        return str(next(iter(messages.values())).full_name)
    return None


def config_type_for(name: str) -> str | None:
    """The type URL of the config for filter `name`, or None when cilia does not know it."""
    full = WELL_KNOWN.get(name) or _from_registry(name)
    return TYPE_PREFIX + full if full else None
