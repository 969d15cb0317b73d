"""The Gateway API conformance tests' status assertions, test by test, on their manifests (adapted: the
suite's base world from support.conformance_base, backends on loopback EndpointSlices).

Each test names the conformance test it follows and checks the conditions, reasons, supportedKinds
and attachedRoutes that test asserts. Routing behaviour is checked through real Envoy in
tests/e2e/test_gateway_conformance_envoy.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import yaml

import cilia.k8s.kinds  # noqa: F401  (registers the kinds)
from cilia.k8s.registry import parse_object
from cilia.k8s.store import InputSnapshot
from cilia.translate import TranslationResult, translate
from cilia.translate.context import TranslateOptions
from support.conformance_base import APP, INFRA, WEB, base_docs

GW = "gateway.networking.k8s.io/v1"
FAKE_CERT = ("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
             "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n")


@dataclass
class Outcome:
    result: TranslationResult

    def status(self, kind: str, name: str, ns: str = INFRA) -> dict[str, Any]:
        for s in self.result.statuses:
            if s.kind == kind and s.name == name and s.namespace == (ns if kind != "GatewayClass" else ""):
                return dict(s.status)
        raise KeyError(f"no status for {kind} {ns}/{name}")

    def parent(self, route: str, gateway: str, ns: str = INFRA, kind: str = "HTTPRoute",
               section: str = "") -> dict[str, tuple[str, str]]:
        """Conditions (type -> (status, reason)) of one route's parent entry."""
        for p in self.status(kind, route, ns)["parents"]:
            ref = p["parentRef"]
            if ref["name"] == gateway and ref.get("sectionName", "") == section:
                return {c["type"]: (c["status"], c["reason"]) for c in p["conditions"]}
        raise KeyError(f"{kind} {ns}/{route} has no parent {gateway}")

    def listener(self, gateway: str, name: str, ns: str = INFRA) -> dict[str, Any]:
        for li in self.status("Gateway", gateway, ns)["listeners"]:
            if li["name"] == name:
                return dict(li)
        raise KeyError(name)

    def listener_conds(self, gateway: str, name: str, ns: str = INFRA) -> dict[str, tuple[str, str]]:
        return {c["type"]: (c["status"], c["reason"]) for c in self.listener(gateway, name, ns)["conditions"]}

    def gateway_conds(self, gateway: str, ns: str = INFRA) -> dict[str, tuple[str, str]]:
        return {c["type"]: (c["status"], c["reason"]) for c in self.status("Gateway", gateway, ns)["conditions"]}


def run(*extra: str) -> Outcome:
    docs: list[Any] = []
    for text in (*base_docs(), *extra):
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    snap = InputSnapshot.of([parse_object(d) for d in docs])
    return Outcome(translate(snap, TranslateOptions()))


def route(name: str, parents: list[dict[str, Any]], rules: list[dict[str, Any]], ns: str = INFRA,
          hostnames: list[str] | None = None, generation: int = 1, kind: str = "HTTPRoute") -> str:
    spec: dict[str, Any] = {"parentRefs": parents, "rules": rules}
    if hostnames:
        spec["hostnames"] = hostnames
    return yaml.safe_dump({"apiVersion": GW, "kind": kind,
                           "metadata": {"name": name, "namespace": ns, "generation": generation}, "spec": spec})


def to(name: str, port: int = 8080, ns: str = "", **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "port": port, **extra}
    if ns:
        out["namespace"] = ns
    return out


def gw_ref(name: str = "same-namespace", **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": INFRA, **extra}


def gateway(name: str, listeners: list[dict[str, Any]], generation: int = 1, ns: str = INFRA) -> str:
    return yaml.safe_dump({"apiVersion": GW, "kind": "Gateway",
                           "metadata": {"name": name, "namespace": ns, "generation": generation},
                           "spec": {"gatewayClassName": "cilia", "listeners": listeners}})


def secret(name: str, ns: str = INFRA, crt: str = FAKE_CERT[0], key: str = FAKE_CERT[1]) -> str:
    return yaml.safe_dump({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                           "metadata": {"name": name, "namespace": ns},
                           "stringData": {"tls.crt": crt, "tls.key": key}})


def grant(name: str, ns: str, from_kind: str, from_ns: str, to_kind: str = "Service", to_name: str = "",
          from_group: str = "gateway.networking.k8s.io") -> str:
    target: dict[str, Any] = {"group": "", "kind": to_kind}
    if to_name:
        target["name"] = to_name
    return yaml.safe_dump({"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
                           "metadata": {"name": name, "namespace": ns},
                           "spec": {"from": [{"group": from_group, "kind": from_kind, "namespace": from_ns}],
                                    "to": [target]}})


OK = {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}
HTTPROUTE_KIND = [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}]


# -- HTTPRoute attachment ----------------------------------------------------------------------------------
def test_http_route_simple_same_namespace() -> None:
    """HTTPRouteSimpleSameNamespace."""
    out = run(route("gateway-conformance-infra-test", [gw_ref()], [{"backendRefs": [to("infra-backend-v1")]}]))
    assert out.parent("gateway-conformance-infra-test", "same-namespace") == OK
    assert out.listener("same-namespace", "http")["attachedRoutes"] == 1
    assert out.gateway_conds("same-namespace") == {"Accepted": ("True", "Accepted"),
                                                   "Programmed": ("True", "Programmed")}


