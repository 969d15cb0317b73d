"""IR -> Envoy protobuf messages. The one place that builds Envoy messages from the neutral model."""

from __future__ import annotations

import functools
import re
from typing import Any

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    config_source_pb2,
    grpc_service_pb2,
    health_check_pb2,
    protocol_pb2,
    socket_option_pb2,
    substitution_format_string_pb2,
)
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.config.trace.v3 import http_tracer_pb2, opentelemetry_pb2
from envoy.extensions.access_loggers.grpc.v3 import als_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.http_inspector.v3 import http_inspector_pb2
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import path_pb2, regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2, range_pb2
from google.protobuf import any_pb2, duration_pb2, struct_pb2, wrappers_pb2

from cilia.ir import model as ir
from cilia.render.resources import field_bytes, varint

CORS_FILTER = "envoy.filters.http.cors"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
ACCESS_LOG_FIELDS = {
    "start_time": "%START_TIME%", "method": "%REQ(:METHOD)%", "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%", "response_code": "%RESPONSE_CODE%", "response_flags": "%RESPONSE_FLAGS%",
    "bytes_received": "%BYTES_RECEIVED%", "bytes_sent": "%BYTES_SENT%", "duration_ms": "%DURATION%",
    "upstream_host": "%UPSTREAM_HOST%", "upstream_cluster": "%UPSTREAM_CLUSTER%", "authority": "%REQ(:AUTHORITY)%",
    "downstream_remote": "%DOWNSTREAM_REMOTE_ADDRESS%", "route_name": "%ROUTE_NAME%",
    "request_id": "%REQ(X-REQUEST-ID)%",
}
REDIRECT_CODES = {
    301: route_components_pb2.RedirectAction.MOVED_PERMANENTLY,
    302: route_components_pb2.RedirectAction.FOUND,
    303: route_components_pb2.RedirectAction.SEE_OTHER,
    307: route_components_pb2.RedirectAction.TEMPORARY_REDIRECT,
    308: route_components_pb2.RedirectAction.PERMANENT_REDIRECT,
}
CLUSTER_NOT_FOUND_CODES = {
    503: route_components_pb2.RouteAction.SERVICE_UNAVAILABLE,
    404: route_components_pb2.RouteAction.NOT_FOUND,
    500: route_components_pb2.RouteAction.INTERNAL_SERVER_ERROR,
}
HEALTH = {"HEALTHY": health_check_pb2.HEALTHY, "UNHEALTHY": health_check_pb2.UNHEALTHY,
          "DRAINING": health_check_pb2.DRAINING}
# Endpoint metadata (filter `envoy.transport_socket_match`) naming the mesh inbound that terminates
# mTLS for an endpoint; a cluster's TlsMatch selects its transport socket by it.
MESH_TLS_KEY = "cilia.mesh"
SOL_SOCKET, SO_MARK = 1, 36


def pack(message: Any) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(message)
    return a


def ads_source() -> config_source_pb2.ConfigSource:
    src = config_source_pb2.ConfigSource(resource_api_version=config_source_pb2.V3)
    src.ads.SetInParent()
    return src


def duration_ms(ms: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def socket_address(address: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=address, port_value=port))


# -- clusters and endpoints -------------------------------------------------------------------------
def render_endpoints(es: ir.EndpointSet) -> endpoint_pb2.ClusterLoadAssignment:
    """One assignment both Envoy and proxyless gRPC accept. gRPC's xDS client drops a locality without a
    `locality` or a `load_balancing_weight`, so both are always set; the weight is the locality's endpoint
    count, so gRPC spreads load per endpoint as Envoy does. Envoy reads locality weights only for clusters
    with locality-weighted balancing (ours have none)."""
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=es.name)
    for loc in es.localities:
        lle = cla.endpoints.add(priority=loc.priority)
        lle.locality.SetInParent()
        if loc.zone or loc.region or loc.sub_zone:
            lle.locality.zone = loc.zone
            lle.locality.region = loc.region
            lle.locality.sub_zone = loc.sub_zone
        lle.load_balancing_weight.value = max(1, len(loc.endpoints))
        for ep in loc.endpoints:
            lbe = lle.lb_endpoints.add(health_status=HEALTH[ep.health])
            lbe.endpoint.address.CopyFrom(socket_address(ep.address, ep.port))
            if ep.hostname:
                lbe.endpoint.hostname = ep.hostname
            if ep.mesh_tls:
                lbe.metadata.filter_metadata["envoy.transport_socket_match"].update({MESH_TLS_KEY: ep.mesh_tls})
    return cla


_HEALTH_BYTES = {k: b"\x10" + bytes((v,)) for k, v in HEALTH.items()}  # LbEndpoint.health_status (2)


