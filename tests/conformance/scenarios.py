"""The upstream conformance tests the runner replays: each one's manifests restated as data, and its
expectations (requests, responses, statuses) as checks on the World. Names are the upstream
ShortNames. `SKIPPED` gives, for every upstream test of the target version not replayed here, why.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from conformance.echo import GRPC_SERVICE
from conformance.runner import GW, HTTPS_GATEWAY, Expect, ScenarioFailure, World, scenario
from support.conformance_base import APP, INFRA, WEB

V1 = "infra-backend-v1"
V2 = "infra-backend-v2"
V3 = "infra-backend-v3"


# -- manifest helpers ------------------------------------------------------------------------------
def route(name: str, rules: list[dict[str, Any]], parents: list[dict[str, Any]] | None = None,
          hostnames: list[str] | None = None, ns: str = INFRA, kind: str = "HTTPRoute") -> dict[str, Any]:
    spec: dict[str, Any] = {"parentRefs": parents or [{"name": "same-namespace"}], "rules": rules}
    if hostnames:
        spec["hostnames"] = hostnames
    return {"apiVersion": GW, "kind": kind, "metadata": {"name": name, "namespace": ns}, "spec": spec}


def to(name: str, port: int = 8080, **extra: Any) -> dict[str, Any]:
    return {"name": name, "port": port, **extra}


def prefix(value: str) -> dict[str, Any]:
    return {"path": {"type": "PathPrefix", "value": value}}


def exact(value: str) -> dict[str, Any]:
    return {"path": {"type": "Exact", "value": value}}


def rule(*backends: dict[str, Any], matches: list[dict[str, Any]] | None = None,
         filters: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"backendRefs": list(backends), **extra}
    if matches:
        out["matches"] = matches
    if filters:
        out["filters"] = filters
    return out


def http_listener(name: str, port: int = 80, hostname: str = "", **extra: Any) -> dict[str, Any]:
    li: dict[str, Any] = {"name": name, "port": port, "protocol": "HTTP",
                          "allowedRoutes": {"namespaces": {"from": "Same"}}, **extra}
    if hostname:
        li["hostname"] = hostname
    return li


HEADER_MODS = {"type": "RequestHeaderModifier", "requestHeaderModifier": {
    "set": [{"name": "X-Header-Set", "value": "set-overwrites-values"}],
    "add": [{"name": "X-Header-Add", "value": "header-val-1"},
            {"name": "X-Header-Add-Append", "value": "header-val-2"}],
    "remove": ["X-Header-Remove"]}}


def mirror(backend: str, **extra: Any) -> dict[str, Any]:
    return {"type": "RequestMirror",
            "requestMirror": {"backendRef": {"name": backend, "namespace": INFRA, "port": 8080}, **extra}}


def _mirrored(w: World, backend: str, path: str, since: int) -> int:
    return sum(1 for r in w.echos[backend].requests[since:] if r["path"].split("?")[0] == path)


# -- core HTTPRoute ----------------------------------------------------------------------------------
@scenario("HTTPRouteSimpleSameNamespace", fast=True)
def simple_same_namespace(w: World) -> None:
    w.apply([route("gateway-conformance-infra-test", [rule(to(V1))])])
    w.expect_route("gateway-conformance-infra-test")
    w.expect("same-namespace", Expect("/", backend=V1))


@scenario("HTTPRouteCrossNamespace")
def cross_namespace(w: World) -> None:
    w.apply([route("cross-namespace", [rule(to("web-backend"))],
                   parents=[{"name": "backend-namespaces", "namespace": INFRA}], ns=WEB)])
    w.expect_route("cross-namespace", "backend-namespaces", ns=WEB)
    w.expect("backend-namespaces", Expect("/", backend="web-backend", namespace=WEB))


@scenario("HTTPRouteExactPathMatching")
def exact_path(w: World) -> None:
    w.apply([route("exact-matching", [rule(to(V1), matches=[exact("/one")]), rule(to(V2), matches=[exact("/two")])])])
    w.expect_route("exact-matching")
    w.expect("same-namespace", Expect("/one", backend=V1))
    w.expect("same-namespace", Expect("/two", backend=V2))
    for p in ("/", "/one/example", "/two/", "/Two"):
        w.expect("same-namespace", Expect(p, status=404))


@scenario("HTTPRouteListenerPortMatching", fast=True)
def listener_port_matching(w: World) -> None:
    gw = "httproute-listener-port-matching"
    listeners = [http_listener("listener-1", 80, "foo.com"), http_listener("listener-2", 8080, "foo.com"),
                 http_listener("listener-3", 8080, "bar.com"), http_listener("listener-4", 8090, "foo.com"),
                 http_listener("listener-5", 8090, "bar.com")]
    w.apply([w.gateway(gw, listeners),
             route("backend-v1", [rule(to(V1))], parents=[{"name": gw, "namespace": INFRA, "port": 80}]),
             route("backend-v2", [rule(to(V2))], parents=[{"name": gw, "namespace": INFRA, "port": 8080}]),
             route("backend-v3", [rule(to(V3))],
                   parents=[{"name": gw, "namespace": INFRA, "port": 8090, "sectionName": "listener-4"}])])
    for r in ("backend-v1", "backend-v2", "backend-v3"):
        w.expect_route(r, gw)
    # The Host keeps its port on the way to the backend.
    w.expect(gw, Expect("/", host="foo.com", backend=V1, req_host="foo.com"))
    w.expect(gw, Expect("/", host="foo.com:8080", backend=V2, req_host="foo.com:8080"), port=8080)
    w.expect(gw, Expect("/", host="bar.com:8080", backend=V2, req_host="bar.com:8080"), port=8080)
    w.expect(gw, Expect("/", host="foo.com:8090", backend=V3, req_host="foo.com:8090"), port=8090)
    w.expect(gw, Expect("/", host="bar.com:8090", status=404), port=8090)


@scenario("HTTPRouteHostnameIntersection")
def hostname_intersection(w: World) -> None:
    gw = "httproute-hostname-intersection"
    w.apply([w.gateway(gw, [http_listener("listener-1", 80, "very.specific.com"),
                            http_listener("listener-2", 80, "*.wildcard.io"),
                            http_listener("listener-3", 80, "*.anotherwildcard.io")]),
             route("specific-host-matches-listener-specific-host", [rule(to(V1), matches=[prefix("/s1")])],
                   parents=[{"name": gw}], hostnames=["non.matching.com", "*.nonmatchingwildcard.io",
                                                      "very.specific.com"]),
             route("specific-host-matches-listener-wildcard-host", [rule(to(V2), matches=[prefix("/s2")])],
                   parents=[{"name": gw}], hostnames=["non.matching.com", "wildcard.io", "foo.wildcard.io",
                                                      "bar.wildcard.io", "foo.bar.wildcard.io"]),
             route("wildcard-host-matches-listener-specific-host", [rule(to(V3), matches=[prefix("/s3")])],
                   parents=[{"name": gw}], hostnames=["non.matching.com", "*.specific.com"]),
             route("wildcard-host-matches-listener-wildcard-host", [rule(to(V1), matches=[prefix("/s4")])],
                   parents=[{"name": gw}], hostnames=["*.anotherwildcard.io"]),
             route("no-intersecting-hosts", [rule(to(V2), matches=[prefix("/s5")])],
                   parents=[{"name": gw}], hostnames=["specific.but.wrong.com", "wildcard.io"])])
    w.expect_route("no-intersecting-hosts", gw, Accepted=("False", "NoMatchingListenerHostname"))
    w.expect_gateway(gw, listeners={"listener-1": {"attachedRoutes": 2}, "listener-2": {"attachedRoutes": 1},
                                    "listener-3": {"attachedRoutes": 1}})
    cases = [("very.specific.com", "/s1", V1), ("very.specific.com:1234", "/s1", V1),
             ("non.matching.com", "/s1", 404), ("foo.nonmatchingwildcard.io", "/s1", 404),
             ("foo.wildcard.io", "/s2", V2), ("foo.bar.wildcard.io", "/s2", V2), ("wildcard.io", "/s2", 404),
             ("very.specific.com", "/s3", V3), ("foo.specific.com", "/s3", 404),
             ("foo.anotherwildcard.io", "/s4", V1), ("anotherwildcard.io", "/s4", 404),
             ("specific.but.wrong.com", "/s5", 404), ("wildcard.io", "/s5", 404)]
    for host, path, want in cases:
        if isinstance(want, int):
            w.expect(gw, Expect(path, host=host, status=want))
        else:
            w.expect(gw, Expect(path, host=host, backend=want, req_host=host))


@scenario("HTTPRouteHTTPSListener", fast=True)
def https_listener(w: World) -> None:
    w.apply([route("httproute-https-test", [rule(to(V1))], parents=[{"name": HTTPS_GATEWAY}],
                   hostnames=["example.org"]),
             route("httproute-https-test-no-hostname", [rule(to(V2))],
                   parents=[{"name": HTTPS_GATEWAY, "sectionName": "https-with-hostname"}])])
    w.expect_route("httproute-https-test", HTTPS_GATEWAY)
    w.expect_route("httproute-https-test-no-hostname", HTTPS_GATEWAY, section="https-with-hostname")
    w.expect(HTTPS_GATEWAY, Expect("/", host="example.org", backend=V1), port=443, scheme="https")
    w.expect(HTTPS_GATEWAY, Expect("/", host="second-example.org", backend=V2), port=443, scheme="https")
    w.expect(HTTPS_GATEWAY, Expect("/", host="unknown-example.org", status=404), port=443, scheme="https")


@scenario("HTTPRouteHTTPSListenerDetectMisdirectedRequests", fast=True)
def misdirected(w: World) -> None:
    p = "/detect-misdirected-requests"
    w.apply([route("https-listener-detect-misdirected-requests-test-1", [rule(to(V1), matches=[prefix(p)])],
                   parents=[{"name": HTTPS_GATEWAY, "sectionName": "https"}], hostnames=["example.org"]),
             route("https-listener-detect-misdirected-requests-test-2", [rule(to(V2), matches=[prefix(p)])],
                   parents=[{"name": HTTPS_GATEWAY, "sectionName": "https-with-hostname"}]),
             route("https-listener-detect-misdirected-requests-test-3", [rule(to(V3), matches=[prefix(p)])],
                   parents=[{"name": HTTPS_GATEWAY, "sectionName": "https-with-wildcard-hostname"}]),
             route("https-listener-detect-misdirected-requests-test-4", [rule(to(V1), matches=[prefix(p)])],
                   parents=[{"name": HTTPS_GATEWAY, "sectionName": "https-with-hostname-matching-wildcard"}])])
    for i in range(1, 5):
        w.expect_route(f"https-listener-detect-misdirected-requests-test-{i}", HTTPS_GATEWAY)
    cases = [("example.org", "example.org", V1), ("example.org", "second-example.org", 421),
             ("example.org", "unknown-example.org", 404),
             ("second-example.org", "second-example.org", V2), ("second-example.org", "example.org", 421),
             ("second-example.org", "unknown-example.org", 421),
             ("third-example.wildcard.org", "third-example.wildcard.org", V3),
             ("third-example.wildcard.org", "fith-example.wildcard.org", V3),
             ("third-example.wildcard.org", "fourth-example.wildcard.org", 421),
             ("third-example.wildcard.org", "second-example.org", 421),
             ("third-example.wildcard.org", "unknown-example.org", 421),
             ("fourth-example.wildcard.org", "fourth-example.wildcard.org", V1),
             ("fourth-example.wildcard.org", "fith-example.wildcard.org", 421),
             ("unknown-example.org", "example.org", V1), ("unknown-example.org", "unknown-example.org", 404)]
    for sni, host, want in cases:
        e = Expect(p, host=host, status=want) if isinstance(want, int) else Expect(p, host=host, backend=want)
        w.expect(HTTPS_GATEWAY, e, port=443, scheme="https", sni=sni)


@scenario("HTTPRoutePartiallyInvalidViaInvalidReferenceGrant")
def partially_invalid_grant(w: World) -> None:
    grant = {"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
             "metadata": {"name": "reference-grant", "namespace": APP},
             "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": INFRA}],
                      "to": [{"group": "", "kind": "Service", "name": "app-backend-v1"}]}}
    w.apply([grant, route("invalid-reference-grant", [
        rule(to("app-backend-v1", namespace=APP)),
        rule(to("app-backend-v2", namespace=APP), matches=[prefix("/v2")])])])
    w.expect_route("invalid-reference-grant", Accepted=("True", "Accepted"),
                   ResolvedRefs=("False", "RefNotPermitted"))
    w.expect("same-namespace", Expect("/", backend="app-backend-v1", namespace=APP))
    w.expect("same-namespace", Expect("/v2", status=500))


@scenario("HTTPRouteInvalidNonExistentBackendRef")
def nonexistent_backend(w: World) -> None:
    w.apply([route("invalid-nonexistent-backend-ref", [rule(to("nonexistent"))])])
    w.expect_route("invalid-nonexistent-backend-ref", Accepted=("True", "Accepted"),
                   ResolvedRefs=("False", "BackendNotFound"))
    w.expect("same-namespace", Expect("/", status=500))


@scenario("HTTPRouteInvalidBackendRefUnknownKind")
def unknown_kind(w: World) -> None:
    w.apply([route("invalid-backend-ref-unknown-kind",
                   [rule({"group": "unknownkind.example.com", "kind": "NonExistent", "name": "infra-backend-v1",
                          "port": 8080})])])
    w.expect_route("invalid-backend-ref-unknown-kind", Accepted=("True", "Accepted"),
                   ResolvedRefs=("False", "InvalidKind"))
    w.expect("same-namespace", Expect("/", status=500))


@scenario("HTTPRouteInvalidCrossNamespaceBackendRef")
def invalid_cross_namespace_backend(w: World) -> None:
    w.apply([route("invalid-cross-namespace-backend-ref", [rule(to("web-backend", namespace=WEB))])])
    w.expect_route("invalid-cross-namespace-backend-ref", Accepted=("True", "Accepted"),
                   ResolvedRefs=("False", "RefNotPermitted"))
    w.expect("same-namespace", Expect("/", status=500))


@scenario("HTTPRouteInvalidCrossNamespaceParentRef")
def invalid_cross_namespace_parent(w: World) -> None:
    w.apply([route("invalid-cross-namespace-parent-ref", [rule(to("web-backend"))],
                   parents=[{"name": "same-namespace", "namespace": INFRA}], ns=WEB)])
    w.expect_route("invalid-cross-namespace-parent-ref", ns=WEB, Accepted=("False", "NotAllowedByListeners"))
    w.expect_gateway("same-namespace", listeners={"http": {"attachedRoutes": 0}})


@scenario("GatewayWithAttachedRoutes")
def attached_routes(w: World) -> None:
    sel = {"kinds": [{"kind": "HTTPRoute"}], "namespaces": {"from": "Selector", "selector": {
        "matchLabels": {"kubernetes.io/metadata.name": INFRA}}}}
    one, two = "gateway-with-one-attached-route", "gateway-with-two-attached-routes"
    bad = "unresolved-gateway-with-one-attached-unresolved-route"
    w.apply([w.gateway(one, [{"name": "http", "port": 80, "protocol": "HTTP", "allowedRoutes": sel}]),
             route("http-route-1", [rule(to(V1))], parents=[{"kind": "Gateway", "name": one, "namespace": INFRA}]),
             w.gateway(two, [{"name": "http", "port": 80, "protocol": "HTTP", "hostname": "foo.example.com",
                              "allowedRoutes": sel}]),
             route("http-route-2", [rule(to(V1))], parents=[{"kind": "Gateway", "name": two, "namespace": INFRA}]),
             route("http-route-3", [rule(to(V1))], parents=[{"kind": "Gateway", "name": two, "namespace": INFRA}]),
             route("http-route-not-accepted", [rule(to(V1))], hostnames=["not-accepted.test.com"],
                   parents=[{"kind": "Gateway", "name": two, "namespace": INFRA}]),
             w.gateway(bad, [{"name": "tls", "port": 443, "protocol": "HTTPS", "allowedRoutes": sel,
                              "tls": {"mode": "Terminate", "certificateRefs": [
                                  {"group": "", "kind": "Secret", "name": "does-not-exist"}]}}]),
             route("http-route-4", [rule(to("does-not-exist"))],
                   parents=[{"kind": "Gateway", "name": bad, "namespace": INFRA, "sectionName": "tls"}])])
    ok = {"Accepted": ("True", "Accepted"), "Programmed": ("True", "Programmed"),
          "ResolvedRefs": ("True", "ResolvedRefs")}
    w.expect_gateway(one, listeners={"http": {"attachedRoutes": 1, "supportedKinds": ["HTTPRoute"],
                                              "conditions": ok}})
    w.expect_gateway(two, listeners={"http": {"attachedRoutes": 2, "supportedKinds": ["HTTPRoute"],
                                              "conditions": ok}})
    w.expect_gateway(bad, listeners={"tls": {"attachedRoutes": 1, "supportedKinds": ["HTTPRoute"], "conditions": {
        "Programmed": ("False", "Invalid"), "ResolvedRefs": ("False", "InvalidCertificateRef")}}})


@scenario("HTTPRouteInvalidParentRefSectionNameNotMatchingPort")
def section_name_not_matching_port(w: World) -> None:
    gw = "gateway-with-one-not-matching-port-and-section-name-route"
    w.apply([w.gateway(gw, [{"name": "http", "port": 80, "protocol": "HTTP", "allowedRoutes": {
                 "kinds": [{"kind": "HTTPRoute"}], "namespaces": {"from": "All"}}}]),
             route("httproute-listener-section-name-not-matching-port", [rule(to(V1, kind="Service"))],
                   parents=[{"name": gw, "namespace": INFRA, "sectionName": "http", "port": 81}])])
    w.expect_route("httproute-listener-section-name-not-matching-port", gw, Accepted=("False", "NoMatchingParent"))
    w.expect_gateway(gw, listeners={"http": {"attachedRoutes": 0}})


@scenario("GatewayWithAttachedRoutesWithPort8080")
def attached_routes_8080(w: World) -> None:
    gw = "gateway-with-two-listeners-and-one-attached-route"
    allowed = {"kinds": [{"kind": "HTTPRoute"}], "namespaces": {"from": "All"}}
    w.apply([w.gateway(gw, [{"name": "http-unattached", "port": 8080, "protocol": "HTTP", "allowedRoutes": allowed},
                            {"name": "http", "port": 80, "protocol": "HTTP", "allowedRoutes": allowed}]),
             route("http-route-4-port-8080", [rule(to(V1))],
                   parents=[{"kind": "Gateway", "name": gw, "namespace": INFRA, "sectionName": "http"}])])
    ok = {"Accepted": ("True", "Accepted"), "Programmed": ("True", "Programmed")}
    w.expect_gateway(gw, listeners={"http-unattached": {"attachedRoutes": 0, "supportedKinds": ["HTTPRoute"],
                                                        "conditions": ok},
                                    "http": {"attachedRoutes": 1, "supportedKinds": ["HTTPRoute"], "conditions": ok}})


def hdr(**pairs: str) -> dict[str, Any]:
    """A match on exact header values (names as given)."""
    return {"headers": [{"name": k, "value": v} for k, v in pairs.items()]}


@scenario("HTTPRouteHeaderMatching")
def header_matching(w: World) -> None:
    w.apply([route("header-matching", [
        rule(to(V1), matches=[hdr(version="one")]), rule(to(V2), matches=[hdr(version="two")]),
        rule(to(V1), matches=[hdr(version="two", color="orange")]),
        rule(to(V1), matches=[hdr(color="blue"), hdr(color="green")]),
        rule(to(V2), matches=[hdr(color="red"), hdr(color="yellow")])])])
    w.expect_route("header-matching")
    cases: list[tuple[dict[str, str], str | int]] = [
        ({"Version": "one"}, V1), ({"Version": "two"}, V2), ({"Version": "two", "Color": "orange"}, V1),
        ({"Version": "two", "Color": "blue"}, V2), ({"Color": "orange"}, 404), ({"Some-Other-Header": "one"}, 404),
        ({"Color": "blue"}, V1), ({"Color": "green"}, V1), ({"Color": "red"}, V2), ({"Color": "yellow"}, V2),
        ({"Color": "purple"}, 404)]
    for headers, want in cases:
        e = Expect("/", headers=headers, status=want) if isinstance(want, int) else \
            Expect("/", headers=headers, backend=want)
        w.expect("same-namespace", e)


@scenario("HTTPRouteMatching")
def matching(w: World) -> None:
    w.apply([route("matching", [
        rule(to(V1), matches=[prefix("/"), hdr(version="one")]),
        rule(to(V2), matches=[prefix("/v2"), hdr(version="two")])])])
    w.expect_route("matching")
    for path, headers, want in (("/", {}, V1), ("/example", {}, V1), ("/", {"Version": "one"}, V1),
                                ("/v2", {}, V2), ("/v2/example", {}, V2), ("/", {"Version": "two"}, V2)):
        w.expect("same-namespace", Expect(path, headers=headers, backend=want))


@scenario("HTTPRouteMatchingAcrossRoutes")
def matching_across_routes(w: World) -> None:
    w.apply([route("matching-part1", [rule(to(V1), matches=[prefix("/"), hdr(version="one")])],
                   hostnames=["example.com", "example.net"]),
             route("matching-part2", [rule(to(V2), matches=[prefix("/v2"), hdr(version="two")])],
                   hostnames=["example.com"])])
    w.expect_route("matching-part1")
    w.expect_route("matching-part2")
    cases = [("example.com", "/", {}, V1), ("example.com", "/example", {}, V1), ("example.net", "/example", {}, V1),
             ("example.com", "/example", {"Version": "one"}, V1), ("example.com", "/v2", {}, V2),
             ("example.net", "/v2", {}, V1), ("example.com", "/v2/example", {}, V2),
             ("example.com", "/", {"Version": "two"}, V2)]
    for host, path, headers, want in cases:
        w.expect("same-namespace", Expect(path, host=host, headers=headers, backend=want))


@scenario("HTTPRouteWeight")
def weight(w: World) -> None:
    w.apply([route("weighted-backends", [rule(to(V1, weight=70), to(V2, weight=30), to(V3, weight=0))])])
    w.expect_route("weighted-backends")
    w.expect("same-namespace", Expect("/", status=200))
    w.eventually("weighted distribution", lambda: _distribution(
        lambda: str(w.request("same-namespace", Expect("/")).echo.get("pod", "")), {V1: 0.7, V2: 0.3, V3: 0.0}))


def _distribution(pod: Callable[[], str], want: dict[str, float], total: int = 500) -> str:
    """What is wrong with how `total` requests spread over the backends ('' when each is within the
    suite's 5% of its share). As the suite does, the caller retries this until it converges."""
    counts = dict.fromkeys(want, 0)
    for _ in range(total):
        answered = pod()
        backend = next((b for b in counts if answered.startswith(b + "-")), "")
        if not backend:
            return f"answered by {answered!r}"
        counts[backend] += 1
    for backend, share in want.items():
        if share == 0 and counts[backend]:
            return f"{counts[backend]} requests reached the weight-0 backend {backend}"
        if abs(counts[backend] / total - share) > 0.05:
            return f"{backend}: {counts[backend]}/{total}, want {share:.0%} +-5%"
    return ""


def grant(name: str, service: str, ns: str = WEB) -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": INFRA}],
                     "to": [{"group": "", "kind": "Service", "name": service}]}}


