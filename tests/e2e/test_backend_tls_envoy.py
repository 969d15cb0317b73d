"""BackendTLSPolicy through a real Envoy: the Gateway originates TLS to the backend with the policy's SNI,
trusts only the ConfigMap's CA and checks the SANs; an invalid policy fails closed (500)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from support.controlplane import ControlPlaneThread, ManifestDir
from support.envoy import Envoy
from support.gateway_objects import backend, find_status, gateway, gateway_class, http_route, listener, prefix
from support.gateway_tls import TestCA, TlsEchoServer
from support.http import get
from support.manifests import docs, endpoint_slice, service
from support.net import free_port

pytestmark = pytest.mark.e2e


def config_map(name: str, pem: bytes) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"},
                       "data": {"ca.crt": pem.decode()}})


def policy(name: str, service_name: str, hostname: str, ca: str = "backend-ca",
           sans: list[dict[str, str]] | None = None) -> str:
    validation: dict[str, Any] = {"caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": ca}],
                                  "hostname": hostname}
    if sans:
        validation["subjectAltNames"] = sans
    return json.dumps({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "BackendTLSPolicy",
                       "metadata": {"name": name, "namespace": "default"},
                       "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": service_name}],
                                "validation": validation}})


@dataclass
class World:
    port: int
    cp: ControlPlaneThread
    envoy: Envoy

    def get(self, path: str) -> Any:
        return get(f"http://127.0.0.1:{self.port}{path}")


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    md = ManifestDir()
    ca, other_ca = TestCA(), TestCA()
    good = TlsEchoServer("good", ca.issue("good.example.com")).start()
    wrong_san = TlsEchoServer("wrong-san", ca.issue("elsewhere.example.com")).start()
    foreign = TlsEchoServer("foreign", other_ca.issue("foreign.example.com")).start()
    servers = (good, wrong_san, foreign)
    port = free_port()
    names = ("good", "wrong-san", "foreign", "broken")
    objects = [gateway_class(), gateway("gw", address="127.0.0.1", listeners=[listener("http", port)]),
               config_map("backend-ca", ca.pem),
               policy("good", "good", "good.example.com"),
               policy("wrong-san", "wrong-san", "wrong.example.com",
                      sans=[{"type": "Hostname", "hostname": "wrong.example.com"}]),
               policy("foreign", "foreign", "foreign.example.com"),
               policy("broken", "broken", "broken.example.com", ca="missing-ca"),
               http_route("web", parents=[{"name": "gw"}],
                          rules=[{"matches": [prefix(f"/{n}")], "backendRefs": [backend(n, 443)]} for n in names])]
    for i, (n, srv) in enumerate(zip(names, (*servers, good), strict=True)):
        objects += [service(n, 443, vip=f"127.96.0.{30 + i}", port_name="https"),
                    endpoint_slice(n, [(srv.host, srv.port)], port_name="https")]
    md.write("all.yaml", docs(*objects))
    cp = ControlPlaneThread([str(md.path)]).start()
    envoy = Envoy("gateway~default/gw", cp.xds_port).start()
    w = World(port, cp, envoy)
    try:
        envoy.wait_for(lambda: w.get("/good").status == 200, timeout=15, what="TLS to the backend")
        yield w
    finally:
        envoy.stop()
        cp.stop()
        for srv in servers:
            srv.stop()
        md.cleanup()


def test_tls_to_backend_with_policy_sni(world: World) -> None:
    r = world.get("/good/x")
    assert r.status == 200
    assert r.body.decode() == "good good.example.com GET /good/x HTTP/1.1"


def test_backend_certificate_must_match_san_and_ca(world: World) -> None:
    assert world.get("/wrong-san").status == 503  # the CA is trusted but the certificate names another host
    assert world.get("/foreign").status == 503  # the certificate is from a CA the policy does not trust


def test_invalid_policy_fails_closed_and_says_why(world: World) -> None:
    assert world.get("/broken").status == 500
    statuses = world.cp.admin_json("/debug/status")
    st = find_status(statuses, "BackendTLSPolicy", "broken")
    conds = {c["type"]: (c["status"], c["reason"]) for c in st["ancestors"][0]["conditions"]}
    assert conds == {"Accepted": ("False", "NoValidCACertificate"),
                     "ResolvedRefs": ("False", "InvalidCACertificateRef")}
    assert st["ancestors"][0]["ancestorRef"]["name"] == "gw"
    ok = find_status(statuses, "BackendTLSPolicy", "good")
    assert {c["type"]: c["status"] for c in ok["ancestors"][0]["conditions"]} == {"Accepted": "True",
                                                                                  "ResolvedRefs": "True"}
    route = find_status(statuses, "HTTPRoute", "web")
    assert {c["type"]: c["status"] for c in route["parents"][0]["conditions"]}["Accepted"] == "True"
