"""The neutral model between translation and rendering: frozen, no Kubernetes, no protobuf.

Every node keeps `sources`: the objects it came from ("Kind namespace/name"), so that a problem found
while rendering or reported by a proxy can be tied back to what the user wrote.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Sources = tuple[str, ...]
Health = Literal["HEALTHY", "UNHEALTHY", "DRAINING"]
UpstreamProtocol = Literal["http1", "http2", "auto", "tcp"]

# Clusters every node proxy has from its bootstrap, as Cilium's node Envoy does, so that Cilium's
# CiliumEnvoyConfigs that route to them work unchanged: Envoy's own admin endpoint, and the
# original-destination passthrough clusters (the -tls ones originate TLS).
NODE_ADMIN_CLUSTER = "/envoy-admin"
NODE_PASSTHROUGH_CLUSTERS = ("egress-cluster", "egress-cluster-tls", "ingress-cluster", "ingress-cluster-tls")
NODE_STATIC_CLUSTERS = (NODE_ADMIN_CLUSTER, *NODE_PASSTHROUGH_CLUSTERS)


# -- endpoints and clusters ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Endpoint:
    address: str
    port: int
    health: Health = "HEALTHY"
    hostname: str = ""


@dataclass(frozen=True, slots=True)
class LocalityEndpoints:
    endpoints: tuple[Endpoint, ...]
    zone: str = ""
    region: str = ""
    sub_zone: str = ""  # ClusterMesh: the name of the cluster the endpoints live in
    priority: int = 0


@dataclass(frozen=True, slots=True)
class EndpointSet:
    """One ClusterLoadAssignment."""

    name: str
    localities: tuple[LocalityEndpoints, ...]
    sources: Sources = ()


@dataclass(frozen=True, slots=True)
class UpstreamTls:
    sni: str = ""
    ca_secret: str = ""  # SDS name of a validation context; empty = no verification
    alpn: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Cluster:
    """An upstream. `discovery` EDS uses `eds_name` (defaults to `name`)."""

    name: str
    discovery: Literal["EDS", "STRICT_DNS", "LOGICAL_DNS", "STATIC", "ORIGINAL_DST"] = "EDS"
    eds_name: str = ""
    protocol: UpstreamProtocol = "http1"
    connect_timeout_ms: int = 5000
    lb_policy: Literal["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "RING_HASH", "MAGLEV", "CLUSTER_PROVIDED"] = \
        "ROUND_ROBIN"
    dns_name: str = ""
    dns_port: int = 0
    static_endpoints: tuple[Endpoint, ...] = ()
    upstream_tls: UpstreamTls | None = None
    sources: Sources = ()


# -- HTTP routing -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PathMatch:
    """`prefix` is element-wise (`/foo` matches `/foo/bar`, not `/foobar`); `raw_prefix` is Envoy's plain prefix."""

    kind: Literal["exact", "prefix", "raw_prefix", "regex"]
    value: str
    ignore_case: bool = False


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    name: str
    kind: Literal["exact", "regex", "present", "prefix"] = "exact"
    value: str = ""
    invert: bool = False


@dataclass(frozen=True, slots=True)
class QueryMatch:
    name: str
    kind: Literal["exact", "regex", "present"] = "exact"
    value: str = ""


@dataclass(frozen=True, slots=True)
class RouteMatch:
    path: PathMatch | None = None  # None matches every path
    headers: tuple[HeaderMatch, ...] = ()
    query: tuple[QueryMatch, ...] = ()
    method: str = ""
    grpc: bool = False


@dataclass(frozen=True, slots=True)
class HeaderMods:
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.set or self.add or self.remove)


@dataclass(frozen=True, slots=True)
class Backend:
    cluster: str
    weight: int = 1
    request_headers: HeaderMods = field(default_factory=HeaderMods)
    response_headers: HeaderMods = field(default_factory=HeaderMods)


@dataclass(frozen=True, slots=True)
class Redirect:
    scheme: str = ""
    host: str = ""
    port: int = 0
    path_full: str | None = None
    path_prefix: str | None = None  # replaces the matched prefix
    status_code: int = 302
    # With `path_prefix`: the route's element-wise prefix. Then the prefix and the slashes after it are
    # replaced as for Rewrite.path_prefix (so "/foo" -> "/" turns "/foo/bar" into "/bar", not "//bar").
    matched_prefix: str | None = None


@dataclass(frozen=True, slots=True)
class Rewrite:
    host: str = ""
    path_full: str | None = None
    path_prefix: str | None = None  # replaces the matched prefix


@dataclass(frozen=True, slots=True)
class Mirror:
    cluster: str
    percent: float | None = None