@scenario("HTTPRouteReferenceGrant")
def reference_grant(w: World) -> None:
    w.apply([route("reference-grant", [rule(to("web-backend", namespace=WEB))]),
             grant("reference-grant", "web-backend")])
    w.expect_route("reference-grant")
    w.expect("same-namespace", Expect("/", backend="web-backend", namespace=WEB))


@scenario("HTTPRouteInvalidReferenceGrant")
def invalid_reference_grant(w: World) -> None:
    w.apply([route("reference-grant", [rule(to("web-backend", namespace=WEB))]),
             grant("reference-grant", "not-web-backend")])
    w.expect_route("reference-grant", Accepted=("True", "Accepted"), ResolvedRefs=("False", "RefNotPermitted"))
    w.expect("same-namespace", Expect("/", status=500))


@scenario("HTTPRouteListenerHostnameMatching")
def listener_hostname_matching(w: World) -> None:
    gw = "httproute-listener-hostname-matching"
    hosts = ("bar.com", "foo.bar.com", "*.bar.com", "*.foo.com")
    w.apply([w.gateway(gw, [http_listener(f"listener-{i}", 80, h) for i, h in enumerate(hosts, 1)]),
             route("backend-v1", [rule(to(V1))], parents=[{"name": gw, "sectionName": "listener-1"}]),
             route("backend-v2", [rule(to(V2))], parents=[{"name": gw, "sectionName": "listener-2"}]),
             route("backend-v3", [rule(to(V3))], parents=[{"name": gw, "sectionName": "listener-3"},
                                                          {"name": gw, "sectionName": "listener-4"}])])
    w.expect_route("backend-v1", gw)
    w.expect_route("backend-v2", gw)
    w.expect_route("backend-v3", gw, section="listener-3")
    w.expect_route("backend-v3", gw, section="listener-4")
    for host, want in (("bar.com", V1), ("foo.bar.com", V2), ("baz.bar.com", V3), ("boo.bar.com", V3),
                       ("multiple.prefixes.bar.com", V3), ("multiple.prefixes.foo.com", V3), ("foo.com", 404),
                       ("no.matching.host", 404)):
        w.expect(gw, Expect("/", host=host, status=want) if isinstance(want, int) else
                 Expect("/", host=host, backend=want))


