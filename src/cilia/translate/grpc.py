"""Proxyless gRPC clients (`grpc~NAMESPACE/POD`): API listeners for the `xds:///` targets they dial.

A gRPC client with an xDS bootstrap resolves `xds:///TARGET` by asking LDS for the Listener named
TARGET, RDS for the route configuration that listener names, then CDS and EDS for the clusters its
routes use. It never subscribes to everything, only to those names; the xDS server sends exactly the
names asked for and says which do not exist (omitted in State of the World, `removed_resources` in
Delta), so a client dialling an unknown target fails at once instead of waiting.

Targets: every TCP port of every Service with endpoints of its own (ClusterIP and headless; not
ExternalName, whose DNS cluster gRPC cannot use), under three names:

    NAME.NAMESPACE.svc.CLUSTER_DOMAIN:PORT   NAME.NAMESPACE.svc:PORT   NAME.NAMESPACE:PORT

Each is an `ApiListener` whose RDS name is the first (full) form. That RouteConfig (rendered for gRPC)
has one virtual host whose domains are the three names, and
- the GAMMA routes of the Service port (GRPCRoute / HTTPRoute with the Service as parentRef), exactly
  as the mesh proxies get them: producer routes for every client, consumer routes for clients in the
  route's namespace;
- else one route to the Service's cluster, with no timeout (streams may be long-lived).
Clusters are the Service clusters `NS/SVC:PORT` (EDS over ADS, ROUND_ROBIN) that the Envoys use too, and
their endpoints come from the shared EDS pool, so an EndpointSlice change reaches gRPC clients through
the endpoint fast path without touching listeners or routes.

Who gets what: every `grpc~` client gets every listener and cluster (bundle `grpc`) and the route
configs of Service ports without consumer routes. A Service port with consumer routes in namespaces
C1..Cn has its route config twice under the same name: the consumer view in bundle `grpc/ns/Ci` for
clients in Ci, the shared view in a bundle for clients in every other namespace. A client needs no Pod
object (gRPC clients outside the cluster, file mode): it is scoped by the namespace in its NAME.

Cost: every Service port costs three small listeners and one route config, rendered once and shared by
every gRPC client; a client is sent only what it dials. Generating them all up front (rather than on
request) keeps the xDS server free of per-request translation; at 5,000 two-port Services that is
30,000 listeners of about 200 bytes each (measured in tests/unit/test_grpc_translate.py).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace

from cilia.ir.model import ApiListener, Bundle, Cluster, ProxyScope, RouteConfig
from cilia.k8s.core import ServiceSpec
from cilia.k8s.objects import KubeObject
from cilia.k8s.store import InputSnapshot
from cilia.translate.context import Memo, Partial, TranslateOptions
from cilia.translate.gamma import GammaIndex, gamma_index
from cilia.translate.incremental import UnitMemo
from cilia.translate.mesh import default_route_config, route_clusters
from cilia.translate.services import resolve_backend

GRPC_ROLE = frozenset({"grpc"})
SHARED_BUNDLE = "grpc"


def target_names(namespace: str, service: str, port: int, cluster_domain: str) -> tuple[str, str, str]:
    """The names a gRPC client may dial for a Service port, the full one first."""
    return (f"{service}.{namespace}.svc.{cluster_domain}:{port}", f"{service}.{namespace}.svc:{port}",
            f"{service}.{namespace}:{port}")


def _for_grpc(rc: RouteConfig, names: tuple[str, ...]) -> RouteConfig:
    """A mesh route config as a gRPC client reads it: named after the target, its domains the target names."""
    hosts = tuple(replace(vh, name=names[0], domains=names) for vh in rc.virtual_hosts)
    return replace(rc, name=names[0], virtual_hosts=hosts, client="grpc")


@dataclass(frozen=True, slots=True)
class _Target:
    """One Service port as gRPC clients see it without GAMMA routes."""

    port: int
    names: tuple[str, str, str]
    cluster: Cluster
    default_routes: RouteConfig


@dataclass(frozen=True, slots=True)
class _ServiceTargets:
    listeners: tuple[ApiListener, ...]
    targets: tuple[_Target, ...]


# Per Service (content hash, cluster domain): its listeners, clusters and default routes. Unchanged Services
# yield the very same objects, so a one-Service edit costs one Service here and in rendering.
_MEMO: Memo[_ServiceTargets] = Memo()


def _service_targets(obj: KubeObject, snapshot: InputSnapshot, cluster_domain: str) -> _ServiceTargets:
    ns, name = obj.meta.namespace, obj.meta.name
    sources = (str(obj.ref),)
    listeners: list[ApiListener] = []
    targets: list[_Target] = []
    for sp in obj.spec.ports:
        if sp.protocol not in ("TCP", ""):
            continue
        cluster = resolve_backend(snapshot, ns, name, sp.port).cluster
        if cluster is None:
            continue
        names = target_names(ns, name, sp.port, cluster_domain)
        listeners.extend(ApiListener(n, names[0], sources) for n in names)
        routes = _for_grpc(default_route_config(names[0], cluster.name, sources, cluster.hash_policy), names)
        targets.append(_Target(sp.port, names, cluster, routes))
    return _ServiceTargets(tuple(listeners), tuple(targets))


# The whole output, reused while the GAMMA route configs are equal and what it read (every Service, by
# the kind's mapping) is unchanged: an HTTPRoute edit that changes no GAMMA route costs the index only.
_WHOLE: UnitMemo[Partial] = UnitMemo()


def translate_grpc(snapshot: InputSnapshot, opts: TranslateOptions) -> Partial:
    index = gamma_index(snapshot)
    out = _WHOLE.compute("grpc", (opts, index), snapshot, lambda view: _translate_grpc(view, opts, index))
    _WHOLE.rotate()
    return out


def _translate_grpc(snapshot: InputSnapshot, opts: TranslateOptions, index: GammaIndex) -> Partial:
    consumers: dict[tuple[str, str, int], set[str]] = defaultdict(set)
    for client_ns, ns, svc, port in index.consumer:
        consumers[(ns, svc, port)].add(client_ns)
    listeners: list[ApiListener] = []
    shared_routes: list[RouteConfig] = []
    clusters: dict[str, Cluster] = {}
    # route configs of Service ports with consumer routes: by excluded namespaces, and by client namespace
    defaults: dict[frozenset[str], list[RouteConfig]] = defaultdict(list)
    per_namespace: dict[str, list[RouteConfig]] = defaultdict(list)
    for obj in snapshot.list("Service"):
        spec: ServiceSpec = obj.spec
        if spec.type == "ExternalName":
            continue
        key = (obj.content_hash, opts.cluster_domain)
        found = _MEMO.get(key)
        if found is None:
            found = _MEMO.put(key, _service_targets(obj, snapshot, opts.cluster_domain))
        listeners.extend(found.listeners)
        ns, name = obj.meta.namespace, obj.meta.name
        for t in found.targets:
            clusters.setdefault(t.cluster.name, t.cluster)
            shared = t.default_routes
            producer = index.producer.get((ns, name, t.port))
            if producer is not None:
                shared = _for_grpc(producer, t.names)
                for c in route_clusters(snapshot, producer):
                    clusters.setdefault(c.name, c)
            client_namespaces = consumers.get((ns, name, t.port))
            if not client_namespaces:
                shared_routes.append(shared)
                continue
            defaults[frozenset(client_namespaces)].append(shared)
            for client_ns in sorted(client_namespaces):
                rc = index.consumer[(client_ns, ns, name, t.port)]
                per_namespace[client_ns].append(_for_grpc(rc, t.names))
                for c in route_clusters(snapshot, rc):
                    clusters.setdefault(c.name, c)
    _MEMO.rotate()
    if not listeners:
        return Partial()
    bundles = [Bundle(SHARED_BUNDLE, ProxyScope(GRPC_ROLE), api_listeners=tuple(listeners),
                      routes=tuple(shared_routes), clusters=tuple(clusters.values()))]
    for excluded, routes in sorted(defaults.items(), key=lambda kv: sorted(kv[0])):
        bundles.append(Bundle(f"{SHARED_BUNDLE}/except/{','.join(sorted(excluded))}",
                              ProxyScope(GRPC_ROLE, exclude_namespaces=excluded), routes=tuple(routes)))
    for client_ns, routes in sorted(per_namespace.items()):
        bundles.append(Bundle(f"{SHARED_BUNDLE}/ns/{client_ns}",
                              ProxyScope(GRPC_ROLE, namespaces=frozenset({client_ns})), routes=tuple(routes)))
    return Partial(bundles=tuple(bundles))
