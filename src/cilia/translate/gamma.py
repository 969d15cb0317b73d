"""GAMMA: HTTPRoutes and GRPCRoutes whose parentRef is a Service route mesh traffic sent to that Service.

- A *producer* route lives in the Service's namespace and applies to every client.
- A *consumer* route lives in another namespace and applies only to clients in its own namespace; for
  them it replaces the producer routes of that Service port entirely.
- A parentRef with `port` applies to that Service port only, without it to every TCP port.

Output, for each Service port with routes:
- producer: RouteConfig `mesh/<svc-ns>/<svc>:<port>`, in a Bundle (key `gamma:<that name>`) for every
  `node~` and `sidecar~` proxy;
- consumer: RouteConfig `mesh/<client-ns>/<svc-ns>/<svc>:<port>`, in a Bundle for `node~` proxies and
  the `sidecar~` proxies of namespace `<client-ns>` only.
Each RouteConfig has one virtual host (domains `*`): the outbound listener for the Service's VIP:port
is the Host match already. The bundles carry the clusters the routes use.

The mesh topology (outbound listeners of node~/sidecar~ proxies) asks `mesh_routes_for(...)` which
RouteConfig, if any, a client in a namespace uses for a Service port, and points its HTTP connection
manager at `.name` over RDS; `None` means no GAMMA routes (plain forwarding to the Service).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cilia.diagnostics import Issue
from cilia.ir import model as ir
from cilia.k8s.objects import KubeObject
from cilia.k8s.store import InputSnapshot
from cilia.translate.context import TranslateOptions
from cilia.translate.gateway_common import (
    Cond,
    ListenerContext,
    RankedRoute,
    RuleBuilder,
    route_parent_status,
    rule_conditions,
)
from cilia.translate.incremental import Ident, UnitMemo, memo_enabled, root_snapshot

MESH_ROLES = frozenset({"node", "sidecar"})

ServicePortKey = tuple[str, str, int]  # service namespace, service name, service port


def producer_route_name(service_ns: str, service: str, port: int) -> str:
    return f"mesh/{service_ns}/{service}:{port}"


def consumer_route_name(client_ns: str, service_ns: str, service: str, port: int) -> str:
    return f"mesh/{client_ns}/{service_ns}/{service}:{port}"


@dataclass(frozen=True, slots=True)
class GammaIndex:
    """The GAMMA route configs of one snapshot, by Service port (and client namespace for consumer ones)."""

    producer: Mapping[ServicePortKey, ir.RouteConfig] = field(default_factory=dict)
    consumer: Mapping[tuple[str, str, str, int], ir.RouteConfig] = field(default_factory=dict)

    def routes_for(self, client_namespace: str, service_ns: str, service_name: str, port: int) -> ir.RouteConfig | None:
        found = self.consumer.get((client_namespace, service_ns, service_name, port))
        if found is not None:
            return found
        return self.producer.get((service_ns, service_name, port))


@dataclass(frozen=True, slots=True)
class GammaResult:
    bundles: tuple[ir.Bundle, ...]
    issues: tuple[Issue, ...]
    parents: Mapping[tuple[str, str, str], list[dict[str, Any]]]  # (kind, ns, name) -> status.parents entries
    index: GammaIndex


ROUTE_KINDS = ("HTTPRoute", "GRPCRoute")


def _is_gamma(route: KubeObject) -> bool:
    return any(r.is_service for r in route.spec.parent_refs)


_NO_ROUTES: Mapping[tuple[str, str], KubeObject] = {}


class _Scan:
    """Per route kind, the last mapping scanned and the keys of its routes with a Service parentRef, so
    a snapshot whose routes did not change costs nothing and an edit rescans the changed routes only."""

    last: dict[str, tuple[Mapping[tuple[str, str], KubeObject], frozenset[tuple[str, str]],
                          tuple[KubeObject, ...]]] = {}


def _gamma_routes(snapshot: InputSnapshot, kind: str) -> tuple[KubeObject, ...]:
    """The routes of `kind` with a Service parentRef, in key order. Records the kind as read."""
    routes = snapshot.list(kind)  # a generator: recorded by outer views, consumed only without the cache
    root = root_snapshot(snapshot)
    if root is None or not memo_enabled():
        return tuple(r for r in routes if _is_gamma(r))
    mapping = root.objects.get(kind) or _NO_ROUTES
    hit = _Scan.last.get(kind)
    if hit is not None and hit[0] is mapping:
        return hit[2]
    if hit is None:
        keys = frozenset(k for k, r in mapping.items() if _is_gamma(r))
    else:
        old = hit[0]
        changed = [k for k, r in mapping.items() if old.get(k) is not r]
        added = sum(1 for k in changed if k not in old)
        removed = [k for k in old if k not in mapping] if len(mapping) - added != len(old) else []
        keys = hit[1]
        if changed or removed:
            now = set(keys).difference(removed)
            for k in changed:
                if _is_gamma(mapping[k]):
                    now.add(k)
                else:
                    now.discard(k)
            keys = frozenset(now)
    found = tuple(mapping[k] for k in sorted(keys))
    _Scan.last[kind] = (mapping, keys, found)
    return found


# Whole results by the GAMMA routes (by identity) and the options: reused while every object the routes
# read (their Services, backends, grants) is unchanged, so an edit elsewhere costs the scan only. The
# index has a memo of its own: it does not depend on the options (status times), callers' options do.
_FULL: UnitMemo[GammaResult] = UnitMemo()
_INDEX: UnitMemo[GammaResult] = UnitMemo()


def translate_gamma(snapshot: InputSnapshot, opts: TranslateOptions) -> GammaResult:
    """Every GAMMA route -> route configs and bundles, and the routes' Service parent statuses."""
    return _memoised(_FULL, snapshot, opts)


