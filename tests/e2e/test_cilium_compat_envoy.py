"""Configs written for Cilium, served unchanged to a real node Envoy: Envoy ACKs every one of them.

The manifests follow the shapes of Cilium's service-mesh examples: a clusterwide config exposing the
node Envoy's admin endpoint (`envoy-admin`, the older spelling without '/'), one exposing its
Prometheus metrics (`/metrics` rewritten to `/stats/prometheus` on `/envoy-admin`, only on nodes with
the right label), and an L7 traffic-management config (`services:` + `backendServices`, a listener
without address, weighted clusters with a regex rewrite, the router given by name only, a cluster
with its own circuit breakers and one with Cilium's defaults).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from support.backends import EchoBackend, echo_backends
from support.controlplane import ControlPlaneThread, ManifestDir
from support.envoy import Envoy
from support.http import get
from support.manifests import docs, endpoint_slice, service
from support.net import free_port

pytestmark = pytest.mark.e2e

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def admin_ccec(port: int) -> str:
    return f"""
apiVersion: cilium.io/v2
kind: CiliumClusterwideEnvoyConfig
metadata: {{name: envoy-admin-listener}}
spec:
  resources:
  - "@type": type.googleapis.com/envoy.config.listener.v3.Listener
    name: envoy-admin-listener
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM}
          stat_prefix: envoy-admin-listener
          route_config:
            name: admin_route
            virtual_hosts:
            - name: admin_route
              domains: ["*"]
              routes:
              - match: {{prefix: /}}
                route: {{cluster: envoy-admin}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"""


def metrics_ccec(port: int, name: str = "envoy-prometheus-metrics-listener", role: str = "infra") -> str:
    return f"""
apiVersion: cilium.io/v2
kind: CiliumClusterwideEnvoyConfig
metadata: {{name: {name}}}
spec:
  nodeSelector: {{matchLabels: {{role: {role}}}}}
  resources:
  - "@type": type.googleapis.com/envoy.config.listener.v3.Listener
    name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM}
          stat_prefix: {name}
          route_config:
            virtual_hosts:
            - name: prometheus_metrics_route
              domains: ["*"]
              routes:
              - match: {{path: /metrics}}
                route: {{cluster: /envoy-admin, prefix_rewrite: /stats/prometheus}}
          http_filters:
          - name: envoy.filters.http.router
"""


TRAFFIC_CCEC = f"""
apiVersion: cilium.io/v2
kind: CiliumClusterwideEnvoyConfig
metadata: {{name: envoy-lb-listener}}
spec:
  services:
  - {{name: echo-service-1, namespace: default}}
  - {{name: echo-service-2, namespace: default}}
  backendServices:
  - {{name: echo-service-1, namespace: default}}
  - {{name: echo-service-2, namespace: default}}
  resources:
  - "@type": type.googleapis.com/envoy.config.listener.v3.Listener
    name: envoy-lb-listener
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM}
          stat_prefix: envoy-lb-listener
          rds: {{route_config_name: lb_route}}
          http_filters:
          - name: envoy.filters.http.router
  - "@type": type.googleapis.com/envoy.config.route.v3.RouteConfiguration
    name: lb_route
    virtual_hosts:
    - name: lb_route
      domains: ["*"]
      routes:
      - match: {{prefix: /}}
        route:
          weighted_clusters:
            clusters:
            - {{name: default/echo-service-1, weight: 50}}
            - {{name: default/echo-service-2, weight: 50}}
          retry_policy: {{retry_on: 5xx, num_retries: 3, per_try_timeout: 1s}}
          regex_rewrite:
            pattern: {{google_re2: {{}}, regex: "^/foo.*$"}}
            substitution: /
  - "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
    name: default/echo-service-1
    connect_timeout: 5s
    lb_policy: ROUND_ROBIN
    type: EDS
    outlier_detection: {{split_external_local_origin_errors: true, consecutive_local_origin_failure: 2}}
  - "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
    name: default/echo-service-2
    connect_timeout: 3s
    lb_policy: ROUND_ROBIN
    type: EDS
    circuit_breakers:
      thresholds: [{{priority: DEFAULT, max_requests: 20, max_pending_requests: 10}}]
