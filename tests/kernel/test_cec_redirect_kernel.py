"""CiliumEnvoyConfig `spec.services`, end to end: a Service named there is steered by the eBPF agent
to the config's own listener on the node Envoy (bound by cilia on 127.0.0.1, since, as in Cilium's
examples, it has no address), while other Services keep going to the mesh capture listener. The
config has the shape of Cilium's traffic-management example: weighted clusters over two Services, a
regex rewrite, the router given by name only."""

from __future__ import annotations

import json

import pytest
from bpf_kernel_support import KernelEnv, free_port
from system_support import AgentProcess, MeshEnvoy, docs, endpoint_slice, namespace, pod, service, wait_until
from test_system_mesh_kernel import NODE, Running, agent_ready, json_body

from cilia.translate.context import TranslateOptions
from support.backends import echo_backends
from support.controlplane import ControlPlaneThread, ManifestDir

pytestmark = pytest.mark.kernel

LB_VIP, OTHER_VIP, LB2_VIP = "127.96.0.30", "127.96.0.31", "127.96.0.32"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def cec_l7_lb() -> dict[str, object]:
    """Cilium's L7 traffic-management example shape: an address-less listener, a route splitting
    between two Services, rewriting /foo... to / and adding a header."""
    return {
        "apiVersion": "cilium.io/v2", "kind": "CiliumEnvoyConfig",
        "metadata": {"name": "lb", "namespace": "shop"},
        "spec": {
            "services": [{"name": "lb", "namespace": "shop"}],
            "backendServices": [{"name": "lb", "namespace": "shop"}, {"name": "lb-two", "namespace": "shop"}],
            "resources": [
                {"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", "name": "lb-listener",
                 "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                 "typed_config": {
                                                     "@type": HCM, "stat_prefix": "cec_lb",
                                                     "rds": {"route_config_name": "lb-route"},
                                                     "http_filters": [{"name": "envoy.filters.http.router"}]}}]}]},
                {"@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration", "name": "lb-route",
                 "virtual_hosts": [{"name": "lb", "domains": ["*"], "routes": [{
                     "match": {"prefix": "/"},
                     "route": {"weighted_clusters": {"clusters": [{"name": "shop/lb", "weight": 50},
                                                                  {"name": "shop/lb-two", "weight": 50}]},
                               "regex_rewrite": {"pattern": {"google_re2": {}, "regex": "^/foo.*$"},
                                                 "substitution": "/"}},
                     "request_headers_to_add": [{"header": {"key": "x-via", "value": "cec-lb"}}]}]}]},
                {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "shop/lb", "type": "EDS",
                 "connect_timeout": "1s"},
                {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "shop/lb-two", "type": "EDS",
                 "connect_timeout": "1s"},
            ],
        },
    }


def test_cec_services_redirect_to_the_config_listener(kenv: KernelEnv) -> None:
    proxy_cg = kenv.cgroup("cec/proxy")
    client_cg = kenv.cgroup("cec/pods/client")
    capture_port = free_port()
    md = ManifestDir()
    with echo_backends(("lb-backend", "127.0.0.31"), ("other-backend", "127.0.0.32"),
                       ("lb-two-backend", "127.0.0.33")) as (lb, other, lb2):
        md.write("world.yaml", docs(
            namespace("shop", "node"),
            pod("shop", "client", NODE, "127.1.0.31", {"cilia.io/cgroup": kenv.rel(client_cg)}),
            service("shop", "lb", LB_VIP), endpoint_slice("shop", "lb", lb.host, lb.port),
            service("shop", "other", OTHER_VIP), endpoint_slice("shop", "other", other.host, other.port),
            service("shop", "lb-two", LB2_VIP), endpoint_slice("shop", "lb-two", lb2.host, lb2.port),
        ))
        md.write("cec.json", json.dumps(cec_l7_lb()))
        cp = ControlPlaneThread([str(md.path)], translate=TranslateOptions(mesh_capture_port=capture_port)).start()
        run = Running(cp, md, [])
        try:
            envoy = MeshEnvoy(kenv, proxy_cg, f"node~{NODE}", cp.xds_port)
            run.envoys.append(envoy)
            wait_until(lambda: len(envoy.listeners()) == 2, 15, "mesh and CEC listeners")
            listeners = envoy.listeners()
            lb_address = listeners["shop/lb/lb-listener"]
            assert lb_address.startswith("127.0.0.1:") and lb_address != f"127.0.0.1:{capture_port}"
            run.agent = AgentProcess(kenv, xds_port=cp.xds_port, node=NODE, proxy_cgroup=proxy_cg,
                                     proxy_address=f"127.0.0.1:{capture_port}", sockmap=False)
            wait_until(lambda: agent_ready(run, 7, services=3), 40, "agent policy applied")

            seen: dict[str, int] = {}
            for i in range(24):
                r = kenv.curl(client_cg, f"http://{LB_VIP}/foo/{i}")
                body = json_body(r.body)
                assert r.status == 200 and body.get("path") == "/", r  # rewritten by the config's route
                assert body["headers"].get("x-via") == "cec-lb", "served by the CiliumEnvoyConfig's listener"
                seen[body["backend"]] = seen.get(body["backend"], 0) + 1
            assert set(seen) == {"lb-backend", "lb-two-backend"} and min(seen.values()) >= 3, seen
            assert envoy.stats("http.cec_lb.downstream_rq_2xx").get("http.cec_lb.downstream_rq_2xx") == 24

            r = kenv.curl(client_cg, f"http://{OTHER_VIP}/y")
            body = json_body(r.body)
            assert (r.status, body.get("backend")) == (200, "other-backend"), r
            assert "x-via" not in body["headers"], "other Services keep the mesh capture listener"
        finally:
            run.stop()
