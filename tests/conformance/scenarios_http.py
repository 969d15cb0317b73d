"""Upstream HTTPRoute / GRPCRoute / Gateway conformance tests of the extended HTTP features (and two core
ones): Service types, parentRef ports, query-parameter matching, header modifiers, rewrites,
redirects, mirrors, backend timeouts, named rules, listener isolation, h2c and WebSocket backends,
and Gateway addresses. Manifests restated as data; expectations as checks on the World.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from conformance.echo import ws_accept, ws_frame, ws_read_frame
from conformance.runner import Expect, ScenarioFailure, World, scenario
from conformance.scenarios import (
    G1,
    G2,
    HEADER_MODS,
    REQUEST_HEADER_CASES,
    REQUEST_HEADER_RULES,
    V1,
    V2,
    V3,
    _mirrored,
    _pairs,
    exact,
    grpc_method,
    hdr,
    http_listener,
    mirror,
    prefix,
    route,
    rule,
    to,
)
from support.conformance_base import INFRA

GW = "same-namespace"


# -- core -------------------------------------------------------------------------------------------
def _service(name: str, headless: bool, selector: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {"ports": [{"name": "first-port", "protocol": "TCP", "port": 8080, "targetPort": 3000}]}
    if headless:
        spec["clusterIP"] = "None"
    if selector:
        spec["selector"] = {"app": V1}
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": INFRA}, "spec": spec}


def _slice(name: str, service: str, family: str, port: int, addresses: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                           "metadata": {"name": name, "namespace": INFRA,
                                        "labels": {"kubernetes.io/service-name": service}},
                           "addressType": family, "ports": [{"name": "first-port", "port": port, "protocol": "TCP"}]}
    if addresses:
        out["endpoints"] = [{"addresses": [a], "conditions": {"ready": True, "serving": True, "terminating": False},
                             "targetRef": {"kind": "Pod", "namespace": INFRA, "name": f"{V1}-pod"}}
                            for a in addresses]
    return out


@scenario("HTTPRouteServiceTypes")
def service_types(w: World) -> None:
    """ClusterIP and headless Services, with slices the EndpointSlice controller would write (the
    selector one) and hand-written ones (the suite patches the pods' IPv4 addresses in; the IPv6
    slices stay empty, as the pods have no IPv6 address)."""
    e = w.echos[V1]
    types = ("manual-endpointslices", "headless", "headless-manual-endpointslices")
    docs: list[dict[str, Any]] = [route("service-types", [rule(to(t), matches=[exact(f"/{t}")]) for t in types])]
    docs += [_service("manual-endpointslices", headless=False, selector=False),
             _slice("manual-endpointslices-ip4", "manual-endpointslices", "IPv4", e.port, [e.host]),
             _slice("manual-endpointslices-ip6", "manual-endpointslices", "IPv6", e.port, []),
             _service("headless", headless=True, selector=True),
             _slice("headless-abcde", "headless", "IPv4", e.port, [e.host]),
             _service("headless-manual-endpointslices", headless=True, selector=False),
             _slice("headless-manual-endpointslices-ip4", "headless-manual-endpointslices", "IPv4", e.port, [e.host]),
             _slice("headless-manual-endpointslices-ip6", "headless-manual-endpointslices", "IPv6", e.port, [])]
    w.apply(docs)
    w.expect_route("service-types")
    for t in types:
        w.expect(GW, Expect(f"/{t}", backend=V1))


@scenario("HTTPRouteInvalidParentRefNotMatchingListenerPort")
def parent_ref_not_matching_port(w: World) -> None:
    name = "httproute-listener-not-matching-route-port"
    w.apply([route(name, [rule(to(V1, kind="Service"))], parents=[{"name": GW, "namespace": INFRA, "port": 81}])])
    w.expect_route(name, Accepted=("False", "NoMatchingParent"), ResolvedRefs=("True", "ResolvedRefs"))

    def no_accepted_parent() -> str:
        st = w.status("HTTPRoute", name)
        if st is None:
            return "no status"
        for p in st["status"].get("parents") or []:
            if any(c["type"] == "Accepted" and c["status"] == "True" for c in p["conditions"]):
                return f"parent {p['parentRef']} accepted"
        return ""

    w.eventually("no accepted parent", no_accepted_parent)
    w.expect_gateway(GW, listeners={"http": {"attachedRoutes": 0}})


# -- matching ---------------------------------------------------------------------------------------
def _q(**pairs: str) -> list[dict[str, str]]:
    return [{"name": k, "value": v} for k, v in pairs.items()]


@scenario("HTTPRouteQueryParamMatching")
def query_param_matching(w: World) -> None:
    def m(path: str = "", headers: dict[str, str] | None = None, **query: str) -> dict[str, Any]:
        out: dict[str, Any] = {"queryParams": _q(**query)} if query else {}
        if path:
            out.update(prefix(path))
        if headers:
            out.update(hdr(**headers))
        return out

    w.apply([route("query-param-matching", [
        rule(to(V1), matches=[m(animal="whale")]),
        rule(to(V2), matches=[m(animal="dolphin")]),
        rule(to(V3), matches=[m(animal="dolphin", color="blue"), m(ANIMAL="Whale")]),
        rule(to(V1), matches=[m("/path1", animal="whale")]),
        rule(to(V2), matches=[m(headers={"version": "one"}, animal="whale")]),
        rule(to(V3), matches=[m("/path2", {"version": "two"}, animal="whale")]),
        rule(to(V1), matches=[m("/path3", animal="shark"), m("/path4", {"version": "three"}, animal="kraken")]),
        rule(to(V1), matches=[m("/path5")]),
        rule(to(V2), matches=[m(animal="hydra")]),
        rule(to(V3), matches=[m(headers={"version": "four"})])])])
    w.expect_route("query-param-matching")
    cases: list[tuple[str, dict[str, str], str | int]] = [
        ("/?animal=whale", {}, V1), ("/?animal=dolphin", {}, V2), ("/?animal=dolphin&color=blue", {}, V3),
        ("/?ANIMAL=Whale", {}, V3), ("/?animal=whale&otherparam=irrelevant", {}, V1),
        ("/?animal=dolphin&color=yellow", {}, V2), ("/?color=blue", {}, 404), ("/?animal=dog", {}, 404),
        ("/?animal=whaledolphin", {}, 404), ("/", {}, 404),
        ("/path1?animal=whale", {}, V1), ("/?animal=whale", {"version": "one"}, V2),
        ("/path2?animal=whale", {"version": "two"}, V3),
        ("/path3?animal=shark", {}, V1), ("/path4?animal=kraken", {"version": "three"}, V1),
        ("/?animal=shark", {}, 404), ("/path4?animal=kraken", {}, 404),
        ("/path5?animal=hydra", {}, V1), ("/?animal=hydra", {"version": "four"}, V3)]
    for path, headers, want in cases:
        w.expect(GW, Expect(path, headers=headers, status=want) if isinstance(want, int) else
                 Expect(path, headers=headers, backend=want))


# -- header modifiers -------------------------------------------------------------------------------
def _echo_sets(**headers: str) -> dict[str, str]:
    """The request header that asks the echo backend to answer with these response headers."""
    return {"X-Echo-Set-Header": ",".join(f"{k.replace('_', '-')}:{v}" for k, v in headers.items())}


@scenario("HTTPRouteResponseHeaderModifier")
def response_header_modifier(w: World) -> None:
    def resp_mod(path: str, extra: list[dict[str, Any]] | None = None, **mod: Any) -> dict[str, Any]:
        return rule(to(V1), matches=[prefix(path)],
                    filters=[{"type": "ResponseHeaderModifier", "responseHeaderModifier": mod}, *(extra or [])])

    multi: dict[str, Any] = {"set": _pairs(X_Header_Set_1="header-set-1", X_Header_Set_2="header-set-2"),
             "add": _pairs(X_Header_Add_1="header-add-1", X_Header_Add_2="header-add-2"),
             "remove": ["X-Header-Remove-1", "X-Header-Remove-2"]}
    w.apply([route("response-header-modifier", [
        resp_mod("/set", set=_pairs(X_Header_Set="set-overwrites-values")),
        resp_mod("/add", add=_pairs(X_Header_Add="add-appends-values")),
        resp_mod("/remove", remove=["X-Header-Remove"]),
        resp_mod("/multiple", set=multi["set"], add=[*multi["add"], *_pairs(X_Header_Add_3="header-add-3")],
                 remove=multi["remove"]),
        resp_mod("/case-insensitivity", set=_pairs(X_Header_Set="header-set"),
                 add=[*_pairs(X_Header_Add="header-add"), {"name": "x-lowercase-add", "value": "lowercase-add"},
                      {"name": "x-Mixedcase-ADD-1", "value": "mixedcase-add-1"},
                      {"name": "X-mixeDcase-add-2", "value": "mixedcase-add-2"},
                      {"name": "X-UPPERCASE-ADD", "value": "uppercase-add"}],
                 remove=["X-Header-Remove"]),
        resp_mod("/response-and-request-header-modifiers", [HEADER_MODS], **multi)])])
    w.expect_route("response-header-modifier")
    multi_sent = dict(X_Header_Set_2="set-val-2", X_Header_Add_2="add-val-2", X_Header_Remove_2="remove-val-2",
                      Another_Header="another-header-val", X_Header_Remove_1="val")
    multi_seen = {"X-Header-Set-1": "header-set-1", "X-Header-Set-2": "header-set-2",
                  "X-Header-Add-1": "header-add-1", "X-Header-Add-2": "add-val-2,header-add-2",
                  "Another-Header": "another-header-val"}
    cases: list[tuple[str, dict[str, str], dict[str, str | tuple[str, ...]], tuple[str, ...]]] = [
        ("/set", _echo_sets(Some_Other_Header="val"),
         {"Some-Other-Header": "val", "X-Header-Set": "set-overwrites-values"}, ()),
        ("/set", _echo_sets(Some_Other_Header="val", X_Header_Set="some-other-value"),
         {"Some-Other-Header": "val", "X-Header-Set": "set-overwrites-values"}, ()),
        ("/add", _echo_sets(Some_Other_Header="val"),
         {"Some-Other-Header": "val", "X-Header-Add": "add-appends-values"}, ()),
        ("/add", _echo_sets(Some_Other_Header="val", X_Header_Add="some-other-value"),
         {"Some-Other-Header": "val", "X-Header-Add": "some-other-value,add-appends-values"}, ()),
        ("/remove", _echo_sets(X_Header_Remove="val"), {}, ("X-Header-Remove",)),
        ("/multiple", _echo_sets(**multi_sent), {**multi_seen, "X-Header-Add-3": "header-add-3"},
         ("X-Header-Remove-1", "X-Header-Remove-2")),
        ("/case-insensitivity", {"X-Echo-Set-Header": "x-header-set:original-val-set,x-header-add:original-val-add,"
                                                      "x-header-remove:original-val-remove,"
                                                      "Another-Header:another-header-val"},
         {"X-Header-Set": "header-set", "X-Header-Add": "original-val-add,header-add",
          "X-Lowercase-Add": "lowercase-add", "X-Mixedcase-Add-1": "mixedcase-add-1",
          "X-Mixedcase-Add-2": "mixedcase-add-2", "X-Uppercase-Add": "uppercase-add",
          "Another-Header": "another-header-val"}, ("x-header-remove",))]
    for path, sent, want, absent in cases:
        w.expect(GW, Expect(path, headers=sent, backend=V1, req_path=path, resp_headers=want, resp_absent=absent))
    both = "/response-and-request-header-modifiers"
    w.expect(GW, Expect(both, headers={"X-Header-Remove": "remove-val", "X-Header-Add-Append": "append-val-1",
                                       "X-Header-Echo": "echo",
                                       **_echo_sets(**multi_sent, X_Header_Echo="echo")},
                        backend=V1, req_path=both,
                        req_headers={"X-Header-Add": "header-val-1", "X-Header-Set": "set-overwrites-values",
                                     "X-Header-Add-Append": "append-val-1,header-val-2", "X-Header-Echo": "echo"},
                        req_absent=("X-Header-Remove",),
                        resp_headers={**multi_seen, "X-Header-Echo": "echo"},
                        resp_absent=("X-Header-Remove-1", "X-Header-Remove-2")))


def _backend_mod(path: str, **mod: Any) -> dict[str, Any]:
    return rule(to(V1, filters=[{"type": "RequestHeaderModifier", "requestHeaderModifier": mod}]),
                matches=[prefix(path)])


@scenario("HTTPRouteBackendRequestHeaderModifier")
def backend_request_header_modifier(w: World) -> None:
    """HTTPRouteRequestHeaderModifier's requests, with the modifiers on the backendRef instead."""
    w.apply([route("request-header-modifier", [_backend_mod(path, **mod) for path, mod in REQUEST_HEADER_RULES])])
    w.expect_route("request-header-modifier")
    for path, sent, seen, absent in REQUEST_HEADER_CASES:
        w.expect(GW, Expect(path, headers=sent, backend=V1, req_path=path, req_headers=seen, req_absent=absent))


