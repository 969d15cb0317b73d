"""Gateway spec.tls.backend.clientCertificateRef: parsing, the Gateway's ResolvedRefs condition for each
kind of bad reference, and the client certificate given only to that Gateway's BackendTLSPolicy clusters
(under names of their own, routes and TCP proxies pointed at them)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cilia.ir import model as ir
from cilia.k8s.manifest import parse_text
from cilia.k8s.store import InputSnapshot
from cilia.translate import translate
from cilia.translate.backendclientcert import client_cert_clusters, retarget_listener, retarget_routes
from cilia.translate.context import TranslateOptions

GW = "gateway.networking.k8s.io/v1"
CRT = "-----BEGIN CERTIFICATE-----\nY2xpZW50\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\na2V5\n-----END PRIVATE KEY-----\n"
CA = "-----BEGIN CERTIFICATE-----\nY2E=\n-----END CERTIFICATE-----\n"


def gateway(name: str, ref: dict[str, Any] | None, port: int = 80) -> dict[str, Any]:
    spec: dict[str, Any] = {"gatewayClassName": "cilia", "listeners": [{"name": "http", "port": port,
                                                                          "protocol": "HTTP"}]}
    if ref is not None:
        spec["tls"] = {"backend": {"clientCertificateRef": ref}}
    return {"apiVersion": GW, "kind": "Gateway", "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def secret(name: str, namespace: str = "default", crt: str = CRT, key: str = KEY) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": namespace}, "stringData": {"tls.crt": crt, "tls.key": key}}


BASE: list[dict[str, Any]] = [
    {"apiVersion": GW, "kind": "GatewayClass", "metadata": {"name": "cilia"},
     "spec": {"controllerName": "cilia.io/gateway-controller"}},
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "secure", "namespace": "default"},
     "spec": {"clusterIP": "127.96.0.20", "ports": [{"name": "https", "port": 443}, {"name": "plain", "port": 80}]}},
    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ca", "namespace": "default"},
     "data": {"ca.crt": CA}},
    {"apiVersion": GW, "kind": "BackendTLSPolicy", "metadata": {"name": "secure-tls", "namespace": "default"},
     "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "secure", "sectionName": "https"}],
              "validation": {"caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "ca"}],
                             "hostname": "secure.example.com"}}},
]


def _translate(*objs: dict[str, Any]) -> Any:
    result = parse_text("\n---\n".join(json.dumps(o) for o in (*BASE, *objs)), "all.yaml")
    assert not result.issues, result.issues
    return translate(InputSnapshot.of(result.objects), TranslateOptions())


def _gateway_conds(res: Any, name: str) -> dict[str, tuple[str, str]]:
    st = next(s for s in res.statuses if s.kind == "Gateway" and s.name == name)
    return {c["type"]: (c["status"], c["reason"]) for c in st.status["conditions"]}


def test_the_reference_is_parsed_with_the_gateways_namespace_by_default() -> None:
    result = parse_text(json.dumps(gateway("gw", {"kind": "Secret", "name": "c"})), "gw.yaml")
    ref = result.objects[0].spec.backend_client_cert
    assert (ref.group, ref.kind, ref.namespace, ref.name, ref.namespace_given) == ("", "Secret", "default", "c", False)
    assert parse_text(json.dumps(gateway("gw", None)), "gw.yaml").objects[0].spec.backend_client_cert is None


def test_a_reference_without_a_name_names_the_field() -> None:
    result = parse_text(json.dumps(gateway("gw", {"kind": "Secret"})), "gw.yaml")
    assert not result.objects and "spec.tls.backend.clientCertificateRef" in str(result.issues[0])


GRANT = {"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
         "metadata": {"name": "g", "namespace": "certs"},
         "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "default"}],
                  "to": [{"group": "", "kind": "Secret"}]}}


@pytest.mark.parametrize(("ref", "extra", "want"), [
    ({"group": "", "kind": "Secret", "name": "client"}, [secret("client")], ("True", "ResolvedRefs")),
    ({"group": "", "kind": "Secret", "name": "c", "namespace": "certs"}, [secret("c", "certs"), GRANT],
     ("True", "ResolvedRefs")),
    ({"group": "", "kind": "Secret", "name": "nonexistent"}, [], ("False", "InvalidClientCertificateRef")),
    ({"group": "wrong.group.io", "kind": "Secret", "name": "client"}, [secret("client")],
     ("False", "InvalidClientCertificateRef")),
    ({"group": "", "kind": "WrongKind", "name": "client"}, [secret("client")],
     ("False", "InvalidClientCertificateRef")),
    ({"group": "", "kind": "Secret", "name": "malformed"}, [secret("malformed", crt="", key="")],
     ("False", "InvalidClientCertificateRef")),
    ({"group": "", "kind": "Secret", "name": "c", "namespace": "certs"}, [secret("c", "certs")],
     ("False", "RefNotPermitted")),
], ids=["same-namespace", "granted", "nonexistent", "group", "kind", "malformed", "not-granted"])
def test_gateway_resolved_refs(ref: dict[str, str], extra: list[dict[str, Any]], want: tuple[str, str]) -> None:
    conds = _gateway_conds(_translate(gateway("gw", ref), *extra), "gw")
    assert conds["ResolvedRefs"] == want
    assert conds["Accepted"] == ("True", "Accepted")  # a bad client certificate never refuses the Gateway


def test_no_reference_no_gateway_resolved_refs_condition() -> None:
    assert "ResolvedRefs" not in _gateway_conds(_translate(gateway("gw", None)), "gw")


def _bundle(res: Any, gw: str) -> ir.Bundle:
    return next(b for b in res.ir.bundles if b.key == f"gateway:default/{gw}")


def test_only_that_gateways_policy_clusters_present_the_certificate() -> None:
    route = {"apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": "web", "namespace": "default"},
             "spec": {"parentRefs": [{"name": "gw"}, {"name": "plain"}, {"name": "missing"}],
                      "rules": [{"backendRefs": [{"name": "secure", "port": 443}],
                                 "matches": [{"path": {"type": "PathPrefix", "value": "/s"}}]},
                                {"backendRefs": [{"name": "secure", "port": 80}]}]}}
    res = _translate(gateway("gw", {"kind": "Secret", "name": "client"}), gateway("plain", None, 81),
                     gateway("missing", {"kind": "Secret", "name": "nope"}, 82), secret("client"), route)
    gw, plain, missing = (_bundle(res, n) for n in ("gw", "plain", "missing"))
    tls = {c.name: c.upstream_tls for c in gw.clusters}
    mtls = "default/secure:443|tls:secure-tls|cert:default/client"
    assert set(tls) == {mtls, "default/secure:80"}
    got = tls[mtls]
    assert got is not None and got.cert_secret == "default/client" and got.sni == "secure.example.com"
    assert tls["default/secure:80"] is None
    assert {b.cluster for vh in gw.routes[0].virtual_hosts for r in vh.routes for b in r.backends} == \
        {mtls, "default/secure:80"}
    assert any(s.name == "default/client" and s.private_key for s in gw.secrets)
    for other in (plain, missing):  # no certificate: the shared policy cluster, untouched; no client secret
        assert {c.name: c.upstream_tls.cert_secret if c.upstream_tls else None for c in other.clusters} == \
            {"default/secure:443|tls:secure-tls": "", "default/secure:80": None}
        assert not any(s.name == "default/client" for s in other.secrets)


def test_rename_keeps_other_clusters_and_retargets_tcp_and_mirrors() -> None:
    policy = ir.Cluster("a|tls:p", upstream_tls=ir.UpstreamTls(sni="a", ca_secret="backendtls:default/p"))
    mesh = ir.Cluster("m", upstream_tls=ir.UpstreamTls(ca_secret=ir.TRUST_BUNDLE_SECRET, cert_secret="w"))
    plain = ir.Cluster("b")
    clusters, renamed = client_cert_clusters({c.name: c for c in (policy, mesh, plain)}, "ns/cert")
    assert renamed == {"a|tls:p": "a|tls:p|cert:ns/cert"}
    assert clusters["m"] is mesh and clusters["b"] is plain
    assert clusters["a|tls:p|cert:ns/cert"].upstream_tls == ir.UpstreamTls(sni="a", ca_secret="backendtls:default/p",
                                                                         cert_secret="ns/cert")
    li = ir.Listener("l", "127.0.0.1", 9000, (ir.FilterChain("c", ir.TcpApp((ir.Backend("a|tls:p"),
                                                                              ir.Backend("b")))),))
    app = retarget_listener(li, renamed).filter_chains[0].app
    assert isinstance(app, ir.TcpApp) and [b.cluster for b in app.backends] == ["a|tls:p|cert:ns/cert", "b"]
    rc = ir.RouteConfig("r", (ir.VirtualHost("v", ("*",), (ir.Route("x", ir.RouteMatch(), (ir.Backend("b"),),
                                                                      mirrors=(ir.Mirror("a|tls:p"),)),)),))
    route = retarget_routes(rc, renamed).virtual_hosts[0].routes[0]
    assert route.backends[0].cluster == "b" and route.mirrors[0].cluster == "a|tls:p|cert:ns/cert"