@scenario("HTTPRoutePathMatchOrder")
def path_match_order(w: World) -> None:
    w.apply([route("path-matching-order", [
        rule(to(V1), matches=[exact("/match")]), rule(to(V2), matches=[exact("/match/exact")]),
        rule(to(V3), matches=[exact("/match/exact/one")]), rule(to(V3), matches=[prefix("/match/")]),
        rule(to(V1), matches=[prefix("/match/prefix/")]), rule(to(V2), matches=[prefix("/match/prefix/one")])])])
    w.expect_route("path-matching-order")
    for path, want in (("/match/exact/one", V3), ("/match/exact", V2), ("/match", V1),
                       ("/match/prefix/one/any", V2), ("/match/prefix/any", V1), ("/match/any", V3)):
        w.expect("same-namespace", Expect(path, backend=want))


def header_mod(path: str, **mod: Any) -> dict[str, Any]:
    return rule(to(V1), matches=[prefix(path)],
                filters=[{"type": "RequestHeaderModifier", "requestHeaderModifier": mod}])


def _pairs(**kv: str) -> list[dict[str, str]]:
    return [{"name": k.replace("_", "-"), "value": v} for k, v in kv.items()]


# The suite's request-header-modifier rules (path prefix -> modifier) and its cases (sent, seen by the
# backend, absent there); the Gateway, backendRef and mesh variants of the test share them.
REQUEST_HEADER_RULES: list[tuple[str, dict[str, Any]]] = [
    ("/set", {"set": _pairs(X_Header_Set="set-overwrites-values")}),
    ("/add", {"add": _pairs(X_Header_Add="add-appends-values")}),
    ("/remove", {"remove": ["X-Header-Remove"]}),
    ("/multiple", {"set": _pairs(X_Header_Set_1="header-set-1", X_Header_Set_2="header-set-2"),
                   "add": _pairs(X_Header_Add_1="header-add-1", X_Header_Add_2="header-add-2",
                                 X_Header_Add_3="header-add-3"),
                   "remove": ["X-Header-Remove-1", "X-Header-Remove-2"]}),
    ("/case-insensitivity", {"set": _pairs(X_Header_Set="header-set"), "add": _pairs(X_Header_Add="header-add"),
                             "remove": ["X-Header-Remove"]})]
