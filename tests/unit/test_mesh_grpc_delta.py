"""The per-Service deltas of the mesh, gRPC and GAMMA translators and the incremental dangling-cluster check
against the oracle: after any sequence of edits (Services, EndpointSlices, Pods, Namespaces, GAMMA routes,
CiliumEnvoyConfigs), translating with the previous result equals translating from scratch."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cilia.ir.model import Backend, Route, RouteConfig, RouteMatch, VirtualHost
from cilia.k8s import kinds as _kinds  # noqa: F401 - registers the kinds
from cilia.k8s.manifest import parse_text
from cilia.k8s.store import InputSnapshot, Store
from cilia.render.world import ResourceCache, render_world
from cilia.translate import TranslationResult, translate
from cilia.translate.context import TranslateOptions
from cilia.translate.incremental import memo_disabled
from cilia.translate.mesh import mesh_translator, translate_mesh

GW = "gateway.networking.k8s.io/v1"
NAMESPACES = ("shop", "pay")


def _svc(ns: str, name: str, v: int) -> dict[str, Any]:
    """Variants: labels only (most), appProtocols (HTTP/2, not HTTP), a second port, another VIP (some
    shared: a VIP:port conflict), headless, ExternalName, ring hash."""
    ports: list[dict[str, Any]] = [{"name": "http", "port": 80}]
    if v % 3 == 1:
        ports[0]["appProtocol"] = "kubernetes.io/h2c"
    elif v % 6 == 2:
        ports[0]["appProtocol"] = "mysql"  # not HTTP: a TCP chain in the mesh
    if v % 4 == 3:
        ports.append({"name": "tcp", "port": 9000, "protocol": "TCP"})
    spec: dict[str, Any] = {"ports": ports, "selector": {"app": name}}
    if v % 7 == 5:
        spec.update(type="ExternalName", externalName="example.invalid")
    elif v % 7 == 6:
        spec["clusterIP"] = "None"
    else:
        spec["clusterIP"] = f"127.96.{NAMESPACES.index(ns)}.{(v // 5) % 3 + (1 if name.endswith('0') else 10)}"
    md: dict[str, Any] = {"name": name, "namespace": ns, "labels": {"v": str(v)}}
    if v % 5 == 2:
        md["annotations"] = {"cilia.io/lb-policy": "ring-hash"}
    return {"apiVersion": "v1", "kind": "Service", "metadata": md, "spec": spec}


def _slice(ns: str, name: str, v: int) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-1", "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": [f"127.1.{NAMESPACES.index(ns)}.{v % 4 + 1}"],
                           "conditions": {"ready": v % 3 != 2}, "targetRef": {"kind": "Pod", "name": f"{name}-pod"}}]}


def _pod(ns: str, name: str, v: int) -> dict[str, Any]:
    md: dict[str, Any] = {"name": f"{name}-pod", "namespace": ns, "labels": {"app": name}}
    if v % 4 == 3:
        md["annotations"] = {"cilia.io/mesh": "sidecar" if ns == "shop" else "node"}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": md,
            "spec": {"nodeName": f"n{v % 2}", "containers": [{"name": "c", "image": "app", "ports": [
                {"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": f"127.1.{NAMESPACES.index(ns)}.{v % 4 + 1}"}}


def _namespace(ns: str, _: str, v: int) -> dict[str, Any]:
    md: dict[str, Any] = {"name": ns, "labels": {"cilia.io/mesh": ("node", "sidecar", "off")[v % 3]}}
    if v % 4 == 1:
        md["annotations"] = {"cilia.io/egress-hosts": "./*" if v % 8 == 1 else "pay/p0"}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": md}


def _gamma(ns: str, name: str, v: int) -> dict[str, Any]:
    """A GAMMA HTTPRoute (a GRPCRoute for some versions): producer (same namespace) or consumer, to a
    Service or one port of it; or no Service parent at all."""
    target_ns = NAMESPACES[v % 2]
    parent: dict[str, Any] = {"group": "", "kind": "Service", "name": f"{target_ns[0]}{v % 2}",
                              "namespace": target_ns}
    if v % 3 == 2:
        parent["port"] = 80
    parents = [parent] if v % 6 != 5 else [{"name": "nowhere"}]
    backend = {"name": f"{NAMESPACES[(v // 2) % 2][0]}{(v // 3) % 2}", "namespace": NAMESPACES[(v // 2) % 2],
               "port": 80}
    if v % 4 == 3:
        return {"apiVersion": GW, "kind": "GRPCRoute", "metadata": {"name": name, "namespace": ns},
                "spec": {"parentRefs": parents, "rules": [{"matches": [{"method": {"service": f"S{v}"}}],
                                                           "backendRefs": [backend]}]}}
    return {"apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": name, "namespace": ns},
            "spec": {"parentRefs": parents, "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": f"/{name}/{v}"}}], "backendRefs": [backend]}]}}


def _grant(ns: str, name: str, v: int) -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute" if v % 2 else "GRPCRoute",
                               "namespace": "pay" if ns == "shop" else "shop"}],
                     "to": [{"group": "", "kind": "Service"}]}}


def _cec(ns: str, name: str, v: int) -> dict[str, Any]:
    """Routes to Service clusters (defined by the gRPC bundle while the Service has that port) and to a
    cluster defined by this config or by no one, by version."""
    clusters = ["shop/s0:80", "pay/p1:9000", f"{ns}/{name}/own" if v % 2 else "nobody"]
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumEnvoyConfig", "metadata": {"name": name, "namespace": ns},
            "spec": {"resources": [
                {"@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration", "name": "rt",
                 "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                     {"match": {"prefix": f"/{i}"}, "route": {"cluster": c}} for i, c in enumerate(clusters)]}]},
                *([{"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "own", "type": "EDS",
                    "connect_timeout": "1s"}] if v % 4 == 1 else [])]}}


# (kind, (namespace, name) pairs that can be edited, maker); every object in a source of its own.
MAKERS: list[tuple[str, tuple[tuple[str, str], ...], Any]] = [
    ("Service", (("shop", "s0"), ("shop", "s1"), ("pay", "p0"), ("pay", "p1")), _svc),
    ("EndpointSlice", (("shop", "s0"), ("pay", "p0"), ("pay", "p1")), _slice),
    ("Pod", (("shop", "s0"), ("shop", "s1"), ("pay", "p0")), _pod),
    ("Namespace", (("shop", ""), ("pay", "")), _namespace),
    ("HTTPRoute", (("shop", "g1"), ("pay", "g2"), ("shop", "g3")), _gamma),
    ("ReferenceGrant", (("shop", "rg"),), _grant),
    ("CiliumEnvoyConfig", (("shop", "c1"), ("pay", "c2")), _cec),
]
OPTIONS = (TranslateOptions(), TranslateOptions(mesh_trust_domain="cluster.local"),
           TranslateOptions(cluster_domain="corp.example", mesh_default_mode="node"))

EDITS = st.lists(st.tuples(st.sampled_from(range(len(MAKERS))), st.integers(0, 3), st.integers(-1, 19)),
                 min_size=1, max_size=14)


def _source(kind: str, ns: str, name: str) -> str:
    return f"{kind}/{ns}/{name}"


def _store() -> Store:
    store = Store()
    for kind, keys, make in MAKERS:
        for ns, name in keys:
            store.replace_source(_source(kind, ns, name), parse_text(json.dumps(make(ns, name, 1)), kind))
    return store


def _same(result: TranslationResult, full: TranslationResult, what: object) -> None:
    assert [str(i) for i in result.issues] == [str(i) for i in full.issues], what
    assert sorted(repr(s) for s in result.statuses) == sorted(repr(s) for s in full.statuses), what
    assert result.ir == full.ir, what


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(OPTIONS))), EDITS)
def test_service_deltas_equal_full_translation(which_opts: int, edits: list[tuple[int, int, int]]) -> None:
    opts = OPTIONS[which_opts]
    store = _store()
    cache = ResourceCache()
    result = translate(store.snapshot(), opts)
    render_world(result.ir, cache, 1)
    for step, (which, pick, version) in enumerate(edits, start=2):
        kind, keys, make = MAKERS[which]
        ns, name = keys[pick % len(keys)]
        text = "" if version < 0 else json.dumps(make(ns, name, version))  # -1: delete
        store.replace_source(_source(kind, ns, name), parse_text(text, kind))
        snap = store.snapshot()
        result = translate(snap, opts, result)
        world = render_world(result.ir, cache, step)
        with memo_disabled():
            full = translate(snap, opts)
        _same(result, full, (kind, ns, name, version))
        oracle = render_world(full.ir)
        assert [(b.key, {t: {n: r.version for n, r in rs.items()} for t, rs in b.resources.items()})
                for b in world.bundles] == \
            [(b.key, {t: {n: r.version for n, r in rs.items()} for t, rs in b.resources.items()})
             for b in oracle.bundles], (kind, ns, name, version)


def _edit(store: Store, kind: str, ns: str, name: str, version: int) -> None:
    make = next(m for k, _, m in MAKERS if k == kind)
    store.replace_source(_source(kind, ns, name), parse_text(json.dumps(make(ns, name, version)), kind))


def _bundle(result: TranslationResult, key: str) -> Any:
    return next(b for b in result.ir.bundles if b.key == key)


def test_label_edit_keeps_the_grpc_bundle_and_a_port_edit_splices_it() -> None:
    store = _store()
    first = translate(store.snapshot())
    _edit(store, "Service", "shop", "s1", 16)  # labels only (same ports, VIP, no annotations)
    second = translate(store.snapshot(), None, first)
    assert _bundle(second, "grpc") is _bundle(first, "grpc")
    _edit(store, "Service", "shop", "s1", 18)  # no appProtocol h2c: another cluster protocol, same names
    snap = store.snapshot()
    third = translate(snap, None, second)
    with memo_disabled():
        full = translate(snap)
    _same(third, full, "appProtocol")
    before, after = _bundle(second, "grpc"), _bundle(third, "grpc")
    changed = [i for i, (x, y) in enumerate(zip(before.clusters, after.clusters, strict=True)) if x is not y]
    assert [after.clusters[i].name for i in changed] == ["shop/s1:80"]
    assert before.clusters[changed[0]].protocol == "http2" and after.clusters[changed[0]].protocol != "http2"


def test_dangling_cluster_warning_follows_the_service_port() -> None:
    store = _store()
    result = translate(store.snapshot())

    def dangling(r: TranslationResult) -> set[str]:
        return {i.message.split("'")[1] for i in r.issues if "defined by no config" in i.message}

    assert dangling(result) == {"pay/p1:9000"}
    _edit(store, "Service", "pay", "p1", 3)  # adds port 9000: the gRPC bundle defines its cluster
    result = translate(store.snapshot(), None, result)
    assert dangling(result) == set()
    _edit(store, "CiliumEnvoyConfig", "shop", "c1", 2)  # routes to "nobody" (and its own cluster is gone)
    result = translate(store.snapshot(), None, result)
    assert dangling(result) == {"shop/c1/nobody"}
    _edit(store, "Service", "pay", "p1", 1)
    result = translate(store.snapshot(), None, result)
    assert dangling(result) == {"pay/p1:9000", "shop/c1/nobody"}
    _edit(store, "CiliumEnvoyConfig", "shop", "c1", 1)
    result = translate(store.snapshot(), None, result)
    assert dangling(result) == {"pay/p1:9000"}


def test_mesh_memo_follows_services_named_by_routes_from_any_source() -> None:
    """Routes from a substituted GAMMA function (not the memoised index) naming another Service: that
    Service's edit reaches the chains of the Service whose routes name it."""
    rc = RouteConfig("r", (VirtualHost("r", ("*",), (Route("to-s1", RouteMatch(), (Backend("shop/s1:80"),)),)),))

    def routes_for(snapshot: InputSnapshot, client_ns: str, ns: str, name: str, port: int) -> RouteConfig | None:
        return rc if (ns, name) == ("shop", "s0") else None

    mesh = mesh_translator(routes_for)
    store = _store()
    mesh(store.snapshot(), TranslateOptions())
    _edit(store, "Service", "shop", "s1", 22)  # ring hash (and another VIP): s1's cluster changes
    snap = store.snapshot()
    got = mesh(snap, TranslateOptions())
    with memo_disabled():
        want = mesh(snap, TranslateOptions())
    assert got == want
    clusters = {c.name: c for b in got.bundles for c in b.clusters}
    assert clusters["shop/s1:80"].lb_policy == "RING_HASH"


def test_mesh_memo_follows_the_trust_domain() -> None:
    snap = _store().snapshot()
    for td in ("one.example", "two.example"):
        opts = TranslateOptions(mesh_trust_domain=td)
        got = translate_mesh(snap, opts)
        with memo_disabled():
            assert got == translate_mesh(snap, opts), td
