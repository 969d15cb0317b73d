"""Gateway `spec.tls.backend.clientCertificateRef` through a real Envoy: a backend that requires a client
certificate (BackendTLSPolicy on its Service) sees the Gateway's certificate; reached through a Gateway
without one on the same proxy, its handshake fails. A Gateway naming a missing Secret says so in its
ResolvedRefs condition and stays Accepted."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from e2e.test_backend_tls_envoy import config_map, policy
from support.controlplane import ControlPlaneThread, ManifestDir
from support.envoy import Envoy
from support.gateway_objects import backend, find_status, gateway, gateway_class, http_route, listener, prefix
from support.gateway_tls import MutualTlsEchoServer, TestCA, tls_secret
from support.http import get
from support.manifests import docs, endpoint_slice, service
from support.net import free_port

pytestmark = pytest.mark.e2e


def gateway_with_client_cert(name: str, listeners: list[dict[str, Any]], secret: str | None) -> str:
    gw = json.loads(gateway(name, listeners=listeners, address="127.0.0.1"))
    if secret:
        gw["spec"]["tls"] = {"backend": {"clientCertificateRef": {"group": "", "kind": "Secret", "name": secret}}}
    return json.dumps(gw)


@dataclass
class World:
    ports: dict[str, int]  # Gateway name -> its HTTP listener port
    cp: ControlPlaneThread
    envoy: Envoy
    server: MutualTlsEchoServer

    def get(self, gw: str, path: str = "/") -> Any:
        return get(f"http://127.0.0.1:{self.ports[gw]}{path}")


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    md = ManifestDir()
    server_ca, client_ca, other_ca = TestCA(), TestCA(), TestCA()
    server = MutualTlsEchoServer("mtls", server_ca.issue("abc.example.com"), client_ca)
    server.start()
    ports = {name: free_port() for name in ("with-cert", "without-cert", "untrusted-cert", "missing-cert")}
    certs = {"with-cert": "gateway-client", "untrusted-cert": "stranger", "missing-cert": "nonexistent"}
    objects = [gateway_class(), config_map("backend-ca", server_ca.pem),
               tls_secret("gateway-client", client_ca.issue("gateway.cilia.test")),
               tls_secret("stranger", other_ca.issue("stranger.cilia.test")),
               policy("mtls", "mtls", "abc.example.com"),
               service("mtls", 443, vip="127.96.0.60", port_name="https"),
               endpoint_slice("mtls", [(server.host, server.port)], port_name="https")]
    for name, port in ports.items():
        objects += [gateway_with_client_cert(name, [listener("http", port)], certs.get(name)),
                    http_route(name, parents=[{"name": name}],
                               rules=[{"matches": [prefix("/")], "backendRefs": [backend("mtls", 443)]}])]
    md.write("all.yaml", docs(*objects))
    cp = ControlPlaneThread([str(md.path)]).start()
    envoy = Envoy("node~local", cp.xds_port).start()  # a shared node proxy serves all four Gateways
    w = World(ports, cp, envoy, server)
    try:
        envoy.wait_for(lambda: w.get("with-cert").status == 200, timeout=20, what="mTLS to the backend")
        yield w
    finally:
        envoy.stop()
        cp.stop()
        server.stop()
        md.cleanup()


def test_backend_sees_the_gateways_client_certificate(world: World) -> None:
    r = world.get("with-cert", "/x")
    assert r.status == 200
    assert r.body.decode() == "mtls abc.example.com GET /x HTTP/1.1 client=gateway.cilia.test"


def test_without_a_trusted_client_certificate_the_backend_refuses(world: World) -> None:
    before = world.server.rejected
    assert world.get("without-cert").status == 503
    assert world.get("untrusted-cert").status == 503
    assert world.get("missing-cert").status == 503  # an unresolved reference presents nothing
    assert world.server.wait_rejected(before + 3) >= before + 3
    assert world.get("with-cert").status == 200  # the same Service, the same proxy, another Gateway


def test_gateway_conditions(world: World) -> None:
    statuses = world.cp.admin_json("/debug/status")

    def conds(name: str) -> dict[str, tuple[str, str]]:
        return {c["type"]: (c["status"], c["reason"]) for c in find_status(statuses, "Gateway", name)["conditions"]}

    assert conds("with-cert")["ResolvedRefs"] == ("True", "ResolvedRefs")
    missing = conds("missing-cert")
    assert missing["ResolvedRefs"] == ("False", "InvalidClientCertificateRef")
    assert missing["Accepted"] == ("True", "Accepted")
    assert "ResolvedRefs" not in conds("without-cert")