def test_http_route_cross_namespace() -> None:
    """HTTPRouteCrossNamespace: a route in a backend-labelled namespace on the Selector Gateway."""
    out = run(route("cross-namespace", [gw_ref("backend-namespaces")], [{"backendRefs": [to("web-backend")]}],
                    ns=WEB))
    assert out.parent("cross-namespace", "backend-namespaces", WEB) == OK
    assert out.listener("backend-namespaces", "http")["attachedRoutes"] == 1


def test_http_route_invalid_cross_namespace_parent_ref() -> None:
    """HTTPRouteInvalidCrossNamespaceParentRef: NotAllowedByListeners, and not counted."""
    out = run(route("invalid-cross-namespace-parent-ref", [gw_ref()], [{"backendRefs": [to("web-backend")]}],
                    ns=WEB))
    assert out.parent("invalid-cross-namespace-parent-ref", "same-namespace", WEB)["Accepted"] == \
        ("False", "NotAllowedByListeners")
    assert out.listener("same-namespace", "http")["attachedRoutes"] == 0


def test_http_route_invalid_parent_ref_not_matching_listener_port() -> None:
    """HTTPRouteInvalidParentRefNotMatchingListenerPort."""
    out = run(route("httproute-listener-not-matching-route-port", [gw_ref(port=81)],
                    [{"backendRefs": [to("infra-backend-v1")]}]))
    status = out.status("HTTPRoute", "httproute-listener-not-matching-route-port")
    assert {c["type"]: (c["status"], c["reason"]) for c in status["parents"][0]["conditions"]}["Accepted"] == \
        ("False", "NoMatchingParent")
    assert out.listener("same-namespace", "http")["attachedRoutes"] == 0


def test_http_route_invalid_parent_ref_not_matching_section_name() -> None:
    """HTTPRouteInvalidParentRefNotMatchingSectionName."""
    out = run(route("httproute-listener-not-matching-section-name", [gw_ref(sectionName="foo")],
                    [{"backendRefs": [to("infra-backend-v1")]}]))
    assert out.parent("httproute-listener-not-matching-section-name", "same-namespace", section="foo")[
        "Accepted"] == ("False", "NoMatchingParent")


def test_http_route_disallowed_kind() -> None:
    """HTTPRouteDisallowedKind: a listener that allows only TCPRoutes refuses HTTPRoutes."""
    gw = gateway("tlsroutes-only", [{"name": "tls", "port": 443, "protocol": "TLS", "hostname": "*.example.com",
                                     "tls": {"mode": "Passthrough"},
                                     "allowedRoutes": {"namespaces": {"from": "Same"},
                                                       "kinds": [{"kind": "TLSRoute"}]}}])
    out = run(gw, route("disallowed-kind", [gw_ref("tlsroutes-only")], [{"backendRefs": [to("infra-backend-v1")]}],
                        hostnames=["disallowed-kind.example.com"]))
    assert out.parent("disallowed-kind", "tlsroutes-only")["Accepted"] == ("False", "NotAllowedByListeners")
    assert out.listener("tlsroutes-only", "tls")["attachedRoutes"] == 0


def test_tls_route_to_listener_whose_protocol_cannot_carry_it() -> None:
    """TLSRouteInvalidNoMatchingListener: an HTTP listener that lists TLSRoute in allowedRoutes is still
    no parent for a TLSRoute (NoMatchingParent), unlike a listener that leaves the kind out."""
    gw = gateway("gateway-http-only", [{"name": "http", "port": 80, "protocol": "HTTP",
                                        "allowedRoutes": {"namespaces": {"from": "Same"},
                                                          "kinds": [{"kind": "TLSRoute"}]}}])
    out = run(gw, route("tls", [gw_ref("gateway-http-only")], [{"backendRefs": [to("tls-backend", 443)]}],
                        hostnames=["tls.example.com"], kind="TLSRoute"))
    assert out.parent("tls", "gateway-http-only", kind="TLSRoute")["Accepted"] == ("False", "NoMatchingParent")
    assert out.listener("gateway-http-only", "http")["attachedRoutes"] == 0


# -- backendRefs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("ref", "reason"), [
    (to("web-backend", ns=WEB), "RefNotPermitted"),  # HTTPRouteInvalidCrossNamespaceBackendRef
    ({"group": "unknown.io", "kind": "NonExistent", "name": "infra-backend-v1", "port": 8080},
     "InvalidKind"),  # HTTPRouteInvalidBackendRefUnknownKind
    (to("nonexistent"), "BackendNotFound"),  # HTTPRouteInvalidNonExistentBackendRef
])
def test_http_route_invalid_backend_refs(ref: dict[str, Any], reason: str) -> None:
    """The route is still Accepted; ResolvedRefs is False with the spec reason (requests get 500)."""
    out = run(route("invalid-backend", [gw_ref()], [{"backendRefs": [ref]}]))
    assert out.parent("invalid-backend", "same-namespace") == {"Accepted": ("True", "Accepted"),
                                                              "ResolvedRefs": ("False", reason)}
    assert out.listener("same-namespace", "http")["attachedRoutes"] == 1


