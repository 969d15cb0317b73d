"""Mesh topologies: the shared per-node Envoy (`node~NODE`) and sidecars (`sidecar~NS/POD`).

What each proxy gets:

* `node~NODE` (only nodes running at least one pod in mode `node`): the outbound capture listener
  `outbound|node` on `mesh_capture_address:mesh_capture_port` (127.0.0.1:15001).
* `sidecar~NS/POD` (pods in mode `sidecar`): the outbound capture listener of its namespace,
  `outbound|sidecar|NS` on `mesh_sidecar_capture_address:mesh_capture_port`, and its own inbound
  listener `inbound|sidecar|NS/POD` on `mesh_inbound_address:mesh_inbound_port` (0.0.0.0:15006).

Outbound capture listener: the `original_dst` listener filter restores the destination the client
dialled (the eBPF agent answers SO_ORIGINAL_DST), and one filter chain per mesh Service VIP:port
(`destination_cidrs` = the VIPs, `destination_port` = the port) handles it:
  - HTTP ports (appProtocol http/http2/h2c/grpc/grpc-web/kubernetes.io/h2c/kubernetes.io/ws, or,
    without appProtocol, a port name starting `http`/`grpc`/`h2c` but not `https`): an HTTP
    connection manager whose route config is the GAMMA routes for that Service when there are any,
    else one default route to the Service's cluster (no request timeout: mesh traffic includes
    long-lived gRPC streams);
  - anything else: a TCP proxy to the Service's cluster.
Clusters come from `resolve_backend` (EDS pool `ns/svc:PORT`). A chain for the capture port itself
(a direct connection to the listener, no original destination) goes to an endpoint-less cluster, so
it can never loop back into the listener; every other destination (not a mesh Service) takes the
default chain, a TCP proxy to an ORIGINAL_DST cluster (passthrough).

Decisions:

* Mesh Services are all Services with a ClusterIP (not headless, not ExternalName), in every
  namespace, whatever that namespace's own mode: as in Cilium and Istio a mesh client may call any
  Service; the destination's mode only decides what serves it on the receiving side. Only TCP ports
  are captured. Two Services claiming the same VIP:port: the first (by namespace/name) keeps it, the
  other gets an issue (Envoy would reject the whole listener for a duplicate match).
* GAMMA routes are looked up through `MESH_ROUTES(snapshot, client_namespace, service_namespace,
  service, port)` (cilia.translate.gamma.mesh_routes_for), which returns an `ir.RouteConfig` or
  None (no routes: default route). The view
  shared by every client is asked for with `client_namespace=""` (producer routes only); a client
  namespace whose view differs (consumer routes) gets chains of its own. The returned config is
  renamed here (`outbound|PORT|NS/SVC`, and `...|from:CLIENT_NS` for a consumer view), and the
  clusters its routes name are resolved by their pool name `ns/svc:PORT`.
* One node Envoy serves pods of many namespaces, so consumer routes are selected by the client's
  address: for a Service whose view differs for client namespace C, the node listener has, besides
  the shared chain, a chain with the same destination match plus `source_cidrs` = the IPs of all
  mode-`node` pods of C (cluster-wide, not only this node's: addresses of other nodes' pods never
  reach this Envoy, and the listener stays one resource shared by every node). Envoy prefers the
  chain with a matching source range, so C's pods get C's routes and all others the shared ones.
  This needs the client's pod IP preserved as the source address, which the redirect does when
  pods have their own network namespace.
* Sidecar egress scope: the Namespace annotation `cilia.io/egress-hosts: "ns1/*,ns2/svc,./*"`
  (Istio Sidecar `egress.hosts` syntax, by namespace and Service name; `.` is the sidecar's own
  namespace, `*` any) limits the sidecar's outbound chains to those Services. Without it a sidecar
  gets all mesh Services. Destinations out of scope take the passthrough chain: the scope trims
  config, it is not an access control. An invalid value is reported and the default (all) used.
  Node Envoys always get all mesh Services.
* Sidecar inbound listener: one chain per TCP container port of the pod (`destination_port` = the
  port, as restored by `original_dst`) forwarding to 127.0.0.1:PORT through the STATIC cluster
  `inbound|PORT` (`inbound|PORT|http2` for h2c/gRPC ports); HTTP ports (by the Services selecting
  the pod: their ports targeting this container port, all HTTP; else the container port's name) get
  an HTTP connection manager, others a TCP proxy. Ports not declared take the passthrough chain; a
  direct connection to the inbound port itself goes to the endpoint-less cluster.
* Bind addresses: the special value `pod-ip` (sidecar addresses only) binds the pod's own IP; each
  sidecar then has its own outbound listener `outbound|sidecar|NS/POD` (for sidecars sharing one
  network namespace, as in tests). A pod without an IP gets no listener bound to it until it has one.
* Pods in host network, and finished pods (Succeeded/Failed), are not mesh pods.
"""

from __future__ import annotations

import ipaddress
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from cilia.diagnostics import Issue
from cilia.ir.model import (
    Backend,
    Bundle,
    Cluster,
    Endpoint,
    FilterChain,
    HashPolicy,
    HttpApp,
    IngressAuthz,
    Listener,
    ProxyScope,
    Route,
    RouteConfig,
    RouteMatch,
    TcpApp,
    UpstreamProtocol,
    VirtualHost,
    WorkloadCert,
    workload_secret_name,
)
from cilia.k8s.core import ContainerPort, ServicePort, ServiceSpec
from cilia.k8s.objects import KubeObject
from cilia.k8s.store import InputSnapshot
from cilia.translate.context import Memo, Partial, TranslateOptions
from cilia.translate.egress import compile_egress, egress_parts
from cilia.translate.gamma import GammaIndex, gamma_index, mesh_routes_for
from cilia.translate.incremental import memo_enabled, root_snapshot
from cilia.translate.meshpods import MeshPod, mesh_pods
from cilia.translate.meshtls import (
    SIDECAR_WORKLOAD_SECRET,
    XDS_CLUSTER,
    Identity,
    MtlsMode,
    MtlsOutbound,
    downstream_tls,
    inbound_route_name,
    mtls_mode,
    node_inbound,
)
from cilia.translate.policy import compile_policies
from cilia.translate.services import resolve_backend, upstream_protocol