@scenario("HTTPRouteRequestHeaderModifierBackendWeights")
def backend_header_weights(w: World) -> None:
    def weighted(backend: str) -> dict[str, Any]:
        return to(backend, weight=10, filters=[{"type": "RequestHeaderModifier", "requestHeaderModifier": {
            "set": [{"name": "Backend", "value": backend}]}}])

    w.apply([route("request-header-modifier-backend-weights", [rule(weighted(V1), weighted(V2))])])
    w.expect_route("request-header-modifier-backend-weights")
    w.expect(GW, Expect("/"))
    for _ in range(100):
        r = w.request(GW, Expect("/"))
        seen = r.echo
        got = (seen.get("headers") or {}).get("Backend") or []
        if r.status != 200 or len(got) != 1:
            raise ScenarioFailure(f"status {r.status}, Backend headers {got}: want exactly one")
        if not str(seen.get("pod", "")).startswith(got[0]):
            raise ScenarioFailure(f"Backend header {got[0]!r} but answered by pod {seen.get('pod')!r}")


# -- rewrites ---------------------------------------------------------------------------------------
def _rewrite(**rw: Any) -> dict[str, Any]:
    return {"type": "URLRewrite", "urlRewrite": rw}


# What HEADER_MODS does to a request: sent, seen by the backend, and removed.
MOD_SENT = {"X-Header-Remove": "remove-val", "X-Header-Add-Append": "append-val-1"}
MOD_SEEN = {"X-Header-Add": "header-val-1", "X-Header-Add-Append": "append-val-1,header-val-2",
            "X-Header-Set": "set-overwrites-values"}
