"""Mesh (GAMMA) scenarios: the suite's mesh namespace, its `echo`, `echo-v1` and `echo-v2` Services
and their echo pods, with requests sent from the `echo-v1` pod as the suite's echo client does.

cilia serves a mesh client without a kernel here: the client pod's sidecar Envoy
(`sidecar~gateway-conformance-mesh/<echo-v1 pod>`) binds its outbound capture listener on 0.0.0.0 at
a Service port, so a request sent to a Service's ClusterIP:port lands on it with the ClusterIP:port
as its local address, which is what picks the Service port's filter chain (no original destination
to restore: the same arrangement as the end-to-end mesh tests). The capture port is one per `cilia
serve`, so each further Service port the suite sends to (8080, 7070) has a `cilia serve` of its own
(same manifests, `--mesh-capture-port` = that port) and a sidecar Envoy for the same pod: together
they stand for the one capture listener that receives every port in a cluster. ClusterIPs and pod
addresses are loopback addresses of the runner's own; the pods listen on 18080 (HTTP) and 17070
(gRPC) rather than the suite's 8080 and 7070, which the capture sockets hold on 0.0.0.0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from conformance.echo import ConformanceEcho, ConformanceGrpcEcho
from conformance.runner import GW, SERVE_ARGS, START_HOOKS, Expect, World, scenario
from conformance.scenarios import REQUEST_HEADER_CASES, REQUEST_HEADER_RULES, _distribution
from support.conformance_base import doc
from support.controlplane import CiliaProcess
from support.envoy import Envoy

MESH = "gateway-conformance-mesh"
MESH_PORT = 80  # the Services' `http` port, and the main `cilia serve`'s capture port
ALT_PORT = 8080  # the Services' `http-alt` port
GRPC_PORT = 7070  # the Services' `grpc` port
ECHO_PORT = 18080  # the pods' HTTP port (the target of `http` and `http-alt`)
ECHO_GRPC_PORT = 17070  # the pods' gRPC port
VIPS = {"echo": "127.96.5.1", "echo-v1": "127.96.5.2", "echo-v2": "127.96.5.3"}
PODS = {"v1": "127.1.5.1", "v2": "127.1.5.2"}

SERVE_ARGS.extend(["--mesh-capture-port", str(MESH_PORT), "--mesh-sidecar-capture-address", "0.0.0.0"])


def _service(name: str, selector: dict[str, str]) -> dict[str, Any]:
    ports = [{"name": "http", "port": MESH_PORT, "appProtocol": "http", "targetPort": ECHO_PORT},
             {"name": "http-alt", "port": ALT_PORT, "appProtocol": "http", "targetPort": ECHO_PORT},
             {"name": "grpc", "port": GRPC_PORT, "appProtocol": "grpc", "targetPort": ECHO_GRPC_PORT}]
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": MESH},
            "spec": {"clusterIP": VIPS[name], "selector": selector, "ports": ports}}


def _slice(service: str, pods: list[tuple[str, str]]) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{service}-1", "namespace": MESH, "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": ECHO_PORT}, {"name": "http-alt", "port": ECHO_PORT},
                      {"name": "grpc", "port": ECHO_GRPC_PORT}],
            "endpoints": [{"addresses": [ip], "targetRef": {"kind": "Pod", "name": pod, "namespace": MESH},
                           "conditions": {"ready": True}} for pod, ip in pods]}


def _pod(echo: ConformanceEcho, version: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": echo.pod, "namespace": MESH, "labels": {"app": "echo", "version": version}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "echo", "image": "echo",
                                                           "ports": [{"containerPort": ECHO_PORT}]}]},
            "status": {"phase": "Running", "podIP": PODS[version]}}


def start_mesh(world: World) -> None:
    """The mesh namespace, its Services and pods, and the client pod's sidecar Envoy."""
    echos = {v: ConformanceEcho(f"echo-{v}", MESH, ip, ECHO_PORT).start() for v, ip in PODS.items()}
    grpc_echos = {v: ConformanceGrpcEcho(f"echo-{v}", MESH, ip, ECHO_GRPC_PORT).start() for v, ip in PODS.items()}
    world.cleanups.extend(e.stop for e in echos.values())
    world.cleanups.extend(g.stop for g in grpc_echos.values())
    world.echos.update({f"mesh-{v}": e for v, e in echos.items()})
    world.grpc_echos.update({f"mesh-{v}": g for v, g in grpc_echos.items()})
    docs = [{"apiVersion": "v1", "kind": "Namespace",
             "metadata": {"name": MESH, "labels": {"gateway-conformance": "mesh", "cilia.io/mesh": "sidecar"}}},
            _service("echo", {"app": "echo"}), _service("echo-v1", {"app": "echo", "version": "v1"}),
            _service("echo-v2", {"app": "echo", "version": "v2"}),
            _slice("echo", [(e.pod, PODS[v]) for v, e in echos.items()]),
            _slice("echo-v1", [(echos["v1"].pod, PODS["v1"])]), _slice("echo-v2", [(echos["v2"].pod, PODS["v2"])]),
            *[_pod(e, v) for v, e in echos.items()]]
    world.md.write("base-mesh.yaml", "\n---\n".join(doc(d) for d in docs) + "\n")
    for name, vip in VIPS.items():  # requests to a Service's hostname go to its ClusterIP
        for host in (name, f"{name}.{MESH}", f"{name}.{MESH}.svc", f"{name}.{MESH}.svc.cluster.local"):
            world.addresses[host] = vip
    assert world.cilia is not None
    client = f"sidecar~{MESH}/{echos['v1'].pod}"
    world.cleanups.append(Envoy(client, world.cilia.xds_port).start().stop)
    for port in (ALT_PORT, GRPC_PORT):
        cp = CiliaProcess([str(world.md.path)], extra=["--mesh-capture-port", str(port),
                                                       "--mesh-sidecar-capture-address", "0.0.0.0"])
        world.cleanups.append(cp.stop)
        cp.start()
        world.cleanups.append(Envoy(client, cp.xds_port).start().stop)


