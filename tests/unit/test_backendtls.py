"""BackendTLSPolicy: parsing errors name the field; which policy applies to a Service port (sectionName
first, then the oldest); the CA bundle and its failures; Conflicted status."""

from __future__ import annotations

import json

import pytest

from cilia.k8s.core import ServicePort
from cilia.k8s.manifest import parse_text
from cilia.k8s.store import InputSnapshot
from cilia.translate.backendtls import backend_tls, policies_for
from cilia.translate.backendtls_status import policy_conditions

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def _policy(name: str, validation: str, target: str = "{group: '', kind: Service, name: svc}", ts: str = "") -> str:
    stamp = f", creationTimestamp: '{ts}'" if ts else ""
    return (f"apiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\n"
            f"metadata: {{name: {name}, namespace: default{stamp}}}\n"
            f"spec:\n  targetRefs: [{target}]\n  validation: {validation}\n")


CA_REF = "{caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}], hostname: svc.example.com}"
CM = (f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: ca, namespace: default}}\n"
      f"data:\n  ca.crt: {json.dumps(PEM)}\n")


@pytest.mark.parametrize(("validation", "want"), [
    ("{caCertificateRefs: [{kind: ConfigMap, name: ca}]}", "spec.validation.hostname"),
    ("{hostname: a.example.com}", "set exactly one of caCertificateRefs and wellKnownCACertificates"),
    ("{wellKnownCACertificates: Everything, hostname: a}", "spec.validation.wellKnownCACertificates"),
    ("{wellKnownCACertificates: System, hostname: a, subjectAltNames: [{type: IP, hostname: x}]}",
     "spec.validation.subjectAltNames[0].type"),
])
def test_invalid_policies_name_the_field(validation: str, want: str) -> None:
    result = parse_text(_policy("p", validation), "p.yaml")
    assert not result.objects and len(result.issues) == 1
    msg = str(result.issues[0])
    assert "BackendTLSPolicy default/p" in msg and want in msg, msg


def _snapshot(*texts: str) -> InputSnapshot:
    result = parse_text("\n---\n".join(texts), "all.yaml")
    assert not result.issues, result.issues
    return InputSnapshot.of(result.objects)


def test_section_name_beats_whole_service_and_oldest_wins() -> None:
    snap = _snapshot(CM, _policy("whole", CA_REF, ts="2020-01-01T00:00:00Z"),
                     _policy("young", CA_REF, "{kind: Service, name: svc, sectionName: https}", "2024-01-01T00:00:00Z"),
                     _policy("old", CA_REF, "{kind: Service, name: svc, sectionName: https}", "2023-01-01T00:00:00Z"),
                     )
    https, plain = ServicePort("https", 443, 443, "TCP", ""), ServicePort("plain", 80, 80, "TCP", "")
    assert [p.meta.name for p in policies_for(snap, "default", "svc", https)] == ["old", "young", "whole"]
    assert [p.meta.name for p in policies_for(snap, "default", "svc", plain)] == ["whole"]
    btls = backend_tls(snap, "default", "svc", https)
    assert btls is not None and btls.tls is not None and btls.secret is not None
    assert btls.tls.sni == "svc.example.com" and btls.secret.trusted_ca == PEM.encode()
    assert [(s.kind, s.value) for s in btls.tls.san_exact] == [("DNS", "svc.example.com")]
    young = snap.get("BackendTLSPolicy", "default", "young")
    assert young is not None
    conds, issue = policy_conditions(snap, young)
    assert [(c.type, c.ok, c.reason) for c in conds] == [("Accepted", False, "Conflicted"),
                                                         ("ResolvedRefs", True, "ResolvedRefs")]
    assert issue is not None and "default/old" in issue.message
    old = snap.get("BackendTLSPolicy", "default", "old")
    assert old is not None and policy_conditions(snap, old)[1] is None


@pytest.mark.parametrize(("extra", "validation", "reason", "text"), [
    ("", CA_REF, "InvalidCACertificateRef", "ConfigMap default/ca not found"),
    ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ca, namespace: default}\ndata: {ca.crt: junk}\n", CA_REF,
     "InvalidCACertificateRef", "no PEM certificate under key ca.crt"),
    ("", "{caCertificateRefs: [{group: example.com, kind: Bundle, name: ca}], hostname: a}", "InvalidKind",
     "example.com/Bundle ca is not a ConfigMap"),
])
def test_bad_ca_refs_fail_closed_with_reason(extra: str, validation: str, reason: str, text: str) -> None:
    snap = _snapshot(*(t for t in (extra, _policy("p", validation)) if t))
    btls = backend_tls(snap, "default", "svc", ServicePort("https", 443, 443, "TCP", ""))
    assert btls is not None and btls.tls is None and btls.reason == reason and text in btls.message
    obj = snap.get("BackendTLSPolicy", "default", "p")
    assert obj is not None
    conds, issue = policy_conditions(snap, obj)
    assert [(c.type, c.ok, c.reason) for c in conds] == [("Accepted", False, "NoValidCACertificate"),
                                                         ("ResolvedRefs", False, reason)]
    assert issue is not None and issue.field == "spec.validation.caCertificateRefs[0]" and text in issue.message