@dataclass(frozen=True, slots=True)
class Retry:
    """Retry a request on these upstream status codes and on connection failures, `attempts` more times."""

    codes: tuple[int, ...] = ()
    attempts: int = 1
    backoff_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Cors:
    """A CORS policy answered by the proxy (preflights) and added to actual responses."""

    allow_origins: tuple[str, ...] = ()  # exact origins or patterns with `*` wildcards; ("*",) = any
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    allow_credentials: bool = False
    max_age_s: int | None = None


@dataclass(frozen=True, slots=True)
class DirectResponse:
    status: int
    body: str = ""


@dataclass(frozen=True, slots=True)
class Route:
    """One route. Exactly one of `backends` (forward), `redirect` or `direct` applies."""

    name: str
    match: RouteMatch
    backends: tuple[Backend, ...] = ()
    redirect: Redirect | None = None
    direct: DirectResponse | None = None
    request_headers: HeaderMods = field(default_factory=HeaderMods)
    response_headers: HeaderMods = field(default_factory=HeaderMods)
    rewrite: Rewrite | None = None
    mirrors: tuple[Mirror, ...] = ()
    timeout_ms: int | None = None  # whole request; 0 disables
    per_try_timeout_ms: int | None = None
    # Status for requests whose chosen cluster does not exist (a backend left unresolved on purpose,
    # e.g. an invalid backendRef keeping its share of traffic): 0 = Envoy's default 503, or 404/500.
    cluster_not_found_status: int = 0
    retry: Retry | None = None
    cors: Cors | None = None
    sources: Sources = ()


@dataclass(frozen=True, slots=True)
class VirtualHost:
    name: str
    domains: tuple[str, ...]
    routes: tuple[Route, ...]
    require_tls: bool = False  # redirect plain HTTP to HTTPS


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    virtual_hosts: tuple[VirtualHost, ...]
    sources: Sources = ()
    ignore_port_in_host_matching: bool = False  # match `Host: name:PORT` to the domain `name`


# -- listeners --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TlsTermination:
    secret_names: tuple[str, ...]  # SDS secret names (certificate + key)
    alpn: tuple[str, ...] = ("h2", "http/1.1")


@dataclass(frozen=True, slots=True)
class Tracing:
    """Envoy's OpenTelemetry tracer for an HTTP connection manager: spans go over OTLP/gRPC to the
    collector reached through `collector_cluster`."""

    collector_cluster: str
    service_name: str = "envoy"
    sampling_percent: float = 100.0


@dataclass(frozen=True, slots=True)
class HttpApp:
    route_config: str  # name of a RouteConfig, fetched over RDS
    stat_prefix: str = ""
    access_log: bool = True
    codec: Literal["auto", "http1", "http2"] = "auto"
    use_remote_address: bool = False  # edge proxy: the peer is the client (X-Forwarded-For appended, trusted)
    strip_host_port: bool = False  # drop any :port from Host before routing (host matching, redirects)
    cors: bool = False  # run the CORS filter (routes with a `cors` policy need it)
    tracing: Tracing | None = None


@dataclass(frozen=True, slots=True)
class TcpApp:
    backends: tuple[Backend, ...]
    stat_prefix: str = ""
    access_log: bool = True


@dataclass(frozen=True, slots=True)
class FilterChain:
    name: str
    app: HttpApp | TcpApp
    server_names: tuple[str, ...] = ()  # SNI match
    destination_cidrs: tuple[str, ...] = ()  # original destination match (mesh capture)
    destination_port: int = 0
    tls: TlsTermination | None = None
    source_cidrs: tuple[str, ...] = ()  # client address match (mesh: which namespace a client pod is in)


@dataclass(frozen=True, slots=True)
class Listener:
    name: str
    address: str
    port: int
    filter_chains: tuple[FilterChain, ...]
    default_chain: FilterChain | None = None
    listener_filters: tuple[Literal["tls_inspector", "original_dst", "http_inspector"], ...] = ()
    passthrough_cluster: str = ""  # default chain forwards to the original destination
    sources: Sources = ()
    direction: Literal["", "inbound", "outbound"] = ""  # Envoy traffic_direction (stats, tracing)
    stat_prefix: str = ""  # Envoy's listener stats prefix (listener.<prefix>.*); empty = by address


@dataclass(frozen=True, slots=True)
class Secret:
    name: str
    certificate_chain: bytes = b""
    private_key: bytes = b""
    trusted_ca: bytes = b""
    sources: Sources = ()


@dataclass(frozen=True, slots=True)
class RawResource:
    """An Envoy resource given by the user as JSON with `@type` (CiliumEnvoyConfig), names already qualified."""

    type_url: str
    name: str
    body: Mapping[str, Any]
    sources: Sources = ()
    field: str = ""  # where the user wrote it, e.g. "spec.resources[2]"