START_HOOKS.append(start_mesh)


def mesh_route(name: str, rules: list[dict[str, Any]], *, service: str = "echo", port: int | None = MESH_PORT,
               kind: str = "HTTPRoute") -> dict[str, Any]:
    ref: dict[str, Any] = {"group": "", "kind": "Service", "name": service}
    if port is not None:
        ref["port"] = port
    return {"apiVersion": GW, "kind": kind, "metadata": {"name": name, "namespace": MESH},
            "spec": {"parentRefs": [ref], "rules": rules}}


def backend(name: str, port: int = ALT_PORT, weight: int | None = None) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": name, "port": port}
    if weight is not None:
        ref["weight"] = weight
    return ref


def expect(world: World, e: Expect, host: str = "echo") -> None:
    """The client pod sends `e` to the Service `host` (its ClusterIP, Host header `host`)."""
    e.host = e.host or host
    if e.backend:
        e.namespace = MESH
    world.expect(e.host, e, port=MESH_PORT)


def expect_route_accepted(world: World, route: str, service: str = "echo", kind: str = "HTTPRoute") -> None:
    world.expect_route(route, service, kind=kind, ns=MESH, gw_ns=MESH)


@scenario("MeshBasic")
def mesh_basic(world: World) -> None:
    expect(world, Expect("/", status=200))


@scenario("MeshHTTPRouteSimpleSameNamespace", fast=True)
def simple_same_namespace(world: World) -> None:
    world.apply([mesh_route("gateway-conformance-mesh-test", [{"backendRefs": [backend("echo-v1")]}])])
    expect_route_accepted(world, "gateway-conformance-mesh-test")
    expect(world, Expect("/", backend="echo-v1"))