def _len_field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field whose tag is one byte (`tag`)."""
    n = len(payload)
    return tag + (bytes((n,)) if n < 0x80 else bytes(((n & 0x7F) | 0x80, n >> 7)) if n < 0x4000
                  else _varint(n)) + payload


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _localities_bytes(localities: tuple[ir.LocalityEndpoints, ...]) -> bytes | None:
    """ClusterLoadAssignment.endpoints (field 2, every locality) as `render_endpoints` serialises them
    (deterministically: by field number, defaults left out); None where an endpoint carries metadata
    (mesh mTLS), which only the message builder writes."""
    out = []
    for loc in localities:
        locality = b""
        if loc.region:
            locality += _len_field(b"\x0a", loc.region.encode())
        if loc.zone:
            locality += _len_field(b"\x12", loc.zone.encode())
        if loc.sub_zone:
            locality += _len_field(b"\x1a", loc.sub_zone.encode())
        parts = [_len_field(b"\x0a", locality)]  # always present (gRPC drops a locality without one)
        for ep in loc.endpoints:
            if ep.mesh_tls:
                return None
            # SocketAddress: address=2, port_value=3; Address.socket_address=1; Endpoint.address=1
            sa = _len_field(b"\x12", ep.address.encode())
            if not 0 <= ep.port < 1 << 32:
                return None  # the message builder says what is wrong
            sa += b"\x18" + _varint(ep.port)  # in a oneof: written even when 0
            endpoint = _len_field(b"\x0a", _len_field(b"\x0a", sa))
            if ep.hostname:
                endpoint += _len_field(b"\x1a", ep.hostname.encode())
            parts.append(_len_field(b"\x12", _len_field(b"\x0a", endpoint) + _HEALTH_BYTES[ep.health]))
        parts.append(_len_field(b"\x1a", b"\x08" + _varint(max(1, len(loc.endpoints)))))  # UInt32Value
        if loc.priority:
            if not 0 < loc.priority < 1 << 32:
                return None
            parts.append(b"\x28" + _varint(loc.priority))
        out.append(_len_field(b"\x12", b"".join(parts)))
    return b"".join(out)


def endpoints_bytes(es: ir.EndpointSet,
                    memo: dict[int, tuple[tuple[ir.LocalityEndpoints, ...], bytes | None]] | None = None) -> bytes:
    """`render_endpoints(es)` serialised (deterministically), mostly written without building messages:
    a large cluster has three sets per Service port. `memo` (by the identity of `es.localities`, which
    it holds) shares the work between sets built from the very same localities."""
    locs = es.localities
    body: bytes | None
    hit = memo.get(id(locs)) if memo is not None else None
    if hit is not None and hit[0] is locs:
        body = hit[1]
    else:
        try:
            body = _localities_bytes(locs)
        except (KeyError, UnicodeError, TypeError, AttributeError):
            body = None  # the message builder says what is wrong
        if memo is not None:
            memo[id(locs)] = (locs, body)
    if body is None:
        return render_endpoints(es).SerializeToString(deterministic=True)
    return (_len_field(b"\x0a", es.name.encode()) if es.name else b"") + body


def _validation_sds(ctx: common_pb2.CommonTlsContext, secret: str, san_prefix: str,
                    accept_untrusted: bool = False) -> None:
    """Validate the peer against the SDS trust bundle `secret`, and its URI SAN by prefix when given;
    with `accept_untrusted`, a failed check does not end the handshake."""
    if not san_prefix and not accept_untrusted:
        sds = ctx.validation_context_sds_secret_config
        sds.name = secret
        sds.sds_config.CopyFrom(ads_source())
        return
    combined = ctx.combined_validation_context
    if san_prefix:
        combined.default_validation_context.match_typed_subject_alt_names.add(
            san_type=common_pb2.SubjectAltNameMatcher.URI, matcher=string_pb2.StringMatcher(prefix=san_prefix))
    if accept_untrusted:
        combined.default_validation_context.trust_chain_verification = \
            common_pb2.CertificateValidationContext.ACCEPT_UNTRUSTED
    combined.validation_context_sds_secret_config.name = secret
    combined.validation_context_sds_secret_config.sds_config.CopyFrom(ads_source())


def _upstream_tls_socket(t: ir.UpstreamTls) -> base_pb2.TransportSocket:
    tls = tls_pb2.UpstreamTlsContext(sni=t.sni)
    tls.common_tls_context.alpn_protocols.extend(t.alpn)
    if t.cert_secret:
        tls.common_tls_context.tls_certificate_sds_secret_configs.add(name=t.cert_secret, sds_config=ads_source())
    if t.ca_secret and t.san_exact:
        combined = tls.common_tls_context.combined_validation_context
        for san in t.san_exact:
            combined.default_validation_context.match_typed_subject_alt_names.add(
                san_type=common_pb2.SubjectAltNameMatcher.SanType.Value(san.kind),
                matcher=string_pb2.StringMatcher(exact=san.value))
        combined.validation_context_sds_secret_config.name = t.ca_secret
        combined.validation_context_sds_secret_config.sds_config.CopyFrom(ads_source())
    elif t.ca_secret:
        _validation_sds(tls.common_tls_context, t.ca_secret, t.san_prefix)
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(tls))


def render_cluster(c: ir.Cluster) -> cluster_pb2.Cluster:
    out = cluster_pb2.Cluster(name=c.name, connect_timeout=duration_ms(c.connect_timeout_ms))
    out.lb_policy = cluster_pb2.Cluster.LbPolicy.Value(c.lb_policy)
    if c.discovery == "EDS":
        out.type = cluster_pb2.Cluster.EDS
        out.eds_cluster_config.eds_config.CopyFrom(ads_source())
        out.eds_cluster_config.service_name = c.eds_name or c.name
    elif c.discovery == "ORIGINAL_DST":
        out.type = cluster_pb2.Cluster.ORIGINAL_DST
        out.lb_policy = cluster_pb2.Cluster.CLUSTER_PROVIDED
    else:
        out.type = cluster_pb2.Cluster.DiscoveryType.Value(c.discovery)
        out.load_assignment.cluster_name = c.name
        lle = out.load_assignment.endpoints.add()
        if c.discovery in ("STRICT_DNS", "LOGICAL_DNS"):
            lle.lb_endpoints.add().endpoint.address.CopyFrom(socket_address(c.dns_name, c.dns_port))
            out.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
        for ep in c.static_endpoints:
            lle.lb_endpoints.add().endpoint.address.CopyFrom(socket_address(ep.address, ep.port))
    if c.protocol == "http2":
        opts = http_protocol_options_pb2.HttpProtocolOptions()
        opts.explicit_http_config.http2_protocol_options.CopyFrom(protocol_pb2.Http2ProtocolOptions())
        out.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(pack(opts))
    if c.upstream_tls is not None:
        out.transport_socket.CopyFrom(_upstream_tls_socket(c.upstream_tls))
    for m in c.tls_matches:
        tsm = out.transport_socket_matches.add(name=m.mesh_tls, transport_socket=_upstream_tls_socket(m.tls))
        tsm.match.update({MESH_TLS_KEY: m.mesh_tls})
    if c.tcp_health_check_ms:
        hc = out.health_checks.add()
        hc.timeout.CopyFrom(duration_ms(c.tcp_health_check_ms))
        hc.interval.CopyFrom(duration_ms(c.tcp_health_check_ms))
        hc.no_traffic_interval.CopyFrom(duration_ms(c.tcp_health_check_ms))  # Envoy's default: 60 s
        hc.unhealthy_threshold.value = 1
        hc.healthy_threshold.value = 1
        hc.tcp_health_check.SetInParent()
    if c.original_dst_header:
        out.original_dst_lb_config.use_http_header = True
        out.original_dst_lb_config.http_header_name = c.original_dst_header
    if c.bind_address:
        out.upstream_bind_config.source_address.CopyFrom(address_pb2.SocketAddress(address=c.bind_address,
                                                                                   port_value=0))
    if c.socket_mark:
        bind = out.upstream_bind_config
        if not c.bind_address:
            bind.source_address.CopyFrom(address_pb2.SocketAddress(address="0.0.0.0", port_value=0))
        bind.socket_options.add(description="cilia mesh inbound forward", level=SOL_SOCKET, name=SO_MARK,
                                int_value=c.socket_mark, state=socket_option_pb2.SocketOption.STATE_PREBIND)
    return out


# -- routes -------------------------------------------------------------------------------------------
def _string_matcher(kind: str, value: str, ignore_case: bool = False) -> string_pb2.StringMatcher:
    m = string_pb2.StringMatcher(ignore_case=ignore_case)
    if kind == "exact":
        m.exact = value
    elif kind == "prefix":
        m.prefix = value
    else:
        m.safe_regex.CopyFrom(regex_pb2.RegexMatcher(regex=value))
    return m


def _header_matcher(h: ir.HeaderMatch) -> route_components_pb2.HeaderMatcher:
    m = route_components_pb2.HeaderMatcher(name=h.name, invert_match=h.invert)
    if h.kind == "present":
        m.present_match = True
    else:
        m.string_match.CopyFrom(_string_matcher(h.kind, h.value))
    return m


def _route_match(match: ir.RouteMatch, *, for_grpc: bool = False) -> route_components_pb2.RouteMatch:
    """`for_grpc`: in forms gRPC's xDS client accepts (it has no `path_separated_prefix`, and it skips
    routes with query matches, which gRPC requests never carry)."""
    m = route_components_pb2.RouteMatch()
    p = match.path
    if p is None:
        m.prefix = "/"
    elif p.kind == "exact":
        m.path = p.value
    elif p.kind == "raw_prefix":
        m.prefix = p.value
    elif p.kind == "prefix":
        value = p.value.rstrip("/")
        if not value:
            m.prefix = "/"
        elif for_grpc:  # element-wise: `/foo` matches `/foo` and `/foo/...`
            m.safe_regex.CopyFrom(regex_pb2.RegexMatcher(regex=re.escape(value) + "(/.*)?"))
        else:
            m.path_separated_prefix = value
    else:
        m.safe_regex.CopyFrom(regex_pb2.RegexMatcher(regex=p.value))
    if p is not None and p.ignore_case:
        m.case_sensitive.CopyFrom(wrappers_pb2.BoolValue(value=False))
    for h in match.headers:
        m.headers.append(_header_matcher(h))
    if match.method:
        m.headers.append(route_components_pb2.HeaderMatcher(
            name=":method", string_match=string_pb2.StringMatcher(exact=match.method)))
    for q in match.query:
        qm = m.query_parameters.add(name=q.name)
        if q.kind == "present":
            qm.present_match = True
        else:
            qm.string_match.CopyFrom(_string_matcher(q.kind, q.value))
    if match.grpc and not for_grpc:
        m.grpc.SetInParent()
    if match.connect:
        m.ClearField("prefix")
        m.connect_matcher.SetInParent()
    return m


def _header_options(mods: ir.HeaderMods) -> list[base_pb2.HeaderValueOption]:
    out = []
    for name, value in mods.set:
        out.append(base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=name, value=value),
            append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD))
    for name, value in mods.add:
        out.append(base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=name, value=value),
            append_action=base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD))
    return out


def _prefix_of(match: ir.RouteMatch) -> str | None:
    if match.path is not None and match.path.kind in ("prefix", "raw_prefix"):
        return match.path.value
    return None


def _apply_rewrite(action: route_components_pb2.RouteAction, rw: ir.Rewrite, match: ir.RouteMatch) -> None:
    if rw.host:
        action.host_rewrite_literal = rw.host
    if rw.path_full is not None:
        action.regex_rewrite.pattern.regex = "^/.*$" if _prefix_of(match) is None else "^.*$"
        action.regex_rewrite.substitution = rw.path_full
    elif rw.path_prefix is not None:
        pattern, substitution = _prefix_replacement((_prefix_of(match) or "/"), rw.path_prefix)
        action.regex_rewrite.pattern.regex = pattern
        action.regex_rewrite.substitution = substitution


def _prefix_replacement(matched: str, new: str) -> tuple[str, str]:
    """Regex and substitution replacing an element-wise path prefix with `new`."""
    prefix = matched.rstrip("/")
    if new == "/" or new == "":
        # Replace the matched prefix and any slashes after it with a single "/", so that
        # "/foo" -> "/" turns "/foo/bar" into "/bar" (not "//bar") and "/foo" into "/".
        return "^" + re.escape(prefix) + "/*", "/"
    if prefix:
        return "^" + re.escape(prefix) + "(/.*)?$", new.rstrip("/") + r"\1"
    return "^/(.*)$", new.rstrip("/") + r"/\1"


def render_route(r: ir.Route) -> route_components_pb2.Route:
    out = route_components_pb2.Route(name=r.name, match=_route_match(r.match))
    if r.cors is not None:
        out.typed_per_filter_config[CORS_FILTER].CopyFrom(pack(render_cors(r.cors)))
    out.request_headers_to_add.extend(_header_options(r.request_headers))
    out.request_headers_to_remove.extend(r.request_headers.remove)
    out.response_headers_to_add.extend(_header_options(r.response_headers))
    out.response_headers_to_remove.extend(r.response_headers.remove)
    if r.redirect is not None:
        rd = r.redirect
        red = out.redirect
        if rd.scheme:
            red.scheme_redirect = rd.scheme
        if rd.host:
            red.host_redirect = rd.host
        if rd.port:
            red.port_redirect = rd.port
        if rd.path_full is not None:
            red.path_redirect = rd.path_full
        elif rd.path_prefix is not None and rd.matched_prefix is not None:
            pattern, substitution = _prefix_replacement(rd.matched_prefix, rd.path_prefix)
            red.regex_rewrite.pattern.regex = pattern
            red.regex_rewrite.substitution = substitution
        elif rd.path_prefix is not None:
            red.prefix_rewrite = rd.path_prefix
        red.response_code = REDIRECT_CODES.get(rd.status_code, route_components_pb2.RedirectAction.FOUND)
        return out
    if r.direct is not None:
        out.direct_response.status = r.direct.status
        if r.direct.body:
            out.direct_response.body.inline_string = r.direct.body
        return out
    live = [b for b in r.backends if b.weight > 0]
    if not live:
        out.direct_response.status = 500
        return out
    action = out.route
    if r.cluster_not_found_status:
        action.cluster_not_found_response_code = CLUSTER_NOT_FOUND_CODES[r.cluster_not_found_status]
    if len(live) == 1 and live[0].request_headers.empty and live[0].response_headers.empty:
        action.cluster = live[0].cluster
    else:
        for b in live:
            cw = action.weighted_clusters.clusters.add(name=b.cluster)
            cw.weight.value = b.weight
            cw.request_headers_to_add.extend(_header_options(b.request_headers))
            cw.request_headers_to_remove.extend(b.request_headers.remove)
            cw.response_headers_to_add.extend(_header_options(b.response_headers))
            cw.response_headers_to_remove.extend(b.response_headers.remove)
    if r.rewrite is not None:
        _apply_rewrite(action, r.rewrite, r.match)
    for m in r.mirrors:
        pol = action.request_mirror_policies.add(cluster=m.cluster)
        if m.percent is not None:
            pol.runtime_fraction.default_value.CopyFrom(_fraction(m.percent))
    _hash_policies(action, r.hash_policy)
    if r.timeout_ms is not None:
        action.timeout.CopyFrom(duration_ms(r.timeout_ms))
    if r.per_try_timeout_ms is not None:
        action.retry_policy.per_try_timeout.CopyFrom(duration_ms(r.per_try_timeout_ms))
    if r.retry is not None:
        rp = action.retry_policy
        rp.retry_on = ",".join((*(["retriable-status-codes"] if r.retry.codes else []), "connect-failure",
                                "refused-stream", "reset"))
        rp.retriable_status_codes.extend(r.retry.codes)
        rp.num_retries.value = r.retry.attempts
        if r.retry.backoff_ms:
            rp.retry_back_off.base_interval.CopyFrom(duration_ms(r.retry.backoff_ms))
            rp.retry_back_off.max_interval.CopyFrom(duration_ms(r.retry.backoff_ms * 10))
    upgrade = action.upgrade_configs.add()
    upgrade.upgrade_type = "websocket"
    if r.match.connect:
        action.upgrade_configs.add(upgrade_type="CONNECT").connect_config.SetInParent()
    return out


GRPC_CHANNEL_ID = "io.grpc.channel_id"  # the filter state key gRPC hashes a channel's requests on


def _hash_policies(action: route_components_pb2.RouteAction, policies: tuple[ir.HashPolicy, ...]) -> None:
    """One list for Envoy and gRPC: Envoy skips the channel key (no such filter state), gRPC the source IP."""
    for hp in policies:
        out = action.hash_policy.add()
        if hp.kind == "header":
            out.header.header_name = hp.name
        elif hp.kind == "source_ip":
            out.connection_properties.source_ip = True
        else:
            out.filter_state.key = GRPC_CHANNEL_ID


def _origin_matcher(origin: str) -> string_pb2.StringMatcher:
    """An allowed origin: exact, or with `*` standing for any characters (periods included)."""
    if "*" not in origin:
        return string_pb2.StringMatcher(exact=origin)
    pattern = ".*".join(re.escape(part) for part in origin.split("*"))
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=pattern))


def render_cors(c: ir.Cors) -> cors_pb2.CorsPolicy:
    out = cors_pb2.CorsPolicy(allow_methods=", ".join(c.allow_methods), allow_headers=", ".join(c.allow_headers),
                              expose_headers=", ".join(c.expose_headers))
    out.allow_origin_string_match.extend(_origin_matcher(o) for o in c.allow_origins)
    if c.max_age_s is not None:
        out.max_age = str(c.max_age_s)
    if c.allow_credentials:
        out.allow_credentials.value = True
    return out


def _fraction(percent: float) -> percent_pb2.FractionalPercent:
    return percent_pb2.FractionalPercent(numerator=round(percent * 10_000),
                                         denominator=percent_pb2.FractionalPercent.MILLION)


def render_route_config(rc: ir.RouteConfig) -> route_pb2.RouteConfiguration:
    if rc.client == "grpc":
        return render_grpc_route_config(rc)
    out = route_pb2.RouteConfiguration(name=rc.name)
    out.validate_clusters.value = False  # a missing cluster gives 503 on that route, not a rejected config
    if rc.ignore_port_in_host_matching:
        out.ignore_port_in_host_matching = True
    for vh in rc.virtual_hosts:
        v = out.virtual_hosts.add(name=vh.name, domains=list(vh.domains))
        if vh.require_tls:
            v.require_tls = route_components_pb2.VirtualHost.ALL
        if vh.authz is not None:
            for name, per in render_route_rbac(vh.authz).items():
                v.typed_per_filter_config[name].CopyFrom(pack(per))
        for r in vh.routes:
            v.routes.append(render_route(r))
    return out


# -- listeners ----------------------------------------------------------------------------------------
@functools.cache
def access_log() -> accesslog_pb2.AccessLog:
    """Built once: appending it to a repeated field copies it, so the cached message is never changed."""
    fmt = struct_pb2.Struct()
    fmt.update(ACCESS_LOG_FIELDS)
    cfg = stream_pb2.StdoutAccessLog(log_format=substitution_format_string_pb2.SubstitutionFormatString(
        json_format=fmt))
    return accesslog_pb2.AccessLog(name="envoy.access_loggers.stdout", typed_config=pack(cfg))


DENIAL_LOG_NAME = "cilia-rbac-denials"


@functools.cache
def denial_log(cluster: str) -> accesslog_pb2.AccessLog:
    """Requests answered 403 go to cilia over gRPC (AccessLogService); it counts RBAC denials per policy
    from their response code details (`rbac_access_denied_matched_policy[RULE]`) and route name."""
    cfg = als_pb2.HttpGrpcAccessLogConfig(common_config=als_pb2.CommonGrpcAccessLogConfig(
        log_name=DENIAL_LOG_NAME, transport_api_version=config_source_pb2.V3,
        grpc_service=grpc_service_pb2.GrpcService(envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(
            cluster_name=cluster))))
    status = accesslog_pb2.StatusCodeFilter(comparison=accesslog_pb2.ComparisonFilter(
        op=accesslog_pb2.ComparisonFilter.EQ, value=base_pb2.RuntimeUInt32(default_value=403,
                                                                         runtime_key="cilia.denial_log_status")))
    return accesslog_pb2.AccessLog(name="envoy.access_loggers.http_grpc", typed_config=pack(cfg),
                                   filter=accesslog_pb2.AccessLogFilter(status_code_filter=status))


def render_tracing(t: ir.Tracing) -> hcm_pb2.HttpConnectionManager.Tracing:
    """HCM tracing with Envoy's OpenTelemetry tracer exporting over gRPC to `t.collector_cluster`."""
    otel = opentelemetry_pb2.OpenTelemetryConfig(service_name=t.service_name)
    otel.grpc_service.CopyFrom(grpc_service_pb2.GrpcService(
        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=t.collector_cluster)))
    out = hcm_pb2.HttpConnectionManager.Tracing(provider=http_tracer_pb2.Tracing.Http(
        name="envoy.tracers.opentelemetry", typed_config=pack(otel)))
    out.random_sampling.value = t.sampling_percent
    return out