# -- eBPF redirect policy (for the node agent) -------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RedirectPod:
    namespace: str
    name: str
    uid: str
    cgroup_path: str  # relative to the agent's cgroup root; empty: the agent finds it by UID
    pod_ips: tuple[str, ...]
    mode: Literal["node", "sidecar"]
    # Sidecar mode: where the sidecar's outbound capture listener is (empty/0: the agent's defaults,
    # 127.0.0.1:15001) and the cgroup the sidecar runs in (relative to the agent's cgroup root).
    sidecar_address: str = ""
    sidecar_port: int = 0
    sidecar_cgroup_path: str = ""


@dataclass(frozen=True, slots=True)
class RedirectService:
    namespace: str
    name: str
    vip: str
    port: int
    listener_port: int = 0  # a CiliumEnvoyConfig listener on the node proxy this Service is redirected to


@dataclass(frozen=True, slots=True)
class RedirectPolicy:
    """What one node's agent steers into the proxy. `name` is the node name."""

    name: str
    pods: tuple[RedirectPod, ...]
    services: tuple[RedirectService, ...]
    proxy_port: int = 0  # 0: the agent's --proxy-address
    inbound_port: int = 0  # 0: the agent's default (15006)
    sources: Sources = ()


# -- who gets what ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LabelRequirement:
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NodeSelector:
    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[LabelRequirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        for k, v in self.match_labels:
            if labels.get(k) != v:
                return False
        for r in self.match_expressions:
            present = r.key in labels
            if r.operator == "In" and not (present and labels[r.key] in r.values):
                return False
            if r.operator == "NotIn" and present and labels[r.key] in r.values:
                return False
            if r.operator == "Exists" and not present:
                return False
            if r.operator == "DoesNotExist" and present:
                return False
        return True


@dataclass(frozen=True, slots=True)
class ProxyScope:
    """Which proxies receive a bundle: by role, optionally by exact name, and (role `node`) by node labels.

    A node selector is evaluated against the Node object's labels; a node with no Node object known
    is not filtered out (file mode often has no Node objects).
    """

    roles: frozenset[str]
    names: frozenset[str] | None = None
    node_selector: NodeSelector | None = None
    # Roles whose NAME is NAMESPACE/NAME (sidecar, gateway) match only in these namespaces; other roles
    # (node serves every namespace) are not filtered by it.
    namespaces: frozenset[str] | None = None

    def may_overlap(self, other: ProxyScope) -> bool:
        """Whether some proxy could be in both scopes (node selectors are not compared)."""
        if not self.roles & other.roles:
            return False
        return self.names is None or other.names is None or bool(self.names & other.names)

    def matches(self, role: str, name: str, node_labels: Mapping[str, Mapping[str, str]]) -> bool:
        if role not in self.roles:
            return False
        if self.names is not None and name not in self.names:
            return False
        if self.namespaces is not None and role in ("sidecar", "gateway") and \
                name.partition("/")[0] not in self.namespaces:
            return False
        if self.node_selector is not None and role == "node" and name in node_labels:
            return self.node_selector.matches(node_labels[name])
        return True


@dataclass(frozen=True, slots=True)
class Bundle:
    """A unit of configuration from one translator, delivered together to the proxies in `scope`."""

    key: str
    scope: ProxyScope
    listeners: tuple[Listener, ...] = ()
    routes: tuple[RouteConfig, ...] = ()
    clusters: tuple[Cluster, ...] = ()
    endpoints: tuple[EndpointSet, ...] = ()
    secrets: tuple[Secret, ...] = ()
    raw: tuple[RawResource, ...] = ()
    redirect_policies: tuple[RedirectPolicy, ...] = ()
    extra: tuple[tuple[str, str, bytes], ...] = ()  # (type_url, name, serialized message) of cilia's own types
    sources: Sources = ()


@dataclass(frozen=True, slots=True)
class ServiceRedirect:
    """A Service whose traffic a CiliumEnvoyConfig sends to one of its listeners (for the node agent)."""

    namespace: str
    service: str
    ports: tuple[int, ...]
    listener: str
    scope: ProxyScope
    sources: Sources = ()
    listener_port: int = 0  # the listener's port (an address-less CEC listener is bound on 127.0.0.1)


@dataclass(frozen=True, slots=True)
class MeshIR:
    bundles: tuple[Bundle, ...] = ()
    endpoints: Mapping[str, EndpointSet] = field(default_factory=dict)  # shared EDS pool, by name
    node_labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    redirects: tuple[ServiceRedirect, ...] = ()