@scenario("MeshTrafficSplit")
def traffic_split(world: World) -> None:
    def exact(p: str) -> list[dict[str, Any]]:
        return [{"path": {"type": "Exact", "value": p}}]

    world.apply([mesh_route("mesh-split", [{"matches": exact("/v1"), "backendRefs": [backend("echo-v1", 80)]},
                                           {"matches": exact("/v2"), "backendRefs": [backend("echo-v2", 80)]}],
                            port=None)])
    expect(world, Expect("/v1", backend="echo-v1"))
    expect(world, Expect("/v2", backend="echo-v2"))


@scenario("MeshHTTPRouteMatching")
def matching(world: World) -> None:
    def rule(prefix: str, version: str, to: str) -> dict[str, Any]:
        return {"matches": [{"path": {"type": "PathPrefix", "value": prefix}},
                            {"headers": [{"name": "version", "value": version}]}], "backendRefs": [backend(to)]}

    world.apply([mesh_route("mesh-matching", [rule("/", "one", "echo-v1"), rule("/v2", "two", "echo-v2")])])
    for path, headers, to in [("/", {}, "echo-v1"), ("/example", {}, "echo-v1"), ("/", {"Version": "one"}, "echo-v1"),
                              ("/v2", {}, "echo-v2"), ("/v2/example", {}, "echo-v2"),
                              ("/", {"Version": "two"}, "echo-v2"), ("/v2/", {}, "echo-v2"),
                              ("/v2example", {}, "echo-v1"), ("/foo/v2/example", {}, "echo-v1")]:
        expect(world, Expect(path, headers=headers, backend=to))


@scenario("MeshHTTPRouteWeight")
def mesh_weight(world: World) -> None:
    world.apply([mesh_route("mesh-weighted-backends",
                            [{"backendRefs": [backend("echo-v1", weight=70), backend("echo-v2", weight=30)]}])])
    expect(world, Expect("/", status=200))
    world.eventually("weighted distribution", lambda: _distribution(
        lambda: str(world.request("echo", Expect("/", host="echo"), MESH_PORT).echo.get("pod", "")),
        {"echo-v1": 0.7, "echo-v2": 0.3}))


@scenario("MeshHTTPRouteRewritePath")
def rewrite_path(world: World) -> None:
    headers = {"set": [{"name": "X-Header-Set", "value": "set-overwrites-values"}],
               "add": [{"name": "X-Header-Add", "value": "header-val-1"},
                       {"name": "X-Header-Add-Append", "value": "header-val-2"}],
               "remove": ["X-Header-Remove"]}

    def rule(prefix: str, path: dict[str, str], modify: bool = False) -> dict[str, Any]:
        filters: list[dict[str, Any]] = [{"type": "URLRewrite", "urlRewrite": {"path": path}}]
        if modify:
            filters.append({"type": "RequestHeaderModifier", "requestHeaderModifier": headers})
        return {"matches": [{"path": {"type": "PathPrefix", "value": prefix}}], "filters": filters,
                "backendRefs": [backend("echo-v1", MESH_PORT)]}

    def prefix(v: str) -> dict[str, str]:
        return {"type": "ReplacePrefixMatch", "replacePrefixMatch": v}

    def full(v: str) -> dict[str, str]:
        return {"type": "ReplaceFullPath", "replaceFullPath": v}

    world.apply([mesh_route("mesh-rewrite-path", [
        rule("/prefix/one", prefix("/one")), rule("/strip-prefix", prefix("/")), rule("/full/one", full("/one")),
        rule("/full/rewrite-path-and-modify-headers", full("/test"), True),
        rule("/prefix/rewrite-path-and-modify-headers", prefix("/prefix"), True)])])
    for path, seen in [("/prefix/one/two", "/one/two"), ("/strip-prefix/three", "/three"), ("/strip-prefix", "/"),
                       ("/full/one/two", "/one")]:
        expect(world, Expect(path, backend="echo-v1", req_path=seen))
    sent = {"X-Header-Remove": "remove-val", "X-Header-Add-Append": "append-val-1", "X-Header-Set": "set-val"}
    seen_headers = {"X-Header-Add": "header-val-1", "X-Header-Add-Append": "append-val-1,header-val-2",
                    "X-Header-Set": "set-overwrites-values"}
    for path, seen in [("/full/rewrite-path-and-modify-headers/test", "/test"),
                       ("/prefix/rewrite-path-and-modify-headers/one", "/prefix/one")]:
        expect(world, Expect(path, headers=sent, backend="echo-v1", req_path=seen, req_headers=seen_headers,
                             req_absent=("X-Header-Remove",)))