def _http_filter(app: ir.HttpApp, chain_name: str) -> listener_components_pb2.Filter:
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix=app.stat_prefix or chain_name.replace("/", "_"))
    hcm.codec_type = hcm_pb2.HttpConnectionManager.CodecType.Value(app.codec.upper())
    hcm.rds.route_config_name = app.route_config
    hcm.rds.config_source.CopyFrom(ads_source())
    if app.cors:
        hcm.http_filters.add(name=CORS_FILTER, typed_config=pack(cors_pb2.Cors()))
    if app.rbac:
        for name, rbac in RBAC_FILTERS:
            hcm.http_filters.add(name=name, typed_config=pack(rbac))
    hcm.http_filters.add(name="envoy.filters.http.router", typed_config=pack(router_pb2.Router()))
    if app.forward_client_cert:
        hcm.forward_client_cert_details = hcm_pb2.HttpConnectionManager.SANITIZE_SET
        hcm.set_current_client_cert_details.uri = True
    hcm.upgrade_configs.add(upgrade_type="websocket")
    if app.connect:
        hcm.upgrade_configs.add(upgrade_type="CONNECT")
        hcm.http2_protocol_options.allow_connect = True
    hcm.normalize_path.value = True
    hcm.merge_slashes = True
    hcm.path_with_escaped_slashes_action = hcm_pb2.HttpConnectionManager.UNESCAPE_AND_REDIRECT
    if app.use_remote_address:
        hcm.use_remote_address.value = True
    if app.strip_host_port:
        hcm.strip_any_host_port = True
    if app.access_log:
        hcm.access_log.append(access_log())
    if app.denial_log_cluster:
        hcm.access_log.append(denial_log(app.denial_log_cluster))
    if app.tracing is not None:
        hcm.tracing.CopyFrom(render_tracing(app.tracing))
    return listener_components_pb2.Filter(name="envoy.filters.network.http_connection_manager",
                                          typed_config=pack(hcm))