def _memoised(memo: UnitMemo[GammaResult], snapshot: InputSnapshot, opts: TranslateOptions) -> GammaResult:
    routes = tuple((kind, r) for kind in ROUTE_KINDS for r in _gamma_routes(snapshot, kind))
    signature = (opts, tuple((kind, Ident(r)) for kind, r in routes))
    out = memo.compute("gamma", signature, snapshot, lambda view: _translate_gamma(view, opts, routes))
    memo.rotate()
    return out


def _translate_gamma(snapshot: InputSnapshot, opts: TranslateOptions,
                     routes: tuple[tuple[str, KubeObject], ...]) -> GammaResult:
    issues: list[Issue] = []
    parents: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    producers: dict[ServicePortKey, list[RuleBuilder]] = defaultdict(list)
    consumers: dict[tuple[str, str, str, int], list[RuleBuilder]] = defaultdict(list)
    for kind, route in routes:
        refs = [r for r in route.spec.parent_refs if r.is_service]
        builder = RuleBuilder(snapshot, route, grpc=kind == "GRPCRoute", mesh=True)
        builder.resolve_all()
        for ref in refs:
            accepted, ports = _service_parent(snapshot, route, ref.namespace, ref.name, ref.port)
            if accepted.ok and builder.accepted_problem is not None:
                p = builder.accepted_problem
                accepted = Cond("Accepted", False, p.reason, p.message)
            if accepted.ok:
                for port in ports:
                    if route.meta.namespace == ref.namespace:
                        producers[(ref.namespace, ref.name, port)].append(builder)
                    else:
                        consumers[(route.meta.namespace, ref.namespace, ref.name, port)].append(builder)
            parents[(kind, route.meta.namespace, route.meta.name)].append(
                route_parent_status(route, ref, [accepted, *rule_conditions(builder)], opts.status_time))
    bundles: list[ir.Bundle] = []
    producer_rc: dict[ServicePortKey, ir.RouteConfig] = {}
    consumer_rc: dict[tuple[str, str, str, int], ir.RouteConfig] = {}
    for (ns, svc, port), builders in sorted(producers.items()):
        rc, clusters = _route_config(producer_route_name(ns, svc, port), port, builders)
        producer_rc[(ns, svc, port)] = rc
        bundles.append(ir.Bundle(key=f"gamma:{rc.name}", scope=ir.ProxyScope(MESH_ROLES), routes=(rc,),
                                 clusters=clusters, sources=rc.sources))
    for (cns, ns, svc, port), builders in sorted(consumers.items()):
        rc, clusters = _route_config(consumer_route_name(cns, ns, svc, port), port, builders)
        consumer_rc[(cns, ns, svc, port)] = rc
        bundles.append(ir.Bundle(key=f"gamma:{rc.name}",
                                 scope=ir.ProxyScope(MESH_ROLES, namespaces=frozenset({cns})),
                                 routes=(rc,), clusters=clusters, sources=rc.sources))
    return GammaResult(tuple(bundles), tuple(issues), dict(parents), GammaIndex(producer_rc, consumer_rc))