MOD_ABSENT = ("X-Header-Remove",)


@scenario("HTTPRouteRewritePath")
def rewrite_path(w: World) -> None:
    def rp(kind: str, value: str) -> dict[str, Any]:
        key = "replacePrefixMatch" if kind == "ReplacePrefixMatch" else "replaceFullPath"
        return _rewrite(path={"type": kind, key: value})

    w.apply([route("rewrite-path", [
        rule(to(V1), matches=[prefix("/prefix/one")], filters=[rp("ReplacePrefixMatch", "/one")]),
        rule(to(V1), matches=[prefix("/strip-prefix")], filters=[rp("ReplacePrefixMatch", "/")]),
        rule(to(V1), matches=[prefix("/full/one")], filters=[rp("ReplaceFullPath", "/one")]),
        rule(to(V1), matches=[prefix("/full/rewrite-path-and-modify-headers")],
             filters=[rp("ReplaceFullPath", "/test"), HEADER_MODS]),
        rule(to(V1), matches=[prefix("/prefix/rewrite-path-and-modify-headers")],
             filters=[rp("ReplacePrefixMatch", "/prefix"), HEADER_MODS])])])
    w.expect_route("rewrite-path")
    for path, seen in (("/prefix/one/two", "/one/two"), ("/strip-prefix/three", "/three"), ("/strip-prefix", "/"),
                       ("/full/one/two", "/one")):
        w.expect(GW, Expect(path, backend=V1, req_path=seen))
    w.expect(GW, Expect("/full/rewrite-path-and-modify-headers/test", backend=V1, req_path="/test",
                        headers={**MOD_SENT, "X-Header-Set": "set-val"}, req_headers=MOD_SEEN, req_absent=MOD_ABSENT))
    w.expect(GW, Expect("/prefix/rewrite-path-and-modify-headers/one", backend=V1, req_path="/prefix/one",
                        headers={**MOD_SENT, "X-Header-Set": "set-val"}, req_headers=MOD_SEEN, req_absent=MOD_ABSENT))


