"""GatewayBackendClientCertificate scenarios: the Gateway's `spec.tls.backend.clientCertificateRef`, the
certificate it presents to backends it reaches over TLS. The World gets one more TLS backend for them,
`tls-backend-with-client-cert-validation`, which (as the suite's) answers only clients holding a certificate
from the suite's CA and echoes the one it saw; and the client certificate Secret the suite generates."""

from __future__ import annotations

import base64
import json
from typing import Any

from conformance.echo import ConformanceEcho
from conformance.runner import GW, START_HOOKS, Expect, World, _service, scenario
from conformance.scenarios import route, rule, to
from conformance.scenarios_backendtls import expect_policy
from support.conformance_base import INFRA
from support.gateway_tls import KeyPair

MTLS_BACKEND = "tls-backend-with-client-cert-validation"
MTLS_VIP, MTLS_HOST = "127.96.1.61", "127.1.1.61"  # apart from the World's tls-backend* addresses
CLIENT_SECRET = "tls-checks-client-certificate"
CLIENT_NAME = "gateway-client.example.com"
CLIENT_CERTS: dict[int, KeyPair] = {}  # id(World) -> the client certificate in its Secret


def start_client_cert_backend(world: World) -> None:
    """The mTLS echo, its Service (https 443) and the client certificate Secret, in a manifest of their own."""
    client = world.ca.issue(CLIENT_NAME)
    CLIENT_CERTS[id(world)] = client
    e = world.echos[MTLS_BACKEND] = ConformanceEcho(MTLS_BACKEND, INFRA, MTLS_HOST,
                                                    tls=(world.cert.cert_pem, world.cert.key_pem),
                                                    client_ca=world.ca.pem).start()
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
              "metadata": {"name": CLIENT_SECRET, "namespace": INFRA},
              "data": {"tls.crt": base64.b64encode(client.cert_pem).decode(),
                       "tls.key": base64.b64encode(client.key_pem).decode()}}
    world.md.write("base-backend-client-cert.yaml",
                   _service(MTLS_BACKEND, INFRA, MTLS_VIP, MTLS_HOST, {"https": (443, e.port)}) + "\n---\n" +
                   json.dumps(secret) + "\n")


START_HOOKS.append(start_client_cert_backend)


def gateway(w: World, name: str, ref: dict[str, str]) -> dict[str, Any]:
    """A Gateway with the suite's HTTP listener (routes from its namespace) and this client certificate."""
    li = [{"name": "http", "port": 80, "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "Same"}}}]
    return w.gateway(name, li, tls={"backend": {"clientCertificateRef": ref}})


def _pem_body(pem: bytes | str) -> str:
    text = pem.decode() if isinstance(pem, bytes) else pem
    return "".join(line for line in text.split() if not line.startswith("-----") and "CERTIFICATE" not in line)


@scenario("GatewayBackendClientCertificateFeature")
def backend_client_certificate(w: World) -> None:
    name = "gateway-tls-backend-client-certificate"
    policy = "gateway-tls-backend-client-certificate-test"
    w.apply([
        gateway(w, name, {"group": "", "kind": "Secret", "name": CLIENT_SECRET}),
        route(name, [rule(to(MTLS_BACKEND, 443), matches=[{"path": {"type": "Exact", "value": "/"}}])],
              parents=[{"name": name, "namespace": INFRA}], hostnames=["abc.example.com"]),
        {"apiVersion": GW, "kind": "BackendTLSPolicy", "metadata": {"name": policy, "namespace": INFRA},
         "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": MTLS_BACKEND}],
                  "validation": {"caCertificateRefs": [{"group": "", "kind": "ConfigMap",
                                                        "name": "tls-checks-ca-certificate"}],
                                 "hostname": "abc.example.com"}}},
    ])
    w.expect_gateway(name, Accepted=("True", "Accepted"), ResolvedRefs=("True", "ResolvedRefs"))
    w.expect_route(name, name)
    expect_policy(w, policy, name, Accepted=("True", "Accepted"))
    reply = w.expect(name, Expect("/", host="abc.example.com", backend=MTLS_BACKEND))
    want = _pem_body(CLIENT_CERTS[id(w)].cert_pem)
    seen = [_pem_body(p) for p in (reply.echo.get("tls") or {}).get("peerCertificates") or []]
    assert want in seen, f"the backend saw client certificates {seen}, not the Gateway's"


@scenario("GatewayInvalidTLSBackendConfiguration")
def invalid_tls_backend_configuration(w: World) -> None:
    cases = [
        ("gateway-client-certificate-nonexistent-secret", {"group": "", "kind": "Secret",
                                                           "name": "nonexistent-certificate"},
         "InvalidClientCertificateRef"),
        ("gateway-client-certificate-unsupported-group", {"group": "wrong.group.company.io", "kind": "Secret",
                                                          "name": "tls-validity-checks-certificate"},
         "InvalidClientCertificateRef"),
        ("gateway-client-certificate-unsupported-kind", {"group": "", "kind": "WrongKind",
                                                         "name": "tls-validity-checks-certificate"},
         "InvalidClientCertificateRef"),
        ("gateway-client-certificate-malformed-secret", {"group": "", "kind": "Secret",
                                                         "name": "malformed-client-certificate"},
         "InvalidClientCertificateRef"),
        ("gateway-client-certificate-missing-reference-grant", {"group": "", "kind": "Secret", "name": "certificate",
                                                                "namespace": "gateway-conformance-web-backend"},
         "RefNotPermitted"),
    ]
    w.apply([*(gateway(w, name, ref) for name, ref, _ in cases),
             {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
              "metadata": {"name": "malformed-client-certificate", "namespace": INFRA}, "data": {}}])
    for name, _, reason in cases:
        w.expect_gateway(name, ResolvedRefs=("False", reason), Accepted=("True", "Accepted"))