# -- authorization ------------------------------------------------------------------------------------
def _principal(p: ir.PeerMatch) -> rbac_pb2.Principal:
    if p.kind == "any":
        return rbac_pb2.Principal(any=True)
    m = string_pb2.StringMatcher(exact=p.value) if p.kind == "exact" else string_pb2.StringMatcher(prefix=p.value)
    return rbac_pb2.Principal(authenticated=rbac_pb2.Principal.Authenticated(principal_name=m))


def _regex_header(name: str, regex: str) -> rbac_pb2.Permission:
    return rbac_pb2.Permission(header=route_components_pb2.HeaderMatcher(
        name=name, string_match=string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=regex))))


def _request_permission(h: ir.HttpRequestMatch) -> rbac_pb2.Permission:
    parts = []
    if h.method:
        parts.append(_regex_header(":method", h.method))
    if h.path:
        parts.append(rbac_pb2.Permission(url_path=path_pb2.PathMatcher(
            path=string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=h.path)))))
    if h.host:
        parts.append(_regex_header(":authority", h.host))
    for hm in h.headers:
        parts.append(rbac_pb2.Permission(header=_header_matcher(hm)))
    if not parts:
        return rbac_pb2.Permission(any=True)
    return parts[0] if len(parts) == 1 else rbac_pb2.Permission(and_rules=rbac_pb2.Permission.Set(rules=parts))


