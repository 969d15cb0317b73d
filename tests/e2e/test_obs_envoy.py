"""Observability through a real Envoy: /metrics after real pushes, ACKs and a NACK; CSDS over gRPC;
`cilia status` and `cilia config` against the admin endpoint."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from envoy.admin.v3 import config_dump_shared_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from envoy.type.matcher.v3 import node_pb2
from test_cec_envoy import cec, route

from cilia.obs.metrics import parse_prometheus
from support.backends import EchoBackend, echo_backends
from support.controlplane import ControlPlaneThread, ManifestDir
from support.envoy import Envoy
from support.http import get
from support.manifests import docs, endpoint_slice, service
from support.net import free_port

pytestmark = pytest.mark.e2e

LISTENER_T = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE_T = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"


@pytest.fixture
def world() -> Iterator[tuple[ManifestDir, list[EchoBackend]]]:
    md = ManifestDir()
    with echo_backends(("echo-a", "127.0.0.2"), ("other", "127.0.0.4")) as backends:
        yield md, backends
    md.cleanup()


def _services(backends: list[EchoBackend]) -> str:
    a, other = backends
    return docs(service("echo", 80, vip="127.96.0.10"), endpoint_slice("echo", [(a.host, a.port)]),
                service("other", 80, vip="127.96.0.11"), endpoint_slice("other", [(other.host, other.port)]))


def _metrics(cp: ControlPlaneThread) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{cp.admin_port}/metrics", timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return parse_prometheus(resp.read().decode())


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cilia", *args], capture_output=True, text=True, timeout=30)


def _csds(port: int, request: csds_pb2.ClientStatusRequest) -> csds_pb2.ClientStatusResponse:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel)
        fetched: csds_pb2.ClientStatusResponse = stub.FetchClientStatus(request, timeout=5)
        streamed = list(stub.StreamClientStatus(iter([request, request]), timeout=5))
    assert len(streamed) == 2 and streamed[0] == fetched
    return fetched


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
def test_metrics_csds_status_after_real_nack(world: tuple[ManifestDir, list[EchoBackend]], delta: bool) -> None:
    md, backends = world
    port = free_port()
    md.write("services.yaml", _services(backends))
    md.write("cec.yaml", cec(port, [route("/", "default/echo")]))
    cp = ControlPlaneThread([str(md.path)]).start()
    envoy = Envoy("node~local", cp.xds_port, delta=delta).start()
    url = f"http://127.0.0.1:{port}"
    variant = "delta" if delta else "sotw"
    try:
        envoy.wait_for(lambda: get(url + "/x").status == 200, what="listener serving")
        before = _metrics(cp)
        assert before[f'cilia_xds_connected_proxies{{role="node",variant="{variant}"}}'] == 1
        assert before[f'cilia_xds_streams{{role="node",variant="{variant}"}}'] == 1
        assert before['cilia_xds_pushes_total{reason="initial",type="listeners"}'] >= 1
        assert before['cilia_snapshot_resources{type="listeners"}'] >= 1
        assert before['cilia_snapshot_bytes{type="routes"}'] > 0
        assert before['cilia_input_objects{kind="CiliumEnvoyConfig"}'] == 1
        assert before["cilia_translate_duration_seconds_count"] >= 1
        assert before.get('cilia_xds_nacks_total{type="listeners"}', 0) == 0

        # A good edit (new route): pushed for reason "change" and ACKed -> a convergence sample.
        md.write("cec.yaml", cec(port, [route("/other", "default/other"), route("/", "default/echo")],
                                 clusters=("default/echo", "default/other")))
        envoy.wait_for(lambda: get(url + "/other").json()["backend"] == "other", what="new route")
        envoy.wait_for(lambda: _metrics(cp).get('cilia_xds_convergence_seconds_count{type="routes"}', 0) >= 1,
                       timeout=5, what="convergence sample")
        mid = _metrics(cp)
        assert mid['cilia_xds_pushes_total{reason="change",type="routes"}'] >= 1
        assert mid['cilia_source_events_total{kind="CiliumEnvoyConfig"}'] >= 1
        assert mid["cilia_debounce_wait_seconds_count"] > before["cilia_debounce_wait_seconds_count"]
        assert mid["cilia_rebuilds_total{result=\"ok\"}"] > before["cilia_rebuilds_total{result=\"ok\"}"]
        assert mid['cilia_xds_acks_total{type="routes"}'] > before['cilia_xds_acks_total{type="routes"}']
        assert mid['cilia_xds_convergence_seconds_bucket{type="routes",le="+Inf"}'] >= 1
        assert 0 < mid['cilia_xds_convergence_seconds_sum{type="routes"}'] < 5

        # A listener Envoy rejects: one NACK.
        md.write("cec.yaml", cec(port, [route("/other", "default/other"), route("/", "default/echo")],
                                 clusters=("default/echo", "default/other"), bad_listener=True))
        envoy.wait_for(lambda: cp.admin_json("/debug/proxies")["node~local"]["types"]["listeners"]["state"]
                       == "NACKED", timeout=5, what="NACK visible")
        after = _metrics(cp)
        assert after['cilia_xds_nacks_total{type="listeners"}'] >= 1
        assert after['cilia_xds_pushes_total{reason="change",type="listeners"}'] >= 1

        # CSDS: the proxy's listener type is NACKED with Envoy's message; routes are SYNCED with content.
        req = csds_pb2.ClientStatusRequest(node_matchers=[node_pb2.NodeMatcher(node_id={"exact": "node~local"})])
        resp = _csds(cp.xds_port, req)
        assert len(resp.config) == 1 and resp.config[0].node.id == "node~local"
        by_type: dict[str, list[csds_pb2.ClientConfig.GenericXdsConfig]] = {}
        for g in resp.config[0].generic_xds_configs:
            by_type.setdefault(g.type_url, []).append(g)
        lst = by_type[LISTENER_T]
        assert all(g.config_status == csds_pb2.ERROR for g in lst)
        assert all(g.client_status == config_dump_shared_pb2.NACKED for g in lst)
        assert lst[0].error_state.details and lst[0].name == "default/demo/listener"
        rts = by_type[ROUTE_T]
        assert [g.name for g in rts] == ["default/demo/routes"]
        assert rts[0].config_status == csds_pb2.SYNCED and rts[0].xds_config.type_url == ROUTE_T
        none = _csds(cp.xds_port, csds_pb2.ClientStatusRequest(
            node_matchers=[node_pb2.NodeMatcher(node_id={"prefix": "sidecar~"})]))
        assert len(none.config) == 0

        # /debug/config shows what was sent (the rejected listener included: it was sent).
        with urllib.request.urlopen(f"http://127.0.0.1:{cp.admin_port}/debug/config/node~local") as r:
            assert r.headers["X-Cilia-Config-Source"] == "sent"
            sent = json.load(r)
        assert [x["name"] for x in sent["routes"]] == ["default/demo/routes"]
        assert len(sent["listeners"][0]["filterChains"]) == 2  # the bad one

        # cilia status / config.
        admin = f"127.0.0.1:{cp.admin_port}"
        table = _cli("status", "--admin", admin)
        assert table.returncode == 0, table.stderr
        row = next(line for line in table.stdout.splitlines() if line.startswith("node~local"))
        assert "NACKED" in row and variant in row and "SYNCED" in row and "listeners:" in row
        detail = _cli("status", "node~local", "--admin", admin)
        assert detail.returncode == 0 and "Last NACK of listeners" in detail.stdout
        as_json = json.loads(_cli("status", "--admin", admin, "-o", "json").stdout)
        assert as_json["proxies"]["node~local"]["types"]["listeners"]["state"] == "NACKED"
        cfg = _cli("config", "node~local", "--admin", admin, "--type", "routes")
        assert cfg.returncode == 0 and list(json.loads(cfg.stdout)) == ["routes"]
        assert json.loads(cfg.stdout)["routes"][0]["name"] == "default/demo/routes"
        missing = _cli("status", "node~nope", "--admin", admin)
        assert missing.returncode == 1 and "has not connected" in missing.stderr
    finally:
        envoy.stop()
        cp.stop()
