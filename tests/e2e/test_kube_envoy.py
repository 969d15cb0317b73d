"""Kubernetes mode end to end: objects in the (fake) API server -> cilia -> a real Envoy -> backends.

Live edits through the API reach Envoy; a 410 relist of unchanged objects makes Envoy receive nothing;
a config Envoy rejects shows up as a NACK condition on the CiliumEnvoyConfig's status.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from support.backends import EchoBackend, echo_backends
from support.controlplane import CiliaProcess
from support.envoy import Envoy
from support.http import get
from support.kubecp import KubeWorld
from support.net import free_port

pytestmark = pytest.mark.e2e

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HTTP_FILTERS = [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]


def service(name: str, vip: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": vip, "ports": [{"name": "http", "port": 80}]}}


def endpoint_slice(service_name: str, backends: list[EchoBackend]) -> dict[str, Any]:
    assert len({b.port for b in backends}) == 1 or len(backends) <= 1
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{service_name}-1", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": backends[0].port}],
            "endpoints": [{"addresses": [b.host], "conditions": {"ready": True}} for b in backends]}


def cec(port: int, routes: list[tuple[str, str]], *, bad_listener: bool = False) -> dict[str, Any]:
    chains: list[dict[str, Any]] = [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                  "typed_config": {"@type": HCM, "stat_prefix": "kube",
                                                                   "rds": {"route_config_name": "routes"},
                                                                   "http_filters": HTTP_FILTERS}}]}]
    if bad_listener:  # parses, but Envoy rejects it: two filter chains with the same (empty) match
        chains = [{"filters": []}, {"filters": []}]
    clusters = sorted({c for _, c in routes})
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumEnvoyConfig",
            "metadata": {"name": "demo", "namespace": "default"},
            "spec": {"backendServices": [{"name": c.split("/")[1], "namespace": "default"} for c in clusters],
                     "resources": [
                         {"@type": LISTENER, "name": "listener",
                          "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                          "filter_chains": chains},
                         {"@type": ROUTE, "name": "routes", "virtual_hosts": [{"name": "all", "domains": ["*"],
                          "routes": [{"match": {"prefix": p}, "route": {"cluster": c}} for p, c in routes]}]},
                         *[{"@type": CLUSTER, "name": c, "type": "EDS", "connect_timeout": "1s"} for c in clusters],
                     ]}}


@pytest.fixture
def world() -> Iterator[tuple[KubeWorld, list[EchoBackend]]]:
    with echo_backends(("echo-a", "127.0.0.2"), ("echo-b", "127.0.0.3"), ("other", "127.0.0.4")) as backends:
        kw = KubeWorld().start()
        try:
            yield kw, backends
        finally:
            kw.stop()


def test_kubernetes_objects_served_to_envoy(world: tuple[KubeWorld, list[EchoBackend]]) -> None:
    kw, (a, b, other) = world
    api = kw.api
    assert api is not None
    port = free_port()
    # echo-a and echo-b listen on different ports; one slice per backend keeps slices single-port.
    kw.call(api.create, service("echo", "127.96.0.10"))
    kw.call(api.create, endpoint_slice("echo", [a]))
    kw.call(api.create, service("other", "127.96.0.11"))
    kw.call(api.create, endpoint_slice("other", [other]))
    kw.call(api.create, cec(port, [("/", "default/echo")]))
    plane = kw.control_plane(leader_election=False)
    envoy = Envoy("node~kind-worker", plane.cp.xds_port, delta=True).start()
    url = f"http://127.0.0.1:{port}"

    def cec_conditions() -> dict[str, Any]:
        obj = kw.call(api.get, "cilium.io/v2", "CiliumEnvoyConfig", "demo", "default") or {}
        return {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}

    try:
        envoy.wait_for(lambda: get(url + "/x").status == 200, what="CEC listener serving")
        assert get(url + "/x").json()["backend"] == "echo-a"
        envoy.wait_for(lambda: cec_conditions().get("Programmed", {}).get("status") == "True", what="status")

        # A second backend, added through the API: both answer.
        slice_b = endpoint_slice("echo", [b])
        slice_b["metadata"]["name"] = "echo-2"
        t0 = time.monotonic()
        kw.call(api.create, slice_b)
        envoy.wait_for(lambda: {get(url + "/").json()["backend"] for _ in range(10)} == {"echo-a", "echo-b"},
                       what="second backend")
        assert time.monotonic() - t0 < 2.0

        # A new route through a spec edit.
        def edit(new: dict[str, Any]) -> None:
            cur = api.get("cilium.io/v2", "CiliumEnvoyConfig", "demo", "default")
            assert cur is not None
            api.update({**copy.deepcopy(cur), "spec": new["spec"]})

        kw.call(edit, cec(port, [("/other", "default/other"), ("/", "default/echo")]))
        envoy.wait_for(lambda: get(url + "/other").json()["backend"] == "other", what="new route")

        # 410 on every watch: cilia relists, nothing changed, Envoy receives nothing.
        time.sleep(0.5)
        source = plane.kube.source
        served = sum(1 for k in source._kinds if source.served(k))
        before_stats = envoy.stats("update_attempt")
        assert before_stats.get("listener_manager.lds.update_attempt", 0) > 0
        assert before_stats.get("cluster_manager.cds.update_attempt", 0) > 0
        before_rebuilds, relists = plane.cp.counters.rebuilds, source.relists

        def expire() -> None:
            api.drop_watches()
            api.create({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",  # a kind cilia does not read
                        "metadata": {"name": "bump", "namespace": "default"}})
            api.compact()

        kw.call(expire)
        envoy.wait_for(lambda: source.relists >= relists + served, what="relisted")
        time.sleep(0.5)
        assert plane.cp.counters.rebuilds == before_rebuilds
        after_stats = envoy.stats("update_attempt")
        assert {k: v for k, v in after_stats.items() if "lds" in k or "cds" in k or "rds" in k} == \
               {k: v for k, v in before_stats.items() if "lds" in k or "cds" in k or "rds" in k}
        assert get(url + "/other").json()["backend"] == "other"

        # A listener Envoy rejects: NACK, reported on the CEC; the old config keeps serving.
        kw.call(edit, cec(port, [("/other", "default/other"), ("/", "default/echo")], bad_listener=True))
        envoy.wait_for(lambda: cec_conditions().get("Programmed", {}).get("reason") == "Nacked", timeout=5,
                       what="NACK condition")
        programmed = cec_conditions()["Programmed"]
        assert programmed["status"] == "False" and "node~kind-worker" in programmed["message"]
        assert cec_conditions()["Accepted"]["status"] == "True"
        assert get(url + "/other").json()["backend"] == "other"

        # Fixed again: the NACK condition clears.
        kw.call(edit, cec(port, [("/", "default/echo")]))
        envoy.wait_for(lambda: cec_conditions()["Programmed"]["status"] == "True", timeout=5, what="NACK cleared")

        # Deleted through the API: the listener goes away.
        kw.call(api.delete, "cilium.io/v2", "CiliumEnvoyConfig", "demo", "default")
        envoy.wait_for(lambda: "default/demo/listener" not in envoy.listeners(), what="listener removed")
        assert kw.call(lambda: api.server_errors) == []
    finally:
        envoy.stop()


def test_cilia_serve_kubernetes_process(tmp_path: Any) -> None:
    """The real `cilia serve --kubernetes` command: ready after the initial list, leads, releases on SIGTERM."""
    kw = KubeWorld().start()
    proc = None
    try:
        api = kw.api
        assert api is not None
        kubeconfig = kw.call(api.kubeconfig_path)
        proc = CiliaProcess([], extra=["--kubernetes", "--kubeconfig", kubeconfig, "--lease-namespace", "default",
                                       "--leader-identity", "proc-1", "--lease-duration", "2",
                                       "--lease-renew-deadline", "1.5", "--lease-retry-period", "0.2"]).start()
        lease = "coordination.k8s.io/v1"

        def holder() -> str | None:
            obj = kw.call(api.get, lease, "Lease", "cilia-leader", "default")
            return None if obj is None else obj["spec"].get("holderIdentity")

        deadline = time.monotonic() + 10
        while holder() != "proc-1" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert holder() == "proc-1"
        assert proc.admin_json("/debug/issues") == []
        proc.stop()  # SIGTERM: the lease is released for a successor
        assert proc.proc is not None and proc.proc.returncode == 0, proc.log.read_text()
        assert holder() is None
    finally:
        if proc is not None:
            proc.stop()
        kw.stop()


def test_cilia_serve_kubernetes_bad_kubeconfig(tmp_path: Any) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\n")
    res = subprocess.run([sys.executable, "-m", "cilia", "serve", "--kubernetes", "--kubeconfig", str(bad),
                          "--xds", "127.0.0.1:0", "--admin", "127.0.0.1:0"], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 1 and "cannot configure the Kubernetes client" in res.stderr
    res = subprocess.run([sys.executable, "-m", "cilia", "serve", "--kubernetes", "--lease-duration", "1",
                          "--lease-renew-deadline", "2"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "renew deadline < lease duration" in res.stderr