MeshRoutesFn = Callable[[InputSnapshot, str, str, str, int], "RouteConfig | None"]
"""(snapshot, client_namespace, service_namespace, service_name, port) -> GAMMA routes or None."""


def no_mesh_routes(snapshot: InputSnapshot, client_namespace: str, service_namespace: str, service: str,
                   port: int) -> RouteConfig | None:
    """The GAMMA hook until Gateway API support is wired in: no routes, so every HTTP Service gets its
    default route."""
    return None



# Where GAMMA routes come from; tests substitute their own.
MESH_ROUTES: MeshRoutesFn = mesh_routes_for

EGRESS_HOSTS_ANNOTATION = "cilia.io/egress-hosts"
BIND_POD_IP = "pod-ip"
PASSTHROUGH_CLUSTER = "mesh|passthrough"
BLACKHOLE_CLUSTER = "mesh|blackhole"
NODE_OUTBOUND_LISTENER = "outbound|node"
HTTP_APP_PROTOCOLS = frozenset({"http", "http2", "h2c", "grpc", "grpc-web", "kubernetes.io/h2c",
                                "kubernetes.io/ws"})
_HTTP_NAME = re.compile(r"^(http|grpc|h2c)(?!s)", re.IGNORECASE)
POOL_NAME = re.compile(r"^([^/:]+)/([^/:]+):(\d+)$")  # a Service cluster: NS/SVC:PORT


# -- names ------------------------------------------------------------------------------------------
def sidecar_outbound_listener_name(namespace: str, pod: str | None = None) -> str:
    return f"outbound|sidecar|{namespace}" if pod is None else f"outbound|sidecar|{namespace}/{pod}"


def inbound_listener_name(namespace: str, pod: str) -> str:
    return f"inbound|sidecar|{namespace}/{pod}"


def outbound_route_name(namespace: str, service: str, port: int, client_namespace: str = "") -> str:
    base = f"outbound|{port}|{namespace}/{service}"
    return f"{base}|from:{client_namespace}" if client_namespace else base


def inbound_cluster_name(port: int, protocol: UpstreamProtocol) -> str:
    return f"inbound|{port}|http2" if protocol == "http2" else f"inbound|{port}"


# -- protocol detection ----------------------------------------------------------------------------
def is_http_port_name(name: str) -> bool:
    """Port names `http*`, `grpc*`, `h2c*` mean HTTP; `https*` does not (TLS, carried as TCP)."""
    return bool(_HTTP_NAME.match(name))


def is_http_service_port(sp: ServicePort) -> bool:
    """appProtocol decides when set; otherwise the port name."""
    if sp.app_protocol:
        return sp.app_protocol.lower() in HTTP_APP_PROTOCOLS
    return is_http_port_name(sp.name)


# -- inputs: pods and services ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MeshServicePort:
    """One mesh port of a Service. mesh_services hands out new objects for a changed Service object only,
    so the translator's memo takes the identity of a port for that of its Service."""

    namespace: str
    name: str
    vips: tuple[str, ...]
    port: ServicePort
    http: bool
    ref: str


@dataclass(frozen=True, slots=True)
class EgressScope:
    """Which Services a sidecar's outbound listener covers: (namespace, service) patterns, `*` = any."""

    hosts: tuple[tuple[str, str], ...] = (("*", "*"),)

    def allows(self, namespace: str, service: str) -> bool:
        if self.hosts == (("*", "*"),):
            return True
        return any(ns in ("*", namespace) and svc in ("*", service) for ns, svc in self.hosts)


def parse_egress_hosts(value: str, namespace: str) -> EgressScope:
    """`ns/svc` entries separated by commas; `.` = `namespace`. Raises ValueError naming the bad entry."""
    hosts: list[tuple[str, str]] = []
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            continue
        ns, sep, svc = entry.partition("/")
        if not sep or not ns or not svc or "/" in svc:
            raise ValueError(f"entry {entry!r} is not NAMESPACE/SERVICE (use '*' for any, '.' for this namespace)")
        hosts.append((namespace if ns == "." else ns, svc))
    if not hosts:
        raise ValueError("no entries; expected NAMESPACE/SERVICE[,...]")
    return EgressScope(tuple(dict.fromkeys(hosts)))


def mesh_services(snapshot: InputSnapshot) -> tuple[list[MeshServicePort], list[Issue]]:
    """ClusterIP Services' TCP ports, each VIP:port owned by one Service."""
    root = root_snapshot(snapshot)
    if root is None or not memo_enabled():
        return _all_mesh_services(snapshot.list("Service"))[:2]
    services = root.objects.get("Service") or _NO_SERVICES
    last = _LastServices.entry
    if last is None or last.services is not services:
        found = _service_delta(last, services) if last is not None else None
        if found is None:
            out, issues, at = _all_mesh_services(snapshot.list("Service"), last)
            found = _MeshServices(services, out, issues, at)
        _LastServices.entry = last = found
    snapshot.list("Service")  # the read a full run makes (outer views record it)
    return list(last.ports), list(last.issues)


_NO_SERVICES: Mapping[tuple[str, str], KubeObject] = {}
ObjectMap = Mapping[tuple[str, str], KubeObject]


class _LastDiff:
    """The last diff asked for (one entry: the mesh and gRPC translators ask the same one per snapshot)."""

    entry: tuple[ObjectMap, ObjectMap, list[tuple[tuple[str, str], KubeObject]] | None] | None = None


def changed_objects(old: ObjectMap, new: ObjectMap, most: int = 64) -> list[tuple[tuple[str, str], KubeObject]] | None:
    """The (key, object) of `new` that are not the very object `old` has (a kind's mapping from two
    snapshots of one store: the store replaces only objects whose content changed); None when there are
    more than `most`, or keys were removed."""
    hit = _LastDiff.entry
    if hit is not None and hit[0] is old and hit[1] is new:
        return hit[2]
    changed = [(k, o) for k, o in new.items() if old.get(k) is not o]
    added = sum(1 for k, _ in changed if k not in old)
    found = changed if len(changed) <= most and len(new) - added == len(old) else None
    _LastDiff.entry = (old, new, found)
    return found
