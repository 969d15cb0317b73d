"""The neutral model between translation and rendering: frozen, no Kubernetes, no protobuf.

Every node keeps `sources`: the objects it came from ("Kind namespace/name"), so that a problem found
while rendering or reported by a proxy can be tied back to what the user wrote.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

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
    # Mesh: which inbound proxy terminates mesh mTLS for this endpoint: "sidecar" (its own sidecar),
    # "node/NODE" (the node Envoy of NODE, reached through that node's agent); "" = none, plaintext.
    mesh_tls: str = ""


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
    cert_secret: str = ""  # SDS name of the client certificate presented (mTLS)
    san_prefix: str = ""  # the peer needs a URI SAN starting with this (e.g. spiffe://TD/)
    san_exact: tuple[SanMatch, ...] = ()  # the peer needs one of these SANs (exact), with `ca_secret`


@dataclass(frozen=True, slots=True)
class SanMatch:
    kind: Literal["DNS", "URI"]
    value: str


@dataclass(frozen=True, slots=True)
class TlsMatch:
    """Cluster transport socket for the endpoints whose `mesh_tls` equals `mesh_tls`; the others keep the
    cluster's own (`upstream_tls`, or plaintext)."""

    mesh_tls: str
    tls: UpstreamTls


@dataclass(frozen=True, slots=True)
class HashPolicy:
    """What a request is hashed on for a RING_HASH cluster: a request header, the client's source IP (Envoy),
    or the client's gRPC channel (proxyless gRPC). Each client uses the kinds it knows, skipping the rest."""

    kind: Literal["header", "source_ip", "grpc_channel"]
    name: str = ""  # the header, for kind "header"


@dataclass(frozen=True, slots=True)
class Cluster:
    """An upstream. `discovery` EDS uses `eds_name` (defaults to `name`). `hash_policy`: for RING_HASH, what
    routes to this cluster hash requests on (translators copy it into those routes)."""

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
    tls_matches: tuple[TlsMatch, ...] = ()
    socket_mark: int = 0  # SO_MARK on upstream sockets (the eBPF agent leaves marked connects alone)
    sources: Sources = ()
    hash_policy: tuple[HashPolicy, ...] = ()
    bind_address: str = ""  # source address of upstream connections (egress gateway: the egress IP)
    # ORIGINAL_DST: take the destination from this request header instead of the downstream connection
    # (egress gateway: ":authority" of the tunnel's CONNECT request)
    original_dst_header: str = ""
    # Non-zero: active TCP health checks (connect only) at this interval; one failure marks a host
    # unhealthy, one success healthy again (egress gateway tunnels: fail over to another gateway).
    tcp_health_check_ms: int = 0


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
    connect: bool = False  # HTTP CONNECT requests (terminated: the route's cluster carries the payload)


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
class RetryPolicy:
    """Retry a request up to `attempts` more times on these HTTP status codes (and on connection failures)."""

    attempts: int
    codes: tuple[int, ...] = ()
    backoff_ms: int | None = None  # base interval between tries; None: the client's default


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
    cors: Cors | None = None
    sources: Sources = ()
    hash_policy: tuple[HashPolicy, ...] = ()  # for ring-hash backends
    retry: RetryPolicy | None = None


@dataclass(frozen=True, slots=True)
class VirtualHost:
    name: str
    domains: tuple[str, ...]
    routes: tuple[Route, ...]
    require_tls: bool = False  # redirect plain HTTP to HTTPS
    authz: IngressAuthz | None = None  # RBAC rules for the listener's `HttpApp.rbac` filters (per route)


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    virtual_hosts: tuple[VirtualHost, ...]
    sources: Sources = ()
    ignore_port_in_host_matching: bool = False  # match `Host: name:PORT` to the domain `name`
    # Who reads it: Envoy, or a proxyless gRPC client (rendered with only what gRPC's xDS client
    # understands: timeouts as max_stream_duration, element-wise prefixes as regexes, nothing Envoy-only).
    client: Literal["envoy", "grpc"] = "envoy"


# -- listeners --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TlsTermination:
    secret_names: tuple[str, ...]  # SDS secret names (certificate + key)
    alpn: tuple[str, ...] = ("h2", "http/1.1")
    # Client certificates: required and validated against this SDS trust bundle when set (mTLS) ...
    client_ca_secret: str = ""
    san_prefix: str = ""  # ... and their URI SAN must start with this (e.g. spiffe://TD/)
    # ... unless this is set: then a client without a certificate, or with one the bundle does not
    # sign, is let in too (Gateway frontend validation mode AllowInsecureFallback)
    client_cert_optional: bool = False