@scenario("HTTPRouteRewriteHost")
def rewrite_host(w: World) -> None:
    w.apply([route("rewrite-host", [
        rule(to(V1), matches=[prefix("/one")], filters=[_rewrite(hostname="one.example.org")]),
        rule(to(V2), filters=[_rewrite(hostname="example.org")]),
        rule(to(V2), matches=[prefix("/rewrite-host-and-modify-headers")],
             filters=[_rewrite(hostname="test.example.org"), HEADER_MODS])], hostnames=["rewrite.example"])])
    w.expect_route("rewrite-host")
    w.expect(GW, Expect("/one", host="rewrite.example", backend=V1, req_path="/one", req_host="one.example.org"))
    w.expect(GW, Expect("/two", host="rewrite.example", backend=V2, req_path="/two", req_host="example.org"))
    w.expect(GW, Expect("/rewrite-host-and-modify-headers", host="rewrite.example", backend=V2,
                        req_path="/rewrite-host-and-modify-headers", req_host="test.example.org",
                        headers=MOD_SENT, req_headers=MOD_SEEN, req_absent=MOD_ABSENT))


# -- redirects --------------------------------------------------------------------------------------
def _redirect(match: str, **rd: Any) -> dict[str, Any]:
    return {"matches": [prefix(match)], "filters": [{"type": "RequestRedirect", "requestRedirect": rd}]}