_OTHER = {"Some-Other-Header": "val"}
REQUEST_HEADER_CASES: list[tuple[str, dict[str, str], dict[str, str], tuple[str, ...]]] = [
    ("/set", _OTHER, {**_OTHER, "X-Header-Set": "set-overwrites-values"}, ()),
    ("/set", {**_OTHER, "X-Header-Set": "some-other-value"}, {**_OTHER, "X-Header-Set": "set-overwrites-values"}, ()),
    ("/add", _OTHER, {**_OTHER, "X-Header-Add": "add-appends-values"}, ()),
    ("/add", {**_OTHER, "X-Header-Add": "some-other-value"},
     {**_OTHER, "X-Header-Add": "some-other-value,add-appends-values"}, ()),
    ("/remove", {"X-Header-Remove": "val"}, {}, ("X-Header-Remove",)),
    ("/multiple", {"X-Header-Set-2": "set-val-2", "X-Header-Add-2": "add-val-2",
                   "X-Header-Remove-2": "remove-val-2", "Another-Header": "another-header-val"},
     {"X-Header-Set-1": "header-set-1", "X-Header-Set-2": "header-set-2", "X-Header-Add-1": "header-add-1",
      "X-Header-Add-2": "add-val-2,header-add-2", "X-Header-Add-3": "header-add-3",
      "Another-Header": "another-header-val"}, ("X-Header-Remove-1", "X-Header-Remove-2")),
    ("/case-insensitivity", {"x-header-set": "original-val-set", "x-header-add": "original-val-add",
                             "x-header-remove": "original-val-remove", "Another-Header": "another-header-val"},
     {"X-Header-Set": "header-set", "X-Header-Add": "original-val-add,header-add",
      "Another-Header": "another-header-val"}, ("x-header-remove", "X-Header-Remove"))]


@scenario("HTTPRouteRequestHeaderModifier")
def request_header_modifier(w: World) -> None:
    w.apply([route("request-header-modifier", [header_mod(path, **mod) for path, mod in REQUEST_HEADER_RULES])])
    w.expect_route("request-header-modifier")
    for path, sent, seen, absent in REQUEST_HEADER_CASES:
        w.expect("same-namespace", Expect(path, headers=sent, backend=V1, req_path=path, req_headers=seen,
                                          req_absent=absent))


@scenario("HTTPRouteRedirectHostAndStatus")
def redirect_host_and_status(w: World) -> None:
    def rd(path: str, **r: Any) -> dict[str, Any]:
        return {"matches": [prefix(path)], "filters": [{"type": "RequestRedirect", "requestRedirect": r}]}

    w.apply([route("redirect-host-and-status", [rd("/hostname-redirect", hostname="example.org"),
                                                rd("/host-and-status", hostname="example.org", statusCode=301)])])
    w.expect_route("redirect-host-and-status")
    w.expect("same-namespace", Expect("/hostname-redirect", status=302,
                                      location="http://example.org/hostname-redirect"))
    w.expect("same-namespace", Expect("/host-and-status", status=301, location="http://example.org/host-and-status"))


@scenario("HTTPRouteInvalidParentRefNotMatchingSectionName")
def parent_ref_not_matching_section_name(w: World) -> None:
    w.apply([route("httproute-listener-not-matching-route-port", [rule(to(V1, kind="Service"))],
                   parents=[{"name": "same-namespace", "namespace": INFRA, "port": 80, "sectionName": "http1"}])])
    w.expect_route("httproute-listener-not-matching-route-port", Accepted=("False", "NoMatchingParent"))
    w.expect_gateway("same-namespace", listeners={"http": {"attachedRoutes": 0}})


def _generation(doc: dict[str, Any], gen: int) -> dict[str, Any]:
    """The object as the API server would store it after `gen` spec changes."""
    doc["metadata"]["generation"] = gen
    return doc


def _expect_generation(w: World, kind: str, name: str, gen: int) -> None:
    def check() -> str:
        st = w.status(kind, name)
        have = st and st["metadata"].get("generation")
        return "" if have == gen else f"status reports generation {have}, want {gen}"
    w.eventually(f"{kind} {name} generation", check)


@scenario("HTTPRouteObservedGenerationBump")
def route_observed_generation_bump(w: World) -> None:
    name = "observed-generation-bump"
    w.apply([_generation(route(name, [rule(to(V1))]), 1)])
    w.expect_route(name)
    w.apply([_generation(route(name, [rule(to(V1), matches=[prefix("/bump")])]), 2)])
    _expect_generation(w, "HTTPRoute", name, 2)
    w.expect_route(name)  # every condition's observedGeneration is the new generation
    w.expect("same-namespace", Expect("/bump", backend=V1))


@scenario("GatewayObservedGenerationBump")
def gateway_observed_generation_bump(w: World) -> None:
    gw = "gateway-observed-generation-bump"
    listeners = [http_listener("http", 80)]
    ok = {"Accepted": ("True", "Accepted"), "Programmed": ("True", "Programmed")}
    w.apply([_generation(w.gateway(gw, listeners), 1)])
    w.expect_gateway(gw, listeners={"http": {"conditions": ok}}, Accepted=ok["Accepted"], Programmed=ok["Programmed"])
    w.apply([_generation(w.gateway(gw, [*listeners, http_listener("http-8080", 8080)]), 2)])
    _expect_generation(w, "Gateway", gw, 2)
    w.expect_gateway(gw, listeners={"http": {"conditions": ok}, "http-8080": {"conditions": ok}},
                     Accepted=ok["Accepted"], Programmed=ok["Programmed"])


# -- core Gateway -------------------------------------------------------------------------------------
@scenario("GatewayInvalidRouteKind")
def invalid_route_kind(w: World) -> None:
    def gw(name: str, *kinds: str) -> dict[str, Any]:
        return w.gateway(name, [{"name": "http", "port": 80, "protocol": "HTTP", "allowedRoutes": {
            "namespaces": {"from": "All"}, "kinds": [{"kind": k} for k in kinds]}}])

    both = "gateway-supported-and-invalid-route-kind"
    w.apply([gw("gateway-only-invalid-route-kind", "InvalidRoute"), gw(both, "InvalidRoute", "HTTPRoute"),
             route(f"{both}-control", [rule(to(V1))], parents=[{"name": both, "sectionName": "http"}],
                   hostnames=["supported-route-kind.example.com"])])
    bad = {"ResolvedRefs": ("False", "InvalidRouteKinds")}
    w.expect_gateway("gateway-only-invalid-route-kind",
                     listeners={"http": {"supportedKinds": [], "attachedRoutes": 0, "conditions": bad}})
    # The control route attaches: the listener still serves the kinds it supports.
    w.expect_gateway(both, listeners={"http": {"supportedKinds": ["HTTPRoute"], "attachedRoutes": 1,
                                               "conditions": bad}})


@scenario("GatewayInvalidTLSConfiguration")
def invalid_tls_configuration(w: World) -> None:
    refs = {"nonexistent-secret": {"group": "", "kind": "Secret", "name": "nonexistent-certificate"},
            "unsupported-group": {"group": "wrong.group.company.io", "kind": "Secret",
                                  "name": "tls-validity-checks-certificate"},
            "unsupported-kind": {"group": "", "kind": "WrongKind", "name": "tls-validity-checks-certificate"},
            "malformed-secret": {"group": "", "kind": "Secret", "name": "malformed-certificate"}}
    hello = "SGVsbG8gd29ybGQK"  # not PEM, and the same bytes for certificate and key
    docs: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                                   "metadata": {"name": "malformed-certificate", "namespace": INFRA},
                                   "data": {"tls.crt": hello, "tls.key": hello}}]
    for case, ref in refs.items():
        gw = f"gateway-certificate-{case}"
        docs += [w.gateway(gw, [http_listener("http", 80),
                                {"name": "https", "port": 443, "protocol": "HTTPS",
                                 "allowedRoutes": {"namespaces": {"from": "All"}}, "tls": {"certificateRefs": [ref]}}]),
                 route(f"{gw}-control", [rule(to(V1))], parents=[{"name": gw, "sectionName": "http"}],
                       hostnames=[f"{case.replace('-secret', '')}-certificate.example.com"])]
    w.apply(docs)
    for case in refs:
        w.expect_gateway(f"gateway-certificate-{case}", listeners={"https": {
            "supportedKindsInclude": ["HTTPRoute"], "attachedRoutes": 0,
            "conditions": {"ResolvedRefs": ("False", "InvalidCertificateRef")}}})