def test_http_route_partially_invalid_via_invalid_reference_grant() -> None:
    """HTTPRoutePartiallyInvalidViaInvalidReferenceGrant: a grant for app-backend-v1 only."""
    out = run(grant("reference-grant", APP, "HTTPRoute", INFRA, to_name="app-backend-v1"),
              route("invalid-reference-grant", [gw_ref()], [
                  {"backendRefs": [to("app-backend-v1", ns=APP)]},
                  {"matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}],
                   "backendRefs": [to("app-backend-v2", ns=APP)]}]))
    assert out.parent("invalid-reference-grant", "same-namespace") == {"Accepted": ("True", "Accepted"),
                                                                      "ResolvedRefs": ("False", "RefNotPermitted")}


@pytest.mark.parametrize(("grant_doc", "want"), [
    (grant("reference-grant", WEB, "HTTPRoute", INFRA), ("True", "ResolvedRefs")),  # HTTPRouteReferenceGrant
    (grant("reference-grant", WEB, "HTTPRoute", INFRA, to_name="web-backend"), ("True", "ResolvedRefs")),
    (grant("reference-grant", WEB, "HTTPRoute", INFRA, to_name="other"), ("False", "RefNotPermitted")),
    (grant("reference-grant", WEB, "GRPCRoute", INFRA), ("False", "RefNotPermitted")),
    (grant("reference-grant", APP, "HTTPRoute", INFRA), ("False", "RefNotPermitted")),  # grant in another ns
    (grant("reference-grant", WEB, "HTTPRoute", APP), ("False", "RefNotPermitted")),  # from another ns
])
def test_http_route_reference_grant(grant_doc: str, want: tuple[str, str]) -> None:
    """HTTPRouteReferenceGrant and its negative variants."""
    out = run(grant_doc, route("reference-grant", [gw_ref()], [{"backendRefs": [to("web-backend", ns=WEB)]}]))
    assert out.parent("reference-grant", "same-namespace")["ResolvedRefs"] == want
    assert out.parent("reference-grant", "same-namespace")["Accepted"] == ("True", "Accepted")


def test_http_route_service_types() -> None:
    """HTTPRouteServiceTypes: headless Services and Services without a selector (manual slices) work."""
    headless = yaml.safe_dump({"apiVersion": "v1", "kind": "Service",
                               "metadata": {"name": "infra-backend-v1-headless", "namespace": INFRA},
                               "spec": {"clusterIP": "None", "selector": {"app": "infra-backend-v1"},
                                        "ports": [{"name": "first-port", "port": 8080, "targetPort": 3000}]}})
    manual = yaml.safe_dump({"apiVersion": "v1", "kind": "Service",
                             "metadata": {"name": "manual-endpointslices", "namespace": INFRA},
                             "spec": {"clusterIP": "127.96.1.40",
                                      "ports": [{"name": "first-port", "port": 8080, "targetPort": 3000}]}})
    slices = [yaml.safe_dump({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                              "metadata": {"name": f"{svc}-1", "namespace": INFRA,
                                           "labels": {"kubernetes.io/service-name": svc}},
                              "addressType": "IPv4", "ports": [{"name": "first-port", "port": 3000}],
                              "endpoints": [{"addresses": ["127.1.1.1"], "conditions": {"ready": True}}]})
              for svc in ("infra-backend-v1-headless", "manual-endpointslices")]
    out = run(headless, manual, *slices, route("service-types", [gw_ref()], [
        {"matches": [{"path": {"type": "PathPrefix", "value": "/headless"}}],
         "backendRefs": [to("infra-backend-v1-headless")]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/manual"}}],
         "backendRefs": [to("manual-endpointslices")]}]))
    assert out.parent("service-types", "same-namespace") == OK


def test_http_route_observed_generation_bump() -> None:
    """HTTPRouteObservedGenerationBump: every condition carries the new generation."""
    for gen in (1, 2):
        out = run(route("observed-generation-bump", [gw_ref()], [{"backendRefs": [to("infra-backend-v1")]}],
                        generation=gen))
        for p in out.status("HTTPRoute", "observed-generation-bump")["parents"]:
            assert {c["observedGeneration"] for c in p["conditions"]} == {gen}


# -- hostnames --------------------------------------------------------------------------------------------
HOSTNAME_INTERSECTION = gateway("httproute-hostname-intersection", [
    {"name": "listener-1", "port": 80, "protocol": "HTTP", "hostname": "very.specific.com"},
    {"name": "listener-2", "port": 80, "protocol": "HTTP", "hostname": "*.wildcard.io"},
    {"name": "listener-3", "port": 80, "protocol": "HTTP", "hostname": "*.anotherwildcard.io"},
])