@scenario("HTTPRouteRedirectPath")
def redirect_path(w: World) -> None:
    def rp(kind: str, value: str) -> dict[str, Any]:
        return {"type": kind, "replacePrefixMatch" if kind == "ReplacePrefixMatch" else "replaceFullPath": value}

    w.apply([route("redirect-path", [
        _redirect("/original-prefix", path=rp("ReplacePrefixMatch", "/replacement-prefix")),
        _redirect("/full", path=rp("ReplaceFullPath", "/full-path-replacement")),
        _redirect("/path-and-host", hostname="example.org", path=rp("ReplacePrefixMatch", "/replacement-prefix")),
        _redirect("/path-and-status", path=rp("ReplacePrefixMatch", "/replacement-prefix"), statusCode=301),
        _redirect("/full-path-and-host", hostname="example.org", path=rp("ReplaceFullPath", "/replacement-full")),
        _redirect("/full-path-and-status", path=rp("ReplaceFullPath", "/replacement-full"), statusCode=301)])])
    w.expect_route("redirect-path")
    addr = w.address(GW)
    for path, status, loc in (("/original-prefix/lemon", 302, f"http://{addr}/replacement-prefix/lemon"),
                              ("/full/path/original", 302, f"http://{addr}/full-path-replacement"),
                              ("/path-and-host", 302, "http://example.org/replacement-prefix"),
                              ("/path-and-status", 301, f"http://{addr}/replacement-prefix"),
                              ("/full-path-and-host", 302, "http://example.org/replacement-full"),
                              ("/full-path-and-status", 301, f"http://{addr}/replacement-full")):
        w.expect(GW, Expect(path, status=status, location=loc))