@scenario("GatewayClassObservedGenerationBump")
def gateway_class_observed_generation_bump(w: World) -> None:
    name = "gatewayclass-observed-generation-bump"

    def gc(gen: int, description: str) -> dict[str, Any]:
        return {"apiVersion": GW, "kind": "GatewayClass", "metadata": {"name": name, "generation": gen},
                "spec": {"controllerName": "cilia.io/gateway-controller", "description": description}}

    def accepted(gen: int) -> Callable[[], str]:
        def check() -> str:
            st = w.status("GatewayClass", name, ns="")
            if st is None:
                return "no status"
            if st["metadata"].get("generation") != gen:
                return f"status reports generation {st['metadata'].get('generation')}, want {gen}"
            return World._conds(st, st["status"]["conditions"], {"Accepted": ("True", "Accepted")})
        return check

    w.apply([gc(1, "old")])
    w.eventually("GatewayClass accepted", accepted(1))
    w.apply([gc(2, "new")])
    w.eventually("GatewayClass accepted at the new generation", accepted(2))


@scenario("GatewayModifyListeners")
def modify_listeners(w: World) -> None:
    https = {"name": "https", "port": 443, "protocol": "HTTPS", "hostname": "secure.test.com",
             "allowedRoutes": {"namespaces": {"from": "All"}},
             "tls": {"certificateRefs": [{"group": "", "kind": "Secret", "name": "tls-validity-checks-certificate",
                                          "namespace": INFRA}]}}
    http = {"name": "http", "port": 80, "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "All"}}}
    add, remove = "gateway-add-listener", "gateway-remove-listener"

    def docs(gen: int, add_listeners: list[dict[str, Any]], remove_listeners: list[dict[str, Any]]) -> list[Any]:
        return [_generation(w.gateway(add, add_listeners), gen),
                route("http-route-1", [rule(to("foo-svc"))], parents=[{"kind": "Gateway", "name": add,
                                                                      "namespace": INFRA}]),
                _generation(w.gateway(remove, remove_listeners), gen),
                route("http-route-2", [rule(to("foo-svc"))], parents=[{"kind": "Gateway", "name": remove,
                                                                      "namespace": INFRA}])]

    ready = {"attachedRoutes": 1, "supportedKindsInclude": ["HTTPRoute"],
             "conditions": {"Accepted": ("True", "*"), "ResolvedRefs": ("True", "*")}}
    w.apply(docs(1, [https], [https, http]))
    w.expect_gateway(add, listeners={"https": ready})
    w.expect_gateway(remove, listeners={"https": ready, "http": ready})
    w.apply(docs(2, [https, {**http, "hostname": "data.test.com"}], [http]))
    _expect_generation(w, "Gateway", add, 2)
    _expect_generation(w, "Gateway", remove, 2)
    w.expect_gateway(add, listeners={"https": ready, "http": ready})
    st = w.expect_gateway(remove, listeners={"http": ready})
    names = [li["name"] for li in st["status"]["listeners"]]
    if names != ["http"]:
        raise ScenarioFailure(f"{remove}: listener statuses {names}, want only http")


# -- core ReferenceGrant to Gateway certificates ------------------------------------------------------
def _secret_gateway(w: World, name: str) -> dict[str, Any]:
    return w.gateway(name, [{"name": "https", "port": 443, "protocol": "HTTPS",
                             "allowedRoutes": {"namespaces": {"from": "All"}},
                             "tls": {"certificateRefs": [{"group": "", "kind": "Secret", "name": "certificate",
                                                          "namespace": WEB}]}}])


def secret_grant(name: str, frm: dict[str, str] | None = None, to: dict[str, str] | None = None,
                 ns: str = WEB) -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": INFRA,
                               **(frm or {})}],
                     "to": [{"group": "", "kind": "Secret", **(to if to is not None else {"name": "certificate"})}]}}


@scenario("GatewaySecretInvalidReferenceGrant")
def secret_invalid_grant(w: World) -> None:
    gw = "gateway-secret-invalid-reference-grant"
    w.apply([_secret_gateway(w, gw), w.tls_secret("certificate", WEB),
             secret_grant("reference-grant-wrong-namespace", ns=APP),
             secret_grant("reference-grant-wrong-from-group", frm={"group": "not-the-group-youre-looking-for"}),
             secret_grant("reference-grant-wrong-from-kind", frm={"kind": "HTTPRoute"}),
             secret_grant("reference-grant-wrong-from-namespace",
                          frm={"namespace": "not-the-namespace-youre-looking-for"}),
             secret_grant("reference-grant-wrong-to-group", to={"group": "not-the-group-youre-looking-for",
                                                                "name": "not-the-certificate-youre-looking-for"}),
             secret_grant("reference-grant-wrong-to-kind", to={"kind": "Service", "name": "certificate"}),
             secret_grant("reference-grant-wrong-to-name", to={"name": "not-the-certificate-youre-looking-for"})])
    w.expect_gateway(gw, listeners={"https": {"conditions": {"ResolvedRefs": ("False", "RefNotPermitted")}}})


@scenario("GatewaySecretMissingReferenceGrant")
def secret_missing_grant(w: World) -> None:
    gw = "gateway-secret-missing-reference-grant"
    w.apply([_secret_gateway(w, gw), w.tls_secret("certificate", WEB)])
    w.expect_gateway(gw, listeners={"https": {"conditions": {"ResolvedRefs": ("False", "RefNotPermitted")}}})


@scenario("GatewaySecretReferenceGrantAllInNamespace")
def secret_grant_all_in_namespace(w: World) -> None:
    gw = "gateway-secret-reference-grant"
    w.apply([_secret_gateway(w, gw), w.tls_secret("certificate", WEB),
             secret_grant("reference-grant-all-in-namespace", to={})])
    ok = {"ResolvedRefs": ("True", "ResolvedRefs"), "Programmed": ("True", "Programmed")}
    w.expect_gateway(gw, listeners={"https": {"attachedRoutes": 0, "conditions": ok}})


@scenario("GatewaySecretReferenceGrantSpecific")
def secret_grant_specific(w: World) -> None:
    gw = "gateway-secret-reference-grant"
    w.apply([_secret_gateway(w, gw), w.tls_secret("certificate", WEB), secret_grant("reference-grant-specific")])
    ok = {"ResolvedRefs": ("True", "ResolvedRefs"), "Programmed": ("True", "Programmed")}
    w.expect_gateway(gw, listeners={"https": {"attachedRoutes": 0, "conditions": ok}})


# -- core GRPCRoute ---------------------------------------------------------------------------------
G1, G2, G3 = "grpc-infra-backend-v1", "grpc-infra-backend-v2", "grpc-infra-backend-v3"


def grpc_method(method: str) -> dict[str, Any]:
    return {"method": {"type": "Exact", "service": GRPC_SERVICE, "method": method}}


@scenario("GRPCExactMethodMatching", fast=True)
def grpc_exact_method(w: World) -> None:
    w.apply([route("exact-matching", [rule(to(G1), matches=[grpc_method("Echo")]),
                                      rule(to(G2), matches=[grpc_method("EchoTwo")])], kind="GRPCRoute")])
    w.expect_route("exact-matching", kind="GRPCRoute")
    w.expect_grpc("same-namespace", "Echo", backend=G1)
    w.expect_grpc("same-namespace", "EchoTwo", backend=G2)
    w.expect_grpc("same-namespace", "EchoThree", code="UNIMPLEMENTED")


@scenario("GRPCRouteHeaderMatching")
def grpc_header_matching(w: World) -> None:
    w.apply([route("grpc-header-matching", [
        rule(to(G1), matches=[hdr(version="one")]), rule(to(G2), matches=[hdr(version="two")]),
        rule(to(G1), matches=[hdr(version="two", color="orange")]),
        rule(to(G1), matches=[hdr(color="blue"), hdr(color="green")]),
        rule(to(G2), matches=[hdr(color="red"), hdr(color="yellow")])], kind="GRPCRoute")])
    w.expect_route("grpc-header-matching", kind="GRPCRoute")
    cases: list[tuple[dict[str, str], str]] = [
        ({"version": "one"}, G1), ({"version": "two"}, G2), ({"version": "two", "color": "orange"}, G1),
        ({"version": "two", "color": "blue"}, G2), ({"color": "orange"}, ""), ({"some-other-header": "one"}, ""),
        ({"color": "blue"}, G1), ({"color": "green"}, G1), ({"color": "red"}, G2), ({"color": "yellow"}, G2),
        ({"color": "purple"}, "")]
    for md, want in cases:
        w.expect_grpc("same-namespace", "Echo", metadata=md, backend=want, code="OK" if want else "UNIMPLEMENTED")