# A Service object, its candidate mesh ports (index in spec.ports, port), and where the kept ones are in
# mesh_services' list (position, index in spec.ports).
_Placed = tuple[KubeObject, tuple[tuple[int, "MeshServicePort"], ...], tuple[tuple[int, int], ...]]


@dataclass(frozen=True, slots=True)
class _MeshServices:
    """mesh_services of one Service mapping (by identity), with where each Service's ports landed."""

    services: Mapping[tuple[str, str], KubeObject]
    ports: list[MeshServicePort]
    issues: list[Issue]
    at: dict[tuple[str, str], _Placed]


class _LastServices:
    """The last result (one entry, replaced whole), so an edit of a few Services costs those alone."""

    entry: _MeshServices | None = None


def _shape(ports: tuple[tuple[int, MeshServicePort], ...]) -> list[tuple[int, int, tuple[str, ...]]]:
    """What VIP:port ownership (and so which ports are kept, and the issues) depends on."""
    return [(i, msp.port.port, msp.vips) for i, msp in ports]


def _service_delta(last: _MeshServices, services: Mapping[tuple[str, str], KubeObject]) -> _MeshServices | None:
    """`last` with changed Services' ports replaced in place; None when a Service was added or removed or
    a change can move VIP:port ownership (other VIPs, ports, or port order)."""
    if len(services) != len(last.services):
        return None
    changed = changed_objects(last.services, services)
    if changed is None or len(changed) > 64:
        return None
    ports = last.ports
    at = dict(last.at)
    for key, obj in changed:
        before = last.at.get(key)
        if before is None:
            return None
        now = _mesh_ports(obj)
        if _shape(now) != _shape(before[1]):
            return None
        if before[2]:  # new port objects even when equal: a port object stands for its Service (_Across)
            if ports is last.ports:
                ports = list(ports)
            kept = dict(now)
            for pos, i in before[2]:
                ports[pos] = kept[i]
        at[key] = (obj, now, before[2])
    return _MeshServices(services, ports, last.issues, at)


def _all_mesh_services(objs: Iterable[KubeObject], last: _MeshServices | None = None) -> tuple[
        list[MeshServicePort], list[Issue], dict[tuple[str, str], _Placed]]:
    """Every Service in turn (candidate ports of `last`'s very same objects reused)."""
    out: list[MeshServicePort] = []
    issues: list[Issue] = []
    owner: dict[tuple[str, int], str] = {}
    at: dict[tuple[str, str], _Placed] = {}
    before = last.at if last is not None else {}
    for obj in objs:
        key = (obj.meta.namespace, obj.meta.name)
        prev = before.get(key)
        candidates = prev[1] if prev is not None and prev[0] is obj else _mesh_ports(obj)
        positions: list[tuple[int, int]] = []
        for i, msp in candidates:
            port = msp.port.port
            taken = next((ip for ip in msp.vips if (ip, port) in owner), None)
            if taken is not None:
                issues.append(Issue(msp.ref, f"spec.ports[{i}]",
                                    f"{taken}:{port} is already a mesh destination of "
                                    f"{owner[(taken, port)]}; this port is left out of the mesh"))
                continue
            for ip in msp.vips:
                owner[(ip, port)] = msp.ref
            positions.append((len(out), i))
            out.append(msp)
        at[key] = (obj, candidates, tuple(positions))
    return out, issues, at


def _mesh_ports(obj: KubeObject) -> tuple[tuple[int, MeshServicePort], ...]:
    """The Service's TCP ports as mesh destinations (with their index in spec.ports), before the
    VIP:port ownership check."""
    svc: ServiceSpec = obj.spec
    if svc.type == "ExternalName" or svc.headless or not svc.cluster_ips:
        return ()
    ref = str(obj.ref)
    return tuple((i, MeshServicePort(obj.meta.namespace, obj.meta.name, svc.cluster_ips, sp,
                                     is_http_service_port(sp), ref))
                 for i, sp in enumerate(svc.ports) if sp.protocol in ("TCP", ""))


# -- outbound --------------------------------------------------------------------------------------
def default_route_config(name: str, cluster: str, sources: tuple[str, ...] = (),
                         hash_policy: tuple[HashPolicy, ...] = ()) -> RouteConfig:
    """Everything to the Service's cluster; no request timeout (long-lived streams are normal here)."""
    route = Route(name="default", match=RouteMatch(), backends=(Backend(cluster),), timeout_ms=0,
                  hash_policy=hash_policy)
    return RouteConfig(name, (VirtualHost(name, ("*",), (route,)),), sources)


def cluster_names(rc: RouteConfig) -> list[str]:
    """The clusters a route config's routes send to (backends and mirrors), first use first."""
    names: dict[str, None] = {}
    for vh in rc.virtual_hosts:
        for r in vh.routes:
            for b in r.backends:
                names[b.cluster] = None
            for mirror in r.mirrors:
                names[mirror.cluster] = None
    return list(names)


def route_clusters(snapshot: InputSnapshot, rc: RouteConfig) -> list[Cluster]:
    """Clusters a route config names, resolved by their pool name `ns/svc:PORT`."""
    out = []
    for name in cluster_names(rc):
        m = POOL_NAME.match(name)
        if m is None:
            continue
        found = resolve_backend(snapshot, m.group(1), m.group(2), int(m.group(3)))
        if found.cluster is not None and found.cluster.name == name:
            out.append(found.cluster)
    return out


_ChainPart = tuple[FilterChain, RouteConfig | None, list[Cluster]]