@scenario("HTTPRouteRedirectScheme")
def redirect_scheme(w: World) -> None:
    w.apply([route("redirect-scheme", [
        _redirect("/scheme", scheme="https"), _redirect("/scheme-and-host", hostname="example.org", scheme="https"),
        _redirect("/scheme-and-status", scheme="https", statusCode=301),
        _redirect("/scheme-and-host-and-status", scheme="https", statusCode=302, hostname="example.org")])])
    w.expect_route("redirect-scheme")
    addr = w.address(GW)
    for path, status, loc in (("/scheme", 302, f"https://{addr}/scheme"),
                              ("/scheme-and-host", 302, "https://example.org/scheme-and-host"),
                              ("/scheme-and-status", 301, f"https://{addr}/scheme-and-status"),
                              ("/scheme-and-host-and-status", 302, "https://example.org/scheme-and-host-and-status")):
        w.expect(GW, Expect(path, status=status, location=loc))


def _status_redirect(w: World, name: str, path: str, code: int, method: str = "GET") -> None:
    w.apply([route(name, [_redirect(path, statusCode=code)])])
    w.expect_route(name)
    w.expect(GW, Expect(path, method=method, status=code, location=f"http://{w.address(GW)}{path}"))


@scenario("HTTPRoute303Redirect")
def redirect_303(w: World) -> None:
    _status_redirect(w, "303-redirect", "/see-other", 303, method="POST")


@scenario("HTTPRoute307Redirect")
def redirect_307(w: World) -> None:
    _status_redirect(w, "307-redirect", "/temporary", 307)


@scenario("HTTPRoute308Redirect")
def redirect_308(w: World) -> None:
    _status_redirect(w, "308-redirect", "/permanent", 308)


# -- mirrors and timeouts ---------------------------------------------------------------------------
@scenario("HTTPRouteRequestMultipleMirrors")
def multiple_mirrors(w: World) -> None:
    w.apply([route("request-multiple-mirrors", [
        rule(to(V1, namespace=INFRA), matches=[prefix("/multi-mirror")], filters=[mirror(V2), mirror(V3)]),
        rule(to(V1, namespace=INFRA), matches=[prefix("/multi-mirror-and-modify-request-headers")],
             filters=[HEADER_MODS, mirror(V2), mirror(V3)])])])
    w.expect_route("request-multiple-mirrors")
    plain = Expect("/multi-mirror", backend=V1, req_path="/multi-mirror")
    modified = Expect("/multi-mirror-and-modify-request-headers", backend=V1,
                      req_path="/multi-mirror-and-modify-request-headers", headers=MOD_SENT, req_headers=MOD_SEEN,
                      req_absent=MOD_ABSENT)
    for e in (plain, modified):
        since = {b: len(w.echos[b].requests) for b in (V2, V3)}
        w.expect(GW, e)
        for b in (V2, V3):
            def landed(b: str = b, path: str = e.path, since: dict[str, int] = since) -> str:
                return "" if _mirrored(w, b, path, since[b]) else "none"
            w.eventually(f"{e.path} mirrored to {b}", landed)


@scenario("HTTPRouteTimeoutBackendRequest")
def timeout_backend_request(w: World) -> None:
    w.apply([route("backend-request-timeout", [
        rule(to(V1), matches=[prefix("/backend-timeout")], timeouts={"backendRequest": "500ms"}),
        rule(to(V1), matches=[prefix("/disable-backend-timeout")], timeouts={"backendRequest": "0s"})])])
    w.expect_route("backend-request-timeout")
    w.expect(GW, Expect("/backend-timeout", backend=V1))
    w.expect(GW, Expect("/backend-timeout?delay=1s", status=504))
    w.expect(GW, Expect("/disable-backend-timeout?delay=1s", backend=V1))


