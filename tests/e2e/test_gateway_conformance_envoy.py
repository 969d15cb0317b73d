"""Gateway API conformance tests' routing assertions through a real Envoy (`node~conformance`, shared
mode): the suite's base world (support.conformance_base) with each Gateway on its own loopback address
and one free port standing in for port 80, echo backends named as the suite names them.

Follows HTTPRouteHostnameIntersection, HTTPRouteListenerHostnameMatching, HTTPRouteMatchingAcrossRoutes,
HTTPRoutePartiallyInvalidViaInvalidReferenceGrant, HTTPRouteInvalid*BackendRef and
HTTPRouteRedirectPortAndScheme (the expected Location carries the stand-in port where the suite,
listening on 80, expects none).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from support.backends import EchoBackend
from support.conformance_base import APP, BACKENDS, INFRA, WEB, base_docs
from support.controlplane import ControlPlaneThread, ManifestDir
from support.envoy import Envoy
from support.http import Reply, get
from support.net import free_port

pytestmark = pytest.mark.e2e

GW = "gateway.networking.k8s.io/v1"
ADDR = {"same-namespace": "127.0.61.1", "all-namespaces": "127.0.61.2", "backend-namespaces": "127.0.61.3",
        "httproute-hostname-intersection": "127.0.61.4", "httproute-hostname-intersection-all": "127.0.61.5",
        "httproute-listener-hostname-matching": "127.0.61.6"}


def _gateway(name: str, port: int, listeners: list[tuple[str, str]]) -> str:
    return json.dumps({"apiVersion": GW, "kind": "Gateway", "metadata": {"name": name, "namespace": INFRA},
                       "spec": {"gatewayClassName": "cilia",
                                "addresses": [{"type": "IPAddress", "value": ADDR[name]}],
                                "listeners": [{"name": n, "port": port, "protocol": "HTTP",
                                               **({"hostname": h} if h else {})} for n, h in listeners]}})


def _route(name: str, gateway: str, rules: list[dict[str, Any]], hostnames: list[str] | None = None,
           section: str = "", ns: str = INFRA, sections: list[str] | None = None) -> str:
    refs = [{"name": gateway, "namespace": INFRA, **({"sectionName": s} if s else {})}
            for s in (sections or [section])]
    spec: dict[str, Any] = {"parentRefs": refs, "rules": rules}
    if hostnames:
        spec["hostnames"] = hostnames
    return json.dumps({"apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": name, "namespace": ns},
                       "spec": spec})


def _to(name: str, ns: str = "", **extra: Any) -> dict[str, Any]:
    return {"name": name, "port": 8080, **({"namespace": ns} if ns else {}), **extra}


def _prefix(path: str, **extra: Any) -> dict[str, Any]:
    return {"path": {"type": "PathPrefix", "value": path}, **extra}


def _routes() -> list[str]:
    hi = "httproute-hostname-intersection"
    out = [
        # HTTPRouteHostnameIntersection
        _route("specific-host-matches-listener-specific-host", hi,
               [{"matches": [_prefix("/s1")], "backendRefs": [_to("infra-backend-v1")]}],
               ["non.matching.com", "*.nonmatchingwildcard.io", "very.specific.com"]),
        _route("specific-host-matches-listener-wildcard-host", hi,
               [{"matches": [_prefix("/s2")], "backendRefs": [_to("infra-backend-v2")]}],
               ["non.matching.com", "wildcard.io", "foo.wildcard.io", "bar.wildcard.io", "foo.bar.wildcard.io"]),
        _route("wildcard-host-matches-listener-specific-host", hi,
               [{"matches": [_prefix("/s3")], "backendRefs": [_to("infra-backend-v3")]}],
               ["non.matching.com", "*.specific.com"]),
        _route("wildcard-host-matches-listener-wildcard-host", hi,
               [{"matches": [_prefix("/s4")], "backendRefs": [_to("infra-backend-v1")]}], ["*.anotherwildcard.io"]),
        _route("no-intersecting-hosts", hi, [{"matches": [_prefix("/s5")], "backendRefs": [_to("infra-backend-v2")]}],
               ["specific.but.wrong.com", "wildcard.io"]),
        _route("httproute-hostname-intersection-all", "httproute-hostname-intersection-all",
               [{"backendRefs": [_to("infra-backend-v2")]}],
               ["first.com", "*.first.com", "second.com", "*.second.com"]),
        # HTTPRouteListenerHostnameMatching
        _route("backend-v1", "httproute-listener-hostname-matching", [{"backendRefs": [_to("infra-backend-v1")]}],
               section="listener-1"),
        _route("backend-v2", "httproute-listener-hostname-matching", [{"backendRefs": [_to("infra-backend-v2")]}],
               section="listener-2"),
        _route("backend-v3", "httproute-listener-hostname-matching", [{"backendRefs": [_to("infra-backend-v3")]}],
               sections=["listener-3", "listener-4"]),
        # HTTPRouteMatchingAcrossRoutes
        _route("matching-part1", "same-namespace", [
            {"matches": [_prefix("/")], "backendRefs": [_to("infra-backend-v1")]},
            {"matches": [_prefix("/v2")], "backendRefs": [_to("infra-backend-v2")]}], ["example.com", "example.net"]),
        _route("matching-part2", "same-namespace", [
            {"matches": [_prefix("/v2", headers=[{"name": "version", "value": "one"}])],
             "backendRefs": [_to("infra-backend-v3")]},
            {"matches": [{"headers": [{"name": "version", "value": "two"}]}],
             "backendRefs": [_to("infra-backend-v3")]}], ["example.com"]),
        # HTTPRoutePartiallyInvalidViaInvalidReferenceGrant
        json.dumps({"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
                    "metadata": {"name": "reference-grant", "namespace": APP},
                    "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": INFRA}],
                             "to": [{"group": "", "kind": "Service", "name": "app-backend-v1"}]}}),
        _route("invalid-reference-grant", "same-namespace", [
            {"backendRefs": [_to("app-backend-v1", APP)]},
            {"matches": [_prefix("/v2")], "backendRefs": [_to("app-backend-v2", APP)]}], ["partial.example.com"]),
        # HTTPRouteInvalidCrossNamespaceBackendRef / UnknownKind / NonExistentBackendRef
        _route("invalid-backend-refs", "same-namespace", [
            {"matches": [_prefix("/xns")], "backendRefs": [_to("web-backend", WEB)]},
            {"matches": [_prefix("/kind")], "backendRefs": [{"group": "unknown.io", "kind": "NonExistent",
                                                             "name": "infra-backend-v1", "port": 8080}]},
            {"matches": [_prefix("/missing")], "backendRefs": [_to("nonexistent")]}], ["invalid.example.com"]),
    ]
    # HTTPRouteRedirectPortAndScheme (on the same-namespace Gateway's plain HTTP listener)
    redirects = []
    for path, rd in (("/scheme-nil-and-port-nil", {}), ("/scheme-nil-and-port-80", {"port": 80}),
                     ("/scheme-nil-and-port-8080", {"port": 8080}), ("/scheme-https-and-port-nil", {"scheme": "https"}),
                     ("/scheme-https-and-port-443", {"scheme": "https", "port": 443}),
                     ("/scheme-https-and-port-8443", {"scheme": "https", "port": 8443})):
        redirects.append({"matches": [_prefix(path)],
                          "filters": [{"type": "RequestRedirect", "requestRedirect": rd}]})
    out.append(_route("http-route-for-listener-on-port-80", "same-namespace", redirects, ["example.org"]))
    return out


@dataclass
class World:
    port: int
    cp: ControlPlaneThread
    envoy: Envoy

    def get(self, gateway: str, host: str, path: str, headers: dict[str, str] | None = None) -> Reply:
        return get(f"http://{ADDR[gateway]}:{self.port}{path}", headers={"Host": host, **(headers or {})})

    def backend(self, gateway: str, host: str, path: str, headers: dict[str, str] | None = None) -> str | int:
        """The echo backend that answered, or the status code when none did."""
        r = self.get(gateway, host, path, headers)
        return str(r.json()["backend"]) if r.status == 200 else r.status


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    md = ManifestDir()
    backends = {name: EchoBackend(name, host).start() for name, (_, _, host) in BACKENDS.items()}
    port = free_port()
    try:
        md.write("base.yaml", "\n---\n".join(base_docs(
            port, addresses=ADDR, endpoints={n: (b.host, b.port) for n, b in backends.items()})))
        md.write("gateways.yaml", "\n---\n".join([
            _gateway("httproute-hostname-intersection", port, [
                ("listener-1", "very.specific.com"), ("listener-2", "*.wildcard.io"),
                ("listener-3", "*.anotherwildcard.io")]),
            _gateway("httproute-hostname-intersection-all", port, [("listener-1", "")]),
            _gateway("httproute-listener-hostname-matching", port, [
                ("listener-1", "bar.com"), ("listener-2", "foo.bar.com"), ("listener-3", "*.bar.com"),
                ("listener-4", "*.foo.com")]),
        ]))
        md.write("routes.yaml", "\n---\n".join(_routes()))
        cp = ControlPlaneThread([str(md.path)]).start()
        envoy = Envoy("node~conformance", cp.xds_port).start()
        w = World(port, cp, envoy)
        try:
            envoy.wait_for(lambda: w.backend("httproute-listener-hostname-matching", "bar.com", "/")
                           == "infra-backend-v1", timeout=15, what="conformance gateways serving")
            yield w
        finally:
            envoy.stop()
            cp.stop()
    finally:
        for b in backends.values():
            b.stop()
        md.cleanup()


HI = "httproute-hostname-intersection"


@pytest.mark.parametrize(("host", "path", "want"), [
    ("very.specific.com", "/s1", "infra-backend-v1"),
    ("very.specific.com:1234", "/s1", "infra-backend-v1"),  # the Host's port is not part of the match
    ("non.matching.com", "/s1", 404), ("foo.nonmatchingwildcard.io", "/s1", 404), ("foo.wildcard.io", "/s1", 404),
    ("very.specific.com", "/non-matching-prefix", 404),
    ("foo.wildcard.io", "/s2", "infra-backend-v2"), ("bar.wildcard.io", "/s2", "infra-backend-v2"),
    ("foo.bar.wildcard.io", "/s2", "infra-backend-v2"), ("non.matching.com", "/s2", 404),
    ("wildcard.io", "/s2", 404), ("very.specific.com", "/s2", 404), ("foo.wildcard.io", "/non-matching-prefix", 404),
    ("very.specific.com", "/s3", "infra-backend-v3"), ("non.matching.com", "/s3", 404),
    ("foo.specific.com", "/s3", 404), ("foo.wildcard.io", "/s3", 404),
    ("foo.anotherwildcard.io", "/s4", "infra-backend-v1"), ("bar.anotherwildcard.io", "/s4", "infra-backend-v1"),
    ("foo.bar.anotherwildcard.io", "/s4", "infra-backend-v1"), ("anotherwildcard.io", "/s4", 404),
    ("foo.wildcard.io", "/s4", 404), ("very.specific.com", "/s4", 404),
    ("specific.but.wrong.com", "/s5", 404), ("wildcard.io", "/s5", 404),
])
def test_hostname_intersection(world: World, host: str, path: str, want: str | int) -> None:
    """HTTPRouteHostnameIntersection."""
    assert world.backend(HI, host, path) == want


@pytest.mark.parametrize(("host", "want"), [
    ("first.com", "infra-backend-v2"), ("sub.first.com", "infra-backend-v2"), ("second.com", "infra-backend-v2"),
    ("sub.second.com", "infra-backend-v2"), ("third.com", 404), ("sub.third.com", 404),
])
def test_hostname_intersection_with_unspecified_listener_hostname(world: World, host: str, want: str | int) -> None:
    """HTTPRouteHostnameIntersection, "HTTPRoutes intersects with an unspecified hostname listener"."""
    assert world.backend("httproute-hostname-intersection-all", host, "/") == want


@pytest.mark.parametrize(("host", "want"), [
    ("bar.com", "infra-backend-v1"), ("foo.bar.com", "infra-backend-v2"), ("baz.bar.com", "infra-backend-v3"),
    ("boo.bar.com", "infra-backend-v3"), ("multiple.prefixes.bar.com", "infra-backend-v3"),
    ("multiple.prefixes.foo.com", "infra-backend-v3"), ("foo.com", 404), ("no.matching.host", 404),
])
def test_listener_hostname_matching(world: World, host: str, want: str | int) -> None:
    """HTTPRouteListenerHostnameMatching: the most specific listener owns each hostname."""
    assert world.backend("httproute-listener-hostname-matching", host, "/") == want


@pytest.mark.parametrize(("host", "path", "headers", "want"), [
    ("example.com", "/", {}, "infra-backend-v1"), ("example.net", "/", {}, "infra-backend-v1"),
    ("example.com", "/example", {}, "infra-backend-v1"), ("example.com", "/v2", {}, "infra-backend-v2"),
    ("example.com", "/v2/example", {}, "infra-backend-v2"),
    ("example.com", "/", {"version": "one"}, "infra-backend-v1"),
    ("example.com", "/v2", {"version": "one"}, "infra-backend-v3"),
    ("example.com", "/", {"version": "two"}, "infra-backend-v3"),
    ("example.com", "/v2", {"version": "two"}, "infra-backend-v2"),
    ("example.net", "/v2", {"version": "one"}, "infra-backend-v2"),
    ("example.net", "/", {"version": "two"}, "infra-backend-v1"),
])
def test_matching_across_routes(world: World, host: str, path: str, headers: dict[str, str],
                                want: str) -> None:
    """HTTPRouteMatchingAcrossRoutes: the longest prefix first, then more header matches, across routes."""
    assert world.backend("same-namespace", host, path, headers) == want


def test_partially_invalid_via_invalid_reference_grant(world: World) -> None:
    """HTTPRoutePartiallyInvalidViaInvalidReferenceGrant: the rule with the refused backend answers 500,
    its sibling rule is served."""
    assert world.backend("same-namespace", "partial.example.com", "/v2") == 500
    assert world.backend("same-namespace", "partial.example.com", "/") == "app-backend-v1"


@pytest.mark.parametrize("path", ["/xns", "/kind", "/missing"])
def test_invalid_backend_refs_answer_500(world: World, path: str) -> None:
    """HTTPRouteInvalidCrossNamespaceBackendRef, ...UnknownKind, ...NonExistentBackendRef."""
    assert world.backend("same-namespace", "invalid.example.com", path) == 500


@pytest.mark.parametrize(("path", "location"), [
    ("/scheme-nil-and-port-nil", "http://example.org:{port}/scheme-nil-and-port-nil"),
    ("/scheme-nil-and-port-80", "http://example.org/scheme-nil-and-port-80"),
    ("/scheme-nil-and-port-8080", "http://example.org:8080/scheme-nil-and-port-8080"),
    ("/scheme-https-and-port-nil", "https://example.org/scheme-https-and-port-nil"),
    ("/scheme-https-and-port-443", "https://example.org/scheme-https-and-port-443"),
    ("/scheme-https-and-port-8443", "https://example.org:8443/scheme-https-and-port-8443"),
])
def test_redirect_port_and_scheme(world: World, path: str, location: str) -> None:
    """HTTPRouteRedirectPortAndScheme on an HTTP listener (its port stands in for 80)."""
    r = world.get("same-namespace", "example.org", path)
    assert (r.status, r.headers["location"]) == (302, location.format(port=world.port))


def test_statuses_through_the_admin_endpoint(world: World) -> None:
    """The same conditions through /debug/status: the route without an intersecting hostname is refused and
    not counted on any listener."""
    statuses = {(s["kind"], s["metadata"]["name"]): s["status"] for s in world.cp.admin_json("/debug/status")}
    parent = statuses[("HTTPRoute", "no-intersecting-hosts")]["parents"][0]
    conds = {c["type"]: c["reason"] for c in parent["conditions"]}
    assert conds["Accepted"] == "NoMatchingListenerHostname"
    counts = [li["attachedRoutes"] for li in statuses[("Gateway", HI)]["listeners"]]
    assert counts == [2, 1, 1]