def _service_parent(snapshot: InputSnapshot, route: KubeObject, ns: str, name: str,
                    port: int | None) -> tuple[Cond, list[int]]:
    svc = snapshot.get("Service", ns, name)
    if svc is None:
        return Cond("Accepted", False, "NoMatchingParent", f"Service {ns}/{name} not found"), []
    ports = [p.port for p in svc.spec.ports if p.protocol in ("TCP", "")]
    if port is not None:
        if port not in ports:
            return Cond("Accepted", False, "NoMatchingParent", f"Service {ns}/{name} has no TCP port {port}"), []
        ports = [port]
    role = "producer" if route.meta.namespace == ns else f"consumer (clients in {route.meta.namespace})"
    return Cond("Accepted", True, "Accepted", f"{role} route for Service {ns}/{name}"), ports


def _route_config(name: str, port: int, builders: list[RuleBuilder]) -> tuple[ir.RouteConfig, tuple[ir.Cluster, ...]]:
    ranked: list[RankedRoute] = []
    clusters: dict[str, ir.Cluster] = {}
    ctx = ListenerContext(port, "http")
    for b in builders:
        ranked.extend(b.routes(ctx, name))
        clusters.update(b.clusters)
    routes = tuple(r.route for r in sorted(ranked, key=lambda r: r.key))
    sources = tuple(sorted({str(b.route.ref) for b in builders}))
    rc = ir.RouteConfig(name, (ir.VirtualHost(name, ("*",), routes),), sources)
    return rc, tuple(sorted(clusters.values(), key=lambda c: c.name))


_INDEX_OPTIONS = TranslateOptions()


class _LastIndex:
    """The index of the most recent snapshot asked about (one entry: the topology asks per snapshot).
    Held as one (snapshot, index) tuple, replaced whole, so concurrent control planes in one process
    (tests, replicas) never see one snapshot's index paired with another's."""

    entry: tuple[InputSnapshot | None, GammaIndex] = (None, GammaIndex())


def gamma_index(snapshot: InputSnapshot) -> GammaIndex:
    """The GAMMA route configs of `snapshot`, computed once per snapshot."""
    cached_snapshot, index = _LastIndex.entry
    if cached_snapshot is not snapshot:
        index = _memoised(_INDEX, snapshot, _INDEX_OPTIONS).index
        _LastIndex.entry = (snapshot, index)
    return index


def mesh_routes_for(snapshot: InputSnapshot, client_namespace: str, service_ns: str, service_name: str,
                    port: int) -> ir.RouteConfig | None:
    """The RouteConfig a client in `client_namespace` uses for `service_ns/service_name:port` (Service port
    number): its namespace's consumer routes if any, else the Service's producer routes, else None.
    The same config (same name and content) is in the bundles `translate_gateway` returns."""
    return gamma_index(snapshot).routes_for(client_namespace, service_ns, service_name, port)
