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
every gRPC client; a client is sent only what it dials. Generating them all at once (rather than per
requested name) keeps the xDS server free of per-request translation; at 5,000 two-port Services that is
30,000 listeners of about 200 bytes each (measured in tests/unit/test_grpc_translate.py). `cilia serve`
builds them only once the first gRPC client connects (TranslateOptions.grpc_targets; that client's
stream waits for the translation that adds them): a mesh without proxyless clients never pays for them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, replace

from cilia.ir.model import (
    ApiListener,
    Backend,
    Bundle,
    Cluster,
    ProxyScope,
    Route,
    RouteConfig,
    RouteMatch,
    VirtualHost,
)
from cilia.k8s.core import ServiceSpec
from cilia.k8s.objects import KubeObject
from cilia.k8s.store import InputSnapshot
from cilia.translate.context import Memo, Partial, TranslateOptions
from cilia.translate.gamma import GammaIndex, gamma_index
from cilia.translate.incremental import memo_enabled, root_snapshot
from cilia.translate.mesh import POOL_NAME, changed_objects, cluster_names, route_clusters
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


def _service_targets(obj: KubeObject, snapshot: InputSnapshot, cluster_domain: str) -> _ServiceTargets:
    """A Service's listeners, clusters and default routes: a function of the Service object alone."""
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
        # default_route_config as _for_grpc shapes it, built directly (once per Service port at scale)
        route = Route(name="default", match=_ANY, backends=(Backend(cluster.name),), timeout_ms=0,
                      hash_policy=cluster.hash_policy)
        routes = RouteConfig(names[0], (VirtualHost(names[0], names, (route,)),), sources, client="grpc")
        targets.append(_Target(sp.port, names, cluster, routes))
    return _ServiceTargets(tuple(listeners), tuple(targets))


_NO_TARGETS = _ServiceTargets((), ())
_ANY = RouteMatch()
_NONE: Mapping[tuple[str, str], KubeObject] = {}
ServiceKey = tuple[str, str]


@dataclass(slots=True)
class _Last:
    """The last run: its inputs (options, GAMMA index, the Service mapping, by identity), each Service's
    targets and where they sit in the shared bundle, so a Service edit that changes no name and touches
    no GAMMA route is spliced in place of the old one."""

    opts: TranslateOptions
    index: GammaIndex
    services: Mapping[ServiceKey, KubeObject]
    per_service: dict[ServiceKey, tuple[KubeObject, _ServiceTargets]]
    # Service -> its first listener, shared route and cluster in the shared bundle (where a Service without
    # GAMMA routes has its own, one per target, in a row)
    at: dict[ServiceKey, tuple[int, int, int]]
    gamma: frozenset[ServiceKey]  # Services with GAMMA routes or named by one, and `irregular`: not spliced
    irregular: frozenset[ServiceKey]  # Services whose targets are not one cluster each
    shared: Bundle | None
    part: Partial


_LAST: list[_Last] = []  # at most one
# Per Service (content hash, cluster domain), for a full run of a snapshot not derived from the last one
# (another control plane, a restart): unchanged Services still yield the very same objects.
_MEMO: Memo[_ServiceTargets] = Memo()


def translate_grpc(snapshot: InputSnapshot, opts: TranslateOptions) -> Partial:
    if not opts.grpc_targets:
        return Partial()  # left out until a gRPC client connects (MeshIR.deferred_roles says so)
    index = gamma_index(snapshot)
    root = root_snapshot(snapshot)
    if root is None or not memo_enabled():
        return _translate_grpc(snapshot, opts, index, None, False)[0]  # neither reuses nor remembers
    services: Mapping[ServiceKey, KubeObject] = root.objects.get("Service") or _NONE
    last = _LAST[0] if _LAST else None
    if last is not None and (last.opts is opts or last.opts == opts) and \
            (last.index is index or last.index == index):
        if last.services is services:
            snapshot.list("Service")  # the read a full run makes (outer views record it)
            return last.part
        done = _splice(last, services, snapshot, opts)
        if done is not None:
            snapshot.list("Service")
            _LAST[0] = done
            return done.part
    part, new = _translate_grpc(snapshot, opts, index, last, True)
    _LAST[:] = [replace(new, services=services)]
    return part


def _gamma_services(index: GammaIndex) -> frozenset[ServiceKey]:
    """Services whose ports have GAMMA routes, and Services a GAMMA route sends traffic to."""
    out: set[ServiceKey] = {(ns, svc) for ns, svc, _ in index.producer}
    out.update((ns, svc) for _, ns, svc, _ in index.consumer)
    for rc in (*index.producer.values(), *index.consumer.values()):
        for name in cluster_names(rc):
            m = POOL_NAME.match(name)
            if m is not None:
                out.add((m.group(1), m.group(2)))
    return frozenset(out)