def hostname_intersection_routes(gw: str = "httproute-hostname-intersection") -> list[str]:
    ref = [gw_ref(gw)]

    def r(name: str, hosts: list[str], path: str, backend: str) -> str:
        return route(name, ref, [{"matches": [{"path": {"type": "PathPrefix", "value": path}}],
                                  "backendRefs": [to(backend)]}], hostnames=hosts)

    return [
        r("specific-host-matches-listener-specific-host",
          ["non.matching.com", "*.nonmatchingwildcard.io", "very.specific.com"], "/s1", "infra-backend-v1"),
        r("specific-host-matches-listener-wildcard-host",
          ["non.matching.com", "wildcard.io", "foo.wildcard.io", "bar.wildcard.io", "foo.bar.wildcard.io"], "/s2",
          "infra-backend-v2"),
        r("wildcard-host-matches-listener-specific-host", ["non.matching.com", "*.specific.com"], "/s3",
          "infra-backend-v3"),
        r("wildcard-host-matches-listener-wildcard-host", ["*.anotherwildcard.io"], "/s4", "infra-backend-v1"),
        r("no-intersecting-hosts", ["specific.but.wrong.com", "wildcard.io"], "/s5", "infra-backend-v2"),
    ]


def test_http_route_hostname_intersection() -> None:
    """HTTPRouteHostnameIntersection: attachment, NoMatchingListenerHostname, and attachedRoutes counting only
    the routes accepted on each listener."""
    out = run(HOSTNAME_INTERSECTION, *hostname_intersection_routes())
    gw = "httproute-hostname-intersection"
    for name in ("specific-host-matches-listener-specific-host", "specific-host-matches-listener-wildcard-host",
                 "wildcard-host-matches-listener-specific-host", "wildcard-host-matches-listener-wildcard-host"):
        assert out.parent(name, gw) == OK, name
    assert out.parent("no-intersecting-hosts", gw)["Accepted"] == ("False", "NoMatchingListenerHostname")
    assert [out.listener(gw, f"listener-{i}")["attachedRoutes"] for i in (1, 2, 3)] == [2, 1, 1]
    for i in (1, 2, 3):
        conds = out.listener_conds(gw, f"listener-{i}")
        assert conds["Accepted"][0] == conds["ResolvedRefs"][0] == "True"


def test_http_route_listener_hostname_matching() -> None:
    """HTTPRouteListenerHostnameMatching: routes attach by sectionName, one listener each (routing in e2e)."""
    gw = gateway("httproute-listener-hostname-matching", [
        {"name": "listener-1", "port": 80, "protocol": "HTTP", "hostname": "bar.com"},
        {"name": "listener-2", "port": 80, "protocol": "HTTP", "hostname": "foo.bar.com"},
        {"name": "listener-3", "port": 80, "protocol": "HTTP", "hostname": "*.bar.com"},
        {"name": "listener-4", "port": 80, "protocol": "HTTP", "hostname": "*.foo.com"},
    ])
    ref = "httproute-listener-hostname-matching"
    out = run(gw,
              route("backend-v1", [gw_ref(ref, sectionName="listener-1")], [{"backendRefs": [to("infra-backend-v1")]}]),
              route("backend-v2", [gw_ref(ref, sectionName="listener-2")], [{"backendRefs": [to("infra-backend-v2")]}]),
              route("backend-v3", [gw_ref(ref, sectionName="listener-3"), gw_ref(ref, sectionName="listener-4")],
                    [{"backendRefs": [to("infra-backend-v3")]}]))
    assert out.parent("backend-v3", ref, section="listener-4") == OK
    assert [out.listener(ref, f"listener-{i}")["attachedRoutes"] for i in (1, 2, 3, 4)] == [1, 1, 1, 1]


# -- Gateways -----------------------------------------------------------------------------------------------
def test_gateway_invalid_route_kind() -> None:
    """GatewayInvalidRouteKind: ResolvedRefs=False/InvalidRouteKinds; supportedKinds only the valid kinds."""
    only = gateway("gateway-only-invalid-route-kind", [
        {"name": "http", "port": 80, "protocol": "HTTP",
         "allowedRoutes": {"namespaces": {"from": "All"}, "kinds": [{"kind": "InvalidRoute"}]}}])
    mixed = gateway("gateway-supported-and-invalid-route-kind", [
        {"name": "http", "port": 80, "protocol": "HTTP",
         "allowedRoutes": {"namespaces": {"from": "All"}, "kinds": [{"kind": "InvalidRoute"}, {"kind": "HTTPRoute"}]}}])
    control = route("gateway-supported-and-invalid-route-kind-control",
                    [gw_ref("gateway-supported-and-invalid-route-kind", sectionName="http")],
                    [{"backendRefs": [to("infra-backend-v1")]}], hostnames=["supported-route-kind.example.com"])
    out = run(only, mixed, control)
    li = out.listener("gateway-only-invalid-route-kind", "http")
    assert li["supportedKinds"] == [] and li["attachedRoutes"] == 0
    assert out.listener_conds("gateway-only-invalid-route-kind", "http")["ResolvedRefs"] == \
        ("False", "InvalidRouteKinds")
    li = out.listener("gateway-supported-and-invalid-route-kind", "http")
    assert li["supportedKinds"] == HTTPROUTE_KIND and li["attachedRoutes"] == 1
    assert out.listener_conds("gateway-supported-and-invalid-route-kind", "http")["ResolvedRefs"] == \
        ("False", "InvalidRouteKinds")
    assert out.parent("gateway-supported-and-invalid-route-kind-control",
                      "gateway-supported-and-invalid-route-kind", section="http") == OK


