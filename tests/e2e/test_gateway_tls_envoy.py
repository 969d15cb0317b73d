"""HTTPS termination by SNI, TLS passthrough, TCPRoute, Gateways sharing a port on distinct loopback
addresses, and GAMMA route configs, all served by one shared-mode `node~` Envoy."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from support.backends import EchoBackend
from support.controlplane import ControlPlaneThread, ManifestDir
from support.envoy import Envoy
from support.gateway_objects import (
    backend,
    find_status,
    gateway,
    gateway_class,
    http_route,
    listener,
    parent_condition,
    prefix,
    reference_grant,
    route,
    tag,
)
from support.gateway_tls import TestCA, TlsEchoServer, https_get, tls_secret
from support.http import get
from support.manifests import docs, endpoint_slice, service
from support.net import free_port

pytestmark = pytest.mark.e2e


@dataclass
class World:
    ca: TestCA
    tls_port: int
    tcp_port: int
    shared_port: int
    mesh_ports: tuple[int, int]
    cp: ControlPlaneThread
    envoy: Envoy
    tls_backend: TlsEchoServer

    def statuses(self) -> list[dict[str, Any]]:
        return list(self.cp.admin_json("/debug/status"))


def _cec_listener(namespace: str, name: str, port: int, route_config: str) -> str:
    """A CiliumEnvoyConfig listener whose RDS name, qualified as Cilium does (`ns/cec/name`), is the name of
    a route configuration cilia generates (here: GAMMA's `mesh/...` ones)."""
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                    "HttpConnectionManager",
           "stat_prefix": name, "rds": {"route_config_name": route_config},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
    lst = {"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", "name": "l",
           "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
           "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                           "typed_config": hcm}]}]}
    return json.dumps({"apiVersion": "cilium.io/v2", "kind": "CiliumEnvoyConfig",
                       "metadata": {"name": name, "namespace": namespace}, "spec": {"resources": [lst]}})


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    md = ManifestDir()
    ca = TestCA()
    a, b = EchoBackend("echo-a", "127.0.0.2").start(), EchoBackend("echo-b", "127.0.0.3").start()
    tls_backend = TlsEchoServer("tls-backend", ca.issue("pass.example.com")).start()
    tls_port, tcp_port, shared_port = free_port(), free_port(), free_port()
    mesh_ports = (free_port(), free_port())
    tls = {"mode": "Terminate"}
    edge = gateway("edge", address="127.0.0.1", listeners=[
        listener("https-a", tls_port, "HTTPS", "a.example.com", tls={**tls, "certificateRefs": [{"name": "cert-a"}]}),
        listener("https-b", tls_port, "HTTPS", "b.example.com",
                 tls={**tls, "certificateRefs": [{"name": "cert-b", "namespace": "certs"}]}),
        listener("https-c", tls_port, "HTTPS", "c.example.com",
                 tls={**tls, "certificateRefs": [{"name": "cert-c", "namespace": "private"}]}),
        listener("pass", tls_port, "TLS", "pass.example.com", tls={"mode": "Passthrough"}),
        listener("tcp", tcp_port, "TCP"),
    ])
    objects = [
        gateway_class(), edge,
        gateway("gw1", address="127.0.0.8", listeners=[listener("http", shared_port)]),
        gateway("gw2", address="127.0.0.9", listeners=[listener("http", shared_port)]),
        service("echo-a", 80, vip="127.96.0.10"), endpoint_slice("echo-a", [(a.host, a.port)]),
        service("echo-b", 80, vip="127.96.0.11"), endpoint_slice("echo-b", [(b.host, b.port)]),
        service("tls-backend", 443, vip="127.96.0.12", port_name="tls"),
        endpoint_slice("tls-backend", [(tls_backend.host, tls_backend.port)], port_name="tls"),
        tls_secret("cert-a", ca.issue("a.example.com")),
        tls_secret("cert-b", ca.issue("b.example.com"), namespace="certs"),
        tls_secret("cert-c", ca.issue("c.example.com"), namespace="private"),
        reference_grant("gateways-may-read", "certs", "Gateway", "default", to_kind="Secret"),
        http_route("secure", parents=[{"name": "edge"}], rules=[{"filters": [tag("secure")],
                                                                 "backendRefs": [backend("echo-a")]}]),
        route("TLSRoute", "pass", api_version="gateway.networking.k8s.io/v1alpha2",
              parents=[{"name": "edge", "sectionName": "pass"}], hostnames=["pass.example.com"],
              rules=[{"backendRefs": [backend("tls-backend", 443)]}]),
        route("TCPRoute", "raw", api_version="gateway.networking.k8s.io/v1alpha2",
              parents=[{"name": "edge", "sectionName": "tcp"}], rules=[{"backendRefs": [backend("echo-b")]}]),
        http_route("r1", parents=[{"name": "gw1"}], rules=[{"backendRefs": [backend("echo-a")]}]),
        http_route("r2", parents=[{"name": "gw2"}], rules=[{"backendRefs": [backend("echo-b")]}]),
        # GAMMA: a producer route for echo-a, and a consumer route from namespace "client".
        http_route("mesh-producer", parents=[{"group": "", "kind": "Service", "name": "echo-a", "port": 80}],
                   rules=[{"matches": [prefix("/gamma")], "filters": [tag("producer")],
                           "backendRefs": [backend("echo-b")]},
                          {"backendRefs": [backend("echo-a")]}]),
        http_route("mesh-consumer", namespace="client",
                   parents=[{"group": "", "kind": "Service", "name": "echo-a", "namespace": "default"}],
                   rules=[{"matches": [prefix("/gamma")], "filters": [tag("consumer")],
                           "backendRefs": [backend("echo-a", namespace="default")]}]),
        reference_grant("client-routes", "default", "HTTPRoute", "client"),
        _cec_listener("mesh", "default", mesh_ports[0], "echo-a:80"),  # -> mesh/default/echo-a:80
        _cec_listener("mesh", "client", mesh_ports[1], "default/echo-a:80"),  # -> mesh/client/default/echo-a:80
    ]
    md.write("all.yaml", docs(*objects))
    cp = ControlPlaneThread([str(md.path)]).start()
    envoy = Envoy("node~local", cp.xds_port).start()
    w = World(ca, tls_port, tcp_port, shared_port, mesh_ports, cp, envoy, tls_backend)
    try:
        envoy.wait_for(lambda: https_get(tls_port, "a.example.com", ca)[0] == 200, timeout=15, what="HTTPS serving")
        envoy.wait_for(lambda: get(f"http://127.0.0.1:{mesh_ports[1]}/gamma").status == 200, timeout=10,
                       what="mesh routes")
        yield w
    finally:
        envoy.stop()
        cp.stop()
        a.stop()
        b.stop()
        tls_backend.stop()
        md.cleanup()


def test_https_termination_by_sni(world: World) -> None:
    status, body, cn = https_get(world.tls_port, "a.example.com", world.ca, "/x")
    assert (status, cn) == (200, "a.example.com")
    assert json.loads(body)["backend"] == "echo-a"
    # The certificate from another namespace, allowed by a ReferenceGrant.
    status, body, cn = https_get(world.tls_port, "b.example.com", world.ca, "/y")
    assert (status, cn) == (200, "b.example.com")
    assert json.loads(body)["path"] == "/y"


def test_https_certificate_without_grant_is_refused(world: World) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        https_get(world.tls_port, "c.example.com", world.ca)
    st = find_status(world.statuses(), "Gateway", "edge")
    lc = {li["name"]: {c["type"]: (c["status"], c["reason"]) for c in li["conditions"]} for li in st["listeners"]}
    assert lc["https-c"]["ResolvedRefs"] == ("False", "RefNotPermitted")
    assert lc["https-c"]["Programmed"] == ("False", "Invalid")
    assert lc["https-b"]["ResolvedRefs"] == ("True", "ResolvedRefs")
    gw = {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]}
    assert gw["Accepted"] == ("True", "ListenersNotValid")
    assert gw["Programmed"] == ("True", "Programmed")


def test_tls_passthrough(world: World) -> None:
    status, body, cn = https_get(world.tls_port, "pass.example.com", world.ca, "/through")
    assert (status, cn) == (200, "pass.example.com")  # the backend's own certificate: no termination
    assert body.decode() == "tls-backend pass.example.com GET /through HTTP/1.1"
    st = find_status(world.statuses(), "TLSRoute", "pass")
    assert parent_condition(st, "Accepted") == ("True", "Accepted")


def test_tcp_route(world: World) -> None:
    r = get(f"http://127.0.0.1:{world.tcp_port}/over-tcp")
    assert r.json()["backend"] == "echo-b" and r.json()["path"] == "/over-tcp"
    with socket.create_connection(("127.0.0.1", world.tcp_port), timeout=5):
        pass


def test_gateways_share_a_port_on_distinct_addresses(world: World) -> None:
    p = world.shared_port
    assert get(f"http://127.0.0.8:{p}/").json()["backend"] == "echo-a"
    assert get(f"http://127.0.0.9:{p}/").json()["backend"] == "echo-b"
    statuses = world.statuses()
    assert find_status(statuses, "Gateway", "gw1")["addresses"] == [{"type": "IPAddress", "value": "127.0.0.8"}]
    assert find_status(statuses, "Gateway", "gw2")["addresses"] == [{"type": "IPAddress", "value": "127.0.0.9"}]
    # The dedicated proxy of gw1 gets gw1's listener only.
    cfg = world.cp.admin_json("/debug/config/gateway~default/gw1")
    assert [li["name"] for li in cfg["listeners"]] == [f"gateway/default/gw1/{p}"]


def test_gamma_producer_and_consumer_routes(world: World) -> None:
    producer, consumer = (f"http://127.0.0.1:{p}" for p in world.mesh_ports)
    r = get(producer + "/gamma/x")
    assert (r.headers.get("x-rule"), r.json()["backend"]) == ("producer", "echo-b")
    assert get(producer + "/other").json()["backend"] == "echo-a"
    r = get(consumer + "/gamma/x")
    assert (r.headers.get("x-rule"), r.json()["backend"]) == ("consumer", "echo-a")
    assert get(consumer + "/other").status == 404  # consumer routes replace the producer's for that namespace
    st = find_status(world.statuses(), "HTTPRoute", "mesh-consumer", "client")
    assert st["parents"][0]["parentRef"]["kind"] == "Service"
    assert parent_condition(st, "Accepted") == ("True", "Accepted")