@scenario("GRPCRouteListenerHostnameMatching")
def grpc_listener_hostname_matching(w: World) -> None:
    gw = "grpcroute-listener-hostname-matching"
    hosts = ("bar.com", "foo.bar.com", "*.bar.com", "*.foo.com")
    w.apply([w.gateway(gw, [http_listener(f"listener-{i}", 80, h) for i, h in enumerate(hosts, 1)]),
             route("backend-v1", [rule(to(G1))], parents=[{"name": gw, "sectionName": "listener-1"}],
                   kind="GRPCRoute"),
             route("backend-v2", [rule(to(G2))], parents=[{"name": gw, "sectionName": "listener-2"}],
                   kind="GRPCRoute"),
             route("backend-v3", [rule(to(G3))], parents=[{"name": gw, "sectionName": "listener-3"},
                                                          {"name": gw, "sectionName": "listener-4"}],
                   kind="GRPCRoute")])
    for r in ("backend-v1", "backend-v2", "backend-v3"):
        w.expect_route(r, gw, kind="GRPCRoute")
    for host, want in (("bar.com", G1), ("foo.bar.com", G2), ("baz.bar.com", G3), ("boo.bar.com", G3),
                       ("multiple.prefixes.bar.com", G3), ("multiple.prefixes.foo.com", G3), ("foo.com", ""),
                       ("no.matching.host", "")):
        w.expect_grpc(gw, "Echo", host=host, backend=want, code="OK" if want else "UNIMPLEMENTED")


@scenario("GRPCRouteWeight")
def grpc_weight(w: World) -> None:
    w.apply([route("weighted-backends", [rule(to(G1, weight=70), to(G2, weight=30), to(G3, weight=0))],
                   kind="GRPCRoute")])
    w.expect_route("weighted-backends", kind="GRPCRoute")
    w.expect_grpc("same-namespace", "Echo")
    w.eventually("weighted distribution", lambda: _distribution(
        lambda: str(w.grpc_call("same-namespace", "Echo")[1].get("pod", "")), {G1: 0.7, G2: 0.3, G3: 0.0}))


# -- core TLSRoute -----------------------------------------------------------------------------------
def tls_route(name: str, parent: dict[str, Any], hostnames: tuple[str, ...] = ("tls.example.com",)) -> dict[str, Any]:
    doc = route(name, [rule(to("tls-backend", 443))], parents=[parent], hostnames=list(hostnames), kind="TLSRoute")
    doc["apiVersion"] = "gateway.networking.k8s.io/v1alpha3"
    return doc


@scenario("TLSRouteInvalidNoMatchingListener")
def tls_route_no_matching_listener(w: World) -> None:
    def gw(name: str, listener: dict[str, Any], *kinds: str) -> dict[str, Any]:
        allowed = {"namespaces": {"from": "Same"}, "kinds": [{"kind": k} for k in kinds]}
        return w.gateway(name, [{**listener, "allowedRoutes": allowed}])

    http = {"name": "http", "port": 80, "protocol": "HTTP"}
    https = {"name": "https", "port": 443, "protocol": "HTTPS", "tls": {"mode": "Terminate", "certificateRefs": [
        {"name": "tls-validity-checks-certificate", "namespace": INFRA}]}}
    w.apply([gw("gateway-http-only", http, "TLSRoute"), gw("gateway-tls-httproute-only", http, "HTTPRoute"),
             gw("gateway-https-only", https, "TLSRoute"),
             tls_route("tlsroute-no-matching-listener", {"name": "gateway-http-only"}),
             tls_route("tlsroute-not-allowed-kind", {"name": "gateway-tls-httproute-only"}),
             tls_route("tlsroute-wrong-protocol", {"name": "gateway-https-only"}),
             tls_route("tlsroute-wrong-section-name", {"name": "gateway-http-only",
                                                       "sectionName": "nonexistent-listener"})])
    w.expect_route("tlsroute-no-matching-listener", "gateway-http-only", kind="TLSRoute",
                   Accepted=("False", "NoMatchingParent"))
    w.expect_route("tlsroute-wrong-section-name", "gateway-http-only", kind="TLSRoute",
                   Accepted=("False", "NoMatchingParent"))
    for r, g in (("tlsroute-not-allowed-kind", "gateway-tls-httproute-only"),
                 ("tlsroute-wrong-protocol", "gateway-https-only")):
        w.expect_route(r, g, kind="TLSRoute", Accepted=("False", "*"))
    for r in ("tlsroute-no-matching-listener", "tlsroute-not-allowed-kind", "tlsroute-wrong-protocol",
              "tlsroute-wrong-section-name"):
        st = w.status("TLSRoute", r) or {}
        accepted = [p["parentRef"]["name"] for p in st.get("status", {}).get("parents", [])
                    if any(c["type"] == "Accepted" and c["status"] == "True" for c in p["conditions"])]
        if accepted:
            raise ScenarioFailure(f"TLSRoute {r} accepted by {accepted}")
    w.expect_gateway("gateway-http-only", listeners={"http": {"attachedRoutes": 0}})


def _tls_backend_ref_case(w: World, suffix: str, ref: dict[str, Any], reason: str) -> None:
    gw, name = f"gateway-tlsroute-invalid-backend-ref-{suffix}", f"invalid-backend-ref-{suffix}"
    doc = route(name, [rule(ref)], parents=[{"name": gw, "namespace": INFRA}], hostnames=["example.com"],
                kind="TLSRoute")
    doc["apiVersion"] = "gateway.networking.k8s.io/v1alpha3"
    w.apply([w.gateway(gw, [{"name": "tls", "protocol": "TLS", "port": 443, "tls": {"mode": "Passthrough"},
                             "allowedRoutes": {"namespaces": {"from": "Same"}}}]), doc])
    w.expect_gateway(gw, Accepted=("True", "*"))
    w.expect_route(name, gw, kind="TLSRoute", Accepted=("True", "Accepted"), ResolvedRefs=("False", reason))


@scenario("TLSRouteInvalidBackendRefNonexistent")
def tls_route_nonexistent_backend(w: World) -> None:
    _tls_backend_ref_case(w, "nonexistent", {"name": "nonexistent", "namespace": INFRA, "port": 443},
                          "BackendNotFound")


@scenario("TLSRouteInvalidBackendRefUnknownKind")
def tls_route_unknown_kind_backend(w: World) -> None:
    _tls_backend_ref_case(w, "unknown-kind", {"group": "unknownkind.example.com", "kind": "NonExistent",
                                              "name": "tls-backend", "port": 443}, "InvalidKind")


@scenario("TLSRouteInvalidNoMatchingListenerHostname")
def tls_route_no_matching_listener_hostname(w: World) -> None:
    gw = "gateway-tls-hostname"
    doc = route("tlsroute-hostname-mismatch", [rule(to("tls-backend", 443))], parents=[{"name": gw, "port": 443}],
                hostnames=["www.example1.com"], kind="TLSRoute")
    w.apply([w.gateway(gw, [{"name": "tls", "port": 443, "protocol": "TLS", "hostname": "www.example.com",
                             "tls": {"mode": "Passthrough"},
                             "allowedRoutes": {"namespaces": {"from": "Same"}, "kinds": [{"kind": "TLSRoute"}]}}]),
             doc])
    w.expect_route("tlsroute-hostname-mismatch", gw, kind="TLSRoute", Accepted=("False", "NoMatchingListenerHostname"))
    w.expect_gateway(gw, listeners={"tls": {"attachedRoutes": 0}})


@scenario("TLSRouteInvalidReferenceGrant")
def tls_route_invalid_reference_grant(w: World) -> None:
    def g(name: str, ns: str = APP, frm: dict[str, str] | None = None, to_: dict[str, str] | None = None
          ) -> dict[str, Any]:
        return {"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "TLSRoute", "namespace": INFRA,
                                   **(frm or {})}],
                         "to": [{"group": "", "kind": "Service", "name": "tls-backend", **(to_ or {})}]}}

    gw = "gateway-tlsroute"
    w.apply([g("reference-grant-wrong-namespace", ns=INFRA),
             g("reference-grant-wrong-from-group", frm={"group": "not-the-group-youre-looking-for"}),
             g("reference-grant-wrong-from-kind", frm={"kind": "Gateway"}),
             g("reference-grant-wrong-from-namespace", frm={"namespace": "not-the-namespace-youre-looking-for"}),
             g("reference-grant-wrong-to-group", to_={"group": "not-the-group-youre-looking-for"}),
             g("reference-grant-wrong-to-kind", to_={"kind": "Secret"}),
             g("reference-grant-wrong-to-name", to_={"name": "not-the-service-youre-looking-for"}),
             route("gateway-conformance-infra-test", [rule(to("tls-backend", 443, namespace=APP))],
                   parents=[{"name": gw}], hostnames=["abc.example.com"], kind="TLSRoute"),
             w.gateway(gw, [{"name": "https", "port": 443, "protocol": "TLS", "hostname": "*.example.com",
                             "tls": {"mode": "Passthrough"},
                             "allowedRoutes": {"namespaces": {"from": "Same"}, "kinds": [{"kind": "TLSRoute"}]}}])])
    w.expect_route("gateway-conformance-infra-test", gw, kind="TLSRoute", Accepted=("True", "Accepted"),
                   ResolvedRefs=("False", "RefNotPermitted"))