def _splice(last: _Last, services: Mapping[ServiceKey, KubeObject], snapshot: InputSnapshot,
            opts: TranslateOptions) -> _Last | None:
    """`last` with the changed Services' targets put in place of their old ones; None when a change
    moves anything (a Service added or removed, a port added or removed) or touches GAMMA routes."""
    if last.shared is None or len(services) != len(last.services):
        return None
    changed = changed_objects(last.services, services)
    if changed is None or len(changed) > 64:
        return None
    per_service = dict(last.per_service)
    moved: list[tuple[tuple[int, int, int], _ServiceTargets]] = []
    for key, obj in changed:
        before = last.per_service.get(key)
        if before is None or key in last.gamma:
            return None
        now = _NO_TARGETS if obj.spec.type == "ExternalName" else \
            _service_targets(obj, snapshot, opts.cluster_domain)
        was = before[1]
        if now == was:
            per_service[key] = (obj, was)  # the same output: keep the old objects, nothing downstream changes
            continue
        if len(now.listeners) != len(was.listeners) or \
                [(t.port, t.cluster.name) for t in now.targets] != [(t.port, t.cluster.name) for t in was.targets]:
            return None
        per_service[key] = (obj, now)
        if now.targets:
            moved.append((last.at[key], now))
    if not moved:
        return replace(last, services=services, per_service=per_service)
    listeners = list(last.shared.api_listeners)
    routes = list(last.shared.routes)
    clusters = list(last.shared.clusters)
    for (first_listener, first_route, first_cluster), now in moved:
        listeners[first_listener:first_listener + len(now.listeners)] = now.listeners
        routes[first_route:first_route + len(now.targets)] = [t.default_routes for t in now.targets]
        clusters[first_cluster:first_cluster + len(now.targets)] = [t.cluster for t in now.targets]
    shared = replace(last.shared, api_listeners=tuple(listeners), routes=tuple(routes), clusters=tuple(clusters))
    bundles = (shared, *last.part.bundles[1:])
    return replace(last, services=services, per_service=per_service, shared=shared,
                   part=replace(last.part, bundles=bundles))


def _translate_grpc(snapshot: InputSnapshot, opts: TranslateOptions, index: GammaIndex,
                    last: _Last | None, remember: bool) -> tuple[Partial, _Last]:
    """Every Service in turn; with `remember`, reusing targets of `last`'s very same Service objects
    or of equal ones (by content) from the last full run."""
    consumers: dict[tuple[str, str, int], set[str]] = defaultdict(set)
    for client_ns, ns, svc, port in index.consumer:
        consumers[(ns, svc, port)].add(client_ns)
    listeners: list[ApiListener] = []
    shared_routes: list[RouteConfig] = []
    clusters: dict[str, Cluster] = {}
    # route configs of Service ports with consumer routes: by excluded namespaces, and by client namespace
    defaults: dict[frozenset[str], list[RouteConfig]] = defaultdict(list)
    per_namespace: dict[str, list[RouteConfig]] = defaultdict(list)
    reuse = last.per_service if last is not None and (last.opts is opts or last.opts == opts) else {}
    per_service: dict[ServiceKey, tuple[KubeObject, _ServiceTargets]] = {}
    at: dict[ServiceKey, tuple[int, int, int]] = {}
    irregular: set[ServiceKey] = set()
    for obj in snapshot.list("Service"):
        spec: ServiceSpec = obj.spec
        ns, name = obj.meta.namespace, obj.meta.name
        if spec.type == "ExternalName":
            per_service[(ns, name)] = (obj, _NO_TARGETS)
            continue
        hit = reuse.get((ns, name))
        if hit is not None and hit[0] is obj:
            found = hit[1]
        elif not remember:
            found = _service_targets(obj, snapshot, opts.cluster_domain)
        else:
            found = _MEMO.get((obj.content_hash, opts.cluster_domain)) or \
                _service_targets(obj, snapshot, opts.cluster_domain)
        if remember:
            _MEMO.put((obj.content_hash, opts.cluster_domain), found)
        per_service[(ns, name)] = (obj, found)
        at[(ns, name)] = (len(listeners), len(shared_routes), len(clusters))
        if len({t.cluster.name for t in found.targets}) != len(found.targets):
            irregular.add((ns, name))  # a port listed twice: its targets share a cluster
        listeners.extend(found.listeners)
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
    if remember:
        _MEMO.rotate()
    part = Partial()
    shared_bundle = None
    if listeners:
        shared_bundle = Bundle(SHARED_BUNDLE, ProxyScope(GRPC_ROLE), api_listeners=tuple(listeners),
                               routes=tuple(shared_routes), clusters=tuple(clusters.values()))
        bundles = [shared_bundle]
        for excluded, routes in sorted(defaults.items(), key=lambda kv: sorted(kv[0])):
            bundles.append(Bundle(f"{SHARED_BUNDLE}/except/{','.join(sorted(excluded))}",
                                  ProxyScope(GRPC_ROLE, exclude_namespaces=excluded), routes=tuple(routes)))
        for client_ns, routes in sorted(per_namespace.items()):
            bundles.append(Bundle(f"{SHARED_BUNDLE}/ns/{client_ns}",
                                  ProxyScope(GRPC_ROLE, namespaces=frozenset({client_ns})), routes=tuple(routes)))
        part = Partial(bundles=tuple(bundles))
    gamma = last.gamma if last is not None and last.index is index and not last.irregular else _gamma_services(index)
    return part, _Last(opts, index, {}, per_service, at, gamma | irregular, frozenset(irregular), shared_bundle, part)