def _rule_policy(rule: ir.AuthzRule, http: bool) -> rbac_pb2.Policy | None:
    """The RBAC policy of one rule, or None when it can match nothing here (no peers; HTTP rules on a
    connection that is not HTTP; an empty request list)."""
    if not rule.peers or rule.http == () or (rule.http is not None and not http):
        return None
    parts = []
    if rule.ports:
        ports = [rbac_pb2.Permission(destination_port=lo) if lo == hi else
                 rbac_pb2.Permission(destination_port_range=range_pb2.Int32Range(start=lo, end=hi + 1))
                 for lo, hi in rule.ports]
        parts.append(ports[0] if len(ports) == 1 else rbac_pb2.Permission(or_rules=rbac_pb2.Permission.Set(
            rules=ports)))
    if rule.http is not None:
        reqs = [_request_permission(h) for h in rule.http]
        parts.append(reqs[0] if len(reqs) == 1 else rbac_pb2.Permission(or_rules=rbac_pb2.Permission.Set(
            rules=reqs)))
    if not parts:
        perm = rbac_pb2.Permission(any=True)
    else:
        perm = parts[0] if len(parts) == 1 else rbac_pb2.Permission(and_rules=rbac_pb2.Permission.Set(rules=parts))
    return rbac_pb2.Policy(permissions=[perm], principals=[_principal(p) for p in rule.peers])