@scenario("HTTPRouteDisallowedKind")
def http_route_disallowed_kind(w: World) -> None:
    gw = "tlsroutes-only"
    w.apply([w.gateway(gw, [{"name": "tls", "port": 443, "protocol": "TLS", "hostname": "*.example.com",
                             "tls": {"mode": "Passthrough"},
                             "allowedRoutes": {"namespaces": {"from": "Same"}, "kinds": [{"kind": "TLSRoute"}]}}]),
             route("disallowed-kind", [rule(to(V1))], parents=[{"name": gw}],
                   hostnames=["disallowed-kind.example.com"])])
    w.expect_route("disallowed-kind", gw, Accepted=("False", "NotAllowedByListeners"))
    w.expect_gateway(gw, listeners={"tls": {"attachedRoutes": 0}})


# -- extended HTTPRoute --------------------------------------------------------------------------------
@scenario("HTTPRouteMethodMatching")
def method_matching(w: World) -> None:
    w.apply([route("method-matching", [rule(to(V1), matches=[{"method": "POST"}]),
                                       rule(to(V2), matches=[{"method": "GET"}])])])
    w.expect_route("method-matching")
    w.expect("same-namespace", Expect("/", method="POST", backend=V1))
    w.expect("same-namespace", Expect("/", method="GET", backend=V2))
    w.expect("same-namespace", Expect("/", method="HEAD", status=404))


@scenario("HTTPRouteRequestMirror")
def request_mirror(w: World) -> None:
    w.apply([route("request-mirror", [
        rule(to(V1, namespace=INFRA), matches=[prefix("/mirror")], filters=[mirror(V2)]),
        rule(to(V1, namespace=INFRA), matches=[prefix("/mirror-and-modify-headers")],
             filters=[HEADER_MODS, mirror(V2)])])])
    w.expect_route("request-mirror")
    since = len(w.echos[V2].requests)
    w.expect("same-namespace", Expect("/mirror", backend=V1))
    w.eventually("mirrored to infra-backend-v2", lambda: "" if _mirrored(w, V2, "/mirror", since) else "none")
    w.expect("same-namespace", Expect("/mirror-and-modify-headers", backend=V1,
                                      headers={"X-Header-Remove": "remove-val", "X-Header-Add-Append": "append-val-1",
                                               "X-Header-Set": "some-other-value"},
                                      req_headers={"X-Header-Add": "header-val-1",
                                                   "X-Header-Add-Append": "append-val-1,header-val-2",
                                                   "X-Header-Set": "set-overwrites-values"},
                                      req_absent=("X-Header-Remove",)))


@scenario("HTTPRouteRequestPercentageMirror", fast=True)
def percentage_mirror(w: World) -> None:
    w.apply([route("request-percentage-mirror", [
        rule(to(V1, namespace=INFRA), matches=[prefix("/percent-mirror")], filters=[mirror(V2, percent=20)]),
        rule(to(V1, namespace=INFRA), matches=[prefix("/percent-mirror-fraction")],
             filters=[mirror(V2, fraction={"numerator": 25, "denominator": 50})]),
        rule(to(V1, namespace=INFRA), matches=[prefix("/percent-mirror-and-modify-headers")],
             filters=[HEADER_MODS, mirror(V2, percent=35)])])])
    w.expect_route("request-percentage-mirror")
    total = 200
    for path, percent in (("/percent-mirror", 20), ("/percent-mirror-fraction", 50),
                          ("/percent-mirror-and-modify-headers", 35)):
        w.expect("same-namespace", Expect(path, backend=V1))
        since = len(w.echos[V2].requests)
        for _ in range(total):
            r = w.request("same-namespace", Expect(path))
            if r.status != 200:
                raise ScenarioFailure(f"{path}: status {r.status}")
        # Mirrors are sent asynchronously (on a busy machine, seconds later): wait until the count is
        # within the suite's tolerance, or has stopped growing for a second.
        counts = [-1]

        def settled(path: str = path, since: int = since, percent: float = percent,
                    counts: list[int] = counts) -> str:
            n = _mirrored(w, V2, path, since)
            got = 100.0 * n / total
            if abs(got - percent) <= 15:  # the suite's tolerance
                return ""
            stalled = n == counts[-1]
            counts.append(n)
            if stalled and got > percent:
                return ""  # too many: no later mirror lowers it
            return f"{path}: {got:.0f}% mirrored, want {percent}% +-15"

        w.eventually("mirrors settled", settled, timeout=8)
        got = 100.0 * _mirrored(w, V2, path, since) / total
        if abs(got - percent) > 15:
            raise ScenarioFailure(f"{path}: {got:.0f}% mirrored, want {percent}% +-15")


