"""BackendTLSPolicy scenarios: the policy's status per ancestor Gateway, and what requests to its backend get.
Those whose checks need no TLS-speaking backend are replayed here."""

from __future__ import annotations

from typing import Any

from conformance.runner import GW, Expect, World, scenario
from conformance.scenarios import _expect_generation, _generation, exact, route, rule, to
from support.conformance_base import INFRA


def https_service(name: str) -> dict[str, Any]:
    """A Service like the suite's TLS backends (selector app=tls-backend, port https 443 -> 8443)."""
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": INFRA},
            "spec": {"selector": {"app": "tls-backend"},
                     "ports": [{"name": "https", "protocol": "TCP", "appProtocol": "HTTPS", "port": 443,
                                "targetPort": 8443}]}}


def policy(name: str, service: str, ca_refs: list[dict[str, str]], hostname: str = "abc.example.com",
           section: str = "") -> dict[str, Any]:
    target: dict[str, str] = {"group": "", "kind": "Service", "name": service}
    if section:
        target["sectionName"] = section
    return {"apiVersion": GW, "kind": "BackendTLSPolicy", "metadata": {"name": name, "namespace": INFRA},
            "spec": {"targetRefs": [target], "validation": {"caCertificateRefs": ca_refs, "hostname": hostname}}}


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