class _Across:
    """What `_Outbound` computed in the last runs, by the identity of what it was computed from, so a
    Service edit recomputes that Service's chains only. A MeshServicePort stands for its Service object
    (mesh_services hands out new ones only for changed Services); route configs from the GAMMA index are
    the very same objects while unchanged. Every entry holds the objects whose ids key it."""

    clusters: Memo[tuple[MeshServicePort, Cluster | None]] = Memo()
    # (sp, client namespace) -> sp, its GAMMA routes for that namespace, the shared view it was made with, view
    views: Memo[tuple[MeshServicePort, RouteConfig | None, RouteConfig | None, RouteConfig]] = Memo()
    # (sp, view) -> sp, view, the other Services its routes name (key, object), their clusters
    route_clusters: Memo[tuple[MeshServicePort, RouteConfig, tuple[tuple[tuple[str, str], KubeObject | None], ...],
                               list[Cluster]]] = Memo()
    # (sp, view, namespace, source CIDRs) -> sp, view, the route clusters it was made with, chain
    chains: Memo[tuple[MeshServicePort, RouteConfig | None, list[Cluster] | None, _ChainPart | None]] = Memo()
    # (chain, identity) -> chain, trust domain, its mTLS form
    mtls: Memo[tuple[_ChainPart, str, _ChainPart]] = Memo()
    # With the GAMMA index as routes: (sp, namespace, source CIDRs) -> sp, the index, the other Services its
    # routes name, chain. One look-up where `chain` makes several.
    fast: Memo[tuple[MeshServicePort, GammaIndex, tuple[tuple[tuple[str, str], KubeObject | None], ...],
                     _ChainPart | None]] = Memo()

    @classmethod
    def rotate(cls) -> None:
        for memo in (cls.clusters, cls.views, cls.route_clusters, cls.chains, cls.mtls, cls.fast):
            memo.rotate()


@dataclass(slots=True)
class _Mtls:
    """MtlsOutbound.part, whose result is a function of the chain (by identity: `_Across.chains` hands
    back the very same chain while unchanged), the identity and the trust domain; with `across`, results
    are reused across translations."""

    outbound: MtlsOutbound
    across: bool

    def part(self, p: _ChainPart, ident: Identity) -> _ChainPart:
        if not self.across:
            return self.outbound.part(p, ident)
        key = (id(p), ident)
        hit = _Across.mtls.get(key)
        if hit is not None and hit[0] is p and hit[1] == self.outbound.td:
            return hit[2]
        found = self.outbound.part(p, ident)
        _Across.mtls.put(key, (p, self.outbound.td, found))
        return found


