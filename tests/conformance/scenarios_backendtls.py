"""BackendTLSPolicy scenarios: the policy's status per ancestor Gateway, and what requests to its backend get.
The suite's Services select the `tls-backend` pods (runner.TLS_BACKENDS), which serve the suite's
`tls-checks-certificate` (runner.BACKEND_CERT_NAMES) and report the SNI they were reached with."""

from __future__ import annotations

from typing import Any

from conformance.runner import GW, HTTPS_GATEWAY, Expect, World, scenario
from conformance.scenarios import _expect_generation, _generation, exact, route, rule, to
from support.conformance_base import INFRA


def https_service(name: str) -> dict[str, Any]:
    """A Service like the suite's TLS backends (selector app=tls-backend, port https 443 -> 8443)."""
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": INFRA},
            "spec": {"selector": {"app": "tls-backend"},
                     "ports": [{"name": "https", "protocol": "TCP", "appProtocol": "HTTPS", "port": 443,
                                "targetPort": 8443}]}}


def policy(name: str, service: str, ca_refs: list[dict[str, str]], hostname: str = "abc.example.com",
           section: str = "", sans: list[dict[str, str]] | None = None) -> dict[str, Any]:
    target: dict[str, str] = {"group": "", "kind": "Service", "name": service}
    if section:
        target["sectionName"] = section
    validation: dict[str, Any] = {"caCertificateRefs": ca_refs, "hostname": hostname}
    if sans:
        validation["subjectAltNames"] = sans
    return {"apiVersion": GW, "kind": "BackendTLSPolicy", "metadata": {"name": name, "namespace": INFRA},
            "spec": {"targetRefs": [target], "validation": validation}}


def expect_policy(w: World, name: str, gateway: str = "same-namespace", **want: tuple[str, str]) -> None:
    """The policy's ancestor stanza for that Gateway has these conditions (type=(status, reason))."""
    def check() -> str:
        st = w.status("BackendTLSPolicy", name)
        if st is None:
            return "no status"
        for a in st["status"].get("ancestors") or []:
            ref = a["ancestorRef"]
            if ref.get("name") == gateway and (ref.get("namespace") or INFRA) == INFRA:
                return w._conds(st, a["conditions"], want)
        return f"no ancestor stanza for Gateway {gateway}"

    w.eventually(f"BackendTLSPolicy {INFRA}/{name} status", check)


def _invalid_ca(w: World, route_name: str, cases: list[tuple[str, str]]) -> None:
    w.expect_route(route_name, Accepted=("True", "Accepted"))
    for name, reason in cases:
        expect_policy(w, name, Accepted=("False", "NoValidCACertificate"), ResolvedRefs=("False", reason))
        w.expect("same-namespace", Expect(f"/backendtlspolicy-{name}", host="abc.example.com",
                                          status=(500, 502, 503)))


@scenario("BackendTLSPolicyInvalidCACertificateRef")
def invalid_ca_certificate_ref(w: World) -> None:
    name = "backendtlspolicy-invalid-ca-certificate-ref"
    svcs = {p: f"backendtlspolicy-{p}-ca-certificate-ref-test" for p in ("nonexistent", "malformed")}
    w.apply([
        route(name, [rule(to(svc, 443), matches=[exact(f"/backendtlspolicy-{p}-ca-certificate-ref")])
                     for p, svc in svcs.items()], hostnames=["abc.example.com"]),
        *(https_service(svc) for svc in svcs.values()),
        policy("nonexistent-ca-certificate-ref", svcs["nonexistent"],
               [{"group": "", "kind": "ConfigMap", "name": "nonexistent-ca-certificate"}]),
        policy("malformed-ca-certificate-ref", svcs["malformed"],
               [{"group": "", "kind": "ConfigMap", "name": "malformed-ca-certificate"}]),
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "malformed-ca-certificate", "namespace": INFRA},
         "data": {}},
    ])
    _invalid_ca(w, name, [("nonexistent-ca-certificate-ref", "InvalidCACertificateRef"),
                          ("malformed-ca-certificate-ref", "InvalidCACertificateRef")])


