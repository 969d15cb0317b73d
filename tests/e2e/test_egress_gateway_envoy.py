"""Egress gateway through real Envoys (loopback only): node~a (a selected client pod) and node~gw (the
gateway) are served by one control plane; an "external" HTTP server on 127.0.8.5 records each peer.

The node agent's redirect of the pod's connects is not part of this test: the tunnel is opened here the
way node~a's capture chain opens it (HTTP/2 CONNECT to the gateway's tunnel listener, the original
destination as authority, the policy in a header), and node~a must accept its egress chain (no NACK).
The gateway's upstream connection must come from the policy's egress IP, added to `lo` here (root).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

h2_connection = pytest.importorskip("h2.connection")
h2_config = pytest.importorskip("h2.config")
h2_events = pytest.importorskip("h2.events")

from cilia.mesh.egresshost import local_ipv4  # noqa: E402
from cilia.translate.context import TranslateOptions  # noqa: E402
from support.backends import EchoBackend  # noqa: E402
from support.controlplane import ControlPlaneThread, ManifestDir  # noqa: E402
from support.envoy import Envoy  # noqa: E402
from support.net import free_port  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="adds egress addresses to lo (needs root)")

EXTERNAL = "127.0.8.5"
EGRESS_IPS = ("127.0.9.1", "127.0.9.2")

NODES_AND_PODS = """
apiVersion: v1
kind: Node
metadata: {name: a}
status: {addresses: [{type: InternalIP, address: 127.0.0.1}]}
---
apiVersion: v1
kind: Node
metadata: {name: gw, labels: {egress: "true"}}
status: {addresses: [{type: InternalIP, address: 127.0.0.1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec: {nodeName: a, containers: [{name: app, image: app}]}
status: {phase: Running, podIP: 127.1.0.2}
"""


def policy(egress_ip: str) -> str:
    return f"""
apiVersion: cilium.io/v2
kind: CiliumEgressGatewayPolicy
metadata: {{name: legacy}}
spec:
  selectors: [{{podSelector: {{matchLabels: {{app: client}}}}}}]
  destinationCIDRs: [127.0.8.0/24]
  excludedCIDRs: [127.0.8.128/25]
  egressGateway: {{nodeSelector: {{matchLabels: {{egress: "true"}}}}, egressIP: {egress_ip}}}
"""


@pytest.fixture
def egress_ips() -> Iterator[None]:
    added = []
    try:
        for ip in EGRESS_IPS:
            if subprocess.run(["ip", "addr", "add", f"{ip}/32", "dev", "lo"], capture_output=True).returncode == 0:
                added.append(ip)
        yield
    finally:
        for ip in added:
            subprocess.run(["ip", "addr", "del", f"{ip}/32", "dev", "lo"], capture_output=True)


def connect_get(tunnel_port: int, authority: str, egress_policy: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """An HTTP/1.1 GET carried in an HTTP/2 CONNECT to the gateway: (CONNECT status, HTTP response)."""
    conn = h2_connection.H2Connection(h2_config.H2Configuration(client_side=True, header_encoding="utf-8"))
    status = 0
    body = b""
    with socket.create_connection(("127.0.0.1", tunnel_port), timeout=timeout) as sock:
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(":method", "CONNECT"), (":authority", authority),
                                ("x-cilia-egress-policy", egress_policy)])
        sock.sendall(conn.data_to_send())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            ended = False
            for ev in conn.receive_data(data):
                if isinstance(ev, h2_events.ResponseReceived):
                    status = int(dict(ev.headers)[":status"])
                    if status == 200:
                        conn.send_data(sid, f"GET / HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
                                       .encode())
                elif isinstance(ev, h2_events.DataReceived):
                    body += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2_events.StreamEnded | h2_events.StreamReset):
                    ended = True
            sock.sendall(conn.data_to_send())
            if ended or (status and status != 200) or _complete(body):
                break
    return status, body


def _status_or_0(tunnel_port: int, authority: str) -> int:
    try:
        return connect_get(tunnel_port, authority, "legacy", timeout=2)[0]
    except OSError:
        return 0


def _complete(response: bytes) -> bool:
    head, sep, rest = response.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            return len(rest) >= int(v)
    return False


def peer_of(response: bytes) -> str:
    head, _, rest = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), response[:200]
    return str(json.loads(rest)["peer"])


def synced(cp: ControlPlaneThread, proxy: str) -> bool:
    p = cp.admin_json("/debug/proxies").get(proxy)
    if not p or not p["connected"]:
        return False
    for t in p["types"].values():
        if t["state"] == "NACKED":
            raise AssertionError(f"{proxy} NACKed: {t['last_nack']}")
    return "listeners" in p["types"] and all(t["state"] == "SYNCED" for t in p["types"].values())


def test_selected_connection_leaves_from_the_egress_ip(egress_ips: None, tmp_path: Path) -> None:
    host = local_ipv4()
    assert host is not None and set(EGRESS_IPS) <= set(host[0])
    server = EchoBackend("external", host=EXTERNAL).start()
    server_port = server.port
    md = ManifestDir()
    md.write("world.yaml", NODES_AND_PODS)
    md.write("policy.yaml", policy(EGRESS_IPS[0]))
    tunnel_port = free_port()
    opts = TranslateOptions(mesh_default_mode="node", mesh_capture_port=free_port(),
                            egress_tunnel_address="127.0.0.1", egress_tunnel_port=tunnel_port,
                            egress_local_ips=host[0], egress_interfaces=host[1])
    cp = ControlPlaneThread([str(md.path)], translate=opts).start()
    envoys: list[Envoy] = []
    try:
        for proxy in ("node~gw", "node~a"):
            envoy = Envoy(proxy, cp.xds_port).start()
            envoys.append(envoy)
            envoy.wait_for(lambda p=proxy: synced(cp, p), timeout=30, what=f"{proxy} synced")
        status = {s["metadata"]["name"]: s["status"] for s in cp.admin_json("/debug/status")
                  if s["kind"] == "CiliumEgressGatewayPolicy"}
        assert status["legacy"]["selectedPods"] == ["shop/client"]
        assert status["legacy"]["gatewayNodes"] == ["gw"] and status["legacy"]["egressIP"] == EGRESS_IPS[0]

        # Directly (no tunnel), the server sees the ordinary loopback source.
        direct = socket.create_connection((EXTERNAL, server_port), timeout=5)
        direct.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = b""
        while chunk := direct.recv(65536):
            raw += chunk
        direct.close()
        assert peer_of(raw) == "127.0.0.1"

        envoys[0].wait_for(lambda: _status_or_0(tunnel_port, f"{EXTERNAL}:{server_port}") == 200,
                           timeout=20, what="gateway tunnel listener up")
        code, response = connect_get(tunnel_port, f"{EXTERNAL}:{server_port}", "legacy")
        assert code == 200 and peer_of(response) == EGRESS_IPS[0]
        # A tunnel for no policy is refused by the gateway.
        assert connect_get(tunnel_port, f"{EXTERNAL}:{server_port}", "nosuch")[0] == 404

        # Another egress IP takes effect for new connections within 2 s.
        md.write("policy.yaml", policy(EGRESS_IPS[1]))
        t0 = time.monotonic()
        peer = ""
        while time.monotonic() - t0 < 10:
            code, response = connect_get(tunnel_port, f"{EXTERNAL}:{server_port}", "legacy")
            if code == 200 and (peer := peer_of(response)) == EGRESS_IPS[1]:
                break
            time.sleep(0.05)
        assert peer == EGRESS_IPS[1], peer
        assert time.monotonic() - t0 < 2.0, f"took {time.monotonic() - t0:.2f} s"
    except BaseException:
        for e in envoys:
            print(e.proxy, e.log_tail())
        raise
    finally:
        for e in envoys:
            e.stop()
        cp.stop()
        server.stop()
        md.cleanup()
