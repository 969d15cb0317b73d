"""HTTPRoutes on a Gateway, served by a real Envoy (`gateway~default/gw`) to echo backends.

One control plane and one Envoy serve the whole module: every match type, precedence across routes,
every filter, weights, timeouts, cross-namespace references, and the status of each negative case.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from support.backends import EchoBackend
from support.controlplane import ControlPlaneThread, ManifestDir
from support.envoy import Envoy
from support.gateway_objects import (
    backend,
    find_status,
    gateway,
    gateway_class,
    http_route,
    listener,
    parent_condition,
    prefix,
    reference_grant,
    tag,
)
from support.http import Reply, get
from support.manifests import docs, endpoint_slice, service
from support.net import free_port

pytestmark = pytest.mark.e2e


class SlowBackend:
    """Answers after `?ms=N` milliseconds (for timeouts)."""

    def __init__(self, host: str = "127.0.0.7") -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                ms = int(self.path.partition("ms=")[2] or 0)
                time.sleep(min(ms, 3000) / 1000)
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.host = host
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class World:
    port: int
    cp: ControlPlaneThread
    envoy: Envoy
    backends: dict[str, EchoBackend]

    def get(self, host: str, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> Reply:
        return get(f"http://127.0.0.1:{self.port}{path}", headers={"Host": host, **(headers or {})}, method=method)

    def statuses(self) -> list[dict[str, Any]]:
        return list(self.cp.admin_json("/debug/status"))


def _services(b: dict[str, EchoBackend], slow: SlowBackend) -> list[str]:
    out = []
    for i, (name, ns) in enumerate([("echo-a", "default"), ("echo-b", "default"), ("mirror", "default"),
                                    ("remote", "other")]):
        be = b[name]
        out += [service(name, 80, namespace=ns, vip=f"127.96.0.{10 + i}"),
                endpoint_slice(name, [(be.host, be.port)], namespace=ns)]
    out += [service("slow", 80, vip="127.96.0.20"), endpoint_slice("slow", [(slow.host, slow.port)])]
    return out


def _routes() -> list[str]:
    a, b = backend("echo-a"), backend("echo-b")
    return [
        # -- match types ---------------------------------------------------------------------------------
        http_route("matches", hostnames=["match.test"], rules=[
            {"matches": [{"path": {"type": "Exact", "value": "/exact"}}], "filters": [tag("exact")],
             "backendRefs": [a]},
            {"matches": [prefix("/prefix")], "filters": [tag("prefix")], "backendRefs": [b]},
            {"matches": [{"path": {"type": "RegularExpression", "value": "/re/[0-9]+"}}], "filters": [tag("regex")],
             "backendRefs": [a]},
            {"matches": [{**prefix("/h"), "headers": [{"name": "x-env", "value": "canary"}]}],
             "filters": [tag("header-exact")], "backendRefs": [b]},
            {"matches": [{**prefix("/h"), "headers": [{"type": "RegularExpression", "name": "x-ver",
                                                      "value": "v[0-9]+"}]}],
             "filters": [tag("header-regex")], "backendRefs": [b]},
            {"matches": [{**prefix("/q"), "queryParams": [{"name": "debug", "value": "1"}]}],
             "filters": [tag("query")], "backendRefs": [b]},
            {"matches": [{**prefix("/m"), "method": "POST"}], "filters": [tag("post")], "backendRefs": [b]},
            {"filters": [tag("default")], "backendRefs": [a]},
        ]),
        # -- precedence across routes -----------------------------------------------------------------------
        http_route("z-old", hostnames=["prec.test"], created="2020-01-01T00:00:00Z", rules=[
            {"matches": [prefix("/api")], "filters": [tag("old-api")], "backendRefs": [a]},
            {"matches": [{**prefix("/hdr"), "headers": [{"name": "x-one", "value": "1"}]}],
             "filters": [tag("one-header")], "backendRefs": [a]},
            {"matches": [prefix("/tie")], "filters": [tag("tie-old")], "backendRefs": [a]},
        ]),
        http_route("a-new", hostnames=["prec.test"], created="2021-01-01T00:00:00Z", rules=[
            {"matches": [prefix("/api/v1")], "filters": [tag("new-api-v1")], "backendRefs": [b]},
            {"matches": [{"path": {"type": "Exact", "value": "/api"}}], "filters": [tag("new-exact")],
             "backendRefs": [b]},
            {"matches": [{**prefix("/hdr"), "headers": [{"name": "x-one", "value": "1"},
                                                         {"name": "x-two", "value": "2"}]}],
             "filters": [tag("two-headers")], "backendRefs": [b]},
            {"matches": [prefix("/tie")], "filters": [tag("tie-new")], "backendRefs": [b]},
        ]),
        http_route("wild", hostnames=["*.test"], rules=[
            {"matches": [prefix("/wild")], "filters": [tag("wildcard-host")], "backendRefs": [b]},
        ]),
        # -- filters ------------------------------------------------------------------------------------------
        http_route("filters", hostnames=["filters.test"], rules=[
            {"matches": [prefix("/reqhdr")], "backendRefs": [a], "filters": [{
                "type": "RequestHeaderModifier", "requestHeaderModifier": {
                    "set": [{"name": "x-set", "value": "one"}], "add": [{"name": "x-add", "value": "two"}],
                    "remove": ["x-remove"]}}]},
            {"matches": [prefix("/resphdr")], "backendRefs": [a], "filters": [{
                "type": "ResponseHeaderModifier", "responseHeaderModifier": {
                    "set": [{"name": "x-resp-set", "value": "s"}], "add": [{"name": "x-resp-add", "value": "a"}],
                    "remove": ["x-backend"]}}]},
            {"matches": [prefix("/redirect-scheme")],
             "filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https"}}]},
            {"matches": [prefix("/redirect-host")],
             "filters": [{"type": "RequestRedirect", "requestRedirect": {"hostname": "example.org",
                                                                          "statusCode": 301}}]},
            {"matches": [prefix("/redirect-full")],
             "filters": [{"type": "RequestRedirect", "requestRedirect": {
                 "port": 8443, "path": {"type": "ReplaceFullPath", "replaceFullPath": "/full"}}}]},
            {"matches": [prefix("/redirect-prefix")],
             "filters": [{"type": "RequestRedirect", "requestRedirect": {
                 "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/moved"}, "statusCode": 308}}]},
            {"matches": [prefix("/rewrite-prefix")], "backendRefs": [a], "filters": [{
                "type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch",
                                                              "replacePrefixMatch": "/new"}}}]},
            {"matches": [prefix("/rewrite-strip")], "backendRefs": [a], "filters": [{
                "type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch",
                                                              "replacePrefixMatch": "/"}}}]},
            {"matches": [prefix("/rewrite-full")], "backendRefs": [a], "filters": [{
                "type": "URLRewrite", "urlRewrite": {"hostname": "rewritten.test",
                                                     "path": {"type": "ReplaceFullPath",
                                                              "replaceFullPath": "/full/path"}}}]},
            {"matches": [prefix("/mirror")], "backendRefs": [a], "filters": [{
                "type": "RequestMirror", "requestMirror": {"backendRef": backend("mirror")}}]},
            {"matches": [prefix("/backend-filter")], "backendRefs": [backend("echo-a", filters=[{
                "type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-via",
                                                                                    "value": "backend-a"}]}}])]},
            {"matches": [prefix("/weights")], "backendRefs": [backend("echo-a", weight=3),
                                                              backend("echo-b", weight=1)]},
            {"matches": [prefix("/zero")], "backendRefs": [backend("echo-a", weight=0),
                                                           backend("echo-b", weight=1)]},
            {"matches": [prefix("/allzero")], "backendRefs": [backend("echo-a", weight=0),
                                                              backend("echo-b", weight=0)]},
            {"matches": [prefix("/timeout")], "timeouts": {"request": "300ms"}, "backendRefs": [backend("slow")]},
            {"matches": [prefix("/backend-timeout")], "timeouts": {"request": "5s", "backendRequest": "300ms"},
             "backendRefs": [backend("slow")]},
        ]),
        # -- references and negative cases (each must leave the others alone) ---------------------------------
        http_route("half-missing", hostnames=["half.test"], rules=[
            {"backendRefs": [backend("echo-a", weight=1), backend("does-not-exist", weight=1)]}]),
        http_route("missing", hostnames=["missing.test"], rules=[{"backendRefs": [backend("does-not-exist")]}]),
        http_route("bad-kind", hostnames=["kind.test"], rules=[
            {"backendRefs": [{"group": "example.io", "kind": "Widget", "name": "w", "port": 80}]}]),
        http_route("xns-denied", hostnames=["denied.test"], rules=[
            {"backendRefs": [backend("remote", namespace="other")]}]),
        http_route("xns-allowed", hostnames=["allowed.test"], namespace="grantee", rules=[
            {"backendRefs": [backend("remote", namespace="other")]}], parents=[{"name": "gw", "namespace": "default"}]),
        http_route("foreign-ns", hostnames=["foreign.test"], namespace="other",
                   parents=[{"name": "gw", "namespace": "default", "sectionName": "http"}],
                   rules=[{"backendRefs": [backend("remote")]}]),
        http_route("no-host", hostnames=["nope.other"], parents=[{"name": "gw", "sectionName": "wild"}],
                   rules=[{"backendRefs": [a]}]),
        http_route("bad-section", parents=[{"name": "gw", "sectionName": "nope"}], rules=[{"backendRefs": [a]}]),
        # -- listener isolation ------------------------------------------------------------------------------
        http_route("iso-wild", parents=[{"name": "gw", "sectionName": "wild"}],
                   rules=[{"matches": [prefix("/iso")], "filters": [tag("iso-wild")], "backendRefs": [b]}]),
        http_route("iso-any", parents=[{"name": "gw", "sectionName": "http"}],
                   rules=[{"matches": [prefix("/any")], "filters": [tag("iso-any")], "backendRefs": [a]}]),
    ]


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    md = ManifestDir()
    names = [("echo-a", "127.0.0.2"), ("echo-b", "127.0.0.3"), ("mirror", "127.0.0.4"), ("remote", "127.0.0.6")]
    backends = {n: EchoBackend(n, h).start() for n, h in names}
    slow = SlowBackend()
    port = free_port()
    gw = gateway("gw", address="127.0.0.1", generation=4, listeners=[
        listener("http", port),
        listener("wild", port, hostname="*.wild.test", allowedRoutes={"namespaces": {"from": "All"}}),
        listener("grantee", port, hostname="allowed.test", allowedRoutes={"namespaces": {
            "from": "Selector", "selector": {"matchLabels": {"kubernetes.io/metadata.name": "grantee"}}}}),
    ])
    md.write("infra.yaml", docs(gateway_class(), gw, *_services(backends, slow),
                                reference_grant("allow-grantee", "other", "HTTPRoute", "grantee")))
    md.write("routes.yaml", docs(*_routes()))
    cp = ControlPlaneThread([str(md.path)]).start()
    envoy = Envoy("gateway~default/gw", cp.xds_port).start()
    w = World(port, cp, envoy, backends)
    try:
        envoy.wait_for(lambda: w.get("match.test", "/exact").status == 200, timeout=15, what="gateway serving")
        yield w
    finally:
        envoy.stop()
        cp.stop()
        slow.stop()
        for be in backends.values():
            be.stop()
        md.cleanup()


def _rule(w: World, host: str, path: str, **kw: Any) -> tuple[int, str, str]:
    r = w.get(host, path, **kw)
    backend_name = r.json()["backend"] if r.status == 200 else ""
    return r.status, r.headers.get("x-rule", ""), backend_name


def test_match_types(world: World) -> None:
    w = world
    assert _rule(w, "match.test", "/exact") == (200, "exact", "echo-a")
    assert _rule(w, "match.test", "/exact/more")[1] == "default"  # Exact is not a prefix
    assert _rule(w, "match.test", "/prefix/x") == (200, "prefix", "echo-b")
    assert _rule(w, "match.test", "/prefixx")[1] == "default"  # element-wise prefix
    assert _rule(w, "match.test", "/re/123")[1] == "regex"
    assert _rule(w, "match.test", "/re/abc")[1] == "default"
    assert _rule(w, "match.test", "/h", headers={"x-env": "canary"})[1] == "header-exact"
    assert _rule(w, "match.test", "/h", headers={"x-env": "prod"})[1] == "default"
    assert _rule(w, "match.test", "/h", headers={"x-ver": "v42"})[1] == "header-regex"
    assert _rule(w, "match.test", "/h", headers={"x-ver": "beta"})[1] == "default"
    assert _rule(w, "match.test", "/q?debug=1")[1] == "query"
    assert _rule(w, "match.test", "/q?debug=2")[1] == "default"
    assert _rule(w, "match.test", "/m", method="POST")[1] == "post"
    assert _rule(w, "match.test", "/m")[1] == "default"
    # The Host header's port does not matter; an unknown host gets 404.
    r = get(f"http://127.0.0.1:{w.port}/exact", headers={"Host": f"match.test:{w.port}"})
    assert r.headers.get("x-rule") == "exact"
    assert w.get("unknown.example", "/exact").status == 404


def test_precedence_across_routes(world: World) -> None:
    w = world
    assert _rule(w, "prec.test", "/api/v1/x")[1] == "new-api-v1"  # longest prefix, whichever route
    assert _rule(w, "prec.test", "/api")[1] == "new-exact"  # Exact beats any prefix
    assert _rule(w, "prec.test", "/api/x")[1] == "old-api"
    assert _rule(w, "prec.test", "/hdr", headers={"x-one": "1", "x-two": "2"})[1] == "two-headers"
    assert _rule(w, "prec.test", "/hdr", headers={"x-one": "1"})[1] == "one-header"
    assert _rule(w, "prec.test", "/tie")[1] == "tie-old"  # the older route wins a tie, not the name
    # A route for *.test still serves prec.test paths that no exact-host route matches.
    assert _rule(w, "prec.test", "/wild")[1] == "wildcard-host"
    assert _rule(w, "other.test", "/wild")[1] == "wildcard-host"


def test_header_filters(world: World) -> None:
    w = world
    seen = w.get("filters.test", "/reqhdr", headers={"x-set": "zero", "x-remove": "gone"}).json()
    assert seen["headers"]["x-set"] == "one"
    assert "x-remove" not in seen["headers"]
    assert seen["headers"]["x-add"] == "two"
    r = w.get("filters.test", "/resphdr")
    assert r.status == 200
    assert r.headers["x-resp-set"] == "s" and r.headers["x-resp-add"] == "a"
    assert "x-backend" not in r.headers
    seen = w.get("filters.test", "/backend-filter").json()
    assert seen["headers"]["x-via"] == "backend-a"


def test_redirects(world: World) -> None:
    w = world
    r = w.get("filters.test", "/redirect-scheme/x?y=1")
    assert (r.status, r.headers["location"]) == (302, "https://filters.test/redirect-scheme/x?y=1")
    r = w.get("filters.test", "/redirect-host/x")
    assert (r.status, r.headers["location"]) == (301, f"http://example.org:{w.port}/redirect-host/x")
    r = w.get("filters.test", "/redirect-full/x")
    assert (r.status, r.headers["location"]) == (302, "http://filters.test:8443/full")
    r = w.get("filters.test", "/redirect-prefix/a/b?c=d")
    assert (r.status, r.headers["location"]) == (308, f"http://filters.test:{w.port}/moved/a/b?c=d")


def test_rewrites(world: World) -> None:
    w = world
    assert w.get("filters.test", "/rewrite-prefix/abc").json()["path"] == "/new/abc"
    assert w.get("filters.test", "/rewrite-prefix").json()["path"] == "/new"
    assert w.get("filters.test", "/rewrite-strip/abc").json()["path"] == "/abc"
    seen = w.get("filters.test", "/rewrite-full/abc").json()
    assert seen["path"] == "/full/path"
    assert seen["headers"]["host"] == "rewritten.test"


def test_mirror(world: World) -> None:
    w = world
    mirror = w.backends["mirror"]
    before = sum(1 for r in mirror.requests if r["path"] == "/mirror/copy")
    assert w.get("filters.test", "/mirror/copy").json()["backend"] == "echo-a"
    w.envoy.wait_for(lambda: sum(1 for r in mirror.requests if r["path"] == "/mirror/copy") == before + 1,
                     timeout=5, what="mirrored request")


def test_weights(world: World) -> None:
    w = world
    n = 240
    counts = {"echo-a": 0, "echo-b": 0}
    with ThreadPoolExecutor(max_workers=8) as pool:  # bounded: n requests, 8 at a time
        for name in pool.map(lambda _: w.get("filters.test", "/weights").json()["backend"], range(n)):
            counts[name] += 1
    # 3:1 -> 180 expected for echo-a; the binomial standard deviation is ~6.7, allow > 4 sigma.
    assert abs(counts["echo-a"] - 180) <= 30, counts
    assert {w.get("filters.test", "/zero").json()["backend"] for _ in range(20)} == {"echo-b"}
    assert w.get("filters.test", "/allzero").status == 500


def test_timeouts(world: World) -> None:
    w = world
    assert w.get("filters.test", "/timeout?ms=0").status == 200
    t0 = time.monotonic()
    assert w.get("filters.test", "/timeout?ms=1500").status == 504
    assert time.monotonic() - t0 < 1.2
    t0 = time.monotonic()
    assert w.get("filters.test", "/backend-timeout?ms=1500").status == 504
    assert time.monotonic() - t0 < 1.2


def test_invalid_backends_answer_500_and_report(world: World) -> None:
    w = world
    statuses = w.statuses()
    assert w.get("missing.test", "/").status == 500
    assert parent_condition(find_status(statuses, "HTTPRoute", "missing"), "ResolvedRefs") == \
        ("False", "BackendNotFound")
    assert w.get("kind.test", "/").status == 500
    assert parent_condition(find_status(statuses, "HTTPRoute", "bad-kind"), "ResolvedRefs") == \
        ("False", "InvalidKind")
    assert w.get("denied.test", "/").status == 500
    assert parent_condition(find_status(statuses, "HTTPRoute", "xns-denied"), "ResolvedRefs") == \
        ("False", "RefNotPermitted")
    # Half the weight on a missing backend: that half gets 500, the rest is served.
    codes = {w.get("half.test", "/").status for _ in range(40)}
    assert codes == {200, 500}
    # All of these routes are still Accepted: they attached, only their references are broken.
    for name in ("missing", "bad-kind", "xns-denied", "half-missing"):
        assert parent_condition(find_status(statuses, "HTTPRoute", name), "Accepted") == ("True", "Accepted")


def test_cross_namespace_with_reference_grant(world: World) -> None:
    w = world
    assert w.get("allowed.test", "/x").json()["backend"] == "remote"
    st = find_status(w.statuses(), "HTTPRoute", "xns-allowed", "grantee")
    assert parent_condition(st, "ResolvedRefs") == ("True", "ResolvedRefs")
    assert parent_condition(st, "Accepted") == ("True", "Accepted")


def test_attachment_failures(world: World) -> None:
    w = world
    statuses = w.statuses()
    assert parent_condition(find_status(statuses, "HTTPRoute", "foreign-ns", "other"), "Accepted") == \
        ("False", "NotAllowedByListeners")
    assert w.get("foreign.test", "/").status == 404
    assert parent_condition(find_status(statuses, "HTTPRoute", "no-host"), "Accepted") == \
        ("False", "NoMatchingListenerHostname")
    assert parent_condition(find_status(statuses, "HTTPRoute", "bad-section"), "Accepted") == \
        ("False", "NoMatchingParent")


def test_listener_isolation(world: World) -> None:
    w = world
    assert _rule(w, "a.wild.test", "/iso")[1] == "iso-wild"
    assert w.get("a.wild.test", "/any").status == 404  # the wildcard listener owns *.wild.test
    assert _rule(w, "elsewhere.test", "/any")[1] == "iso-any"
    assert w.get("elsewhere.test", "/iso").status == 404


def test_gateway_status(world: World) -> None:
    st = find_status(world.statuses(), "Gateway", "gw")
    assert st["addresses"] == [{"type": "IPAddress", "value": "127.0.0.1"}]
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Accepted"]["status"] == "True" and conds["Programmed"]["status"] == "True"
    listeners = {li["name"]: li for li in st["listeners"]}
    # http: every same-namespace route attached to it or to the whole Gateway (bad-section attaches nowhere).
    # attachedRoutes counts the routes accepted on each listener: allowed there and sharing a hostname with
    # it (conformance HTTPRouteHostnameIntersection), so no-host counts nowhere.
    assert listeners["http"]["attachedRoutes"] == 10  # same-namespace routes on the Gateway or on "http"
    assert listeners["wild"]["attachedRoutes"] == 2  # iso-wild, and "wild" (hostname *.test covers *.wild.test)
    assert listeners["grantee"]["attachedRoutes"] == 1
    for li in st["listeners"]:
        for c in li["conditions"]:
            assert c["observedGeneration"] == 4 and c["lastTransitionTime"]
    for s in world.statuses():
        for p in s["status"].get("parents", []):
            for c in p["conditions"]:
                assert c["observedGeneration"] == s["metadata"]["generation"]
    assert json.dumps(st)  # plain JSON