def _rbac_sets(authz: ir.IngressAuthz, http: bool) -> tuple[rbac_pb2.RBAC | None, rbac_pb2.RBAC | None]:
    """(deny, allow) rules: the deny rules (DENY: a match is refused), then with default deny the allow
    rules (ALLOW: no match is refused; no rules at all refuses everything). None: that check is off."""
    deny = None
    if authz.deny:
        deny = rbac_pb2.RBAC(action=rbac_pb2.RBAC.DENY)
        for rule in authz.deny:
            pol = _rule_policy(rule, http)
            if pol is not None:
                deny.policies[rule.name].CopyFrom(pol)
    allow = None
    if authz.default_deny:
        allow = rbac_pb2.RBAC(action=rbac_pb2.RBAC.ALLOW)
        for rule in authz.allow:
            pol = _rule_policy(rule, http)
            if pol is not None:
                allow.policies[rule.name].CopyFrom(pol)
    return deny, allow


# The HTTP RBAC filters of a mesh inbound HCM (`HttpApp.rbac`): rules-less (off) at the listener; each
# virtual host's `typed_per_filter_config` brings the pod's rules (RDS), so policy changes reach requests
# on connections opened before them. Denials count as http.<hcm>.rbac.<prefix>.denied, and per rule as
# http.<hcm>.rbac.<prefix>.policy.<rule>.{allowed,denied} (rules are named after their policy).
RBAC_DENY_FILTER, RBAC_ALLOW_FILTER = "cilia.rbac.deny", "cilia.rbac.default-deny"
RBAC_STAT_PREFIX = {RBAC_DENY_FILTER: "policy_deny", RBAC_ALLOW_FILTER: "policy_default_deny"}
RBAC_FILTERS = tuple((name, http_rbac_pb2.RBAC(rules_stat_prefix=prefix, track_per_rule_stats=True))
                     for name, prefix in RBAC_STAT_PREFIX.items())


def render_route_rbac(authz: ir.IngressAuthz) -> dict[str, http_rbac_pb2.RBACPerRoute]:
    deny, allow = _rbac_sets(authz, http=True)
    out = {}
    for name, rules in ((RBAC_DENY_FILTER, deny), (RBAC_ALLOW_FILTER, allow)):
        per = http_rbac_pb2.RBACPerRoute()  # without `rbac`: the filter is off for these routes
        if rules is not None:
            per.rbac.CopyFrom(http_rbac_pb2.RBAC(rules=rules, rules_stat_prefix=RBAC_STAT_PREFIX[name],
                                                 track_per_rule_stats=True))
        out[name] = per
    return out


def render_network_rbac(authz: ir.IngressAuthz, stat: str) -> list[listener_components_pb2.Filter]:
    """L4 rules on a TCP chain (checked when a connection opens). Denials count as
    <chain stat>.policy_deny.rbac.denied / <chain stat>.policy_default_deny.rbac.denied."""
    out = []
    for name, rules in zip(RBAC_STAT_PREFIX.values(), _rbac_sets(authz, http=False), strict=True):
        if rules is not None:
            out.append(listener_components_pb2.Filter(name="envoy.filters.network.rbac", typed_config=pack(
                network_rbac_pb2.RBAC(rules=rules, stat_prefix=f"{stat}.{name}."))))
    return out