@pytest.mark.parametrize("ref", [
    {"name": "nonexistent-certificate"},
    {"group": "wrong.group.company.io", "kind": "Secret", "name": "tls-validity-checks-certificate"},
    {"group": "", "kind": "WrongKind", "name": "tls-validity-checks-certificate"},
    {"name": "malformed-certificate"},
])
def test_gateway_invalid_tls_configuration(ref: dict[str, Any]) -> None:
    """GatewayInvalidTLSConfiguration: the https listener has ResolvedRefs=False/InvalidCertificateRef and
    serves nothing; the http control listener and its route still work."""
    gw = gateway("gateway-certificate-invalid", [
        {"name": "http", "port": 80, "protocol": "HTTP", "hostname": "control.example.com"},
        {"name": "https", "port": 443, "protocol": "HTTPS", "tls": {"certificateRefs": [ref]}}])
    control = route("control", [gw_ref("gateway-certificate-invalid", sectionName="http")],
                    [{"backendRefs": [to("infra-backend-v1")]}], hostnames=["control.example.com"])
    out = run(secret("tls-validity-checks-certificate"),
              secret("malformed-certificate", crt="Hello world", key="Hello world"), gw, control)
    conds = out.listener_conds("gateway-certificate-invalid", "https")
    assert conds["ResolvedRefs"] == ("False", "InvalidCertificateRef")
    assert conds["Programmed"][0] == "False"
    assert out.listener_conds("gateway-certificate-invalid", "http")["Programmed"] == ("True", "Programmed")
    assert out.parent("control", "gateway-certificate-invalid", section="http") == OK
    listeners = [li for b in out.result.ir.bundles if b.key == f"gateway:{INFRA}/gateway-certificate-invalid"
                 for li in b.listeners]
    assert [li.port for li in listeners] == [80]  # nothing answers TLS on 443


@pytest.mark.parametrize(("grants", "want"), [
    ([], ("False", "RefNotPermitted")),  # GatewaySecretMissingReferenceGrant
    ([grant("g", "gateway-conformance-web-backend", "Gateway", INFRA, "Secret")],
     ("True", "ResolvedRefs")),  # GatewaySecretReferenceGrantAllInNamespace
    ([grant("g", "gateway-conformance-web-backend", "Gateway", INFRA, "Secret", "certificate")],
     ("True", "ResolvedRefs")),  # GatewaySecretReferenceGrantSpecific
    ([grant("g", "gateway-conformance-web-backend", "Gateway", INFRA, "Secret", "not-the-certificate")],
     ("False", "RefNotPermitted")),  # GatewaySecretInvalidReferenceGrant
    ([grant("g", "gateway-conformance-web-backend", "HTTPRoute", INFRA, "Secret")],
     ("False", "RefNotPermitted")),
])
def test_gateway_secret_reference_grants(grants: list[str], want: tuple[str, str]) -> None:
    """GatewaySecret*ReferenceGrant*: a certificateRef to another namespace needs a grant from Gateways."""
    gw = gateway("gateway-secret", [
        {"name": "https", "port": 443, "protocol": "HTTPS",
         "tls": {"certificateRefs": [{"name": "certificate", "namespace": "gateway-conformance-web-backend"}]}}])
    out = run(secret("certificate", "gateway-conformance-web-backend"), gw, *grants)
    conds = out.listener_conds("gateway-secret", "https")
    assert conds["ResolvedRefs"] == want
    assert conds["Programmed"][0] == want[0]


def test_gateway_with_attached_routes() -> None:
    """GatewayWithAttachedRoutes (and ...WithPort8080): counts per listener, including a listener whose
    certificate is missing (ResolvedRefs=False, Programmed=False, the route still counted)."""
    sel = {"namespaces": {"from": "Selector", "selector": {"matchLabels": {"kubernetes.io/metadata.name": INFRA}}},
           "kinds": [{"kind": "HTTPRoute"}]}
    one = gateway("gateway-with-one-attached-route", [{"name": "http", "port": 80, "protocol": "HTTP",
                                                       "allowedRoutes": sel}])
    two = gateway("gateway-with-two-attached-routes", [{"name": "http", "port": 80, "protocol": "HTTP",
                                                        "allowedRoutes": sel}])
    two_listeners = gateway("gateway-with-two-listeners-and-one-attached-route", [
        {"name": "http-unattached", "port": 8080, "protocol": "HTTP", "allowedRoutes": sel},
        {"name": "http", "port": 80, "protocol": "HTTP", "allowedRoutes": sel}])
    unresolved = gateway("unresolved-gateway-with-one-attached-unresolved-route", [
        {"name": "https", "port": 443, "protocol": "HTTPS", "allowedRoutes": sel,
         "tls": {"certificateRefs": [{"name": "does-not-exist"}]}}])
    rules = [{"backendRefs": [to("infra-backend-v1")]}]
    out = run(one, two, two_listeners, unresolved,
              route("http-route-1", [gw_ref("gateway-with-one-attached-route")], rules),
              route("http-route-2", [gw_ref("gateway-with-two-attached-routes")], rules),
              route("http-route-3", [gw_ref("gateway-with-two-attached-routes")], rules),
              route("http-route-4", [gw_ref("gateway-with-two-listeners-and-one-attached-route", sectionName="http")],
                    rules),
              route("http-route-5", [gw_ref("unresolved-gateway-with-one-attached-unresolved-route")], rules))
    for gw, listener, count in (("gateway-with-one-attached-route", "http", 1),
                                ("gateway-with-two-attached-routes", "http", 2),
                                ("gateway-with-two-listeners-and-one-attached-route", "http-unattached", 0),
                                ("gateway-with-two-listeners-and-one-attached-route", "http", 1)):
        li = out.listener(gw, listener)
        assert (li["attachedRoutes"], li["supportedKinds"]) == (count, HTTPROUTE_KIND), (gw, listener)
        conds = out.listener_conds(gw, listener)
        assert conds["Accepted"][0] == conds["ResolvedRefs"][0] == "True"
    gw = "unresolved-gateway-with-one-attached-unresolved-route"
    assert out.listener(gw, "https")["attachedRoutes"] == 1
    conds = out.listener_conds(gw, "https")
    assert conds["ResolvedRefs"] == ("False", "InvalidCertificateRef")
    assert conds["Programmed"] == ("False", "Invalid")