@dataclass(slots=True)
class _Outbound:
    """Per-translation memo of each Service port's cluster and route views (one per client namespace);
    with `services` (the snapshot's Service mapping; None: memo disabled) also across translations."""

    snapshot: InputSnapshot
    routes_for: MeshRoutesFn
    services: Mapping[tuple[str, str], KubeObject] | None = None
    clusters: dict[tuple[str, str, int], Cluster | None] = field(default_factory=dict)
    views: dict[tuple[str, str, int, str], RouteConfig] = field(default_factory=dict)
    route_clusters: dict[str, list[Cluster]] = field(default_factory=dict)
    defaults: set[tuple[str, str, int]] = field(default_factory=set)  # Service ports with no routes for any client
    chains: dict[tuple[str, str, int, str, tuple[str, ...]], _ChainPart | None] = field(default_factory=dict)
    deps: dict[str, tuple[tuple[tuple[str, str], KubeObject | None], ...]] = field(default_factory=dict)
    _index: list[GammaIndex | None] = field(default_factory=list)

    @property
    def index(self) -> GammaIndex | None:
        """The GAMMA index when it is where routes come from (mesh_routes_for) and memo is on; else None.
        Asked for on first use, so a mesh without clients reads no routes."""
        if not self._index:
            use = self.services is not None and self.routes_for is mesh_routes_for
            self._index.append(gamma_index(self.snapshot) if use else None)
        return self._index[0]

    def cluster(self, sp: MeshServicePort) -> Cluster | None:
        key = (sp.namespace, sp.name, sp.port.port)
        if key not in self.clusters:
            hit = _Across.clusters.get(id(sp)) if self.services is not None else None
            if hit is not None and hit[0] is sp:
                self.clusters[key] = hit[1]
            else:
                self.clusters[key] = resolve_backend(self.snapshot, sp.namespace, sp.name, sp.port.port).cluster
                if self.services is not None:
                    _Across.clusters.put(id(sp), (sp, self.clusters[key]))
        return self.clusters[key]

    def view(self, sp: MeshServicePort, client_namespace: str) -> RouteConfig:
        """The routes a client in `client_namespace` ("" = any client) gets for this Service port."""
        key = (sp.namespace, sp.name, sp.port.port, client_namespace)
        found = self.views.get(key)
        if found is not None:
            return found
        shared = None if not client_namespace else self.view(sp, "")
        rc = self.routes_for(self.snapshot, client_namespace, sp.namespace, sp.name, sp.port.port)
        if rc is None and shared is not None and (sp.namespace, sp.name, sp.port.port) in self.defaults:
            self.views[key] = shared  # no routes for anyone: the one default route config
            return shared
        hit = _Across.views.get((id(sp), client_namespace)) if self.services is not None else None
        if hit is not None and hit[0] is sp and hit[1] is rc and hit[2] is shared:
            view = hit[3]
        else:
            view = self._view(sp, client_namespace, rc, shared)
            if self.services is not None:
                _Across.views.put((id(sp), client_namespace), (sp, rc, shared, view))
        if shared is None and rc is None:
            self.defaults.add((sp.namespace, sp.name, sp.port.port))
        self.views[key] = view
        if view.name not in self.route_clusters:
            self.route_clusters[view.name] = self._route_clusters(sp, view)
        return view

    def _view(self, sp: MeshServicePort, client_namespace: str, rc: RouteConfig | None,
              shared: RouteConfig | None) -> RouteConfig:
        base = outbound_route_name(sp.namespace, sp.name, sp.port.port)
        if rc is not None:
            own = replace(rc, name=base)
        else:
            cluster = self.cluster(sp)
            own = default_route_config(base, cluster.name if cluster else "", (sp.ref,),
                                       cluster.hash_policy if cluster else ())
        if shared is None or own == shared:
            return shared or own
        return replace(own, name=outbound_route_name(sp.namespace, sp.name, sp.port.port, client_namespace))

    def _route_clusters(self, sp: MeshServicePort, view: RouteConfig) -> list[Cluster]:
        services = self.services
        if services is None:
            return route_clusters(self.snapshot, view)
        hit = _Across.route_clusters.get((id(sp), id(view)))
        if hit is not None and hit[0] is sp and hit[1] is view and all(services.get(k) is o for k, o in hit[2]):
            for (ns, name), _ in hit[2]:
                self.snapshot.get("Service", ns, name)  # the reads a fresh run makes (outer views record them)
            self.deps[view.name] = hit[2]
            return hit[3]
        found = route_clusters(self.snapshot, view)
        named: dict[tuple[str, str], KubeObject | None] = {}
        for name in cluster_names(view):
            m = POOL_NAME.match(name)
            if m is not None and (m.group(1), m.group(2)) != (sp.namespace, sp.name):  # sp stands for its own
                named[(m.group(1), m.group(2))] = services.get((m.group(1), m.group(2)))
        deps = self.deps[view.name] = tuple(named.items())
        _Across.route_clusters.put((id(sp), id(view)), (sp, view, deps, found))
        return found

    def chain(self, sp: MeshServicePort, client_namespace: str, source_cidrs: tuple[str, ...] = ()) -> \
            _ChainPart | None:
        """The filter chain for this Service port as seen from `client_namespace` (memoised: the same
        chain object serves every listener that has it)."""
        index, services = self.index, self.services
        if index is not None and services is not None:
            fast = (id(sp), client_namespace, source_cidrs)
            hit = _Across.fast.get(fast)
            if hit is not None and hit[0] is sp and hit[1] is index and all(services.get(k) is o for k, o in hit[2]):
                for (ns, name), _ in hit[2]:
                    self.snapshot.get("Service", ns, name)
                return hit[3]
            found = self._chain_of(sp, client_namespace, source_cidrs)
            view = self.views.get((sp.namespace, sp.name, sp.port.port, client_namespace)) if sp.http else None
            deps = self.deps.get(view.name, ()) if view is not None else ()
            _Across.fast.put(fast, (sp, index, deps, found))
            return found
        return self._chain_of(sp, client_namespace, source_cidrs)

    def differs(self, sp: MeshServicePort, client_namespace: str) -> bool:
        """Whether clients in `client_namespace` see other routes for this Service port than everyone."""
        if self.index is not None and \
                (client_namespace, sp.namespace, sp.name, sp.port.port) not in self.index.consumer:
            return False  # their routes are everyone's (the producer routes, or none): the same view
        return self.view(sp, client_namespace) is not self.view(sp, "")

    def _chain_of(self, sp: MeshServicePort, client_namespace: str, source_cidrs: tuple[str, ...]) -> \
            _ChainPart | None:
        view = self.view(sp, client_namespace) if sp.http else None
        key = (sp.namespace, sp.name, sp.port.port, view.name if view is not None else "", source_cidrs)
        if key not in self.chains:
            if self.services is None:
                self.chains[key] = self._chain(sp, client_namespace, source_cidrs)
                return self.chains[key]
            across = (id(sp), id(view), client_namespace if source_cidrs else "", source_cidrs)
            used = self.route_clusters[view.name] if view is not None else None
            hit = _Across.chains.get(across)
            if hit is not None and hit[0] is sp and hit[1] is view and hit[2] is used:
                self.chains[key] = hit[3]
            else:
                self.chains[key] = self._chain(sp, client_namespace, source_cidrs)
                _Across.chains.put(across, (sp, view, used, self.chains[key]))
        return self.chains[key]

    def _chain(self, sp: MeshServicePort, client_namespace: str, source_cidrs: tuple[str, ...]) -> \
            tuple[FilterChain, RouteConfig | None, list[Cluster]] | None:
        cluster = self.cluster(sp)
        if cluster is None:
            return None
        name = f"outbound|{sp.port.port}|{sp.namespace}/{sp.name}"
        stat = f"outbound_{sp.namespace}_{sp.name}_{sp.port.port}"
        cidrs = tuple(_host_cidr(ip) for ip in sp.vips)
        if not sp.http:
            fc = FilterChain(name, TcpApp((Backend(cluster.name),), stat_prefix=stat), destination_cidrs=cidrs,
                             destination_port=sp.port.port)
            return fc, None, [cluster]
        view = self.view(sp, client_namespace)
        if source_cidrs:
            name = f"{name}|from:{client_namespace}"
            stat = f"{stat}_from_{client_namespace}"
        fc = FilterChain(name, HttpApp(view.name, stat_prefix=stat), destination_cidrs=cidrs,
                         destination_port=sp.port.port, source_cidrs=source_cidrs)
        return fc, view, [cluster, *self.route_clusters[view.name]]


def _host_cidr(ip: str) -> str:
    return f"{ip}/128" if ":" in ip else f"{ip}/32"


# The passthrough (original destination) and black-hole (no endpoints) clusters every capture listener uses.
GUARD_CLUSTERS: tuple[Cluster, Cluster] = (
    Cluster(PASSTHROUGH_CLUSTER, discovery="ORIGINAL_DST", protocol="tcp", lb_policy="CLUSTER_PROVIDED"),
    Cluster(BLACKHOLE_CLUSTER, discovery="STATIC", protocol="tcp"),
)


def _passthrough_chain(name: str) -> FilterChain:
    return FilterChain(name, TcpApp((Backend(PASSTHROUGH_CLUSTER),), stat_prefix=name.replace("|", "_")))


def _blackhole_chain(name: str, port: int) -> FilterChain:
    return FilterChain(name, TcpApp((Backend(BLACKHOLE_CLUSTER),), stat_prefix=name.replace("|", "_")),
                       destination_port=port)


@dataclass(frozen=True, slots=True)
class _Config:
    listeners: tuple[Listener, ...]
    routes: tuple[RouteConfig, ...]
    clusters: tuple[Cluster, ...]


def _collect(listener: Listener, parts: Iterable[tuple[FilterChain, RouteConfig | None, list[Cluster]]],
             extra_clusters: Iterable[Cluster] = ()) -> _Config:
    routes: dict[str, RouteConfig] = {}
    clusters: dict[str, Cluster] = {c.name: c for c in extra_clusters}
    chains = []
    for fc, rc, cl in parts:
        chains.append(fc)
        if rc is not None:
            routes.setdefault(rc.name, rc)
        for c in cl:
            clusters.setdefault(c.name, c)
    li = replace(listener, filter_chains=(*listener.filter_chains, *chains))
    return _Config((li,), tuple(routes.values()), tuple(clusters.values()))