def _redirect_rule(prefix: str, **redirect: Any) -> dict[str, Any]:
    path = redirect.pop("path", None)
    if path is not None:
        kind, value = path
        redirect["path"] = {"type": kind, ("replacePrefixMatch" if kind == "ReplacePrefixMatch" else
                                           "replaceFullPath"): value}
    return {"matches": [{"path": {"type": "PathPrefix", "value": prefix}}],
            "filters": [{"type": "RequestRedirect", "requestRedirect": redirect}]}


def _redirects(world: World, name: str, rules: list[dict[str, Any]],
               cases: list[tuple[str, int, str]]) -> None:
    """Apply a route of redirect rules; each case: request path, status, Location."""
    world.apply([mesh_route(name, rules)])
    expect_route_accepted(world, name)
    for path, status, location in cases:
        expect(world, Expect(path, status=status, location=location))


@scenario("MeshHTTPRouteRedirectPath")
def redirect_path(world: World) -> None:
    pre, full = "ReplacePrefixMatch", "ReplaceFullPath"
    _redirects(world, "mesh-redirect-path", [
        _redirect_rule("/original-prefix", path=(pre, "/replacement-prefix")),
        _redirect_rule("/full", path=(full, "/full-path-replacement")),
        _redirect_rule("/path-and-host", hostname="example.org", path=(pre, "/replacement-prefix")),
        _redirect_rule("/path-and-status", path=(pre, "/replacement-prefix"), statusCode=301),
        _redirect_rule("/full-path-and-host", hostname="example.org", path=(full, "/replacement-full")),
        _redirect_rule("/full-path-and-status", path=(full, "/replacement-full"), statusCode=301)],
        [("/original-prefix/lemon", 302, "http://echo/replacement-prefix/lemon"),
         ("/full/path/original", 302, "http://echo/full-path-replacement"),
         ("/path-and-host", 302, "http://example.org/replacement-prefix"),
         ("/path-and-status", 301, "http://echo/replacement-prefix"),
         ("/full-path-and-host", 302, "http://example.org/replacement-full"),
         ("/full-path-and-status", 301, "http://echo/replacement-full")])


@scenario("MeshHTTPRouteRedirectHostAndStatus")
def redirect_host_and_status(world: World) -> None:
    _redirects(world, "mesh-redirect-host-and-status", [
        _redirect_rule("/hostname-redirect", hostname="example.org"),
        _redirect_rule("/host-and-status", statusCode=301, hostname="example.org")],
        [("/hostname-redirect", 302, "http://example.org/hostname-redirect"),
         ("/host-and-status", 301, "http://example.org/host-and-status")])


def _status_redirect(code: int) -> Callable[[World], None]:
    def run(world: World) -> None:
        _redirects(world, f"mesh-redirect-{code}", [_redirect_rule("/redirect", statusCode=code)],
                   [("/redirect", code, "http://echo/redirect")])
    return run


for _code in (303, 307, 308):
    scenario(f"MeshHTTPRoute{_code}Redirect")(_status_redirect(_code))