@scenario("BackendTLSPolicyInvalidKind")
def invalid_kind(w: World) -> None:
    name = "backendtlspolicy-invalid-kind-test"
    w.apply([
        route(name, [rule(to(name, 443), matches=[exact("/backendtlspolicy-invalid-kind")])],
              hostnames=["abc.example.com"]),
        https_service(name),
        policy("invalid-kind", name, [{"group": "invalid.io", "kind": "InvalidKind", "name": "invalid-kind"}]),
    ])
    _invalid_ca(w, name, [("invalid-kind", "InvalidKind")])


@scenario("BackendTLSPolicyObservedGenerationBump")
def observed_generation_bump(w: World) -> None:
    svc = "observed-generation-bump-test"
    ca = [{"group": "", "kind": "ConfigMap", "name": "tls-checks-ca-certificate"}]
    base = [route("backendtlspolicy-observed-generation-bump", [rule(to(svc, 443))]), https_service(svc)]
    w.apply([*base, _generation(policy("observed-generation-bump", svc, ca), 1)])
    expect_policy(w, "observed-generation-bump", Accepted=("True", "Accepted"), ResolvedRefs=("True", "ResolvedRefs"))
    w.apply([*base, _generation(policy("observed-generation-bump", svc, ca, hostname="foo.example.com"), 2)])
    _expect_generation(w, "BackendTLSPolicy", "observed-generation-bump", 2)
    expect_policy(w, "observed-generation-bump", Accepted=("True", "*"))  # and observedGeneration 2


# -- scenarios that send traffic to the TLS backend --------------------------------------------------
SUITE_CA = [{"group": "", "kind": "ConfigMap", "name": "tls-checks-ca-certificate"}]
FAILED = tuple(c for c in range(300, 600) if c != 408)  # any answer but 200 (a timeout is "not yet")


def tls_backend_service(w: World, name: str, ports: dict[str, int], app_protocol: str = "") -> list[dict[str, Any]]:
    """A Service selecting the `tls-backend` pods (port name -> Service port, target 8443) and the
    EndpointSlice its controller would publish: the tls-backend echo at its real port."""
    echo = w.echos["tls-backend"]
    svc_ports = [{"name": n, "protocol": "TCP", "port": p, "targetPort": 8443,
                  **({"appProtocol": app_protocol} if app_protocol else {})} for n, p in ports.items()]
    return [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": INFRA},
             "spec": {"selector": {"app": "tls-backend"}, "ports": svc_ports}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": f"{name}-1", "namespace": INFRA,
                          "labels": {"kubernetes.io/service-name": name}},
             "addressType": "IPv4", "ports": [{"name": n, "port": echo.port} for n in ports],
             "endpoints": [{"addresses": [echo.host], "conditions": {"ready": True}}]}]


def _paths(name: str, cases: list[tuple[str, str, int]], hostnames: list[str] | None = None,
           gateway: str = "same-namespace") -> dict[str, Any]:
    """An HTTPRoute with one rule per (path, Service, port)."""
    return route(name, [rule(to(svc, port), matches=[exact(path)]) for path, svc, port in cases],
                 parents=[{"name": gateway}], hostnames=hostnames or ["abc.example.com"])


def _accepted(w: World, *names: str, gateway: str = "same-namespace") -> None:
    for n in names:
        expect_policy(w, n, gateway, Accepted=("True", "Accepted"), ResolvedRefs=("True", "ResolvedRefs"))