def _outbound_listener(name: str, address: str, opts: TranslateOptions,
                       parts: list[tuple[FilterChain, RouteConfig | None, list[Cluster]]],
                       sources: tuple[str, ...]) -> _Config:
    # The guard chain goes first; Envoy picks chains by match specificity, not by order.
    guard = _blackhole_chain(f"{name}|direct", opts.mesh_capture_port)
    listener = Listener(name, address, opts.mesh_capture_port, (guard,), default_chain=_passthrough_chain(
        f"{name}|passthrough"), listener_filters=("original_dst",), passthrough_cluster=PASSTHROUGH_CLUSTER,
        sources=sources, direction="outbound")
    return _collect(listener, parts, GUARD_CLUSTERS)


# -- inbound ---------------------------------------------------------------------------------------
class _SelectorIndex:
    """The Services of one namespace, indexed by one label of their selector, to find a pod's Services fast."""

    def __init__(self, services: Iterable[KubeObject]) -> None:
        self._by_label: dict[tuple[str, str], list[KubeObject]] = defaultdict(list)
        for obj in services:
            selector: Mapping[str, str] = obj.spec.selector
            if selector:
                self._by_label[min(selector.items())].append(obj)

    def selecting(self, labels: Mapping[str, str]) -> list[KubeObject]:
        out = []
        for item in sorted(labels.items()):
            for obj in self._by_label.get(item, ()):
                if all(labels.get(k) == v for k, v in obj.spec.selector.items()):
                    out.append(obj)
        return sorted(out, key=lambda o: o.meta.name)


def _targets(sp: ServicePort, cp: ContainerPort) -> bool:
    if sp.target_port is None:
        return sp.port == cp.port
    if isinstance(sp.target_port, int):
        return sp.target_port == cp.port
    return bool(cp.name) and sp.target_port == cp.name


def _inbound_protocol(cp: ContainerPort, service_ports: list[ServicePort]) -> tuple[bool, UpstreamProtocol]:
    """(HTTP?, upstream protocol) of a container port: from the Service ports targeting it, else its name."""
    if service_ports:
        http = all(is_http_service_port(sp) for sp in service_ports)
        h2 = http and all(upstream_protocol(sp) == "http2" for sp in service_ports)
        return http, "http2" if h2 else "http1"
    http = is_http_port_name(cp.name)
    h2 = http and cp.name.lower().startswith(("grpc", "h2c", "http2"))
    return http, "http2" if h2 else "http1"


def _http_rules_on(authz: IngressAuthz | None, port: int) -> bool:
    """Whether some rule of `authz` has HTTP rules that apply to `port`."""
    if authz is None:
        return False
    return any(r.http and (not r.ports or any(lo <= port <= hi for lo, hi in r.ports)) for r in authz.allow)


def _inbound(index: _SelectorIndex, pod: MeshPod, address: str, opts: TranslateOptions, issues: list[Issue],
             authz: IngressAuthz | None = None, tls_mode: MtlsMode | None = None) -> _Config:
    """The sidecar's inbound listener. With mesh mTLS (`tls_mode` set) every declared port has an mTLS
    chain, and a plaintext one (permissive) or a refusing one (strict); undeclared ports reached over
    mTLS pass through to the original destination after the handshake."""
    services = index.selecting(pod.labels)
    parts: list[tuple[FilterChain, RouteConfig | None, list[Cluster]]] = []
    seen: dict[int, str] = {}
    tls = downstream_tls(opts.mesh_trust_domain, SIDECAR_WORKLOAD_SECRET) if tls_mode else None
    plain_match = "raw_buffer" if tls_mode else ""
    for cp in pod.ports:
        if cp.protocol not in ("TCP", ""):
            continue
        if cp.port in seen:
            issues.append(Issue(pod.ref, f"spec.containers[{cp.container}].ports",
                                f"port {cp.port} is declared twice (also by container {seen[cp.port]!r}); "
                                "the first is used", severity="warning"))
            continue
        seen[cp.port] = cp.container
        targeting = [sp for svc in services for sp in svc.spec.ports if _targets(sp, cp)]
        http, proto = _inbound_protocol(cp, targeting)
        if targeting and not http and any(is_http_service_port(sp) for sp in targeting):
            issues.append(Issue(pod.ref, f"spec.containers[{cp.container}].ports",
                                f"Services disagree whether port {cp.port} is HTTP; inbound is plain TCP",
                                severity="warning"))
        if not http and _http_rules_on(authz, cp.port):
            issues.append(Issue(pod.ref, f"spec.containers[{cp.container}].ports",
                                f"port {cp.port} is not HTTP, so HTTP rules of "
                                f"{', '.join(authz.sources if authz else ())} cannot match there: connections "
                                "they would allow are denied", severity="warning"))
        cname = inbound_cluster_name(cp.port, proto)
        cluster = Cluster(cname, discovery="STATIC", protocol=proto if http else "tcp",
                          static_endpoints=(Endpoint("127.0.0.1", cp.port),))
        chain_name = f"inbound|{cp.port}"
        stat = f"inbound_{cp.port}"
        app: HttpApp | TcpApp
        rc: RouteConfig | None = None
        if http:
            rc = RouteConfig(cname, (VirtualHost(cname, ("*",), (Route(
                inbound_route_name(authz), RouteMatch(), backends=(Backend(cname),), timeout_ms=0),), authz=authz),))
            app = HttpApp(rc.name, stat_prefix=stat, forward_client_cert=tls is not None, rbac=True,
                          denial_log_cluster=XDS_CLUSTER)
        else:
            app = TcpApp((Backend(cname),), stat_prefix=stat, authz=authz)
        if tls is not None:
            parts.append((FilterChain(f"{chain_name}|mtls", app, destination_port=cp.port, tls=tls), rc, [cluster]))
        if tls_mode == "strict":
            parts.append((FilterChain(f"{chain_name}|plaintext-refused", TcpApp(
                (Backend(BLACKHOLE_CLUSTER),), stat_prefix=f"{stat}_plaintext_refused"), destination_port=cp.port,
                transport_protocol=plain_match), None, []))
        else:
            parts.append((FilterChain(chain_name, app, destination_port=cp.port, transport_protocol=plain_match),
                          rc, [cluster]))
    name = inbound_listener_name(pod.namespace, pod.name)
    guards: tuple[FilterChain, ...] = () if opts.mesh_inbound_port in seen else (
        _blackhole_chain(f"{name}|direct", opts.mesh_inbound_port),)
    passthrough = _passthrough_chain(f"{name}|passthrough")
    if authz is not None:
        assert isinstance(passthrough.app, TcpApp)
        passthrough = replace(passthrough, app=replace(passthrough.app, authz=authz))
    if tls is not None:
        guards += (replace(passthrough, name=f"{name}|mtls-passthrough", tls=tls),)
    default = _blackhole_chain(f"{name}|plaintext-refused", 0) if tls_mode == "strict" else passthrough
    listener = Listener(name, address, opts.mesh_inbound_port, guards,
                        default_chain=default,
                        listener_filters=("original_dst", "tls_inspector") if tls else ("original_dst",),
                        passthrough_cluster=PASSTHROUGH_CLUSTER, sources=(pod.ref,), direction="inbound")
    return _collect(listener, parts, GUARD_CLUSTERS)


