"""Mesh config through real Envoy: node~ and sidecar~ proxies ACK their config and carry traffic.

No eBPF here, so nothing restores an original destination: `original_dst` leaves a direct
connection's local address as it is, and the filter chain is chosen by the address the listener
was dialled on. The tests therefore bind the capture listeners on Service VIPs (the capture port is
the Services' port) and the inbound listener on the pod IP at the app's container port, which is
exactly the match a redirected connection gets. Everything stays on 127.0.0.0/8.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from cilia.identity import ProxyId
from cilia.ir import model as ir
from cilia.k8s.store import InputSnapshot
from cilia.mesh.bootstrap import READINESS_LISTENER, bootstrap_config
from cilia.translate import mesh as mesh_mod
from cilia.translate.context import TranslateOptions
from support.backends import EchoBackend, echo_backends
from support.controlplane import ControlPlaneThread, ManifestDir
from support.envoy import Envoy
from support.manifests import docs, endpoint_slice, service
from support.net import free_port

pytestmark = pytest.mark.e2e

WEB_VIP, DB_VIP, WEB_V2_VIP = "127.96.0.10", "127.96.0.11", "127.96.0.12"
SERVER_IP, CLIENT_IP, WEB_POD_IP = "127.1.0.5", "127.1.0.7", "127.1.0.10"
TYPES = ("listeners", "routes", "clusters", "endpoints")


@dataclass
class World:
    md: ManifestDir
    port: int  # every Service's port, and the capture port
    web: EchoBackend
    db: EchoBackend
    web_v2: EchoBackend
    app: EchoBackend  # the sidecar pod's application, on 127.0.0.1:<container port>

    def options(self) -> TranslateOptions:
        return TranslateOptions(mesh_capture_port=self.port, mesh_capture_address=WEB_VIP,
                                mesh_sidecar_capture_address=DB_VIP, mesh_inbound_address="pod-ip",
                                mesh_inbound_port=self.app.port)


def _json(obj: dict[str, Any]) -> str:
    return json.dumps(obj)


def _namespace(name: str, mode: str) -> str:
    return _json({"apiVersion": "v1", "kind": "Namespace",
                  "metadata": {"name": name, "labels": {"cilia.io/mesh": mode}}})


def _pod(ns: str, name: str, ip: str, ports: list[dict[str, Any]] | None = None) -> str:
    return _json({"apiVersion": "v1", "kind": "Pod",
                  "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
                  "spec": {"nodeName": "node-1", "containers": [{"name": "app", "image": "app", "ports": ports or []}]},
                  "status": {"phase": "Running", "podIP": ip}})


@pytest.fixture
def world() -> Iterator[World]:
    md = ManifestDir()
    with echo_backends(("web-v1", "127.0.0.2"), ("db", "127.0.0.3"), ("web-v2", "127.0.0.4"),
                       ("app", "127.0.0.1")) as (web, db, web_v2, app):
        port = free_port()
        md.write("mesh.yaml", docs(
            _namespace("shop", "node"), _namespace("client", "node"), _namespace("pay", "sidecar"),
            service("web", port, namespace="shop", vip=WEB_VIP),
            endpoint_slice("web", [(web.host, web.port)], namespace="shop"),
            service("web-v2", port, namespace="shop", vip=WEB_V2_VIP),
            endpoint_slice("web-v2", [(web_v2.host, web_v2.port)], namespace="shop"),
            service("db", port, namespace="pay", vip=DB_VIP, port_name="pg"),
            endpoint_slice("db", [(db.host, db.port)], namespace="pay", port_name="pg"),
            _pod("shop", "web-0", WEB_POD_IP), _pod("client", "c-0", CLIENT_IP),
            _pod("pay", "server-0", SERVER_IP, [{"name": "http", "containerPort": app.port}]),
        ))
        try:
            yield World(md, port, web, db, web_v2, app)
        finally:
            md.cleanup()


def request(host: str, port: int, path: str = "/", source: str | None = None) -> tuple[int, str]:
    """GET over a fresh connection, optionally from a given source address (a pod IP)."""
    conn = http.client.HTTPConnection(host, port, timeout=5, source_address=(source, 0) if source else None)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


def answered_by(host: str, port: int, path: str = "/", source: str | None = None) -> str:
    """The echo backend that answered (its JSON names it)."""
    status, body = request(host, port, path, source)
    return str(json.loads(body)["backend"]) if status == 200 else f"status {status}"


def synced(cp: ControlPlaneThread, proxy: str) -> bool:
    p = cp.admin_json("/debug/proxies").get(proxy)
    if not p or not p["connected"]:
        return False
    types = p["types"]
    return all(t in types for t in TYPES) and all(t["state"] == "SYNCED" for t in types.values())


def sidecar_envoy(cp: ControlPlaneThread, proxy: str, pod_ip: str, delta: bool) -> Envoy:
    """A sidecar with the bootstrap the injected init step writes (pod IP known: readiness listener)."""
    envoy = Envoy(proxy, cp.xds_port, delta=delta)
    cfg = bootstrap_config(ProxyId.parse(proxy), f"127.0.0.1:{cp.xds_port}", envoy.admin_port, delta,
                           pod_ip=pod_ip, env={})
    envoy.config.write_text(json.dumps(cfg))
    return envoy


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
def test_node_and_sidecar_ack_and_carry_traffic(world: World, delta: bool) -> None:
    cp = ControlPlaneThread([str(world.md.path)], translate=world.options()).start()
    node = Envoy("node~node-1", cp.xds_port, delta=delta)
    side = sidecar_envoy(cp, "sidecar~pay/server-0", SERVER_IP, delta)
    try:
        node.start()
        side.start()
        for envoy in (node, side):
            envoy.wait_for(lambda e=envoy: synced(cp, e.proxy), timeout=15, what=f"{envoy.proxy} synced")
        proxies = cp.admin_json("/debug/proxies")
        for pid in ("node~node-1", "sidecar~pay/server-0"):
            assert all(t["last_nack"] is None and t["nacks"] == 0 for t in proxies[pid]["types"].values()), proxies[pid]
        assert node.listeners() == ["outbound|node"]
        assert sorted(side.listeners()) == sorted([READINESS_LISTENER, "outbound|sidecar|pay",
                                                   "inbound|sidecar|pay/server-0"])

        # node~: HTTP to the web VIP goes through its HTTP chain to the web endpoint.
        node.wait_for(lambda: answered_by(WEB_VIP, world.port, "/hello") == "web-v1", what="node outbound HTTP")
        assert world.web.requests[-1]["path"] == "/hello"
        stat = f"http.outbound_shop_web_{world.port}.downstream_rq_2xx"
        assert node.stats(stat).get(stat, 0) >= 1

        # sidecar~ outbound: the db Service is TCP; its chain proxies the bytes as they are.
        side.wait_for(lambda: answered_by(DB_VIP, world.port, "/raw") == "db", what="sidecar outbound TCP")
        stat = f"tcp.outbound_pay_db_{world.port}.downstream_cx_total"
        assert side.stats(stat).get(stat, 0) >= 1
        assert "x-request-id" not in world.db.requests[-1]["headers"]  # no HTTP processing on a TCP chain

        # sidecar~ inbound: the pod IP at the app's port reaches the app on 127.0.0.1 through Envoy.
        before = len(world.app.requests)
        side.wait_for(lambda: answered_by(SERVER_IP, world.app.port, "/inbound") == "app", what="inbound")
        assert len(world.app.requests) > before
        seen = world.app.requests[-1]
        assert seen["path"] == "/inbound" and "x-request-id" in seen["headers"]  # added by Envoy's HCM
        stat = f"http.inbound_{world.app.port}.downstream_rq_2xx"
        assert side.stats(stat).get(stat, 0) >= 1

        # Readiness as the kubelet sees it: /ready on the pod IP, and nothing else of admin.
        status, body = request(SERVER_IP, side.admin_port, "/ready")
        assert (status, body.strip()) == (200, "LIVE")
        assert request(SERVER_IP, side.admin_port, "/config_dump")[0] == 404
        # The role's stats tags are on every stat.
        prom = side.admin("/stats/prometheus")
        assert 'cilia_pod="server-0"' in prom and 'cilia_namespace="pay"' in prom
        assert 'cilia_node="node-1"' in node.admin("/stats/prometheus")
    finally:
        side.stop()
        node.stop()
        cp.stop()


def test_consumer_routes_are_chosen_by_client_pod_address(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """A consumer route (namespace `client` sends shop/web to web-v2) applies to that namespace's pods only."""

    def routes_for(snapshot: InputSnapshot, client_ns: str, ns: str, name: str, port: int) -> ir.RouteConfig | None:
        if client_ns != "client" or (ns, name) != ("shop", "web"):
            return None
        route = ir.Route("to-v2", ir.RouteMatch(), backends=(ir.Backend(f"shop/web-v2:{port}"),))
        return ir.RouteConfig("consumer", (ir.VirtualHost("web", ("*",), (route,)),))

    monkeypatch.setattr(mesh_mod, "MESH_ROUTES", routes_for)
    cp = ControlPlaneThread([str(world.md.path)], translate=world.options()).start()
    node = Envoy("node~node-1", cp.xds_port)
    try:
        node.start()
        node.wait_for(lambda: synced(cp, "node~node-1"), timeout=15, what="node synced")
        node.wait_for(lambda: answered_by(WEB_VIP, world.port, source=CLIENT_IP) == "web-v2", what="consumer route")
        # Other clients (another namespace's pod, or any other address) keep the shared routes.
        for _ in range(5):
            assert answered_by(WEB_VIP, world.port, source=WEB_POD_IP) == "web-v1"
            assert answered_by(WEB_VIP, world.port) == "web-v1"
            assert answered_by(WEB_VIP, world.port, source=CLIENT_IP) == "web-v2"
        stat = f"http.outbound_shop_web_{world.port}_from_client.downstream_rq_2xx"
        assert node.stats(stat).get(stat, 0) >= 5
    finally:
        node.stop()
        cp.stop()


def test_direct_connection_to_the_capture_port_is_dropped(world: World) -> None:
    """Dialling the capture listener itself restores no destination: the guard chain closes it, no loop."""
    opts = TranslateOptions(mesh_capture_port=world.port, mesh_capture_address="127.0.0.1")
    cp = ControlPlaneThread([str(world.md.path)], translate=opts).start()
    node = Envoy("node~node-1", cp.xds_port)
    try:
        node.start()
        node.wait_for(lambda: synced(cp, "node~node-1"), timeout=15, what="node synced")
        node.wait_for(lambda: "outbound|node" in node.listeners(), what="listener")
        with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
            request("127.0.0.1", world.port, "/loop")
        stats = node.stats("outbound_node_direct")
        assert stats.get("tcp.outbound_node_direct.downstream_cx_total", 0) >= 1
        assert node.stats("mesh|blackhole").get("cluster.mesh|blackhole.upstream_cx_none_healthy", 0) >= 1
        assert node.stats("outbound_node_passthrough")["tcp.outbound_node_passthrough.downstream_cx_total"] == 0
        assert not world.web.requests
    finally:
        node.stop()
        cp.stop()