@scenario("HTTPRouteRedirectPortAndScheme")
def redirect_port_and_scheme(w: World) -> None:
    def redirects(cases: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        return [{"matches": [prefix(p)], "filters": [{"type": "RequestRedirect",
                                                      "requestRedirect": {"hostname": "example.org", **rd}}]}
                for p, rd in cases]

    gw8080 = "same-namespace-with-http-listener-on-8080"
    w.apply([w.gateway(gw8080, [http_listener("http", 8080)]),
             route("http-route-for-listener-on-port-80", redirects([
                 ("/scheme-nil-and-port-nil", {}), ("/scheme-nil-and-port-80", {"port": 80}),
                 ("/scheme-nil-and-port-8080", {"port": 8080}), ("/scheme-https-and-port-nil", {"scheme": "https"}),
                 ("/scheme-https-and-port-443", {"scheme": "https", "port": 443}),
                 ("/scheme-https-and-port-8443", {"scheme": "https", "port": 8443})])),
             route("http-route-for-listener-on-port-8080", redirects([
                 ("/scheme-nil-and-port-nil", {}), ("/scheme-nil-and-port-80", {"port": 80}),
                 ("/scheme-https-and-port-nil", {"scheme": "https"})]), parents=[{"name": gw8080}]),
             route("http-route-for-listener-on-port-443", redirects([
                 ("/scheme-nil-and-port-nil", {}), ("/scheme-nil-and-port-443", {"port": 443}),
                 ("/scheme-nil-and-port-8443", {"port": 8443}), ("/scheme-http-and-port-nil", {"scheme": "http"}),
                 ("/scheme-http-and-port-80", {"scheme": "http", "port": 80}),
                 ("/scheme-http-and-port-8080", {"scheme": "http", "port": 8080})]),
                   parents=[{"name": HTTPS_GATEWAY}])])
    for r, gw in (("http-route-for-listener-on-port-80", "same-namespace"),
                  ("http-route-for-listener-on-port-8080", gw8080),
                  ("http-route-for-listener-on-port-443", HTTPS_GATEWAY)):
        w.expect_route(r, gw)
    for path, loc in (("/scheme-nil-and-port-nil", "http://example.org/scheme-nil-and-port-nil"),
                      ("/scheme-nil-and-port-80", "http://example.org/scheme-nil-and-port-80"),
                      ("/scheme-nil-and-port-8080", "http://example.org:8080/scheme-nil-and-port-8080"),
                      ("/scheme-https-and-port-nil", "https://example.org/scheme-https-and-port-nil"),
                      ("/scheme-https-and-port-443", "https://example.org/scheme-https-and-port-443"),
                      ("/scheme-https-and-port-8443", "https://example.org:8443/scheme-https-and-port-8443")):
        w.expect("same-namespace", Expect(path, status=302, location=loc))
    for path, loc in (("/scheme-nil-and-port-nil", "http://example.org:8080/scheme-nil-and-port-nil"),
                      ("/scheme-nil-and-port-80", "http://example.org/scheme-nil-and-port-80"),
                      ("/scheme-https-and-port-nil", "https://example.org/scheme-https-and-port-nil")):
        w.expect(gw8080, Expect(path, status=302, location=loc), port=8080)
    for path, loc in (("/scheme-nil-and-port-nil", "https://example.org/scheme-nil-and-port-nil"),
                      ("/scheme-nil-and-port-443", "https://example.org/scheme-nil-and-port-443"),
                      ("/scheme-nil-and-port-8443", "https://example.org:8443/scheme-nil-and-port-8443"),
                      ("/scheme-http-and-port-nil", "http://example.org/scheme-http-and-port-nil"),
                      ("/scheme-http-and-port-80", "http://example.org/scheme-http-and-port-80"),
                      ("/scheme-http-and-port-8080", "http://example.org:8080/scheme-http-and-port-8080")):
        w.expect(HTTPS_GATEWAY, Expect(path, host="example.org", status=302, location=loc), port=443,
                 scheme="https")


@scenario("HTTPRouteRedirectPort")
def redirect_port(w: World) -> None:
    def rd(path: str, **r: Any) -> dict[str, Any]:
        return {"matches": [prefix(path)], "filters": [{"type": "RequestRedirect", "requestRedirect": r}]}

    w.apply([route("redirect-port", [rd("/port", port=8083), rd("/port-and-host", hostname="example.org", port=8083),
                                     rd("/port-and-status", port=8083, statusCode=301),
                                     rd("/port-and-host-and-status", port=8083, hostname="example.org",
                                        statusCode=302)])])
    w.expect_route("redirect-port")
    addr = w.address("same-namespace")
    w.expect("same-namespace", Expect("/port", status=302, location=f"http://{addr}:8083/port"))
    w.expect("same-namespace", Expect("/port-and-host", status=302, location="http://example.org:8083/port-and-host"))
    w.expect("same-namespace", Expect("/port-and-status", status=301, location=f"http://{addr}:8083/port-and-status"))
    w.expect("same-namespace", Expect("/port-and-host-and-status", status=302,
                                      location="http://example.org:8083/port-and-host-and-status"))


@scenario("HTTPRouteCORSAllowCredentialsBehavior")
def cors_credentials(w: World) -> None:
    origin = "https://app.example"
    w.apply([route("cors-allow-credentials", [
        rule(to(V1), matches=[prefix("/cors-behavior-creds-false")],
             filters=[{"type": "CORS", "cors": {"allowOrigins": [origin], "allowCredentials": False}}]),
        rule(to(V1), matches=[prefix("/cors-behavior-creds-true")],
             filters=[{"type": "CORS", "cors": {"allowOrigins": [origin], "allowCredentials": True}}])])])
    w.expect_route("cors-allow-credentials")
    w.expect("same-namespace", Expect("/cors-behavior-creds-false", headers={"Origin": origin}, backend=V1,
                                      resp_absent=("access-control-allow-credentials",)))
    w.expect("same-namespace", Expect("/cors-behavior-creds-true", headers={"Origin": "http://not-app.example"},
                                      backend=V1, resp_absent=("access-control-allow-credentials",)))
    w.expect("same-namespace", Expect("/cors-behavior-creds-true", headers={"Origin": origin}, backend=V1,
                                      resp_headers={"access-control-allow-credentials": "true",
                                                    "access-control-allow-origin": origin}))


@scenario("HTTPRouteTimeoutRequest")
def timeout_request(w: World) -> None:
    w.apply([route("request-timeout", [
        rule(to(V1), matches=[prefix("/request-timeout")], timeouts={"request": "500ms"}),
        rule(to(V1), matches=[prefix("/disable-request-timeout")], timeouts={"request": "0s"})])])
    w.expect_route("request-timeout")
    w.expect("same-namespace", Expect("/request-timeout", backend=V1))
    w.expect("same-namespace", Expect("/request-timeout?delay=1s", status=504))
    w.expect("same-namespace", Expect("/disable-request-timeout?delay=1s", backend=V1))


@scenario("HTTPRouteCORS", fast=True)
def cors(w: World) -> None:
    def cors_rule(path: str, **c: Any) -> dict[str, Any]:
        return rule(to(V1), matches=[prefix(path)], filters=[{"type": "CORS", "cors": c}])

    w.apply([route("cors-multiple-origins-methods-headers", [cors_rule(
                 "/cors-1", allowOrigins=["https://www.foo.com", "https://*.bar.com"], allowMethods=["GET", "OPTIONS"],
                 allowHeaders=["x-header-1", "x-header-2"], exposeHeaders=["x-header-3", "x-header-4"],
                 allowCredentials=True, maxAge=3600)]),
             route("cors-wildcard-methods", [cors_rule("/cors-2", allowOrigins=["https://www.foo.com"],
                                                       allowMethods=["*"])]),
             route("cors-wildcard-origin", [cors_rule("/cors-wildcard-origin", allowOrigins=["*"],
                                                      allowMethods=["PUT"], allowCredentials=False)])])
    for r in ("cors-multiple-origins-methods-headers", "cors-wildcard-methods", "cors-wildcard-origin"):
        w.expect_route(r)
    full = {"access-control-allow-methods": ("GET, OPTIONS", "OPTIONS, GET"),
            "access-control-allow-headers": ("x-header-1, x-header-2", "x-header-2, x-header-1"),
            "access-control-expose-headers": ("x-header-3, x-header-4", "x-header-4, x-header-3"),
            "access-control-max-age": "3600", "access-control-allow-credentials": "true"}
    pre = {"access-control-request-method": "GET", "access-control-request-headers": "x-header-1, x-header-2"}
    for origin in ("https://www.foo.com", "https://www.bar.com", "https://xpto.www.bar.com"):
        w.expect("same-namespace", Expect("/cors-1", method="OPTIONS", headers={"Origin": origin, **pre},
                                          status=(200, 204),
                                          resp_headers={"access-control-allow-origin": origin, **full}))
        if origin != "https://xpto.www.bar.com":
            w.expect("same-namespace", Expect("/cors-1", headers={"Origin": origin, **pre}, backend=V1,
                                              resp_headers={"access-control-allow-origin": origin}))
    w.expect("same-namespace", Expect("/cors-1", method="OPTIONS", status=(200, 204, 403),
                                      headers={"Origin": "https://foobar.com", "access-control-request-method": "GET"},
                                      resp_absent=("access-control-allow-origin",)))
    w.expect("same-namespace", Expect("/cors-1", status=(200,),
                                      headers={"Origin": "https://foobar.com", "access-control-request-method": "GET"},
                                      resp_absent=("access-control-allow-origin",)))
    w.expect("same-namespace", Expect("/cors-2", method="OPTIONS", status=(200, 204),
                                      headers={"Origin": "https://www.foo.com",
                                               "access-control-request-method": "POST"},
                                      resp_headers={"access-control-allow-methods": ("POST", "*"),
                                                    "access-control-allow-origin": "https://www.foo.com"},
                                      resp_absent=("access-control-allow-credentials",)))
    for origin in ("https://foobar.com", "https://foobar.com:12345"):
        w.expect("same-namespace", Expect("/cors-wildcard-origin", method="OPTIONS", status=(200, 204),
                                          headers={"Origin": origin, "access-control-request-method": "PUT"},
                                          resp_headers={"access-control-allow-origin": (origin, "*"),
                                                        "access-control-allow-methods": "PUT"},
                                          resp_absent=("access-control-allow-credentials",)))


# -- beyond the target version (later upstream releases) -------------------------------------------------
@scenario("GatewayInvalidParametersRef", fast=True)
def invalid_parameters_ref(w: World) -> None:
    gw = w.gateway("gateway-invalid-parameters-ref", [{"name": "http", "port": 80, "protocol": "HTTP"}],
                   infrastructure={"parametersRef": {"group": "invalid.io", "kind": "InvalidParameters",
                                                     "name": "invalid"}})
    w.apply([gw])
    w.expect_gateway("gateway-invalid-parameters-ref", Accepted=("False", "InvalidParameters"))


@scenario("HTTPRouteRetry", fast=True)
def retry(w: World) -> None:
    w.apply([route("retries", [
        rule(to(V3), matches=[prefix("/retry/code-500-attempts-3")], retry={"codes": [500], "attempts": 3}),
        rule(to(V3), matches=[prefix("/retry/code-all-attempts-2")],
             retry={"codes": [500, 502, 503, 504], "attempts": 2})])])
    w.expect_route("retries")
    cases = [("/retry/code-500-attempts-3", 500, 2, 200), ("/retry/code-500-attempts-3", 500, 4, 500),
             ("/retry/code-500-attempts-3", 503, 2, 503)]
    for code in (500, 502, 503, 504):
        cases += [("/retry/code-all-attempts-2", code, 1, 200), ("/retry/code-all-attempts-2", code, 3, code)]
    for path, code, after, want in cases:
        def once(path: str = path, code: int = code, after: int = after, want: int = want) -> str:
            q = f"?responseCode={code}&succeedAfter={after}&uuid={uuid.uuid4()}"
            r = w.request("same-namespace", Expect(path + q))
            return "" if r.status == want else f"{path}{q}: status {r.status}, want {want}"
        w.eventually("retry", once)
        w.eventually("retry (again)", once)


# Each module registers its scenarios when imported.
from conformance import scenarios_addresses  # noqa: E402,F401,I001
from conformance import scenarios_backendtls  # noqa: E402,F401
from conformance import scenarios_backendclientcert  # noqa: E402,F401  (registers scenarios)
from conformance import scenarios_http  # noqa: E402, F401
from conformance import scenarios_listenerset  # noqa: E402, F401
from conformance import scenarios_mesh  # noqa: E402, F401
from conformance import scenarios_tls  # noqa: E402, F401

NOT_REPLAYED = "not replayed by the runner yet: no claim is made either way"
FEATURE = "feature {} is not supported by cilia"


def _skipped() -> dict[str, str]:
    """Why each upstream test that has no scenario above is skipped."""
    from conformance.runner import SCENARIOS
    from conformance.upstream import TESTS
    reasons = {
        "GatewayFrontendClientCertificateValidation": FEATURE.format("GatewayFrontendClientCertificateValidation"),
        "GatewayInfrastructurePropagation": FEATURE.format("GatewayInfrastructurePropagation") +
        " (cilia creates no infrastructure objects to label)",
        "UDPRoute": FEATURE.format("UDPRoute") + " (cilia translates no UDP listeners: UDPRoute objects are not read, "
                    "so no Envoy udp_proxy is configured)",
        "Mesh": "not replayed by the runner yet (scenarios_mesh.py replays the suite's mesh tests from a sidecar "
                "client): no claim is made either way",
    }
    out = {}
    for name, feats in TESTS.items():
        if name in SCENARIOS:
            continue
        out[name] = next((r for f, r in reasons.items() if f in feats), NOT_REPLAYED)
    return out


SKIPPED: dict[str, str] = _skipped()