# -- the translator --------------------------------------------------------------------------------
def _bind(address: str, pod: MeshPod) -> str | None:
    """The address to bind for this pod, or None when it is the pod's IP and the pod has none yet."""
    if address != BIND_POD_IP:
        return address
    return pod.ips[0] if pod.ips else None


def _node_sources(pods: list[MeshPod], issues: list[Issue]) -> dict[str, tuple[str, ...]]:
    """Client namespace -> CIDRs of its mode-node pods; an IP claimed twice stays with the first pod."""
    owner: dict[str, MeshPod] = {}
    by_ns: dict[str, list[str]] = defaultdict(list)
    for pod in pods:
        if pod.mode != "node":
            continue
        for ip in pod.ips:
            ip = str(ipaddress.ip_address(ip))
            first = owner.get(ip)
            if first is not None:
                if first.namespace != pod.namespace:
                    issues.append(Issue(pod.ref, "status.podIPs",
                                        f"IP {ip} is also the IP of {first.ref}; consumer routes for it follow "
                                        f"namespace {first.namespace!r}", severity="warning"))
                continue
            owner[ip] = pod
            by_ns[pod.namespace].append(_host_cidr(ip))
    return {ns: tuple(sorted(cidrs)) for ns, cidrs in by_ns.items()}


def _bundle(key: str, scope: ProxyScope, *configs: _Config) -> Bundle:
    listeners = tuple(li for c in configs for li in c.listeners)
    routes = {r.name: r for c in configs for r in c.routes}
    clusters = {cl.name: cl for c in configs for cl in c.clusters}
    return Bundle(key, scope, listeners=listeners, routes=tuple(routes.values()), clusters=tuple(clusters.values()))


def _node_identities(pods: list[MeshPod], issues: list[Issue]) -> dict[tuple[str, str], tuple[str, ...]]:
    """(namespace, service account) -> CIDRs of the mode-node pods with that identity (one node's)."""
    out: dict[tuple[str, str], list[str]] = defaultdict(list)
    owner: dict[str, MeshPod] = {}
    for pod in sorted(pods, key=lambda p: p.key):
        for ip in pod.ips:
            ip = str(ipaddress.ip_address(ip))
            if ip in owner:
                continue  # reported by _node_sources
            owner[ip] = pod
            out[(pod.namespace, pod.service_account)].append(_host_cidr(ip))
    return {k: tuple(sorted(v)) for k, v in out.items()}