# -- named rules ------------------------------------------------------------------------------------
@scenario("HTTPRouteNamedRule")
def named_rule(w: World) -> None:
    w.apply([route("http-named-rules", [rule(to(V1), matches=[prefix("/named")], name="named-rule"),
                                        rule(to(V2), matches=[prefix("/unnamed")])])])
    w.expect_route("http-named-rules")
    w.expect(GW, Expect("/named", backend=V1))
    w.expect(GW, Expect("/unnamed", backend=V2))


@scenario("GRPCRouteNamedRule")
def grpc_named_rule(w: World) -> None:
    w.apply([route("grpc-named-rules", [rule(to(G1), matches=[grpc_method("Echo")], name="named-rule"),
                                        rule(to(G2), matches=[grpc_method("EchoTwo")])], kind="GRPCRoute")])
    w.expect_route("grpc-named-rules", kind="GRPCRoute")
    w.expect_grpc(GW, "Echo", backend=G1)
    w.expect_grpc(GW, "EchoTwo", backend=G2)


# -- listener isolation ---------------------------------------------------------------------------------
ISOLATION_LISTENERS = (("empty-hostname", ""), ("wildcard-example-com", "*.example.com"),
                       ("wildcard-foo-example-com", "*.foo.example.com"),
                       ("abc-foo-example-com", "abc.foo.example.com"))


@scenario("GatewayHTTPListenerIsolation")
def http_listener_isolation(w: World) -> None:
    def listener(name: str, host: str) -> dict[str, Any]:
        li = http_listener(name, 80, host)
        li["allowedRoutes"] = {"namespaces": {"from": "All"}}
        return li

    hostnames = ["bar.com", "*.example.com", "*.foo.example.com", "abc.foo.example.com"]
    cases = {"bar.com": "empty-hostname", "bar.example.com": "wildcard-example-com",
             "bar.foo.example.com": "wildcard-foo-example-com", "abc.foo.example.com": "abc-foo-example-com"}
    for gw, suffix, hosts in (("http-listener-isolation", "", None),
                              ("http-listener-isolation-with-hostname-intersection", "-with-hostname-intersection",
                               hostnames)):
        routes = [route(f"attaches-to-{section}{suffix}", [rule(to(V1), matches=[prefix(f"/{section}")])],
                        parents=[{"name": gw, "namespace": INFRA, "sectionName": section}], hostnames=hosts)
                  for section, _ in ISOLATION_LISTENERS]
        w.apply([w.gateway(gw, [listener(n, h) for n, h in ISOLATION_LISTENERS]), *routes])
        for section, _ in ISOLATION_LISTENERS:
            w.expect_route(f"attaches-to-{section}{suffix}", gw)
        for host, served in cases.items():
            for section, _ in ISOLATION_LISTENERS:
                path = f"/{section}"
                w.expect(gw, Expect(path, host=host, backend=V1) if section == served else
                         Expect(path, host=host, status=404))
        w.clear()


# -- backend protocols --------------------------------------------------------------------------------
def _h2c_get(addr: str, port: int, path: str, timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
    """One GET over HTTP/2 with prior knowledge (no upgrade): (status, echo JSON)."""
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    with socket.create_connection((addr, port), timeout=timeout) as sock:
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(":method", "GET"), (":scheme", "http"), (":authority", addr), (":path", path)],
                          end_stream=True)
        sock.sendall(conn.data_to_send())
        status, body = 0, b""
        for _ in range(1000):
            data = sock.recv(65535)
            if not data:
                break
            done = False
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    status = int(dict((k.decode() if isinstance(k, bytes) else k, v) for k, v in ev.headers)[":status"])
                elif isinstance(ev, h2.events.DataReceived):
                    body += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset, h2.events.ConnectionTerminated)):
                    done = True
            sock.sendall(conn.data_to_send())
            if done:
                break
    try:
        echo = json.loads(body)
    except ValueError:
        echo = {}
    return status, echo if isinstance(echo, dict) else {}


