"""Real Envoys over mTLS, set up only with the CLI: `cilia ca init`, `cilia cert`, `cilia bootstrap --tls-dir`.

Every role connects (Delta and SotW) and takes its whole configuration; traffic flows through the node,
ingress and gateway roles; a certificate renewed on disk is used for the next connection without
restarting Envoy; a certificate for one proxy cannot fetch another's configuration.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.backends import EchoBackend
from support.controlplane import CiliaProcess
from support.envoy import Envoy
from support.gateway_objects import backend, gateway, gateway_class, http_route
from support.http import get
from support.manifests import docs, endpoint_slice, service
from support.net import free_port

pytestmark = pytest.mark.e2e


def cilia(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "cilia", *args], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


class Setup:
    def __init__(self, tmp: Path, echo: EchoBackend) -> None:
        self.tmp = tmp
        self.ca_dir = tmp / "ca"
        cilia("ca", "init", "--dir", str(self.ca_dir), "--trust-domain", "mesh.test")
        self.node_port, self.ingress_port, self.gateway_port = free_port(), free_port(), free_port()
        self.inbound_port = free_port()
        manifests = tmp / "manifests"
        manifests.mkdir()
        (manifests / "all.yaml").write_text(docs(
            service("echo", 80, vip="127.96.7.1"), endpoint_slice("echo", [(echo.host, echo.port)]),
            json.dumps({"apiVersion": "cilium.io/v2", "kind": "CiliumEnvoyConfig",
                        "metadata": {"name": "edge", "namespace": "default"},
                        "spec": {"backendServices": [{"name": "echo", "namespace": "default"}], "resources": [
                            _cec_listener(self.node_port),
                            {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                             "name": "default/echo", "type": "EDS", "connect_timeout": "1s"}]}}),
            json.dumps({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                        "metadata": {"name": "web", "namespace": "default"},
                        "spec": {"ingressClassName": "cilia", "rules": [{"http": {"paths": [
                            {"path": "/", "pathType": "Prefix",
                             "backend": {"service": {"name": "echo", "port": {"number": 80}}}}]}}]}}),
            gateway_class(),
            gateway("gw", [{"name": "http", "protocol": "HTTP", "port": self.gateway_port}], address="127.0.0.1"),
            http_route("web", [{"backendRefs": [backend("echo")]}], parents=[{"name": "gw"}]),
            json.dumps({"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": "shop", "labels": {"cilia.io/mesh": "sidecar"}}}),
            json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "shop"},
                        "spec": {"nodeName": "n1", "containers": [{"name": "app", "ports": [{"containerPort": 8080}]}]},
                        "status": {"phase": "Running", "podIP": "127.1.7.1"}}),
        ))
        self.xds_tls_port = free_port()
        self.cp = CiliaProcess([str(manifests)], extra=[
            "--xds-tls", f"127.0.0.1:{self.xds_tls_port}", "--ca-dir", str(self.ca_dir),
            "--ingress-address", "127.0.0.1", "--ingress-http-port", str(self.ingress_port),
            "--mesh-inbound-address", "127.0.0.1", "--mesh-inbound-port", str(self.inbound_port)])
        self.envoys: list[Envoy] = []

    def cert(self, proxy: str) -> Path:
        out = self.tmp / "certs" / proxy.replace("~", "_").replace("/", "_")
        cilia("cert", "--ca-dir", str(self.ca_dir), "--proxy", proxy, "--out", str(out), "--ttl", "1h")
        return out

    def envoy(self, proxy: str, *, delta: bool, tls_dir: Path | None = None, ready: bool = True) -> Envoy:
        tls_dir = tls_dir or self.cert(proxy)
        admin = free_port()
        boot = cilia("bootstrap", "--proxy", proxy, "--xds", f"127.0.0.1:{self.xds_tls_port}", "--admin-port",
                     str(admin), "--tls-dir", str(tls_dir), "--delta" if delta else "--sotw")
        e = Envoy(proxy, self.xds_tls_port, bootstrap=boot)
        e.admin_port = admin
        self.envoys.append(e)
        e.start(wait_ready=ready)
        if not ready:  # admin answers /server_info even while Envoy waits for its first configuration
            e.wait_for(lambda: e.admin("/server_info") != "", 10, what="Envoy admin")
        return e

    def stop(self) -> None:
        for e in self.envoys:
            e.stop()
        self.cp.stop()


def _cec_listener(port: int) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", "name": "edge",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                         "HttpConnectionManager",
                "stat_prefix": "edge",
                "route_config": {"name": "edge", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                    {"match": {"prefix": "/"}, "route": {"cluster": "default/echo"}}]}]},
                "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    echo = EchoBackend("echo").start()
    s = Setup(tmp_path, echo)
    s.cp.start()
    try:
        yield s
    finally:
        s.stop()
        echo.stop()


def _synced(cp: CiliaProcess, proxy: str) -> bool:
    p = cp.admin_json("/debug/proxies").get(proxy)
    if not p or not p["connected"] or not p["types"]:
        return False
    return all(t["state"] == "SYNCED" for t in p["types"].values())


ROLES = {"node~n1": "node_port", "ingress~cilia": "ingress_port", "gateway~default/gw": "gateway_port",
         "sidecar~shop/p": None}


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
def test_every_role_over_mtls_with_traffic(setup: Setup, delta: bool) -> None:
    for proxy, port_attr in ROLES.items():
        e = setup.envoy(proxy, delta=delta)
        e.wait_for(lambda p=proxy: _synced(setup.cp, p), 15, what=f"{proxy} SYNCED over mTLS")
        peer = setup.cp.admin_json("/debug/proxies")[proxy]["peer"]
        role, name = proxy.split("~")
        assert peer["uris"] == [f"spiffe://mesh.test/proxy/{role}/{name}"]
        if port_attr is None:
            e.wait_for(lambda e=e: any(str(setup.inbound_port) in line for line in e.admin("/listeners").splitlines()),
                       10, what="sidecar inbound listener")
            continue
        port = getattr(setup, port_attr)
        e.wait_for(lambda port=port: get(f"http://127.0.0.1:{port}/hello").status == 200, 10,
                   what=f"traffic through {proxy}")
        assert e.stats("ssl.handshake").get("cluster.cilia-xds.ssl.handshake", 0) >= 1


def test_renewed_certificate_is_used_for_the_next_connection_without_restart(setup: Setup) -> None:
    tls_dir = setup.cert("node~n1")
    first = json.loads(cilia("ca", "show", "--dir", str(setup.ca_dir)))["trust_domain"]
    assert first == "mesh.test"
    e = setup.envoy("node~n1", delta=True, tls_dir=tls_dir)
    e.wait_for(lambda: _synced(setup.cp, "node~n1"), 15, what="SYNCED")
    serial1 = setup.cp.admin_json("/debug/proxies")["node~n1"]["peer"]["serial"]
    cilia("cert", "--ca-dir", str(setup.ca_dir), "--proxy", "node~n1", "--out", str(tls_dir), "--ttl", "2h")
    renewed = _serial_of(tls_dir / "cert.pem")
    assert renewed != serial1
    e.wait_for(lambda: renewed in e.admin("/certs"), 10, what="Envoy loaded the renewed certificate")
    pid = e.proc.pid if e.proc else 0
    setup.cp.stop()  # the next connection is a new handshake
    setup.cp.start()
    e.wait_for(lambda: _synced(setup.cp, "node~n1"), 20, what="reconnected")
    assert setup.cp.admin_json("/debug/proxies")["node~n1"]["peer"]["serial"] == renewed
    assert e.proc is not None and e.proc.pid == pid and e.proc.poll() is None
    assert get(f"http://127.0.0.1:{setup.node_port}/after").status == 200


def test_certificate_for_another_proxy_gets_nothing(setup: Setup) -> None:
    wrong = setup.cert("node~n2")  # a valid certificate, but for another node
    e = setup.envoy("node~n1", delta=True, tls_dir=wrong, ready=False)
    e.wait_for(lambda: "PERMISSION_DENIED" in e.log_tail() or "may not receive" in e.log_tail(), 10,
               what="the denial in Envoy's log")
    assert not _synced(setup.cp, "node~n1")
    assert "edge" not in e.admin("/listeners")
    assert e.stats("control_plane.connected_state").get("control_plane.connected_state", 0) == 0
    metrics = urllib_get(f"http://127.0.0.1:{setup.cp.admin_port}/metrics")
    assert 'cilia_xds_denied_streams_total{role="node"}' in metrics


def urllib_get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def _serial_of(pem: Path) -> str:
    from cryptography import x509

    return f"{x509.load_pem_x509_certificate(pem.read_bytes()).serial_number:x}"