@scenario("BackendTLSPolicy")
def backend_tls_policy(w: World) -> None:
    cases = {"/backendtlspolicy": ("backendtlspolicy-test", "", "normative-test", "abc.example.com", SUITE_CA),
             "/backendtlspolicy-host-mismatch": ("backendtlspolicy-host-mismatch-test", "HTTPS", "host-mismatch",
                                                 "mismatch.example.com", SUITE_CA),
             "/backendtlspolicy-cert-mismatch": ("backendtlspolicy-cert-mismatch-test", "HTTPS", "cert-mismatch",
                                                 "abc.example.com",
                                                 [{"group": "", "kind": "ConfigMap",
                                                   "name": "mismatch-ca-certificate"}]),
             "/backendtlspolicy-reconcile-test": ("backendtlspolicy-reconcile-test", "", "reconcile-test",
                                                  "abc.example.com", SUITE_CA)}

    def docs(reconcile_ca: str = "tls-checks-ca-certificate", extra: list[dict[str, Any]] | None = None,
             ) -> list[dict[str, Any]]:
        out = [_paths("backendtlspolicy", [(p, c[0], 443) for p, c in cases.items()]),
               _paths("backendtlspolicy-reencrypt", [("/backendtlspolicy", "backendtlspolicy-test", 443)],
                      hostnames=["https-listener.org"], gateway=HTTPS_GATEWAY)]
        for svc, proto, pol, host, ca in cases.values():
            out += tls_backend_service(w, svc, {"btls": 443}, proto)
            if pol == "reconcile-test":
                ca = [{"group": "", "kind": "ConfigMap", "name": reconcile_ca}]
            out.append(policy(pol, svc, ca, hostname=host, section="btls"))
        return out + (extra or [])

    w.apply(docs())
    # Re-encrypt: TLS from the client to the HTTPS listener, TLS again (SNI = the policy's hostname) to the backend.
    w.expect_route("backendtlspolicy-reencrypt", HTTPS_GATEWAY)
    _accepted(w, "normative-test", gateway=HTTPS_GATEWAY)
    w.expect(HTTPS_GATEWAY, Expect("/backendtlspolicy", host="https-listener.org", req_path="/backendtlspolicy",
                                   req_sni="abc.example.com"), port=443, scheme="https", sni="https-listener.org")
    w.expect_route("backendtlspolicy")
    _accepted(w, "normative-test", "host-mismatch", "cert-mismatch", "reconcile-test")
    w.expect("same-namespace", Expect("/backendtlspolicy", host="abc.example.com", req_sni="abc.example.com"))
    # A hostname the backend's certificate does not name, a CA that did not sign it: no answer from it.
    w.expect("same-namespace", Expect("/backendtlspolicy-host-mismatch", host="abc.example.org", status=FAILED))
    w.expect("same-namespace", Expect("/backendtlspolicy-host-mismatch", host="abc.example.com", status=FAILED))
    w.expect("same-namespace", Expect("/backendtlspolicy-cert-mismatch", host="abc.example.com", status=FAILED))
    # The CA ConfigMap's content is watched: missing, then present, then emptied, then restored.
    reconcile = "/backendtlspolicy-reconcile-test"
    w.expect("same-namespace", Expect(reconcile, host="abc.example.com", req_sni="abc.example.com"))
    test_cm = "tls-checks-ca-certificate-reconcile-test"

    def cm(ca: str) -> list[dict[str, Any]]:
        return [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": test_cm, "namespace": INFRA},
                 "data": {"ca.crt": ca}}]

    def invalid() -> None:
        expect_policy(w, "reconcile-test", Accepted=("False", "NoValidCACertificate"),
                      ResolvedRefs=("False", "InvalidCACertificateRef"))
        w.expect("same-namespace", Expect(reconcile, host="abc.example.com", status=FAILED))

    def valid() -> None:
        _accepted(w, "reconcile-test")
        w.expect("same-namespace", Expect(reconcile, host="abc.example.com", req_sni="abc.example.com"))

    w.apply(docs(test_cm))
    invalid()
    w.apply(docs(test_cm, cm(w.ca.pem.decode())))
    valid()
    w.apply(docs(test_cm, cm("")))
    invalid()
    w.apply(docs(test_cm, cm(w.ca.pem.decode())))
    valid()
    w.apply(docs())
    valid()