def _tcp_filter(app: ir.TcpApp, chain_name: str) -> listener_components_pb2.Filter:
    tcp = tcp_proxy_pb2.TcpProxy(stat_prefix=app.stat_prefix or chain_name.replace("/", "_"))
    live = [b for b in app.backends if b.weight > 0]
    if len(live) == 1:
        tcp.cluster = live[0].cluster
    else:
        for b in live:
            tcp.weighted_clusters.clusters.add(name=b.cluster, weight=b.weight)
    if app.access_log:
        tcp.access_log.append(access_log())
    if app.tunnel is not None:
        tunnel = tcp.tunneling_config
        tunnel.hostname = app.tunnel.authority
        for k, v in app.tunnel.headers:
            tunnel.headers_to_add.add(header=base_pb2.HeaderValue(key=k, value=v))
    if app.hash_source_ip:
        tcp.hash_policy.add().source_ip.SetInParent()
    return listener_components_pb2.Filter(name="envoy.filters.network.tcp_proxy", typed_config=pack(tcp))


def _cidr(cidr: str) -> address_pb2.CidrRange:
    ip, _, plen = cidr.partition("/")
    length = int(plen) if plen else (128 if ":" in ip else 32)
    return address_pb2.CidrRange(address_prefix=ip, prefix_len=wrappers_pb2.UInt32Value(value=length))


def render_filter_chain(fc: ir.FilterChain) -> listener_components_pb2.FilterChain:
    out = listener_components_pb2.FilterChain(name=fc.name)
    if fc.server_names:
        out.filter_chain_match.server_names.extend(fc.server_names)
    if fc.destination_port:
        out.filter_chain_match.destination_port.value = fc.destination_port
    for cidr in fc.destination_cidrs:
        out.filter_chain_match.prefix_ranges.append(_cidr(cidr))
    for cidr in fc.source_cidrs:
        out.filter_chain_match.source_prefix_ranges.append(_cidr(cidr))
    if fc.transport_protocol:
        out.filter_chain_match.transport_protocol = fc.transport_protocol
    if fc.application_protocols:
        out.filter_chain_match.application_protocols.extend(fc.application_protocols)
    if fc.tls is not None:
        out.filter_chain_match.transport_protocol = "tls"
        ctx = tls_pb2.DownstreamTlsContext()
        ctx.common_tls_context.alpn_protocols.extend(fc.tls.alpn)
        for name in fc.tls.secret_names:
            ctx.common_tls_context.tls_certificate_sds_secret_configs.add(name=name, sds_config=ads_source())
        if fc.tls.client_ca_secret and fc.tls.client_cert_optional:
            # The certificate is asked for, but neither its absence nor a failed chain check ends the
            # handshake: authorizing the client is left to the backend.
            ctx.require_client_certificate.value = False
            _validation_sds(ctx.common_tls_context, fc.tls.client_ca_secret, fc.tls.san_prefix,
                            accept_untrusted=True)
        elif fc.tls.client_ca_secret:
            ctx.require_client_certificate.value = True
            _validation_sds(ctx.common_tls_context, fc.tls.client_ca_secret, fc.tls.san_prefix)
        out.transport_socket.name = "envoy.transport_sockets.tls"
        out.transport_socket.typed_config.CopyFrom(pack(ctx))
    elif fc.server_names and isinstance(fc.app, ir.TcpApp):
        out.filter_chain_match.transport_protocol = "tls"  # TLS passthrough by SNI
    if isinstance(fc.app, ir.HttpApp):
        out.filters.append(_http_filter(fc.app, fc.name))
    else:
        if fc.app.authz is not None:
            out.filters.extend(render_network_rbac(fc.app.authz, fc.app.stat_prefix or fc.name.replace("/", "_")))
        out.filters.append(_tcp_filter(fc.app, fc.name))
    return out


LISTENER_FILTERS = {
    "tls_inspector": ("envoy.filters.listener.tls_inspector", tls_inspector_pb2.TlsInspector),
    "original_dst": ("envoy.filters.listener.original_dst", original_dst_pb2.OriginalDst),
    "http_inspector": ("envoy.filters.listener.http_inspector", http_inspector_pb2.HttpInspector),
}


TRAFFIC_DIRECTION = {"inbound": base_pb2.INBOUND, "outbound": base_pb2.OUTBOUND}


def render_listener(li: ir.Listener) -> listener_pb2.Listener:
    out = listener_pb2.Listener(name=li.name, address=socket_address(li.address, li.port))
    for extra in li.additional_addresses:
        out.additional_addresses.add().address.CopyFrom(socket_address(extra, li.port))
    if li.direction:
        out.traffic_direction = TRAFFIC_DIRECTION[li.direction]
    if li.stat_prefix:
        out.stat_prefix = li.stat_prefix
    for lf in li.listener_filters:
        name, cls = LISTENER_FILTERS[lf]
        out.listener_filters.add(name=name, typed_config=pack(cls()))
    for fc in li.filter_chains:
        out.filter_chains.append(render_filter_chain(fc))
    if li.default_chain is not None:
        out.default_filter_chain.CopyFrom(render_filter_chain(li.default_chain))
    return out


def render_secret(s: ir.Secret) -> secret_pb2.Secret:
    out = secret_pb2.Secret(name=s.name)
    if s.certificate_chain:
        out.tls_certificate.certificate_chain.inline_bytes = s.certificate_chain
        out.tls_certificate.private_key.inline_bytes = s.private_key
    elif s.trusted_ca:
        out.validation_context.CopyFrom(common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(inline_bytes=s.trusted_ca)))
    elif s.trusted_ca_file:
        out.validation_context.CopyFrom(common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(filename=s.trusted_ca_file)))
    return out


