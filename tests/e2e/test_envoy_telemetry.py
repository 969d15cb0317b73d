"""Envoy telemetry set by the control plane, through a real Envoy: OpenTelemetry traces reach an OTLP
receiver, listener stats carry the listener's prefix, access logs are JSON on stdout."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from test_otlp_traces import Receiver, receiver  # noqa: F401 - fixture

import cilia.translate as translate_pkg
from cilia.ir import model as ir
from cilia.k8s.store import InputSnapshot
from cilia.translate.context import Partial, TranslateOptions
from support.backends import echo_backends
from support.controlplane import ControlPlaneThread, ManifestDir
from support.envoy import Envoy
from support.http import get
from support.manifests import docs, endpoint_slice, service
from support.net import free_port

pytestmark = pytest.mark.e2e


def http_listener_translator(port: int):  # type: ignore[no-untyped-def]
    """A translator emitting one generated HTTP listener (what Ingress/Gateway/mesh translators make)."""

    def translate_test(snapshot: InputSnapshot, opts: TranslateOptions) -> Partial:
        route = ir.Route("all", ir.RouteMatch(), backends=(ir.Backend("default/echo"),))
        return Partial(bundles=(ir.Bundle(
            key="test/telemetry", scope=ir.ProxyScope(roles=frozenset({"node"})),
            listeners=(ir.Listener("test/http", "127.0.0.1", port, (
                ir.FilterChain("test/http", ir.HttpApp("test/routes")),)),),
            routes=(ir.RouteConfig("test/routes", (ir.VirtualHost("all", ("*",), (route,)),)),),
            clusters=(ir.Cluster("default/echo", eds_name="default/echo:80"),)),))
    return translate_test


@pytest.fixture
def manifests() -> Iterator[ManifestDir]:
    md = ManifestDir()
    yield md
    md.cleanup()


def test_envoy_traces_stats_prefix_and_access_log(receiver: tuple[Receiver, int],  # noqa: F811
                                                  manifests: ManifestDir, monkeypatch: pytest.MonkeyPatch) -> None:
    rec, otlp_port = receiver
    port = free_port()
    monkeypatch.setattr(translate_pkg, "TRANSLATORS", (*translate_pkg.TRANSLATORS, http_listener_translator(port)))
    with echo_backends(("echo-a", "127.0.0.2")) as (a,):
        manifests.write("services.yaml", docs(service("echo", 80, vip="127.96.0.10"),
                                              endpoint_slice("echo", [(a.host, a.port)])))
        opts = TranslateOptions(envoy_otel_collector=f"127.0.0.1:{otlp_port}", envoy_tracing_service_name="edge",
                                envoy_listener_stat_prefix=True)
        cp = ControlPlaneThread([str(manifests.path)], translate=opts).start()
        envoy = Envoy("node~local", cp.xds_port).start()
        try:
            envoy.wait_for(lambda: get(f"http://127.0.0.1:{port}/x").status == 200, what="listener serving")
            for i in range(6):  # Envoy's tracer flushes after 5 spans (or 5 s)
                assert get(f"http://127.0.0.1:{port}/req{i}").status == 200

            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and len(rec.spans) < 5:
                time.sleep(0.1)
            paths = {a.value.string_value for s in rec.spans for a in s.attributes if a.key == "http.url"}
            assert any("/req3" in p for p in paths), paths

            stats = envoy.stats("listener.test_http.")
            assert stats.get("listener.test_http.downstream_cx_total", 0) >= 1, stats
            assert cp.admin_json("/debug/proxies")["node~local"]["types"]["listeners"]["state"] == "SYNCED"

            envoy.admin("/reopen_logs", method="POST")  # flushes access logs (else every 10 s)

            def logged() -> bool:
                logs = [json.loads(line) for line in envoy.log.read_text(errors="replace").splitlines()
                        if line.startswith("{")]
                return any(r.get("path") == "/req5" and r.get("response_code") == 200 for r in logs)

            envoy.wait_for(logged, timeout=5, what="JSON access log line for /req5")
        finally:
            envoy.stop()
            cp.stop()