@scenario("BackendTLSPolicyConflictResolution")
def conflict_resolution(w: World) -> None:
    without, with_, both = ("backendtlspolicy-conflicted-without-section-name-test",
                            "backendtlspolicy-conflicted-with-section-name-test",
                            "backendtlspolicy-not-conflicted-test")
    two = {"https-1": 443, "https-2": 8443}
    w.apply([
        _paths("backendtlspolicy-conflict-resolution", [
            ("/backendtlspolicy-conflicted-without-section-name", without, 443),
            ("/backendtlspolicy-conflicted-with-section-name", with_, 443),
            ("/backendtlspolicy-not-conflicted-with-section-name", both, 443),
            ("/backendtlspolicy-not-conflicted-without-section-name", both, 8443)]),
        *tls_backend_service(w, without, {"https": 443}),
        *tls_backend_service(w, with_, two),
        *tls_backend_service(w, both, two),
        policy("conflicted-without-section-name-1", without, SUITE_CA, hostname="other.example.com"),
        policy("conflicted-without-section-name-2", without, SUITE_CA, hostname="abc.example.com"),
        policy("conflicted-with-section-name-1", with_, SUITE_CA, hostname="other.example.com", section="https-1"),
        policy("conflicted-with-section-name-2", with_, SUITE_CA, hostname="abc.example.com", section="https-1"),
        policy("not-conflicted-with-section-name", both, SUITE_CA, hostname="other.example.com", section="https-1"),
        policy("not-conflicted-without-section-name", both, SUITE_CA, hostname="abc.example.com"),
    ])
    w.expect_route("backendtlspolicy-conflict-resolution")
    for kind in ("without", "with"):
        expect_policy(w, f"conflicted-{kind}-section-name-1", Accepted=("True", "Accepted"))
        expect_policy(w, f"conflicted-{kind}-section-name-2", Accepted=("False", "Conflicted"))
        # The accepted (older, else first by name) policy's hostname is the SNI the backend sees.
        w.expect("same-namespace", Expect(f"/backendtlspolicy-conflicted-{kind}-section-name", host="abc.example.com",
                                          req_sni="other.example.com"))
    expect_policy(w, "not-conflicted-with-section-name", Accepted=("True", "Accepted"))
    expect_policy(w, "not-conflicted-without-section-name", Accepted=("True", "Accepted"))
    # The port named by sectionName gets its own policy; the other port, the Service-wide one.
    w.expect("same-namespace", Expect("/backendtlspolicy-not-conflicted-with-section-name", host="abc.example.com",
                                      req_sni="other.example.com"))
    w.expect("same-namespace", Expect("/backendtlspolicy-not-conflicted-without-section-name", host="abc.example.com",
                                      req_sni="abc.example.com"))


@scenario("BackendTLSPolicySANValidation")
def san_validation(w: World) -> None:
    def dns(h: str) -> dict[str, str]:
        return {"type": "Hostname", "hostname": h}

    def uri(u: str) -> dict[str, str]:
        return {"type": "URI", "uri": u}

    good_uri, bad_uri = "spiffe://abc.example.com/test-identity", "spiffe://def.example.com/test-identity"
    cases = {"san-dns": [dns("abc.example.com")], "san-dns-mismatch": [dns("dce.example.com")],
             "san-uri": [uri(good_uri)], "san-uri-mismatch": [uri(bad_uri)],
             "multiple-sans": [uri(good_uri), dns("abc.example.com")],
             "multiple-mismatch-sans": [uri(bad_uri), dns("def.example.com")]}
    docs: list[dict[str, Any]] = [_paths("backendtlspolicy-san-test", [
        (f"/backendtlspolicy-{n}", f"backendtlspolicy-{n}-test", 443) for n in cases])]
    for n, sans in cases.items():
        svc = f"backendtlspolicy-{n}-test"
        docs += tls_backend_service(w, svc, {"btls": 443}, "" if n == "san-dns" else "HTTPS")
        docs.append(policy(n, svc, SUITE_CA, section="btls", sans=sans))
    w.apply(docs)
    w.expect_route("backendtlspolicy-san-test")
    for n in cases:
        expect_policy(w, n, Accepted=("True", "Accepted"))
    for n in cases:  # those that match first, so a failure below is the mismatch's, not a config not yet there
        if "mismatch" not in n:
            w.expect("same-namespace", Expect(f"/backendtlspolicy-{n}", host="abc.example.com",
                                              req_sni="abc.example.com"))
    for n in cases:
        if "mismatch" in n:
            w.expect("same-namespace", Expect(f"/backendtlspolicy-{n}", host="abc.example.com", status=FAILED))