# -- proxyless gRPC clients ---------------------------------------------------------------------------
# gRPC's xDS client reads a subset of these messages and rejects (NACKs) some things Envoy accepts: a path
# specifier other than prefix/path/safe_regex, a non-terminal last HTTP filter, a locality without weight.
# It ignores request timeouts (`timeout`) and reads `max_stream_duration` instead.
def render_api_listener(al: ir.ApiListener) -> listener_pb2.Listener:
    """An API listener: an HTTP connection manager with RDS over ADS and the router as its only filter."""
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix=al.name)
    hcm.rds.route_config_name = al.route_config
    hcm.rds.config_source.CopyFrom(ads_source())
    hcm.http_filters.add(name="envoy.filters.http.router", typed_config=pack(router_pb2.Router()))
    out = listener_pb2.Listener(name=al.name)
    out.api_listener.api_listener.Pack(hcm)
    return out


HCM_TYPE_URL = b"type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


@functools.cache
def _api_listener_parts() -> tuple[bytes, bytes, bytes, bytes, bytes, bytes, bytes]:
    """What every API listener shares, serialised once: the RDS config source with the route config
    name's tag, the router filter field, the Any's type URL with its value's tag, and the tags of the
    stat prefix, RDS, listener name and API listener fields."""
    source = ads_source().SerializeToString(deterministic=True)
    router = hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=pack(router_pb2.Router()))
    hcm = hcm_pb2.HttpConnectionManager.DESCRIPTOR.fields_by_name
    rds = hcm_pb2.Rds.DESCRIPTOR.fields_by_name
    listener = listener_pb2.Listener.DESCRIPTOR.fields_by_name

    def tag(number: int) -> bytes:
        return varint((number << 3) | 2)

    return (field_bytes(rds["config_source"].number, source) + tag(rds["route_config_name"].number),
            field_bytes(hcm["http_filters"].number, router.SerializeToString(deterministic=True)),
            field_bytes(1, HCM_TYPE_URL) + tag(2), tag(hcm["stat_prefix"].number), tag(hcm["rds"].number),
            tag(listener["name"].number), tag(listener["api_listener"].number))


def api_listener_bytes(al: ir.ApiListener) -> bytes:
    """`render_api_listener(al)` serialised (deterministically), written without building messages: every
    Service port has three of these, so this keeps a large cluster's gRPC targets cheap to render."""
    rds_prefix, router, any_prefix, t_stat, t_rds, t_name, t_api = _api_listener_parts()
    name = al.name.encode()
    route_config = al.route_config.encode()
    rds = rds_prefix + varint(len(route_config)) + route_config
    named = varint(len(name)) + name
    hcm = t_stat + named + t_rds + varint(len(rds)) + rds + router
    packed = any_prefix + varint(len(hcm)) + hcm  # google.protobuf.Any
    api = b"\x0a" + varint(len(packed)) + packed  # ApiListener.api_listener
    return t_name + named + t_api + varint(len(api)) + api


# HTTP status -> the gRPC status a gRPC client sees for it (gRPC's HTTP mapping), for the statuses gRPC's
# xDS retry policy can name. Connection failures reach a gRPC client as `unavailable`, which is always
# retried, as Envoy retries connect failures.
GRPC_RETRY_STATUS = {400: "internal", 429: "unavailable", 502: "unavailable", 503: "unavailable", 504: "unavailable"}


def render_grpc_route(r: ir.Route) -> route_components_pb2.Route:
    """Forwarding routes become cluster / weighted-cluster actions with the request timeout as
    `max_stream_duration` and retries on the gRPC statuses the HTTP codes map to; redirects and direct
    responses (which gRPC cannot follow) stay direct responses, which gRPC fails with UNAVAILABLE. Header
    rewrites, mirrors and path rewrites do not exist for gRPC."""
    out = route_components_pb2.Route(name=r.name, match=_route_match(r.match, for_grpc=True))
    live = [b for b in r.backends if b.weight > 0]
    if r.redirect is not None or r.direct is not None or not live:
        out.direct_response.status = r.direct.status if r.direct is not None else \
            (r.redirect.status_code if r.redirect is not None else 500)
        return out
    action = out.route
    if len(live) == 1:
        action.cluster = live[0].cluster
    else:
        for b in live:
            cw = action.weighted_clusters.clusters.add(name=b.cluster)
            cw.weight.value = b.weight
    _hash_policies(action, r.hash_policy)
    limits = [ms for ms in (r.timeout_ms, r.per_try_timeout_ms) if ms]
    if r.retry is not None:  # gRPC has no per-try timeout: only the request timeout, over all tries
        limits = [r.timeout_ms] if r.timeout_ms else []
    if limits:  # without retries the per-try limit bounds the whole call too
        action.max_stream_duration.max_stream_duration.CopyFrom(duration_ms(min(limits)))
    if r.retry is not None:
        rp = action.retry_policy
        rp.retry_on = ",".join(dict.fromkeys([*(GRPC_RETRY_STATUS[c] for c in r.retry.codes if c in GRPC_RETRY_STATUS),
                                              "unavailable"]))
        rp.num_retries.value = r.retry.attempts
        if r.retry.backoff_ms:
            rp.retry_back_off.base_interval.CopyFrom(duration_ms(r.retry.backoff_ms))
    return out


def render_grpc_route_config(rc: ir.RouteConfig) -> route_pb2.RouteConfiguration:
    out = route_pb2.RouteConfiguration(name=rc.name)
    for vh in rc.virtual_hosts:
        v = out.virtual_hosts.add(name=vh.name, domains=list(vh.domains))
        for r in vh.routes:
            v.routes.append(render_grpc_route(r))
    return out
