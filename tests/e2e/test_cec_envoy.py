"""CiliumEnvoyConfig served to a real Envoy over Delta and SotW ADS, with live edits."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest

from support.backends import EchoBackend, echo_backends
from support.controlplane import ControlPlaneThread, ManifestDir
from support.envoy import Envoy
from support.http import get
from support.manifests import docs, endpoint_slice, service
from support.net import free_port

pytestmark = pytest.mark.e2e


def cec(listener_port: int, routes: list[dict[str, object]], name: str = "demo",
        clusters: tuple[str, ...] = ("default/echo",), with_listener: bool = True,
        bad_listener: bool = False) -> str:
    resources: list[dict[str, object]] = []
    if with_listener:
        listener: dict[str, object] = {
            "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
            "name": "listener",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener_port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                             "HttpConnectionManager",
                    "stat_prefix": "demo", "rds": {"route_config_name": "routes"},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                }}]}],
        }
        if bad_listener:
            # Parses as a Listener, but Envoy rejects it: a filter chain with no filters and
            # a duplicate filter chain match.
            listener["filter_chains"] = [{"filters": []}, {"filters": []}]
        resources.append(listener)
    resources.append({"@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration", "name": "routes",
                      "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]})
    for c in clusters:
        resources.append({"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": c,
                          "type": "EDS", "connect_timeout": "1s"})
    return json.dumps({"apiVersion": "cilium.io/v2", "kind": "CiliumEnvoyConfig",
                       "metadata": {"name": name, "namespace": "default"},
                       "spec": {"backendServices": [{"name": c.split("/")[1], "namespace": "default"}
                                                    for c in clusters],
                                "resources": resources}})


def route(prefix: str, cluster: str) -> dict[str, object]:
    return {"match": {"prefix": prefix}, "route": {"cluster": cluster}}


@pytest.fixture
def world() -> Iterator[tuple[ManifestDir, list[EchoBackend]]]:
    md = ManifestDir()
    with echo_backends(("echo-a", "127.0.0.2"), ("echo-b", "127.0.0.3"), ("other", "127.0.0.4")) as backends:
        yield md, backends
    md.cleanup()


def _services(backends: list[EchoBackend], echo: list[EchoBackend]) -> str:
    other = backends[2]
    return docs(
        service("echo", 80, vip="127.96.0.10"),
        *[endpoint_slice("echo", [(b.host, b.port)], name=f"echo-{i}") for i, b in enumerate(echo)],
        service("other", 80, vip="127.96.0.11"),
        endpoint_slice("other", [(other.host, other.port)]),
    )


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
def test_cec_routes_live_edits_and_nack(world: tuple[ManifestDir, list[EchoBackend]], delta: bool) -> None:
    md, backends = world
    a, b, _ = backends
    port = free_port()
    md.write("services.yaml", _services(backends, [a]))
    md.write("cec.yaml", cec(port, [route("/", "default/echo")]))
    cp = ControlPlaneThread([str(md.path)]).start()
    envoy = Envoy("node~local", cp.xds_port, delta=delta).start()
    url = f"http://127.0.0.1:{port}"
    try:
        envoy.wait_for(lambda: get(url + "/x").status == 200, what="listener serving")
        assert get(url + "/x").json()["backend"] == "echo-a"

        # New backend: both answer.
        md.write("services.yaml", _services(backends, [a, b]))
        t0 = time.monotonic()
        envoy.wait_for(lambda: {get(url + "/").json()["backend"] for _ in range(10)} == {"echo-a", "echo-b"},
                       what="second backend")
        assert time.monotonic() - t0 < 1.5

        # New route with a new cluster, while requests run in a loop: none may fail.
        failures: list[int] = []
        stop = threading.Event()

        def hammer() -> None:
            deadline = time.monotonic() + 10
            while not stop.is_set() and time.monotonic() < deadline:
                status = get(url + "/").status
                if status != 200:
                    failures.append(status)

        t = threading.Thread(target=hammer)
        t.start()
        try:
            t0 = time.monotonic()
            md.write("cec.yaml", cec(port, [route("/other", "default/other"), route("/", "default/echo")],
                                     clusters=("default/echo", "default/other")))
            envoy.wait_for(lambda: get(url + "/other").json()["backend"] == "other", what="new route")
            took = time.monotonic() - t0
        finally:
            stop.set()
            t.join()
        assert failures == []
        assert took < 1.0 + 0.5  # edit -> live (file watch + debounce + push), with slack for a loaded CI

        # A listener Envoy rejects: NACK recorded, old config keeps serving.
        md.write("cec.yaml", cec(port, [route("/other", "default/other"), route("/", "default/echo")],
                                 clusters=("default/echo", "default/other"), bad_listener=True))

        def nacked() -> bool:
            lst = cp.admin_json("/debug/proxies")["node~local"]["types"]["listeners"]
            return bool(lst["last_nack"]) and lst["state"] == "NACKED"

        envoy.wait_for(nacked, timeout=3, what="NACK visible")
        assert get(url + "/other").json()["backend"] == "other"

        # A manifest that does not parse changes nothing that serves, and is reported.
        rebuilds = cp.call(lambda: cp.cp.counters.rebuilds)
        md.write("cec.yaml", "apiVersion: cilium.io/v2\nkind: [broken\n")
        envoy.wait_for(lambda: any("cec.yaml" in i["text"] and "cannot parse" in i["text"]
                                   for i in cp.admin_json("/debug/issues")), timeout=3, what="parse error reported")
        assert get(url + "/other").json()["backend"] == "other"
        proxies = cp.admin_json("/debug/proxies")["node~local"]["types"]
        assert proxies["routes"]["state"] == "SYNCED"
        assert cp.call(lambda: cp.cp.counters.rebuilds) >= rebuilds

        # Removing the listener: the port stops serving.
        md.write("cec.yaml", cec(port, [route("/", "default/echo")], with_listener=False))
        envoy.wait_for(lambda: "default/demo/listener" not in envoy.listeners(), what="listener removed")
    finally:
        envoy.stop()
        cp.stop()