def build_mesh(snapshot: InputSnapshot, opts: TranslateOptions, routes_for: MeshRoutesFn) -> Partial:
    """The mesh bundles for `node~` and `sidecar~` proxies, with GAMMA routes from `routes_for`."""
    pods, issues = mesh_pods(snapshot, opts)
    services, svc_issues = mesh_services(snapshot)
    issues.extend(svc_issues)
    root = root_snapshot(snapshot) if memo_enabled() else None
    out = _Outbound(snapshot, routes_for, (root.objects.get("Service") or _NO_SERVICES) if root is not None else None)
    bundles: list[Bundle] = []
    td = opts.mesh_trust_domain
    mtls = _Mtls(MtlsOutbound(td), out.services is not None) if td else None
    authz = compile_policies(snapshot, opts, pods).by_pod  # statuses and issues: translate_policies
    modes: dict[str, MtlsMode] = {}

    def mode_of(namespace: str) -> MtlsMode:
        if namespace not in modes:
            modes[namespace] = mtls_mode(snapshot, namespace, opts, issues)
        return modes[namespace]

    # node~NODE: without mTLS one listener shared by every node that runs mode-node pods; with mTLS one
    # per node, whose clients' chains carry their own identities, plus the node's inbound listener.
    node_pods = [p for p in pods if p.mode == "node"]
    nodes = sorted({p.node for p in node_pods if p.node})
    if nodes:
        sources = _node_sources(pods, issues)
        shared_parts = [p for sp in services for p in [out.chain(sp, "")] if p is not None]
        # Egress gateway policies: selected pods' connections to their destinations go through a tunnel.
        # With mTLS the tunnels are per node and identity (below).
        egress_plans = compile_egress(snapshot, opts).plans
        if mtls is None:
            shared_parts.extend(egress_parts(egress_plans, opts))
        if mtls is None:
            parts = list(shared_parts)
            for sp in services:
                if not sp.http:
                    continue
                for client_ns, cidrs in sorted(sources.items()):
                    if out.differs(sp, client_ns):
                        part = out.chain(sp, client_ns, cidrs)
                        if part is not None:
                            parts.append(part)
            node_cfg = _outbound_listener(NODE_OUTBOUND_LISTENER, opts.mesh_capture_address, opts, parts, ())
            bundles.append(_bundle("mesh/node", ProxyScope(frozenset({"node"}), frozenset(nodes)), node_cfg))
        for node in nodes:
            if mtls is None:
                break
            on_node = [p for p in node_pods if p.node == node]
            identities = _node_identities(on_node, issues)
            parts = list(shared_parts)  # clients without an identity (not a mesh pod): plaintext, as before
            for (ns, sa), cidrs in sorted(identities.items()):
                ident = Identity(workload_secret_name(ns, sa), node, f"|{ns}/{sa}", cidrs, f"sa:{ns}/{sa}")
                parts.extend(mtls.part(p, ident) for sp in services for p in [out.chain(sp, ns)] if p is not None)
            parts.extend(egress_parts(egress_plans, opts, node))
            outbound = _outbound_listener(NODE_OUTBOUND_LISTENER, opts.mesh_capture_address, opts, parts, ())
            for p in on_node:
                mode_of(p.namespace)
            certs = {p.key: workload_secret_name(p.namespace, p.service_account) for p in on_node}
            listener, rcs, clusters = node_inbound(node, on_node, authz, modes, opts, certs)
            inbound = _Config((listener,), tuple(rcs), (*clusters, *GUARD_CLUSTERS))
            wanted = sorted({(p.namespace, p.service_account) for p in on_node})
            bundles.append(replace(
                _bundle(f"mesh/node/{node}", ProxyScope(frozenset({"node"}), frozenset({node})), outbound, inbound),
                workload_certs=tuple(WorkloadCert(workload_secret_name(ns, sa), ns, sa) for ns, sa in wanted)))

    # sidecar~NS/POD: the namespace's outbound listener (shared unless bound to the pod IP) + its inbound.
    sidecars: dict[str, list[MeshPod]] = defaultdict(list)
    for pod in pods:
        if pod.mode == "sidecar":
            sidecars[pod.namespace].append(pod)
    per_pod_outbound = opts.mesh_sidecar_capture_address == BIND_POD_IP
    services_by_ns: dict[str, list[KubeObject]] = defaultdict(list)
    if sidecars:
        for obj in snapshot.list("Service"):
            services_by_ns[obj.meta.namespace].append(obj)
    indexes = {ns: _SelectorIndex(services_by_ns[ns]) for ns in sidecars}
    for ns, ns_pods in sorted(sidecars.items()):
        scope = _egress_scope(snapshot, ns, issues)
        parts = [p for sp in services if scope.allows(sp.namespace, sp.name)
                 for p in [out.chain(sp, ns)] if p is not None]
        tls_mode = mode_of(ns) if mtls is not None else None
        if not per_pod_outbound:
            names = frozenset(p.key for p in ns_pods)
            sidecar_parts = parts
            if mtls is not None:
                # Chains and routes are the same for every sidecar of the namespace; the clusters differ
                # per node (node-mode endpoints on the sidecar's own node are reached over mTLS too).
                sidecar_parts = [mtls.part(p, Identity(SIDECAR_WORKLOAD_SECRET, "")) for p in parts]
                for node in sorted({p.node for p in ns_pods}):
                    ident = Identity(SIDECAR_WORKLOAD_SECRET, node)
                    by_name = {c.name: c for p in parts for c in mtls.part(p, ident)[2]}
                    bundles.append(Bundle(f"mesh/sidecar/{ns}@{node}", ProxyScope(
                        frozenset({"sidecar"}), frozenset(p.key for p in ns_pods if p.node == node)),
                        clusters=tuple(by_name.values())))
            cfg = _outbound_listener(sidecar_outbound_listener_name(ns), opts.mesh_sidecar_capture_address, opts,
                                     sidecar_parts, ())
            if mtls is not None:
                cfg = replace(cfg, clusters=tuple(c for c in cfg.clusters if not c.tls_matches))
            bundles.append(_bundle(f"mesh/sidecar/{ns}", ProxyScope(frozenset({"sidecar"}), names), cfg))
        for pod in ns_pods:
            configs = []
            if per_pod_outbound:
                address = _bind(opts.mesh_sidecar_capture_address, pod)
                if address is not None:
                    pod_parts = parts if mtls is None else \
                        [mtls.part(p, Identity(SIDECAR_WORKLOAD_SECRET, pod.node)) for p in parts]
                    configs.append(_outbound_listener(sidecar_outbound_listener_name(ns, pod.name), address, opts,
                                                      pod_parts, (pod.ref,)))
            inbound_address = _bind(opts.mesh_inbound_address, pod)
            if inbound_address is not None:
                configs.append(_inbound(indexes[ns], pod, inbound_address, opts, issues, authz.get(pod.key),
                                        tls_mode))
            own = (WorkloadCert(SIDECAR_WORKLOAD_SECRET, pod.namespace, pod.service_account),) \
                if mtls is not None else ()
            if configs or own:
                bundles.append(replace(_bundle(f"mesh/sidecar/{pod.key}",
                                               ProxyScope(frozenset({"sidecar"}), frozenset({pod.key})), *configs),
                                       workload_certs=own))
    if out.services is not None:
        _Across.rotate()
    return Partial(bundles=tuple(bundles), issues=tuple(issues))


def _egress_scope(snapshot: InputSnapshot, namespace: str, issues: list[Issue]) -> EgressScope:
    ns_obj = snapshot.get("Namespace", "", namespace)
    if ns_obj is None or EGRESS_HOSTS_ANNOTATION not in ns_obj.meta.annotations:
        return EgressScope()
    try:
        return parse_egress_hosts(ns_obj.meta.annotations[EGRESS_HOSTS_ANNOTATION], namespace)
    except ValueError as exc:
        issues.append(Issue(str(ns_obj.ref), f"metadata.annotations.{EGRESS_HOSTS_ANNOTATION}",
                            f"{exc}; sidecars in this namespace reach all mesh Services"))
        return EgressScope()


def translate_mesh(snapshot: InputSnapshot, opts: TranslateOptions) -> Partial:
    """Registered in TRANSLATORS; GAMMA routes come from `MESH_ROUTES` (the Gateway API translator)."""
    return build_mesh(snapshot, opts, MESH_ROUTES)


def mesh_translator(routes_for: MeshRoutesFn) -> Callable[[InputSnapshot, TranslateOptions], Partial]:
    """A mesh translator bound to a given GAMMA function (an alternative to setting MESH_ROUTES)."""

    def translate(snapshot: InputSnapshot, opts: TranslateOptions) -> Partial:
        return build_mesh(snapshot, opts, routes_for)

    translate.__name__ = "translate_mesh"
    return translate