# -- authorization (CiliumNetworkPolicy at the mesh inbound) ----------------------------------------
@dataclass(frozen=True, slots=True)
class PeerMatch:
    """The peer's verified identity (URI SAN of its mTLS certificate): `any` also matches peers without one."""

    kind: Literal["any", "exact", "prefix"]
    value: str = ""


@dataclass(frozen=True, slots=True)
class HttpRequestMatch:
    """Every given part must match: method, path (without query) and host are whole-value regexes."""

    method: str = ""
    path: str = ""
    host: str = ""
    headers: tuple[HeaderMatch, ...] = ()


@dataclass(frozen=True, slots=True)
class AuthzRule:
    """One permission: `peers` (empty = nobody) may reach `ports` (inclusive ranges; empty = any) with
    requests matching one of `http` (None = any traffic; () = no request, i.e. nothing)."""

    name: str  # unique within its IngressAuthz; Envoy reports it for a denial
    policy: str  # the object it comes from, "CiliumNetworkPolicy ns/name"
    peers: tuple[PeerMatch, ...]
    ports: tuple[tuple[int, int], ...] = ()
    http: tuple[HttpRequestMatch, ...] | None = None


@dataclass(frozen=True, slots=True)
class IngressAuthz:
    """Who may reach a workload. Deny rules are checked first (deny wins); with `default_deny`, what no
    allow rule matches is denied too. `stat_prefix` names the Envoy counters of the denials."""

    allow: tuple[AuthzRule, ...] = ()
    deny: tuple[AuthzRule, ...] = ()
    default_deny: bool = False
    stat_prefix: str = ""
    sources: Sources = ()


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
    # Mesh inbound: replace x-forwarded-client-cert with the verified peer's URI SAN (none: removed)
    forward_client_cert: bool = False
    connect: bool = False  # terminate HTTP/2 CONNECT (egress gateway tunnels)
    # RBAC filters before the router (mesh inbound). They carry no rules of their own: the rules are the
    # route configuration's (`VirtualHost.authz`), so a policy change reaches open connections too.
    rbac: bool = False
    # gRPC access log of RBAC denials (status 403) to this cluster, the bootstrap's xDS cluster: cilia
    # counts them per policy (cilia_policy_denials_total). Empty: none.
    denial_log_cluster: str = ""


@dataclass(frozen=True, slots=True)
class Tunnel:
    """Carry a TCP proxy's connection in an HTTP/2 CONNECT request (egress gateway): `authority` is the
    CONNECT target (Envoy's formatter: %DOWNSTREAM_LOCAL_ADDRESS% is the original destination)."""

    authority: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class TcpApp:
    backends: tuple[Backend, ...]
    stat_prefix: str = ""
    access_log: bool = True
    authz: IngressAuthz | None = None  # RBAC network filters before the proxy (L4 rules only)
    tunnel: Tunnel | None = None
    hash_source_ip: bool = False  # ring-hash backends: pick the upstream host by the client's address


@dataclass(frozen=True, slots=True)
class FilterChain:
    name: str
    app: HttpApp | TcpApp
    server_names: tuple[str, ...] = ()  # SNI match
    destination_cidrs: tuple[str, ...] = ()  # original destination match (mesh capture)
    destination_port: int = 0
    tls: TlsTermination | None = None
    source_cidrs: tuple[str, ...] = ()  # client address match (mesh: which namespace a client pod is in)
    transport_protocol: str = ""  # "raw_buffer" / "tls" match (set implicitly to "tls" by `tls`)
    application_protocols: tuple[str, ...] = ()  # ALPN offered by the client (needs tls_inspector)


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
    additional_addresses: tuple[str, ...] = ()  # also bound, on the same port (a Gateway's further addresses)


@dataclass(frozen=True, slots=True)
class ApiListener:
    """A proxyless gRPC client's listener: no socket, an HTTP connection manager taking its routes over RDS.
    `name` is the `xds:///` target the client dials (`svc.ns.svc.cluster.local:PORT`)."""

    name: str
    route_config: str
    sources: Sources = ()


@dataclass(frozen=True, slots=True)
class Secret:
    name: str
    certificate_chain: bytes = b""
    private_key: bytes = b""
    trusted_ca: bytes = b""
    trusted_ca_file: str = ""  # a CA bundle on the proxy's disk (the system roots)
    sources: Sources = ()


TRUST_BUNDLE_SECRET = "cilia-trust-bundle"  # SDS validation context: the CA roots of the mesh