"""


def bad_cec(name: str, port: int, cluster: str) -> str:
    """Parses and passes cilia's checks, but Envoy rejects it: its inline route names a cluster nobody has."""
    return json.dumps({
        "apiVersion": "cilium.io/v2", "kind": "CiliumEnvoyConfig", "metadata": {"name": name, "namespace": "default"},
        "spec": {"resources": [{
            "@type": "type.googleapis.com/envoy.config.listener.v3.Listener", "name": "listener",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                "@type": HCM, "stat_prefix": name,
                "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                    {"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]},
                "http_filters": [{"name": "envoy.filters.http.router"}]}}]}]}]}})


@pytest.fixture
def backends() -> Iterator[list[EchoBackend]]:
    with echo_backends(("echo-1", "127.0.0.2"), ("echo-2", "127.0.0.3")) as started:
        yield started


def _services(backends: list[EchoBackend]) -> str:
    one, two = backends
    return docs(
        service("echo-service-1", 8080, vip="127.96.0.21"),
        endpoint_slice("echo-service-1", [(one.host, one.port)]),
        service("echo-service-2", 8080, vip="127.96.0.22"),
        endpoint_slice("echo-service-2", [(two.host, two.port)]),
        json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "local", "labels": {"role": "infra"}}}),
    )


def _no_nacks(proxies: dict[str, Any]) -> bool:
    types = proxies["node~local"]["types"]
    return bool(types) and all(t["state"] == "SYNCED" and not t["last_nack"] and not t.get("rejected")
                               for t in types.values())


def _listener_port(envoy: Envoy, name: str) -> int:
    dump = envoy.config_dump()
    for section in dump["configs"]:
        for item in section.get("dynamic_listeners", []):
            listener = item.get("active_state", {}).get("listener", {})
            if listener.get("name") == name:
                return int(listener["address"]["socket_address"]["port_value"])
    raise AssertionError(f"listener {name} not active")


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
def test_ciliums_example_configs_are_acked_and_serve(backends: list[EchoBackend], delta: bool) -> None:
    admin_port, metrics_port, elsewhere_port = free_port(), free_port(), free_port()
    md = ManifestDir()
    md.write("services.yaml", _services(backends))
    md.write("admin.yaml", admin_ccec(admin_port))
    md.write("metrics.yaml", docs(metrics_ccec(metrics_port),
                                  metrics_ccec(elsewhere_port, "metrics-elsewhere", role="edge")))
    md.write("traffic.yaml", TRAFFIC_CCEC)
    cp = ControlPlaneThread([str(md.path)]).start()
    envoy = Envoy("node~local", cp.xds_port, delta=delta).start()
    try:
        envoy.wait_for(lambda: "/envoy-lb-listener/envoy-lb-listener" in envoy.listeners()
                       and _no_nacks(cp.admin_json("/debug/proxies")), timeout=15, what="all configs ACKed")
        assert not [i for i in cp.admin_json("/debug/issues") if "error" == i.get("severity")]
        statuses = {s["metadata"]["name"]: {c["type"]: c["status"] for c in s["status"]["conditions"]}
                    for s in cp.admin_json("/debug/status") if s["kind"] == "CiliumClusterwideEnvoyConfig"}
        assert all(c == {"Accepted": "True", "Programmed": "True"} for c in statuses.values()), statuses

        # The admin config answers Envoy's own admin endpoint on its port.
        info = get(f"http://127.0.0.1:{admin_port}/server_info").json()
        assert info["state"] == "LIVE" and info["node"]["id"] == "node~local"
        # The metrics config answers /metrics with Envoy's Prometheus text (only on the node it selects).
        metrics = get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert metrics.status == 200 and b"# TYPE envoy_" in metrics.body
        assert "/metrics-elsewhere/metrics-elsewhere" not in envoy.listeners()

        # The traffic-management listener (no address in the config: bound on a proxy port of its own)
        # rewrites /foo... to / and splits between the two Services.
        port = _listener_port(envoy, "/envoy-lb-listener/envoy-lb-listener")
        seen: Counter[str] = Counter()
        for i in range(60):
            reply = get(f"http://127.0.0.1:{port}/foo/{i}")
            assert reply.status == 200
            body = reply.json()
            assert body["path"] == "/", body
            seen[body["backend"]] += 1
        assert set(seen) == {"echo-1", "echo-2"} and min(seen.values()) >= 12, seen

        # Circuit breakers: the cluster's own kept, Cilium's defaults where it set none.
        clusters = {c["cluster"]["name"]: c["cluster"] for section in envoy.config_dump()["configs"]
                    for c in section.get("dynamic_active_clusters", [])}
        own = clusters["default/echo-service-2"]["circuit_breakers"]["thresholds"][0]
        assert (own["max_requests"], own["max_pending_requests"]) == (20, 10)
        filled = clusters["default/echo-service-1"]["circuit_breakers"]["thresholds"][0]
        assert (filled["max_retries"], filled["max_connections"], filled["max_requests"]) == (128, 1024, 1024)
    finally:
        envoy.stop()
        cp.stop()
        md.cleanup()