def test_gateway_modify_listeners() -> None:
    """GatewayModifyListeners: adding a listener makes it appear with its own status; removing one drops it
    and the routes bound to it by sectionName lose their parent (NoMatchingParent)."""
    base = [{"name": "http", "port": 80, "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "All"}}}]
    added = [*base, {"name": "https", "port": 443, "protocol": "HTTPS",
                     "allowedRoutes": {"namespaces": {"from": "All"}},
                     "tls": {"certificateRefs": [{"name": "tls-validity-checks-certificate"}]}}]
    r = route("http-route", [gw_ref("gateway-add-listener")], [{"backendRefs": [to("infra-backend-v1")]}])
    before = run(secret("tls-validity-checks-certificate"), gateway("gateway-add-listener", base), r)
    after = run(secret("tls-validity-checks-certificate"), gateway("gateway-add-listener", added, generation=2), r)
    assert [li["name"] for li in before.status("Gateway", "gateway-add-listener")["listeners"]] == ["http"]
    assert [li["name"] for li in after.status("Gateway", "gateway-add-listener")["listeners"]] == ["http", "https"]
    assert after.listener("gateway-add-listener", "https")["attachedRoutes"] == 1
    assert after.listener_conds("gateway-add-listener", "https")["Programmed"] == ("True", "Programmed")
    for c in after.status("Gateway", "gateway-add-listener")["conditions"]:
        assert c["observedGeneration"] == 2
    bound = route("bound", [gw_ref("gateway-remove-listener", sectionName="https")],
                  [{"backendRefs": [to("infra-backend-v1")]}])
    removed = run(gateway("gateway-remove-listener", base, generation=2), bound)
    assert removed.parent("bound", "gateway-remove-listener", section="https")["Accepted"] == \
        ("False", "NoMatchingParent")


def test_gateway_and_class_observed_generation_bump() -> None:
    """GatewayObservedGenerationBump and GatewayClassObservedGenerationBump."""
    for gen in (1, 3):
        gw = gateway("gateway-observed-generation-bump",
                     [{"name": "http", "port": 80, "protocol": "HTTP"}], generation=gen)
        cls = yaml.safe_dump({"apiVersion": GW, "kind": "GatewayClass",
                              "metadata": {"name": "gatewayclass-observed-generation-bump", "generation": gen},
                              "spec": {"controllerName": "cilia.io/gateway-controller"}})
        out = run(gw, cls)
        st = out.status("Gateway", "gateway-observed-generation-bump")
        assert {c["observedGeneration"] for c in st["conditions"]} == {gen}
        assert {c["observedGeneration"] for li in st["listeners"] for c in li["conditions"]} == {gen}
        cst = out.status("GatewayClass", "gatewayclass-observed-generation-bump")
        assert [(c["type"], c["status"], c["observedGeneration"]) for c in cst["conditions"]
                if c["type"] == "Accepted"] == [("Accepted", "True", gen)]


# -- TLSRoute, GRPCRoute --------------------------------------------------------------------------------------
def test_tls_route_simple_same_namespace() -> None:
    """TLSRouteSimpleSameNamespace: a passthrough listener, a TLSRoute by SNI."""
    gw = gateway("gateway-tlsroute", [{"name": "tls", "port": 443, "protocol": "TLS", "hostname": "*.example.com",
                                       "tls": {"mode": "Passthrough"},
                                       "allowedRoutes": {"namespaces": {"from": "Same"}}}])
    svc = yaml.safe_dump({"apiVersion": "v1", "kind": "Service",
                          "metadata": {"name": "tls-backend", "namespace": INFRA},
                          "spec": {"clusterIP": "127.96.1.30", "ports": [{"port": 443, "targetPort": 8443}]}})
    r = yaml.safe_dump({"apiVersion": "gateway.networking.k8s.io/v1alpha2", "kind": "TLSRoute",
                        "metadata": {"name": "gateway-conformance-infra-test", "namespace": INFRA},
                        "spec": {"parentRefs": [gw_ref("gateway-tlsroute")], "hostnames": ["abc.example.com"],
                                 "rules": [{"backendRefs": [{"name": "tls-backend", "port": 443}]}]}})
    out = run(gw, svc, r)
    assert out.parent("gateway-conformance-infra-test", "gateway-tlsroute", kind="TLSRoute") == OK
    assert out.listener("gateway-tlsroute", "tls")["supportedKinds"] == [
        {"group": "gateway.networking.k8s.io", "kind": "TLSRoute"}]
    chains = [fc for b in out.result.ir.bundles if b.key == f"gateway:{INFRA}/gateway-tlsroute"
              for li in b.listeners for fc in li.filter_chains]
    assert [fc.server_names for fc in chains] == [("abc.example.com",)]


def test_grpc_route_listener_hostname_matching() -> None:
    """GRPCRouteListenerHostnameMatching and GRPCExactMethodMatching: GRPCRoutes attach by sectionName."""
    gw = gateway("grpcroute-listener-hostname-matching", [
        {"name": "listener-1", "port": 80, "protocol": "HTTP", "hostname": "bar.com"},
        {"name": "listener-2", "port": 80, "protocol": "HTTP", "hostname": "foo.bar.com"},
        {"name": "listener-3", "port": 80, "protocol": "HTTP", "hostname": "*.bar.com"},
        {"name": "listener-4", "port": 80, "protocol": "HTTP", "hostname": "*.foo.com"}])
    ref = "grpcroute-listener-hostname-matching"
    routes = [route(f"backend-v{i}", [gw_ref(ref, sectionName=f"listener-{i}")],
                    [{"matches": [{"method": {"type": "Exact", "service": "gateway_api_conformance.echo_basic."
                                                                          "grpcecho.GrpcEcho", "method": "Echo"}}],
                      "backendRefs": [to(f"grpc-infra-backend-v{i}")]}], kind="GRPCRoute") for i in (1, 2, 3)]
    out = run(gw, *routes)
    for i in (1, 2, 3):
        assert out.parent(f"backend-v{i}", ref, kind="GRPCRoute", section=f"listener-{i}") == OK
    assert out.listener(ref, "listener-1")["supportedKinds"] == [
        {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"},
        {"group": "gateway.networking.k8s.io", "kind": "GRPCRoute"}]


# -- GAMMA (MESH-HTTP) ------------------------------------------------------------------------------------------
MESH = "gateway-conformance-mesh"
MESH_CONSUMER = "gateway-conformance-mesh-consumer"


def mesh_world(*extra: str) -> Outcome:
    svcs = []
    for name, vip in (("echo", "127.96.2.1"), ("echo-v1", "127.96.2.2"), ("echo-v2", "127.96.2.3")):
        svcs.append(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": MESH},
            "spec": {"clusterIP": vip, "ports": [{"name": "http", "port": 80, "targetPort": 8080},
                                                 {"name": "http-alt", "port": 8080, "targetPort": 8080}]}}))
    return run(*svcs, *extra)


def svc_ref(name: str = "echo", port: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"group": "", "kind": "Service", "name": name, "namespace": MESH}
    if port is not None:
        out["port"] = port
    return out


def test_mesh_traffic_split_and_ports() -> None:
    """MeshTrafficSplit, MeshPorts, MeshHTTPRoute*: producer routes on a Service (all ports, or one)."""
    split = route("mesh-split", [svc_ref()], [
        {"matches": [{"path": {"type": "Exact", "value": "/v1"}}], "backendRefs": [to("echo-v1", 80)]},
        {"matches": [{"path": {"type": "Exact", "value": "/v2"}}], "backendRefs": [to("echo-v2", 80)]}], ns=MESH)
    ported = route("mesh-ports", [svc_ref("echo-v1", 8080)], [{"backendRefs": [to("echo-v2", 8080)]}], ns=MESH)
    missing = route("mesh-missing-port", [svc_ref("echo-v1", 9999)], [{"backendRefs": [to("echo-v2", 8080)]}], ns=MESH)
    out = mesh_world(split, ported, missing)
    assert out.parent("mesh-split", "echo", MESH) == OK
    assert out.parent("mesh-ports", "echo-v1", MESH) == OK
    assert out.parent("mesh-missing-port", "echo-v1", MESH)["Accepted"] == ("False", "NoMatchingParent")
    names = {rc.name for b in out.result.ir.bundles for rc in b.routes if rc.name.startswith("mesh/")}
    assert {f"mesh/{MESH}/echo:80", f"mesh/{MESH}/echo:8080", f"mesh/{MESH}/echo-v1:8080"} <= names
    assert f"mesh/{MESH}/echo-v1:80" not in names


def test_mesh_consumer_route() -> None:
    """MeshConsumerRoute: a route in the client's namespace applies to that namespace's clients only."""
    consumer = route("consumer", [svc_ref("echo", 80)], [{"backendRefs": [to("echo-v2", 80, ns=MESH)]}],
                     ns=MESH_CONSUMER)
    out = mesh_world(namespace(MESH_CONSUMER), grant("g", MESH, "HTTPRoute", MESH_CONSUMER), consumer)
    assert out.parent("consumer", "echo", MESH_CONSUMER) == OK
    scoped = [b for b in out.result.ir.bundles if any(rc.name == f"mesh/{MESH_CONSUMER}/{MESH}/echo:80"
                                                      for rc in b.routes)]
    assert [sorted(b.scope.namespaces or ()) for b in scoped] == [[MESH_CONSUMER]]


def namespace(name: str) -> str:
    return yaml.safe_dump({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


# -- behaviours the conformance runner (tests/conformance) found missing -----------------------------
def _ir_routes(out: Outcome, gateway: str = "same-namespace") -> list[Any]:
    from cilia.ir import model as ir
    found: list[ir.Route] = []
    for p in out.result.partials:
        for b in p.bundles:
            if b.key == f"gateway:{INFRA}/{gateway}":
                found.extend(r for rc in b.routes for vh in rc.virtual_hosts for r in vh.routes)
    return found


def test_gateway_class_supported_version_and_features() -> None:
    from cilia.translate.gateway_common import SUPPORTED_FEATURES
    st = run().status("GatewayClass", "cilia")
    conds = {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]}
    assert conds == {"Accepted": ("True", "Accepted"), "SupportedVersion": ("True", "SupportedVersion")}
    assert st["supportedFeatures"] == [{"name": f} for f in sorted(SUPPORTED_FEATURES)]


def test_gateway_invalid_parameters_ref() -> None:
    """GatewayInvalidParametersRef (upstream v1.6)."""
    doc = yaml.safe_load(gateway("gw-params", [{"name": "http", "port": 80, "protocol": "HTTP"}]))
    doc["spec"]["infrastructure"] = {"parametersRef": {"group": "invalid.io", "kind": "InvalidParameters",
                                                       "name": "invalid"},
                                     "labels": {"team": "a"}, "annotations": {"note": "b"}}
    out = run(yaml.safe_dump(doc))
    assert out.gateway_conds("gw-params") == {"Accepted": ("False", "InvalidParameters"),
                                              "Programmed": ("False", "Invalid")}


def test_partially_invalid_rule_is_left_out() -> None:
    rules = [{"matches": [{"path": {"type": "PathPrefix", "value": "/ok"}}], "backendRefs": [to("infra-backend-v1")]},
             {"matches": [{"path": {"type": "PathPrefix", "value": "/auth"}}], "filters": [{"type": "ExternalAuth"}],
              "backendRefs": [to("infra-backend-v1")]}]
    out = run(route("partial", [gw_ref()], rules))
    assert out.parent("partial", "same-namespace") == {**OK, "PartiallyInvalid": ("True", "UnsupportedValue")}
    names = [r.name for r in _ir_routes(out)]
    assert any("/partial/0/" in n for n in names) and not any("/partial/1/" in n for n in names)
    out = run(route("all-bad", [gw_ref()], [rules[1]]))
    assert out.parent("all-bad", "same-namespace") == {"Accepted": ("False", "UnsupportedValue"),
                                                      "ResolvedRefs": ("True", "ResolvedRefs")}


def test_backend_ref_url_rewrite_and_redirect() -> None:
    rewrite = {"type": "URLRewrite", "urlRewrite": {"hostname": "rewritten.example",
                                                     "path": {"type": "ReplaceFullPath", "replaceFullPath": "/new"}}}
    redirect = {"type": "RequestRedirect", "requestRedirect": {"hostname": "moved.example", "statusCode": 301}}
    out = run(route("backend-filters", [gw_ref()], [
        {"matches": [{"path": {"type": "PathPrefix", "value": "/rw"}}],
         "backendRefs": [to("infra-backend-v1", filters=[rewrite])]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/rd"}}],
         "backendRefs": [to("infra-backend-v1", filters=[redirect])]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/two"}}],
         "backendRefs": [to("infra-backend-v1", filters=[rewrite]), to("infra-backend-v2")]}]))
    assert out.parent("backend-filters", "same-namespace")["PartiallyInvalid"] == ("True", "UnsupportedValue")
    by = {r.match.path.value: r for r in _ir_routes(out)}
    assert by["/rw"].rewrite is not None and by["/rw"].rewrite.host == "rewritten.example"
    assert by["/rw"].rewrite.path_full == "/new" and by["/rw"].backends
    assert by["/rd"].redirect is not None and by["/rd"].redirect.host == "moved.example"
    assert by["/rd"].redirect.status_code == 301
    assert "/two" not in by


def test_retry_policy_is_rendered() -> None:
    from cilia.render.envoy import render_route
    out = run(route("retries", [gw_ref()], [{"retry": {"codes": [500, 503], "attempts": 3, "backoff": "100ms"},
                                             "backendRefs": [to("infra-backend-v3")]}]))
    [r] = _ir_routes(out)
    pol = render_route(r).route.retry_policy
    assert pol.num_retries.value == 3 and list(pol.retriable_status_codes) == [500, 503]
    assert "retriable-status-codes" in pol.retry_on and "connect-failure" in pol.retry_on
    assert pol.retry_back_off.base_interval.ToMilliseconds() == 100


def test_retry_codes_are_validated() -> None:
    with pytest.raises(Exception, match=r"retry\.codes"):
        run(route("bad-retry", [gw_ref()], [{"retry": {"codes": [200]}, "backendRefs": [to("infra-backend-v3")]}]))
