"""Unit tests for the Gateway API pieces: parsing (CRD rules), hostnames, conditions, GAMMA lookup,
the IR/render additions, and the promise that a broken route never disturbs the others."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

import cilia.k8s.kinds  # noqa: F401  (registers the kinds)
from cilia.errors import ValidationError
from cilia.ir import model as ir
from cilia.k8s.gateway import parse_duration_ms
from cilia.k8s.objects import KubeObject
from cilia.k8s.registry import parse_object
from cilia.k8s.store import InputSnapshot
from cilia.render.envoy import render_listener, render_route
from cilia.translate.context import TranslateOptions
from cilia.translate.gamma import consumer_route_name, mesh_routes_for, producer_route_name
from cilia.translate.gateway import translate_gateway
from cilia.translate.gateway_common import Cond, conditions, covers, intersect

GW = "gateway.networking.k8s.io/v1"


def obj(doc: dict[str, Any] | str) -> KubeObject:
    return parse_object(yaml.safe_load(doc) if isinstance(doc, str) else doc)


def route_doc(rules: list[dict[str, Any]], name: str = "r", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": name, "namespace": "default"},
            "spec": {"parentRefs": [{"name": "gw"}], "rules": rules, **spec}}


# -- parsing ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("doc", "field"), [
    ({"apiVersion": GW, "kind": "Gateway", "metadata": {"name": "g"},
      "spec": {"gatewayClassName": "c", "listeners": [{"name": "h", "port": 443, "protocol": "HTTPS"}]}},
     "spec.listeners[0].tls"),
    ({"apiVersion": GW, "kind": "Gateway", "metadata": {"name": "g"},
      "spec": {"gatewayClassName": "c", "listeners": [{"name": "h", "port": 80, "protocol": "HTTP"},
                                                      {"name": "h", "port": 81, "protocol": "HTTP"}]}},
     "spec.listeners[1].name"),
    ({"apiVersion": GW, "kind": "Gateway", "metadata": {"name": "g"},
      "spec": {"gatewayClassName": "c", "listeners": [{"name": "t", "port": 80, "protocol": "TCP",
                                                       "hostname": "a.example.com"}]}},
     "spec.listeners[0].hostname"),
    (route_doc([{"matches": [{"path": {"type": "Exact", "value": "/a"}}], "filters": [
        {"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/b"}}}]}]),
     "spec.rules[0].filters"),
    (route_doc([{"filters": [{"type": "RequestRedirect", "requestRedirect": {"statusCode": 305}}]}]),
     "spec.rules[0].filters[0].requestRedirect.statusCode"),
    (route_doc([{"timeouts": {"request": "1s", "backendRequest": "2s"}}]), "spec.rules[0].timeouts.backendRequest"),
    (route_doc([{"timeouts": {"request": "soon"}}]), "spec.rules[0].timeouts.request"),
    (route_doc([{"matches": [{"headers": [{"name": "bad header", "value": "x"}]}]}]),
     "spec.rules[0].matches[0].headers[0].name"),
    (route_doc([{"matches": [{"path": {"type": "RegularExpression", "value": "("}}]}]),
     "spec.rules[0].matches[0].path.value"),
    (route_doc([{"matches": [{"path": {"type": "PathPrefix", "value": "/a//b"}}]}]),
     "spec.rules[0].matches[0].path.value"),
    (route_doc([{"backendRefs": [{"name": "svc"}]}]), "spec.rules[0].backendRefs[0].port"),
    (route_doc([], hostnames=["*"]), "spec.hostnames[0]"),
    (route_doc([{"filters": [{"type": "RequestRedirect", "requestRedirect": {}},
                             {"type": "URLRewrite", "urlRewrite": {}}]}]), "spec.rules[0].filters"),
    ({"apiVersion": GW, "kind": "GRPCRoute", "metadata": {"name": "g"},
      "spec": {"rules": [{"matches": [{"method": {"type": "Exact"}}]}]}}, "spec.rules[0].matches[0].method"),
    ({"apiVersion": "gateway.networking.k8s.io/v1alpha2", "kind": "TCPRoute", "metadata": {"name": "t"},
      "spec": {"rules": [{"backendRefs": []}]}}, "spec.rules[0].backendRefs"),
])
def test_parse_rejects_what_the_crds_reject(doc: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        obj(doc)
    assert err.value.field == field


def test_versions_and_defaults() -> None:
    r = obj(route_doc([{"backendRefs": [{"name": "svc", "port": 80}]}]))
    assert r.spec.parent_refs[0].namespace == "default" and r.spec.parent_refs[0].is_gateway
    assert r.spec.rules[0].matches[0].path is None  # no match: PathPrefix "/"
    assert r.spec.rules[0].backend_refs[0].weight == 1
    for kind, version in (("TLSRoute", "v1alpha2"), ("TLSRoute", "v1alpha3"), ("TCPRoute", "v1alpha2"),
                          ("GRPCRoute", "v1"), ("ReferenceGrant", "v1beta1"), ("ReferenceGrant", "v1")):
        spec: dict[str, Any] = {"rules": [{"backendRefs": [{"name": "s", "port": 1}]}]}
        if kind == "ReferenceGrant":
            spec = {"from": [{"group": "g", "kind": "k", "namespace": "n"}], "to": [{"group": "", "kind": "Service"}]}
        o = obj({"apiVersion": f"gateway.networking.k8s.io/{version}", "kind": kind,
                 "metadata": {"name": "x", "namespace": "n"}, "spec": spec})
        assert o.kind == kind


@pytest.mark.parametrize(("text", "ms"), [("10s", 10_000), ("500ms", 500), ("1h30m", 5_400_000), ("0s", 0),
                                          ("1m1s1ms", 61_001)])
def test_durations(text: str, ms: int) -> None:
    assert parse_duration_ms(text, "x") == ms


# -- hostnames --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("pattern", "host", "want"), [
    ("*.example.com", "a.example.com", True), ("*.example.com", "a.b.example.com", True),
    ("*.example.com", "example.com", False), ("*.example.com", "*.a.example.com", True),
    ("a.example.com", "*.example.com", False), ("", "anything", True), ("*", "x", True),
])
def test_covers(pattern: str, host: str, want: bool) -> None:
    assert covers(pattern, host) is want


@pytest.mark.parametrize(("listener", "route", "want"), [
    ("", [], ("*",)), ("*.example.com", [], ("*.example.com",)), ("", ["a.com", "b.com"], ("a.com", "b.com")),
    ("*.example.com", ["foo.example.com", "example.com", "*.com"], ("foo.example.com", "*.example.com")),
    ("foo.example.com", ["*.example.com"], ("foo.example.com",)), ("a.com", ["b.com"], ()),
])
def test_intersect(listener: str, route: list[str], want: tuple[str, ...]) -> None:
    assert intersect(listener, route) == want


# -- conditions ------------------------------------------------------------------------------------------
def test_condition_times_are_stable_and_foreign_conditions_kept() -> None:
    prev = [{"type": "Accepted", "status": "True", "lastTransitionTime": "T1", "reason": "Accepted"},
            {"type": "ResolvedRefs", "status": "True", "lastTransitionTime": "T1"},
            {"type": "vendor.io/X", "status": "True", "lastTransitionTime": "T0"}]
    out = conditions([Cond("Accepted", True, "Accepted", "m"), Cond("ResolvedRefs", False, "BackendNotFound")],
                     4, prev, "NOW")
    by = {c["type"]: c for c in out}
    assert by["Accepted"]["lastTransitionTime"] == "T1"  # unchanged status: time kept
    assert by["ResolvedRefs"]["lastTransitionTime"] == "NOW"  # changed: new time
    assert by["vendor.io/X"] == prev[2]
    assert {c["observedGeneration"] for c in out if c["type"] != "vendor.io/X"} == {4}


def test_status_time_option_is_used_for_changes() -> None:
    snap = InputSnapshot.of([obj({"apiVersion": GW, "kind": "GatewayClass", "metadata": {"name": "c"},
                                  "spec": {"controllerName": "cilia.io/gateway-controller"}})])
    out = translate_gateway(snap, TranslateOptions(status_time="2030-01-01T00:00:00Z"))
    assert out.statuses[0].status["conditions"][0]["lastTransitionTime"] == "2030-01-01T00:00:00Z"


# -- translation properties --------------------------------------------------------------------------------
BASE = """
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: cilia}
spec: {controllerName: cilia.io/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  gatewayClassName: cilia
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: default}
spec: {clusterIP: 127.96.0.10, ports: [{name: http, port: 80}]}
"""


def snapshot(*extra: dict[str, Any]) -> InputSnapshot:
    return InputSnapshot.of([obj(d) for d in yaml.safe_load_all(BASE)] + [obj(d) for d in extra])


def gateway_routes(snap: InputSnapshot) -> dict[str, Any]:
    out = translate_gateway(snap, TranslateOptions())
    bundle = next(b for b in out.bundles if b.key == "gateway:default/gw")
    return {vh.domains[0]: vh for vh in bundle.routes[0].virtual_hosts}


def test_a_broken_route_never_disturbs_the_others() -> None:
    good = route_doc([{"backendRefs": [{"name": "svc", "port": 80}]}], name="good", hostnames=["good.test"])
    before = gateway_routes(snapshot(good))
    broken = [
        route_doc([{"backendRefs": [{"name": "nope", "port": 80}]}], name="b1", hostnames=["good.test"]),
        route_doc([{"backendRefs": [{"group": "x.io", "kind": "Y", "name": "z", "port": 1}]}], name="b2"),
        route_doc([{"filters": [{"type": "ExternalAuth"}], "backendRefs": [{"name": "svc", "port": 80}]}], name="b3",
                  hostnames=["good.test"]),
        {**route_doc([{"backendRefs": [{"name": "svc", "port": 80}]}], name="b4"),
         "spec": {"parentRefs": [{"name": "gw", "sectionName": "nope"}], "rules": []}},
    ]
    after = gateway_routes(snapshot(good, *broken))
    good_routes = [r for r in after["good.test"].routes if "/good/" in r.name]
    assert good_routes == [r for r in before["good.test"].routes]
    assert all("/b3/" not in r.name for r in after["good.test"].routes)  # not Accepted: not programmed


def test_translation_is_deterministic() -> None:
    docs = [route_doc([{"backendRefs": [{"name": "svc", "port": 80}]}], name=f"r{i}") for i in range(5)]
    a = translate_gateway(snapshot(*docs), TranslateOptions())
    b = translate_gateway(snapshot(*reversed(docs)), TranslateOptions())
    assert a.bundles == b.bundles
    assert json.dumps([s.as_dict() for s in a.statuses]) == json.dumps([s.as_dict() for s in b.statuses])


def test_mesh_routes_for_consumer_producer_and_none() -> None:
    producer = {**route_doc([{"backendRefs": [{"name": "svc", "port": 80}]}], name="p"),
                "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "svc"}],
                         "rules": [{"backendRefs": [{"name": "svc", "port": 80}]}]}}
    consumer = {"apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": "c", "namespace": "client"},
                "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "svc", "namespace": "default",
                                         "port": 80}],
                         "rules": [{"filters": [{"type": "RequestRedirect",
                                                 "requestRedirect": {"hostname": "elsewhere.test"}}]}]}}
    snap = snapshot(producer, consumer)
    rc = mesh_routes_for(snap, "client", "default", "svc", 80)
    assert rc is not None and rc.name == consumer_route_name("client", "default", "svc", 80)
    rc = mesh_routes_for(snap, "default", "default", "svc", 80)
    assert rc is not None and rc.name == producer_route_name("default", "svc", 80)
    assert rc.virtual_hosts[0].domains == ("*",)
    assert mesh_routes_for(snap, "default", "default", "other", 80) is None
    # The same config is in the translator's bundles, scoped to the consumer namespace.
    out = translate_gateway(snap, TranslateOptions())
    b = next(b for b in out.bundles if b.key == "gamma:mesh/client/default/svc:80")
    assert b.routes[0] == mesh_routes_for(snap, "client", "default", "svc", 80)
    assert b.scope.matches("sidecar", "client/pod", {}) and not b.scope.matches("sidecar", "default/pod", {})
    assert b.scope.matches("node", "n1", {})
    # A new snapshot is looked at afresh.
    assert mesh_routes_for(snapshot(), "client", "default", "svc", 80) is None


# -- IR / render additions ------------------------------------------------------------------------------
def test_redirect_prefix_replacement_and_invalid_backend_code() -> None:
    r = ir.Route("r", ir.RouteMatch(ir.PathMatch("prefix", "/old")),
                 redirect=ir.Redirect(path_prefix="/", matched_prefix="/old", status_code=301))
    out = render_route(r)
    assert out.redirect.regex_rewrite.pattern.regex == "^/old/*"
    assert out.redirect.regex_rewrite.substitution == "/"
    plain = render_route(ir.Route("r", ir.RouteMatch(), redirect=ir.Redirect(path_prefix="/new")))
    assert plain.redirect.prefix_rewrite == "/new"  # without matched_prefix: unchanged behaviour
    r = ir.Route("r", ir.RouteMatch(), backends=(ir.Backend("a"), ir.Backend("missing")), cluster_not_found_status=500)
    assert render_route(r).route.cluster_not_found_response_code == 2  # INTERNAL_SERVER_ERROR


def test_strip_host_port_renders() -> None:
    li = ir.Listener("l", "127.0.0.1", 80, (ir.FilterChain("c", ir.HttpApp("rc", strip_host_port=True)),))
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm

    msg = hcm.HttpConnectionManager()
    render_listener(li).filter_chains[0].filters[0].typed_config.Unpack(msg)
    assert msg.strip_any_host_port


# -- example and status summary -------------------------------------------------------------------------
def test_example_translates_cleanly_and_everything_is_accepted() -> None:
    from pathlib import Path

    from cilia.app import load_once
    from cilia.translate import translate
    from cilia.translate.gateway import describe_statuses

    example = Path(__file__).resolve().parents[2] / "examples" / "gateway"
    result = translate(load_once([str(example)]).snapshot())
    assert [i for i in result.issues if i.severity == "error"] == []
    stanzas = [s.as_dict() for s in result.statuses]
    lines = describe_statuses(stanzas)
    assert "GatewayClass cilia: Accepted=True(Accepted) SupportedVersion=True(SupportedVersion)" in lines
    assert any(line.startswith("Gateway default/demo [127.0.0.1]: Accepted=True(Accepted)") for line in lines)
    parents = [line for line in lines if line.lstrip().startswith("parent ")]
    assert len(parents) == 3 and all("Accepted=True" in p and "ResolvedRefs=True" in p for p in parents)
    assert "  parent Service default/blue:80: Accepted=True(Accepted) ResolvedRefs=True(ResolvedRefs)" in lines


def test_mesh_route_backends_in_other_namespaces_need_no_reference_grant() -> None:
    """GAMMA routes reach backends in any namespace without a ReferenceGrant; Gateway routes still need one."""
    rules = [{"backendRefs": [{"name": "svc", "namespace": "default", "port": 80}]}]
    consumer = {"apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": "c", "namespace": "client"},
                "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "svc", "namespace": "default"}],
                         "rules": rules}}
    north_south = {"apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": "ns", "namespace": "client"},
                   "spec": {"parentRefs": [{"name": "gw", "namespace": "default"}], "rules": rules}}
    snap = snapshot(consumer, north_south)
    rc = mesh_routes_for(snap, "client", "default", "svc", 80)
    assert rc is not None and [b.cluster for b in rc.virtual_hosts[0].routes[0].backends] == ["default/svc:80"]
    out = translate_gateway(snap, TranslateOptions())
    by_name = {s.as_dict()["metadata"]["name"]: s.as_dict() for s in out.statuses}
    conds = {c["type"]: c for c in by_name["c"]["status"]["parents"][0]["conditions"]}
    assert conds["ResolvedRefs"]["status"] == "True"
    refused = [c for p in by_name["ns"]["status"]["parents"] for c in p["conditions"] if c["type"] == "ResolvedRefs"]
    assert refused and refused[0]["reason"] == "RefNotPermitted"