@scenario("MeshHTTPRouteSchemeRedirect")
def scheme_redirect(world: World) -> None:
    _redirects(world, "mesh-scheme-redirect", [
        _redirect_rule("/scheme", scheme="https"),
        _redirect_rule("/scheme-and-host", hostname="example.org", scheme="https"),
        _redirect_rule("/scheme-and-status", scheme="https", statusCode=301),
        _redirect_rule("/scheme-and-host-and-status", scheme="https", statusCode=302, hostname="example.org")],
        [("/scheme", 302, "https://echo/scheme"),
         ("/scheme-and-host", 302, "https://example.org/scheme-and-host"),
         ("/scheme-and-status", 301, "https://echo/scheme-and-status"),
         ("/scheme-and-host-and-status", 302, "https://example.org/scheme-and-host-and-status")])


@scenario("MeshHTTPRouteRedirectPort")
def port_redirect(world: World) -> None:
    _redirects(world, "mesh-port-redirect", [
        _redirect_rule("/port", port=8083),
        _redirect_rule("/port-and-host", hostname="example.org", port=8083),
        _redirect_rule("/port-and-status", port=8083, statusCode=301),
        _redirect_rule("/port-and-host-and-status", port=8083, hostname="example.org", statusCode=302)],
        [("/port", 302, "http://echo:8083/port"),
         ("/port-and-host", 302, "http://example.org:8083/port-and-host"),
         ("/port-and-status", 301, "http://echo:8083/port-and-status"),
         ("/port-and-host-and-status", 302, "http://example.org:8083/port-and-host-and-status")])


def _header_modifier(world: World, name: str, on_backend: bool) -> None:
    rules = []
    for path, mod in REQUEST_HEADER_RULES:
        f = [{"type": "RequestHeaderModifier", "requestHeaderModifier": mod}]
        ref = backend("echo-v1")
        rule: dict[str, Any] = {"matches": [{"path": {"type": "PathPrefix", "value": path}}], "backendRefs": [ref]}
        if on_backend:
            ref["filters"] = f
        else:
            rule["filters"] = f
        rules.append(rule)
    world.apply([mesh_route(name, rules)])
    expect_route_accepted(world, name)
    for path, sent, seen, absent in REQUEST_HEADER_CASES:
        expect(world, Expect(path, headers=sent, backend="echo-v1", req_headers=seen, req_absent=absent))


@scenario("MeshHTTPRouteRequestHeaderModifier")
def request_header_modifier(world: World) -> None:
    _header_modifier(world, "mesh-request-header-modifier", on_backend=False)


@scenario("MeshHTTPRouteBackendRequestHeaderModifier")
def backend_request_header_modifier(world: World) -> None:
    _header_modifier(world, "mesh-request-header-modifier-backend", on_backend=True)


