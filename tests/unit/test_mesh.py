"""Mesh translation: node~ and sidecar~ listener structure, scopes, protocols, egress scope, GAMMA hook."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from cilia.identity import ProxyId
from cilia.ir import model as ir
from cilia.k8s.manifest import parse_text
from cilia.k8s.store import InputSnapshot
from cilia.render import envoy as render
from cilia.render.world import render_world
from cilia.translate import TRANSLATORS, translate
from cilia.translate import mesh as mesh_mod
from cilia.translate.context import Partial, TranslateOptions
from cilia.translate.mesh import (
    BLACKHOLE_CLUSTER,
    NODE_OUTBOUND_LISTENER,
    PASSTHROUGH_CLUSTER,
    build_mesh,
    is_http_port_name,
    is_http_service_port,
    mesh_translator,
    no_mesh_routes,
    parse_egress_hosts,
    translate_mesh,
)
from cilia.translate.services import ServicePort


# -- object builders --------------------------------------------------------------------------------
def namespace(name: str, mode: str | None = None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    md: dict[str, Any] = {"name": name, "labels": {"cilia.io/mesh": mode} if mode else {}}
    if annotations:
        md["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": md}


def service(ns: str, name: str, vips: list[str] | str | None, ports: list[dict[str, Any]],
            selector: dict[str, str] | None = None, stype: str = "ClusterIP") -> dict[str, Any]:
    spec: dict[str, Any] = {"type": stype, "ports": ports, "selector": selector or {"app": name}}
    if isinstance(vips, list):
        spec["clusterIPs"] = vips
    elif vips is not None:
        spec["clusterIP"] = vips
    if stype == "ExternalName":
        spec["externalName"] = "example.invalid"
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": spec}


def pod(ns: str, name: str, node: str = "node-1", ip: str | None = "127.1.0.1", labels: dict[str, str] | None = None,
        ports: list[dict[str, Any]] | None = None, annotations: dict[str, str] | None = None,
        host_network: bool = False, phase: str = "Running", containers: int = 1) -> dict[str, Any]:
    md: dict[str, Any] = {"name": name, "namespace": ns, "labels": labels or {"app": name}}
    if annotations:
        md["annotations"] = annotations
    spec: dict[str, Any] = {"containers": [{"name": f"c{i}", "image": "app", "ports": ports or []}
                                           for i in range(containers)]}
    if node:
        spec["nodeName"] = node
    if host_network:
        spec["hostNetwork"] = True
    status: dict[str, Any] = {"phase": phase}
    if ip:
        status["podIP"] = ip
    return {"apiVersion": "v1", "kind": "Pod", "metadata": md, "spec": spec, "status": status}


def snapshot(*objs: dict[str, Any]) -> InputSnapshot:
    result = parse_text("\n---\n".join(json.dumps(o) for o in objs), "test.yaml")
    assert not result.issues, result.issues
    return InputSnapshot.of(result.objects)


def shop() -> list[dict[str, Any]]:
    """Namespace `shop` in node mode, `pay` in sidecar mode, and a few Services."""
    return [
        namespace("shop", "node"), namespace("pay", "sidecar"),
        service("shop", "web", "127.96.0.10", [{"name": "http", "port": 80, "targetPort": 8080}]),
        service("shop", "api", ["127.96.0.12", "fd00::12"], [{"name": "grpc", "port": 9090},
                                                             {"name": "metrics", "port": 9100}]),
        service("pay", "db", "127.96.0.11", [{"name": "pg", "port": 5432}]),
        pod("shop", "web-0", ip="127.1.0.10", labels={"app": "web"},
            ports=[{"name": "http", "containerPort": 8080}]),
        pod("pay", "db-0", node="node-2", ip="127.1.0.20", labels={"app": "db"},
            ports=[{"name": "pg", "containerPort": 5432}, {"containerPort": 8080, "name": "http-admin"}]),
    ]


def bundle(part: Partial, key: str) -> ir.Bundle:
    found = [b for b in part.bundles if b.key == key]
    assert len(found) == 1, [b.key for b in part.bundles]
    return found[0]


def chains_by_name(listener: ir.Listener) -> dict[str, ir.FilterChain]:
    return {fc.name: fc for fc in listener.filter_chains}


# -- protocol detection -----------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "http"), [
    ("http", True), ("http-web", True), ("http2", True), ("grpc", True), ("grpc-api", True), ("h2c", True),
    ("HTTP", True), ("https", False), ("https-web", False), ("web", False), ("tcp-http", False), ("", False),
])
def test_http_port_names(name: str, http: bool) -> None:
    assert is_http_port_name(name) is http


@pytest.mark.parametrize(("name", "app_protocol", "http"), [
    ("pg", "", False), ("http", "", True), ("http", "tcp", False), ("x", "http", True),
    ("x", "kubernetes.io/h2c", True), ("x", "grpc", True), ("x", "kubernetes.io/ws", True),
    ("http", "https", False), ("x", "HTTP", True),
])
def test_http_service_ports(name: str, app_protocol: str, http: bool) -> None:
    assert is_http_service_port(ServicePort(name, 80, None, "TCP", app_protocol)) is http


# -- node~ ------------------------------------------------------------------------------------------
def test_node_outbound_listener_structure() -> None:
    part = translate_mesh(snapshot(*shop()), TranslateOptions())
    assert part.issues == ()
    b = bundle(part, "mesh/node")
    # Only node-1 runs a mode-node pod (db-0 on node-2 is a sidecar pod).
    assert b.scope == ir.ProxyScope(frozenset({"node"}), frozenset({"node-1"}))
    (li,) = b.listeners
    assert (li.name, li.address, li.port) == (NODE_OUTBOUND_LISTENER, "127.0.0.1", 15001)
    assert li.listener_filters == ("original_dst",)
    assert li.direction == "outbound"
    chains = chains_by_name(li)
    assert set(chains) == {"outbound|node|direct", "outbound|80|shop/web", "outbound|9090|shop/api",
                           "outbound|9100|shop/api", "outbound|5432|pay/db"}
    web = chains["outbound|80|shop/web"]
    assert (web.destination_cidrs, web.destination_port, web.source_cidrs) == (("127.96.0.10/32",), 80, ())
    assert isinstance(web.app, ir.HttpApp) and web.app.route_config == "outbound|80|shop/web"
    api = chains["outbound|9090|shop/api"]
    assert api.destination_cidrs == ("127.96.0.12/32", "fd00::12/128") and isinstance(api.app, ir.HttpApp)
    metrics = chains["outbound|9100|shop/api"]
    assert isinstance(metrics.app, ir.TcpApp) and metrics.app.backends == (ir.Backend("shop/api:9100"),)
    db = chains["outbound|5432|pay/db"]
    assert isinstance(db.app, ir.TcpApp) and db.app.backends == (ir.Backend("pay/db:5432"),)
    direct = chains["outbound|node|direct"]
    assert (direct.destination_port, direct.destination_cidrs) == (15001, ())
    assert isinstance(direct.app, ir.TcpApp) and direct.app.backends == (ir.Backend(BLACKHOLE_CLUSTER),)
    assert li.default_chain is not None and isinstance(li.default_chain.app, ir.TcpApp)
    assert li.default_chain.app.backends == (ir.Backend(PASSTHROUGH_CLUSTER),)

    clusters = {c.name: c for c in b.clusters}
    assert clusters[PASSTHROUGH_CLUSTER].discovery == "ORIGINAL_DST"
    assert clusters[BLACKHOLE_CLUSTER].discovery == "STATIC" and clusters[BLACKHOLE_CLUSTER].static_endpoints == ()
    assert clusters["shop/api:9090"].protocol == "http2" and clusters["shop/api:9090"].eds_name == "shop/api:9090"
    assert clusters["shop/web:80"].discovery == "EDS"
    routes = {r.name: r for r in b.routes}
    assert set(routes) == {"outbound|80|shop/web", "outbound|9090|shop/api"}
    (vh,) = routes["outbound|80|shop/web"].virtual_hosts
    assert vh.domains == ("*",)
    (route,) = vh.routes
    assert route.backends == (ir.Backend("shop/web:80"),) and route.timeout_ms == 0 and route.match.path is None


def test_capture_address_and_ports_from_options() -> None:
    opts = TranslateOptions(mesh_capture_address="127.0.0.9", mesh_capture_port=25001)
    (li,) = bundle(translate_mesh(snapshot(*shop()), opts), "mesh/node").listeners
    assert (li.address, li.port) == ("127.0.0.9", 25001)
    assert chains_by_name(li)["outbound|node|direct"].destination_port == 25001


def test_non_mesh_services_and_ports_are_left_out() -> None:
    objs = [
        namespace("shop", "node"), pod("shop", "c"),
        service("shop", "headless", "None", [{"name": "http", "port": 80}]),
        service("shop", "ext", None, [{"name": "http", "port": 80}], stype="ExternalName"),
        service("shop", "dns", "127.96.0.53", [{"name": "dns", "port": 53, "protocol": "UDP"},
                                               {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]),
    ]
    (li,) = bundle(translate_mesh(snapshot(*objs), TranslateOptions()), "mesh/node").listeners
    assert set(chains_by_name(li)) == {"outbound|node|direct", "outbound|53|shop/dns"}


def test_vip_port_claimed_twice_keeps_the_first_and_reports_the_other() -> None:
    objs = [namespace("shop", "node"), pod("shop", "c"),
            service("shop", "a", "127.96.0.10", [{"name": "http", "port": 80}]),
            service("shop", "b", "127.96.0.10", [{"name": "http", "port": 80}, {"name": "other", "port": 81}])]
    part = translate_mesh(snapshot(*objs), TranslateOptions())
    (li,) = bundle(part, "mesh/node").listeners
    assert set(chains_by_name(li)) == {"outbound|node|direct", "outbound|80|shop/a", "outbound|81|shop/b"}
    (issue,) = part.issues
    assert issue.object == "Service shop/b" and issue.field == "spec.ports[0]" and "Service shop/a" in issue.message


def test_no_node_bundle_without_node_mode_pods() -> None:
    objs = [namespace("shop", "sidecar"), pod("shop", "a"), namespace("x", "node"), pod("x", "pending", node=""),
            service("shop", "web", "127.96.0.10", [{"name": "http", "port": 80}])]
    part = translate_mesh(snapshot(*objs), TranslateOptions())
    assert "mesh/node" not in {b.key for b in part.bundles}


# -- modes ------------------------------------------------------------------------------------------
def test_modes_overrides_and_exclusions() -> None:
    objs = [
        namespace("shop", "node"), namespace("pay", "sidecar"), namespace("plain"),
        pod("shop", "n1", node="node-1"),
        pod("shop", "opt-out", node="node-2", annotations={"cilia.io/mesh": "off"}),
        pod("shop", "to-sidecar", node="node-3", labels={"app": "x", "cilia.io/mesh": "sidecar"}),
        pod("shop", "host", node="node-4", host_network=True),
        pod("shop", "done", node="node-5", phase="Succeeded"),
        pod("pay", "s1", node="node-6"),
        pod("plain", "p", node="node-7"),
    ]
    part = translate_mesh(snapshot(*objs), TranslateOptions())
    assert bundle(part, "mesh/node").scope.names == frozenset({"node-1"})
    sidecar_names = {n for b in part.bundles if b.scope.roles == {"sidecar"} for n in b.scope.names or ()}
    assert sidecar_names == {"shop/to-sidecar", "pay/s1"}
    # With a cluster default of node, the namespace without a label joins too.
    part = translate_mesh(snapshot(*objs), TranslateOptions(mesh_default_mode="node"))
    assert bundle(part, "mesh/node").scope.names == frozenset({"node-1", "node-7"})


def test_invalid_mode_values_are_reported_once_on_the_object_holding_them() -> None:
    objs = [namespace("bad", "sometimes"), pod("bad", "a"), pod("bad", "b"),
            namespace("shop", "node"), pod("shop", "c", annotations={"cilia.io/mesh": "yes"}), pod("shop", "d")]
    part = translate_mesh(snapshot(*objs), TranslateOptions())
    got = {(i.object, i.field) for i in part.issues}
    assert got == {("Namespace bad", "metadata.labels.cilia.io/mesh"),
                   ("Pod shop/c", "metadata.annotations.cilia.io/mesh")}
    assert all(i.severity == "error" for i in part.issues)
    assert bundle(part, "mesh/node").scope.names == frozenset({"node-1"})  # pod d still served


# -- sidecar~ ---------------------------------------------------------------------------------------
def test_sidecar_bundles_outbound_per_namespace_inbound_per_pod() -> None:
    objs = [*shop(), pod("pay", "db-1", node="node-2", ip="127.1.0.21", labels={"app": "db"},
                         ports=[{"name": "pg", "containerPort": 5432}])]
    part = translate_mesh(snapshot(*objs), TranslateOptions())
    ns_bundle = bundle(part, "mesh/sidecar/pay")
    assert ns_bundle.scope == ir.ProxyScope(frozenset({"sidecar"}), frozenset({"pay/db-0", "pay/db-1"}))
    (out,) = ns_bundle.listeners
    assert (out.name, out.address, out.port) == ("outbound|sidecar|pay", "127.0.0.1", 15001)
    assert set(chains_by_name(out)) == {"outbound|sidecar|pay|direct", "outbound|80|shop/web",
                                        "outbound|9090|shop/api", "outbound|9100|shop/api", "outbound|5432|pay/db"}
    pod_bundle = bundle(part, "mesh/sidecar/pay/db-0")
    assert pod_bundle.scope == ir.ProxyScope(frozenset({"sidecar"}), frozenset({"pay/db-0"}))
    (inbound,) = pod_bundle.listeners
    assert (inbound.name, inbound.address, inbound.port) == ("inbound|sidecar|pay/db-0", "0.0.0.0", 15006)
    assert inbound.listener_filters == ("original_dst",) and inbound.direction == "inbound"
    chains = chains_by_name(inbound)
    assert set(chains) == {"inbound|sidecar|pay/db-0|direct", "inbound|5432", "inbound|8080"}
    assert isinstance(chains["inbound|5432"].app, ir.TcpApp) and chains["inbound|5432"].destination_port == 5432
    assert isinstance(chains["inbound|8080"].app, ir.HttpApp)  # container port named http-admin
    clusters = {c.name: c for c in pod_bundle.clusters}
    assert clusters["inbound|5432"].discovery == "STATIC"
    assert clusters["inbound|5432"].static_endpoints == (ir.Endpoint("127.0.0.1", 5432),)
    assert {r.name for r in pod_bundle.routes} == {"inbound|8080"}
    # Each sidecar's inbound bundle is its own; the world gives a sidecar only its own listeners.
    world = render_world(ir.MeshIR(part.bundles))
    assert world.issues == ()
    from cilia.render.resources import LISTENER
    assert set(world.for_proxy(ProxyId("sidecar", "pay/db-1")).of(LISTENER)) == {
        "outbound|sidecar|pay", "inbound|sidecar|pay/db-1"}
    assert set(world.for_proxy(ProxyId("sidecar", "pay/unknown")).of(LISTENER)) == set()
    assert set(world.for_proxy(ProxyId("node", "node-2")).of(LISTENER)) == set()


def test_inbound_protocol_follows_services_targeting_the_port() -> None:
    objs = [
        namespace("pay", "sidecar"),
        pod("pay", "p", labels={"app": "p", "tier": "x"}, ports=[
            {"name": "web", "containerPort": 8080}, {"name": "rpc", "containerPort": 9000},
            {"containerPort": 7000}, {"name": "http", "containerPort": 6000}, {"containerPort": 5000}]),
        service("pay", "by-name", "127.96.0.30", [{"name": "http", "port": 80, "targetPort": "web"}],
                selector={"app": "p"}),
        service("pay", "grpc", "127.96.0.31", [{"name": "x", "port": 90, "targetPort": 9000,
                                                "appProtocol": "kubernetes.io/h2c"}], selector={"tier": "x"}),
        service("pay", "tcp-wins", "127.96.0.32", [{"name": "tcp", "port": 6000}], selector={"app": "p"}),
        service("pay", "same-port", "127.96.0.33", [{"name": "http", "port": 7000}], selector={"app": "p"}),
        service("pay", "other", "127.96.0.34", [{"name": "http", "port": 5000}], selector={"app": "nope"}),
    ]
    part = translate_mesh(snapshot(*objs), TranslateOptions())
    b = bundle(part, "mesh/sidecar/pay/p")
    chains = chains_by_name(b.listeners[0])
    assert isinstance(chains["inbound|8080"].app, ir.HttpApp)  # Service targets the port by name
    assert isinstance(chains["inbound|9000"].app, ir.HttpApp)
    assert chains["inbound|9000"].app.route_config == "inbound|9000|http2"
    assert isinstance(chains["inbound|7000"].app, ir.HttpApp)  # targetPort defaults to port
    assert isinstance(chains["inbound|6000"].app, ir.TcpApp)  # the Service says tcp, over the port name
    assert isinstance(chains["inbound|5000"].app, ir.TcpApp)  # no Service selects it, no HTTP name
    clusters = {c.name: c for c in b.clusters}
    assert clusters["inbound|9000|http2"].protocol == "http2"
    assert part.issues == ()


def test_inbound_duplicate_port_warns_and_inbound_port_collision_drops_guard() -> None:
    objs = [namespace("pay", "sidecar"),
            pod("pay", "p", containers=2, ports=[{"name": "http", "containerPort": 15006}])]
    part = translate_mesh(snapshot(*objs), TranslateOptions())
    (issue,) = part.issues
    assert issue.severity == "warning" and "15006" in issue.message and issue.object == "Pod pay/p"
    chains = chains_by_name(bundle(part, "mesh/sidecar/pay/p").listeners[0])
    assert set(chains) == {"inbound|15006"}  # no guard chain with the same match as the app's port


def test_pod_ip_binding_gives_each_sidecar_its_own_listeners() -> None:
    objs = [namespace("pay", "sidecar"), pod("pay", "a", ip="127.1.0.5", ports=[{"containerPort": 8080}]),
            pod("pay", "b", ip=None), service("pay", "s", "127.96.0.10", [{"name": "http", "port": 80}])]
    opts = TranslateOptions(mesh_sidecar_capture_address="pod-ip", mesh_inbound_address="pod-ip")
    part = translate_mesh(snapshot(*objs), opts)
    assert {b.key for b in part.bundles} == {"mesh/sidecar/pay/a"}
    listeners = {li.name: li for li in bundle(part, "mesh/sidecar/pay/a").listeners}
    assert {n: (li.address, li.port) for n, li in listeners.items()} == {
        "outbound|sidecar|pay/a": ("127.1.0.5", 15001), "inbound|sidecar|pay/a": ("127.1.0.5", 15006)}


# -- egress scope -----------------------------------------------------------------------------------
def test_parse_egress_hosts() -> None:
    scope = parse_egress_hosts(" shop/web , ./*,", "pay")
    assert scope.hosts == (("shop", "web"), ("pay", "*"))
    assert scope.allows("shop", "web") and scope.allows("pay", "db")
    assert not scope.allows("shop", "api") and not scope.allows("other", "web")
    assert parse_egress_hosts("*/web", "x").allows("any", "web")
    for bad in ("", "shop", "shop/", "/web", "a/b/c"):
        with pytest.raises(ValueError):
            parse_egress_hosts(bad, "pay")


def test_namespace_egress_hosts_limit_sidecar_outbound_chains() -> None:
    objs = shop()
    objs[1] = namespace("pay", "sidecar", annotations={"cilia.io/egress-hosts": "shop/web,./*"})
    part = translate_mesh(snapshot(*objs), TranslateOptions())
    (out,) = bundle(part, "mesh/sidecar/pay").listeners
    assert set(chains_by_name(out)) == {"outbound|sidecar|pay|direct", "outbound|80|shop/web", "outbound|5432|pay/db"}
    assert {c.name for c in bundle(part, "mesh/sidecar/pay").clusters} == {
        "shop/web:80", "pay/db:5432", PASSTHROUGH_CLUSTER, BLACKHOLE_CLUSTER}
    # The node Envoy is not scoped.
    (node,) = bundle(part, "mesh/node").listeners
    assert "outbound|9090|shop/api" in chains_by_name(node)


def test_invalid_egress_hosts_is_reported_and_falls_back_to_all() -> None:
    objs = shop()
    objs[1] = namespace("pay", "sidecar", annotations={"cilia.io/egress-hosts": "web"})
    part = translate_mesh(snapshot(*objs), TranslateOptions())
    (issue,) = part.issues
    assert (issue.object, issue.field) == ("Namespace pay", "metadata.annotations.cilia.io/egress-hosts")
    (out,) = bundle(part, "mesh/sidecar/pay").listeners
    assert "outbound|9090|shop/api" in chains_by_name(out)


# -- GAMMA hook -------------------------------------------------------------------------------------
def gamma_fake(calls: list[tuple[str, str, str, int]]) -> Callable[..., ir.RouteConfig | None]:
    """Producer routes on shop/web send /v2 to web-v2; namespace `client` has a consumer route to web-v2."""

    def routes_for(snap: InputSnapshot, client_ns: str, ns: str, name: str, port: int) -> ir.RouteConfig | None:
        calls.append((client_ns, ns, name, port))
        if (ns, name) != ("shop", "web"):
            return None
        v1 = ir.Route("v1", ir.RouteMatch(), backends=(ir.Backend("shop/web:80"),))
        v2 = ir.Route("v2", ir.RouteMatch(path=ir.PathMatch("prefix", "/v2")), backends=(ir.Backend("shop/web-v2:80"),))
        if client_ns == "client":
            return ir.RouteConfig("gamma", (ir.VirtualHost("web", ("*",), (
                ir.Route("all-v2", ir.RouteMatch(), backends=(ir.Backend("shop/web-v2:80"),),
                         mirrors=(ir.Mirror("shop/audit:80"),)),)),))
        return ir.RouteConfig("gamma", (ir.VirtualHost("web", ("*",), (v2, v1)),))

    return routes_for


def gamma_world() -> list[dict[str, Any]]:
    return [
        namespace("shop", "node"), namespace("client", "node"), namespace("side", "sidecar"),
        namespace("cs", "sidecar"),
        service("shop", "web", "127.96.0.10", [{"name": "http", "port": 80}]),
        service("shop", "web-v2", "127.96.0.13", [{"name": "http", "port": 80}]),
        service("shop", "audit", "127.96.0.14", [{"name": "http", "port": 80}]),
        service("shop", "db", "127.96.0.11", [{"name": "tcp", "port": 5432}]),
        pod("shop", "s", ip="127.1.0.1"),
        pod("client", "c1", ip="127.1.0.7"), pod("client", "c2", node="node-2", ip="127.1.0.8"),
        pod("side", "x", ip="127.1.0.9"),
    ]


def test_gamma_hook_producer_and_consumer_routes() -> None:
    calls: list[tuple[str, str, str, int]] = []
    objs = [*gamma_world(), pod("cs", "y", ip="127.1.0.11")]
    part = build_mesh(snapshot(*objs), TranslateOptions(), gamma_fake(calls))
    assert part.issues == ()
    node = bundle(part, "mesh/node")
    chains = chains_by_name(node.listeners[0])
    shared = chains["outbound|80|shop/web"]
    consumer = chains["outbound|80|shop/web|from:client"]
    assert shared.source_cidrs == () and isinstance(shared.app, ir.HttpApp)
    assert shared.app.route_config == "outbound|80|shop/web"
    # Same destination, plus the client namespace's pod IPs (both nodes: the listener is shared).
    assert consumer.destination_cidrs == shared.destination_cidrs and consumer.destination_port == 80
    assert consumer.source_cidrs == ("127.1.0.7/32", "127.1.0.8/32")
    assert isinstance(consumer.app, ir.HttpApp) and consumer.app.route_config == "outbound|80|shop/web|from:client"
    # Namespaces whose view equals the shared one get no chain of their own; TCP services never do.
    assert not any("from:shop" in n for n in chains) and "outbound|5432|shop/db|from:client" not in chains
    routes = {r.name: r for r in node.routes}
    assert [r.name for r in routes["outbound|80|shop/web"].virtual_hosts[0].routes] == ["v2", "v1"]
    assert [r.name for r in routes["outbound|80|shop/web|from:client"].virtual_hosts[0].routes] == ["all-v2"]
    # Clusters the GAMMA routes name are resolved and shipped with the listener.
    assert {"shop/web-v2:80", "shop/audit:80"} <= {c.name for c in node.clusters}
    assert ("", "shop", "web", 80) in calls and ("client", "shop", "web", 80) in calls
    # A sidecar gets its own namespace's view, without source matching.
    side = chains_by_name(bundle(part, "mesh/sidecar/side").listeners[0])
    assert side["outbound|80|shop/web"].source_cidrs == ()
    assert isinstance(side["outbound|80|shop/web"].app, ir.HttpApp)
    assert side["outbound|80|shop/web"].app.route_config == "outbound|80|shop/web"
    # Everything renders together without name conflicts.
    world = render_world(ir.MeshIR(part.bundles))
    assert world.issues == ()


def test_consumer_view_of_a_sidecar_namespace() -> None:
    calls: list[tuple[str, str, str, int]] = []
    objs = gamma_world()
    objs[1] = namespace("client", "sidecar")
    part = build_mesh(snapshot(*objs), TranslateOptions(), gamma_fake(calls))
    chains = chains_by_name(bundle(part, "mesh/sidecar/client").listeners[0])
    web = chains["outbound|80|shop/web"]
    assert isinstance(web.app, ir.HttpApp) and web.app.route_config == "outbound|80|shop/web|from:client"
    assert web.source_cidrs == ()
    # No node-mode pods of `client` any more: the node listener has no consumer chain.
    assert "outbound|80|shop/web|from:client" not in chains_by_name(bundle(part, "mesh/node").listeners[0])


def test_pod_ip_claimed_by_two_namespaces_gets_one_source_chain() -> None:
    objs = [*gamma_world(), pod("shop", "stale", ip="127.1.0.7")]
    part = build_mesh(snapshot(*objs), TranslateOptions(), gamma_fake([]))
    chains = chains_by_name(bundle(part, "mesh/node").listeners[0])
    assert chains["outbound|80|shop/web|from:client"].source_cidrs == ("127.1.0.7/32", "127.1.0.8/32")
    (issue,) = part.issues
    assert issue.object == "Pod shop/stale" and issue.severity == "warning"


def test_the_registered_translator_reads_the_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    assert translate_mesh in TRANSLATORS
    monkeypatch.setattr(mesh_mod, "MESH_ROUTES", no_mesh_routes)
    snap = snapshot(*gamma_world())
    before = translate(snap)
    node_routes = next(b for b in before.ir.bundles if b.key == "mesh/node").routes
    assert {r.name for r in node_routes} == {"outbound|80|shop/web", "outbound|80|shop/web-v2",
                                             "outbound|80|shop/audit"}
    monkeypatch.setattr(mesh_mod, "MESH_ROUTES", gamma_fake([]))
    after = translate(snap)
    node_routes = next(b for b in after.ir.bundles if b.key == "mesh/node").routes
    assert "outbound|80|shop/web|from:client" in {r.name for r in node_routes}
    bound = mesh_translator(gamma_fake([]))
    assert bound(snap, TranslateOptions()).bundles == translate_mesh(snap, TranslateOptions()).bundles


# -- rendering of the additive IR fields ------------------------------------------------------------
def test_render_source_cidrs_and_direction() -> None:
    fc = ir.FilterChain("c", ir.TcpApp((ir.Backend("x"),)), destination_cidrs=("127.96.0.10/32",),
                        destination_port=80, source_cidrs=("127.1.0.7/32", "fd00::7/128"))
    li = ir.Listener("l", "127.0.0.1", 15001, (fc,), listener_filters=("original_dst",), direction="outbound")
    out = render.render_listener(li)
    match = out.filter_chains[0].filter_chain_match
    assert [(r.address_prefix, r.prefix_len.value) for r in match.source_prefix_ranges] == [
        ("127.1.0.7", 32), ("fd00::7", 128)]
    assert [(r.address_prefix, r.prefix_len.value) for r in match.prefix_ranges] == [("127.96.0.10", 32)]
    from envoy.config.core.v3 import base_pb2
    assert out.traffic_direction == base_pb2.OUTBOUND
    assert render.render_listener(ir.Listener("l", "127.0.0.1", 1, (fc,))).traffic_direction == base_pb2.UNSPECIFIED