@scenario("HTTPRouteBackendProtocolH2C")
def backend_protocol_h2c(w: World) -> None:
    w.apply([route("backend-protocol-h2c", [rule(to(V1, 8081))])])
    w.expect_route("backend-protocol-h2c")
    addr = w.address(GW)
    ok = [0]

    def check() -> str:
        status, echo = _h2c_get(addr, 80, "/")
        problem = ""
        if status != 200:
            problem = f"status {status}"
        elif not str(echo.get("pod", "")).startswith(V1 + "-") or echo.get("namespace") != INFRA:
            problem = f"answered by {echo.get('pod')!r}"
        elif echo.get("proto") != "HTTP/2.0":
            problem = f"backend saw {echo.get('proto')!r}, want HTTP/2.0 (h2c)"
        ok[0] = 0 if problem else ok[0] + 1
        return problem or ("" if ok[0] >= 2 else "once")

    w.eventually("h2c prior-knowledge request", check)


def _websocket_roundtrip(addr: str, port: int, path: str) -> str:
    """Dial a WebSocket, send a text and a binary message, expect both echoed ('' when they are)."""
    key = json.dumps(os.urandom(8).hex())[1:-1]
    with socket.create_connection((addr, port), timeout=5) as sock:
        sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                      "Origin: ws://gateway/conformance\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            chunk = sock.recv(1)
            if not chunk:
                return "connection closed during the handshake"
            head += chunk
        lines = head.decode(errors="replace").split("\r\n")
        if not lines[0].startswith("HTTP/1.1 101"):
            return f"handshake answered {lines[0]!r}"
        hdrs = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        if hdrs.get("sec-websocket-accept") != ws_accept(key):
            return f"bad Sec-WebSocket-Accept {hdrs.get('sec-websocket-accept')!r}"
        for op, payload in ((1, b"Websocket Support!"), (2, bytes([1, 2, 3, 4, 5, 6, 7]))):
            sock.sendall(ws_frame(op, payload, mask=os.urandom(4)))
            got_op, got = ws_read_frame(sock)
            if (got_op, got) != (op, payload):
                return f"sent opcode {op} {payload!r}, got opcode {got_op} {got!r}"
        sock.sendall(ws_frame(8, b"\x03\xe8", mask=os.urandom(4)))
    return ""


@scenario("HTTPRouteBackendProtocolWebSocket")
def backend_protocol_websocket(w: World) -> None:
    w.apply([route("backend-protocol-ws", [rule(to(V1, 8082))])])
    w.expect_route("backend-protocol-ws")
    addr = w.address(GW)
    ok = [0]

    def check() -> str:
        problem = _websocket_roundtrip(addr, 80, "/ws")
        ok[0] = 0 if problem else ok[0] + 1
        return problem or ("" if ok[0] >= 2 else "once")

    w.eventually("websocket echo", check)


# -- Gateway addresses ------------------------------------------------------------------------------
@scenario("GatewayOptionalAddressValue")
def optional_address_value(w: World) -> None:
    gw = "gateway-without-address-value"
    w.apply([w.gateway(gw, [{"name": "http", "port": 8080, "protocol": "HTTP"}],
                       addresses=[{"type": "IPAddress"}])])
    st = w.expect_gateway(gw, Accepted=("True", "Accepted"), Programmed=("True", "Programmed"))
    addrs = [a.get("value") for a in st["status"].get("addresses") or []]
    if not addrs or not all(addrs):
        raise ScenarioFailure(f"no address assigned in status: {st['status'].get('addresses')}")
    # The assigned address serves the listener: no route attached, so a 404 from the proxy.
    w.addresses[gw] = str(addrs[0])
    w.expect(gw, Expect("/", status=404), port=8080)