@scenario("MeshHTTPRouteNamedRule")
def named_rule(world: World) -> None:
    world.apply([mesh_route("mesh-http-named-rules", [
        {"name": "named-rule", "matches": [{"path": {"type": "PathPrefix", "value": "/named"}}],
         "backendRefs": [backend("echo-v1")]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/unnamed"}}], "backendRefs": [backend("echo-v2")]}])])
    expect_route_accepted(world, "mesh-http-named-rules")
    expect(world, Expect("/named", backend="echo-v1", req_path="/named"))
    expect(world, Expect("/unnamed", backend="echo-v2", req_path="/unnamed"))


@scenario("MeshHTTPRouteQueryParamMatching")
def query_param_matching(world: World) -> None:
    def q(name: str, value: str) -> dict[str, str]:
        return {"name": name, "value": value}

    def pre(p: str) -> dict[str, str]:
        return {"type": "PathPrefix", "value": p}

    def r(to: str, *matches: dict[str, Any]) -> dict[str, Any]:
        return {"matches": list(matches), "backendRefs": [backend(to)]}

    world.apply([mesh_route("mesh-query-param-matching", [
        r("echo-v1", {"queryParams": [q("animal", "whale")]}),
        r("echo-v2", {"queryParams": [q("animal", "dolphin")]}),
        r("echo-v1", {"path": pre("/path1"), "queryParams": [q("animal", "whale")]}),
        r("echo-v2", {"headers": [q("version", "one")], "queryParams": [q("animal", "whale")]}),
        r("echo-v1", {"path": pre("/path3"), "queryParams": [q("animal", "shark")]},
          {"path": pre("/path4"), "headers": [q("version", "three")], "queryParams": [q("animal", "kraken")]}),
        r("echo-v1", {"path": pre("/path5")}),
        r("echo-v2", {"queryParams": [q("animal", "hydra")]})])])
    expect_route_accepted(world, "mesh-query-param-matching")
    cases: list[tuple[str, dict[str, str], str]] = [
        ("/?animal=whale", {}, "echo-v1"), ("/?animal=dolphin", {}, "echo-v2"),
        ("/?animal=whale&otherparam=irrelevant", {}, "echo-v1"), ("/?animal=dolphin&color=yellow", {}, "echo-v2"),
        ("/?color=blue", {}, ""), ("/?animal=dog", {}, ""), ("/?animal=whaledolphin", {}, ""), ("/", {}, ""),
        ("/path1?animal=whale", {}, "echo-v1"), ("/?animal=whale", {"version": "one"}, "echo-v2"),
        ("/path3?animal=shark", {}, "echo-v1"), ("/path4?animal=kraken", {"version": "three"}, "echo-v1"),
        ("/?animal=shark", {}, ""), ("/path4?animal=kraken", {}, ""), ("/path5?animal=hydra", {}, "echo-v1")]
    for path, headers, to in cases:
        expect(world, Expect(path, headers=headers, backend=to, status=200 if to else 404))


def _response_header(value: str) -> dict[str, Any]:
    return {"type": "ResponseHeaderModifier",
            "responseHeaderModifier": {"set": [{"name": "X-Header-Set", "value": value}]}}


def _frontend_route() -> dict[str, Any]:
    return mesh_route("mesh-split-v1", [{"filters": [_response_header("set")],
                                         "backendRefs": [backend("echo-v2", MESH_PORT)]}], service="echo-v2", port=None)


@scenario("MeshFrontend")
def frontend(world: World) -> None:
    """A route on echo-v2 applies to its Service address only. The suite's second case sends to the
    pod's own address: no Service address, so no route (here the request reaches the pod directly,
    as cilia's capture would pass it through)."""
    world.apply([_frontend_route()])
    expect_route_accepted(world, "mesh-split-v1", "echo-v2")
    expect(world, Expect("/", backend="echo-v2", resp_headers={"X-Header-Set": "set"}), "echo-v2")
    world.addresses["echo-v2-pod"] = PODS["v2"]
    world.expect("echo-v2-pod", Expect("/", host=f"{PODS['v2']}:{ECHO_PORT}", backend="echo-v2", namespace=MESH,
                                       resp_absent=("X-Header-Set",)), port=ECHO_PORT)


@scenario("MeshFrontendHostname")
def frontend_hostname(world: World) -> None:
    """The Service address picks the route, not the Host header."""
    world.apply([_frontend_route()])
    expect_route_accepted(world, "mesh-split-v1", "echo-v2")
    world.expect("echo-v2", Expect("/", host="echo-v1", backend="echo-v2", namespace=MESH,
                                   resp_headers={"X-Header-Set": "set"}), port=MESH_PORT)
    world.expect("echo-v1", Expect("/", host="echo-v2", backend="echo-v1", namespace=MESH,
                                   resp_absent=("X-Header-Set",)), port=MESH_PORT)


@scenario("MeshPorts")
def ports(world: World) -> None:
    world.apply([
        mesh_route("mesh-split-v1", [{"filters": [_response_header("v1")],
                                      "backendRefs": [backend("echo-v1", MESH_PORT)]}], service="echo-v1"),
        mesh_route("mesh-split-v2", [{"filters": [_response_header("v2")],
                                      "backendRefs": [backend("echo-v2", MESH_PORT)]}], service="echo-v2", port=None)])
    expect_route_accepted(world, "mesh-split-v1", "echo-v1")
    expect_route_accepted(world, "mesh-split-v2", "echo-v2")
    for host, port, to, header in [("echo-v1", MESH_PORT, "echo-v1", "v1"), ("echo-v1", ALT_PORT, "echo-v1", ""),
                                   ("echo-v2", MESH_PORT, "echo-v2", "v2"), ("echo-v2", ALT_PORT, "echo-v2", "v2")]:
        e = Expect("/", host=host if port == MESH_PORT else f"{host}:{port}", backend=to, namespace=MESH,
                   resp_headers={"X-Header-Set": header} if header else {},
                   resp_absent=() if header else ("X-Header-Set",))
        world.expect(host, e, port=port)


@scenario("MeshGRPCRouteWeight")
def grpc_weight(world: World) -> None:
    route = mesh_route("mesh-grpc-weight", [{"backendRefs": [backend("echo-v1", GRPC_PORT, 70),
                                                             backend("echo-v2", GRPC_PORT, 30),
                                                             backend("echo-v3", GRPC_PORT, 0)]}],
                       port=GRPC_PORT, kind="GRPCRoute")
    world.apply([route])
    host = f"echo:{GRPC_PORT}"
    world.expect_grpc("echo", "Echo", host=host, port=GRPC_PORT)

    def pod() -> str:
        code, echo = world.grpc_call("echo", "Echo", host, port=GRPC_PORT)
        return str(echo.get("pod", code))

    world.eventually("weighted distribution", lambda: _distribution(pod, {"echo-v1": 0.7, "echo-v2": 0.3}))


CONSUMER = "gateway-conformance-mesh-consumer"
CONSUMER_POD_IP = "127.1.5.9"


@scenario("MeshConsumerRoute")
def consumer_route(world: World) -> None:
    """A route in the consumer namespace applies to that namespace's clients only. The consumer pod's
    sidecar (a `cilia serve` and Envoy of its own while the scenario runs) binds its capture listener
    on echo-v1's ClusterIP:80, which takes that address from the producer client's 0.0.0.0 socket; once
    it is gone the producer client's own sidecar answers again."""
    pod = "echo-v1-consumer-0"
    world.apply([
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": CONSUMER,
                      "labels": {"gateway-conformance": "mesh-consumer", "cilia.io/mesh": "sidecar"}}},
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": pod, "namespace": CONSUMER, "labels": {"app": "echo", "version": "v1"}},
         "spec": {"nodeName": "node-1", "containers": [{"name": "echo", "image": "echo"}]},
         "status": {"phase": "Running", "podIP": CONSUMER_POD_IP}},
        {"apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": "mesh-echo-add-header", "namespace": CONSUMER},
         "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "echo-v1", "namespace": MESH}],
                  "rules": [{"filters": [_response_header("set")],
                             "backendRefs": [{"name": "echo-v1", "namespace": MESH, "port": MESH_PORT}]}]}}])
    world.expect_route("mesh-echo-add-header", "echo-v1", ns=CONSUMER, gw_ns=MESH)
    host = f"echo-v1.{MESH}"
    cp = CiliaProcess([str(world.md.path)], extra=["--mesh-capture-port", str(MESH_PORT),
                                                   "--mesh-sidecar-capture-address", VIPS["echo-v1"]])
    envoy: Envoy | None = None
    try:
        cp.start()
        envoy = Envoy(f"sidecar~{CONSUMER}/{pod}", cp.xds_port).start()
        world.expect(host, Expect("/", host=host, backend="echo-v1", namespace=MESH,
                                  resp_headers={"X-Header-Set": "set"}), port=MESH_PORT)
    finally:
        if envoy is not None:
            envoy.stop()
        cp.stop()
    world.expect(host, Expect("/", host=host, backend="echo-v1", namespace=MESH, resp_absent=("X-Header-Set",)),
                 port=MESH_PORT)