def workload_secret_name(namespace: str, service_account: str) -> str:
    """SDS name of a workload certificate: `cilia-workload/NAMESPACE/SERVICE_ACCOUNT`."""
    return f"cilia-workload/{namespace}/{service_account}"


@dataclass(frozen=True, slots=True)
class WorkloadCert:
    """A workload certificate a bundle's proxies need, which no input holds: issued at run time by the CA
    (cilia.security.workload) for `spiffe://TD/ns/NAMESPACE/sa/SERVICE_ACCOUNT` and served as the SDS
    secret `secret`, next to the trust bundle secret (cilia.security.workload.TRUST_BUNDLE_SECRET)."""

    secret: str
    namespace: str
    service_account: str
    node: str = ""  # set: the node identity `spiffe://TD/node/NODE` instead (an egress gateway's server side)


class SharedJson(dict[str, Any]):
    """A JSON object that translators put, as the very same object, into many resource bodies (defaults
    such as the ADS config source): never changed, so the renderer converts it once per message type and
    copies the result (render/raw.py). A copy of a body keeps it shared."""

    __slots__ = ()

    def _immutable(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("a SharedJson value is shared by many resources: replace it, do not change it")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _immutable  # type: ignore

    def __copy__(self) -> SharedJson:
        return self

    def __deepcopy__(self, memo: Any) -> SharedJson:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return SharedJson, (dict(self),)


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
    egress_cidrs: tuple[str, ...] = ()  # node mode: destinations steered into the node proxy (egress gateway)


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
    # Non-zero: proxies' connects to node-mode pods' IPs go to the node proxy's inbound listener on this
    # port (mesh mTLS), except connects from sockets carrying `node_inbound_mark` (its own forwards).
    node_inbound_port: int = 0
    node_inbound_mark: int = 0
    node_inbound_address: str = ""  # empty: the node proxy's address
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


NAMESPACED_ROLES = frozenset({"sidecar", "gateway", "grpc"})  # proxy roles whose NAME is NAMESPACE/NAME


@dataclass(frozen=True, slots=True)
class ProxyScope:
    """Which proxies receive a bundle: by role, optionally by exact name, and (role `node`) by node labels.

    A node selector is evaluated against the Node object's labels; a node with no Node object known
    is not filtered out (file mode often has no Node objects).
    """

    roles: frozenset[str]
    names: frozenset[str] | None = None
    node_selector: NodeSelector | None = None
    # Roles whose NAME is NAMESPACE/NAME (sidecar, gateway, grpc) match only in these namespaces, and not
    # in `exclude_namespaces`; other roles (node serves every namespace) are not filtered by them.
    namespaces: frozenset[str] | None = None
    exclude_namespaces: frozenset[str] = frozenset()

    def may_overlap(self, other: ProxyScope) -> bool:
        """Whether some proxy could be in both scopes (node selectors are not compared)."""
        common = self.roles & other.roles
        if not common:
            return False
        if not (self.names is None or other.names is None or bool(self.names & other.names)):
            return False
        if common <= NAMESPACED_ROLES:
            for a, b in ((self, other), (other, self)):
                if a.namespaces is not None and (
                        (b.namespaces is not None and not a.namespaces & b.namespaces)
                        or a.namespaces <= b.exclude_namespaces):
                    return False
        return True

    def matches(self, role: str, name: str, node_labels: Mapping[str, Mapping[str, str]]) -> bool:
        if role not in self.roles:
            return False
        if self.names is not None and name not in self.names:
            return False
        if role in NAMESPACED_ROLES and (self.namespaces is not None or self.exclude_namespaces):
            namespace = name.partition("/")[0]
            if self.namespaces is not None and namespace not in self.namespaces:
                return False
            if namespace in self.exclude_namespaces:
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
    api_listeners: tuple[ApiListener, ...] = ()  # proxyless gRPC clients' listeners (also LDS resources)
    routes: tuple[RouteConfig, ...] = ()
    clusters: tuple[Cluster, ...] = ()
    endpoints: tuple[EndpointSet, ...] = ()
    secrets: tuple[Secret, ...] = ()
    raw: tuple[RawResource, ...] = ()
    redirect_policies: tuple[RedirectPolicy, ...] = ()
    extra: tuple[tuple[str, str, bytes], ...] = ()  # (type_url, name, serialized message) of cilia's own types
    workload_certs: tuple[WorkloadCert, ...] = ()  # filled in as secrets after translation (not pure)
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
    # Proxy roles whose config this model leaves out (built on demand: TranslateOptions.grpc_targets);
    # a proxy of such a role is not served from it.
    deferred_roles: frozenset[str] = frozenset()