def test_two_configs_rejected_in_one_update_both_report_envoys_words(backends: list[EchoBackend]) -> None:
    md = ManifestDir()
    md.write("services.yaml", _services(backends))
    admin_port = free_port()
    md.write("admin.yaml", admin_ccec(admin_port))
    cp = ControlPlaneThread([str(md.path)]).start()
    envoy = Envoy("node~local", cp.xds_port, delta=True).start()
    try:
        envoy.wait_for(lambda: _no_nacks(cp.admin_json("/debug/proxies")), timeout=15, what="first config ACKed")
        md.write("bad.yaml", docs(bad_cec("broken-a", free_port(), "nowhere-a"),
                                  bad_cec("broken-b", free_port(), "nowhere-b")))

        def programmed() -> dict[str, dict[str, Any]]:
            return {s["metadata"]["name"]: {c["type"]: c for c in s["status"]["conditions"]}
                    for s in cp.admin_json("/debug/status") if s["kind"] == "CiliumEnvoyConfig"}

        envoy.wait_for(lambda: all(programmed().get(n, {}).get("Programmed", {}).get("status") == "False"
                                   for n in ("broken-a", "broken-b")), timeout=10, what="both NACKs attributed")
        status = programmed()
        for name, other in (("broken-a", "nowhere-b"), ("broken-b", "nowhere-a")):
            cond = status[name]["Programmed"]
            assert cond["reason"] == "Nacked" and status[name]["Accepted"]["status"] == "True"
            mine = "nowhere-a" if name == "broken-a" else "nowhere-b"
            assert f"unknown cluster 'default/{name}/{mine}'" in cond["message"], cond  # Envoy's own words
            assert other not in cond["message"], cond  # only about its own resources
        # The config Envoy accepted keeps serving and stays Programmed.
        assert get(f"http://127.0.0.1:{admin_port}/ready").status == 200
        ccec = [s for s in cp.admin_json("/debug/status") if s["kind"] == "CiliumClusterwideEnvoyConfig"]
        assert {c["type"]: c["status"] for c in ccec[0]["status"]["conditions"]}["Programmed"] == "True"
        # Each rejection lasts until its config is fixed: fixing one leaves the other rejected.
        md.write("bad.yaml", docs(yaml.safe_dump(yaml.safe_load(admin_ccec(free_port())) | {
            "kind": "CiliumEnvoyConfig", "metadata": {"name": "broken-a", "namespace": "default"}}),
            bad_cec("broken-b", free_port(), "nowhere-b")))
        envoy.wait_for(lambda: programmed()["broken-a"]["Programmed"]["status"] == "True", timeout=10,
                       what="fixed config programmed")
        assert programmed()["broken-b"]["Programmed"]["status"] == "False"
    finally:
        envoy.stop()
        cp.stop()
        md.cleanup()
