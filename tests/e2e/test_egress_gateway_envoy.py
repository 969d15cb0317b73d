"""Egress gateway through real Envoys (loopback only): node~a (a selected client pod) and node~gw (the
gateway) are served by one control plane; an "external" HTTP server on 127.0.8.5 records each peer.

The node agent's redirect of the pod's connects is not part of this test: the tunnel is opened here the
way node~a's capture chain opens it (HTTP/2 CONNECT to the gateway's tunnel listener, the original
destination as authority, the policy in a header), and node~a must accept its egress chain (no NACK).
The gateway's upstream connection must come from the policy's egress IP, added to `lo` here (root).

With a CA (mesh mTLS) the tunnel is mTLS: the test's client holds a workload certificate of the trust
domain, as node~a's tunnel cluster does; a tunnel without one (plaintext, or TLS without a client
certificate, or a certificate of another CA) is refused, and the gateway shows its node identity. A
valid workload certificate of a ServiceAccount the policy does not select gets 403 for that policy (from
a test client and from a real client Envoy tunnelling as node proxies do), counted by cilia.
`cilia status --envoy-admin gw=...` shows the gateway's flows and bytes per policy.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

h2_connection = pytest.importorskip("h2.connection")
h2_config = pytest.importorskip("h2.config")
h2_events = pytest.importorskip("h2.events")
h2_exceptions = pytest.importorskip("h2.exceptions")

from cryptography import x509  # noqa: E402

from cilia.mesh.egresshost import local_ipv4  # noqa: E402
from cilia.security.ca import init_ca_dir, load_ca_dir, new_ca  # noqa: E402
from cilia.security.spiffe import workload_uri  # noqa: E402
from cilia.translate.context import TranslateOptions  # noqa: E402
from support.backends import EchoBackend  # noqa: E402
from support.controlplane import ControlPlaneThread, ManifestDir, policy_denials  # noqa: E402
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


def connect_get(tunnel_port: int, authority: str, egress_policy: str, timeout: float = 5.0,
                tls: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    """An HTTP/1.1 GET carried in an HTTP/2 CONNECT to the gateway: (CONNECT status, HTTP response)."""
    conn = h2_connection.H2Connection(h2_config.H2Configuration(client_side=True, header_encoding="utf-8"))
    status = 0
    body = b""
    raw = socket.create_connection(("127.0.0.1", tunnel_port), timeout=timeout)
    try:
        wrapped = tls.wrap_socket(raw) if tls is not None else raw
    except OSError:
        raw.close()
        raise
    with wrapped as sock:
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


class OpenTunnel:
    """One CONNECT tunnel through the gateway, held open: a flow in progress."""

    def __init__(self, tunnel_port: int, authority: str, egress_policy: str, timeout: float = 5.0) -> None:
        self.conn = h2_connection.H2Connection(h2_config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.sock = socket.create_connection(("127.0.0.1", tunnel_port), timeout=timeout)
        self.conn.initiate_connection()
        self.sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(self.sid, [(":method", "CONNECT"), (":authority", authority),
                                          ("x-cilia-egress-policy", egress_policy)])
        self.sock.sendall(self.conn.data_to_send())
        self.status = 0
        self.received = b""
        while not self.status:
            self._pump()

    def _pump(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("tunnel closed")
        for ev in self.conn.receive_data(data):
            if isinstance(ev, h2_events.ResponseReceived):
                self.status = int(dict(ev.headers)[":status"])
            elif isinstance(ev, h2_events.DataReceived):
                self.received += ev.data
                self.conn.acknowledge_received_data(ev.flow_controlled_length, self.sid)
        self.sock.sendall(self.conn.data_to_send())

    def exchange(self, payload: bytes, timeout: float = 10.0) -> bytes:
        """Send `payload` (an HTTP/1.1 request) through the tunnel; the complete response."""
        for i in range(0, len(payload), 16384):  # within HTTP/2's default frame size and window
            self.conn.send_data(self.sid, payload[i:i + 16384])
            self.sock.sendall(self.conn.data_to_send())
        deadline = time.monotonic() + timeout
        while not _complete(self.received) and time.monotonic() < deadline:
            self._pump()
        return self.received

    def close(self) -> None:
        self.sock.close()


H2_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def tunnel_client_envoy(tunnel_port: int, authority: str, egress_policy: str, cert: tuple[bytes, bytes],
                        ca_pem: bytes) -> tuple[Envoy, int]:
    """A real Envoy tunnelling each connection to its listener (returned port) to the gateway as a node
    proxy does (HTTP/2 CONNECT over mTLS, the policy in its header), with the given certificate."""
    listen = free_port()
    envoy = Envoy("tunnel~client", 0, bootstrap="{}")
    tls = {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
           "common_tls_context": {
               "alpn_protocols": ["h2"],
               "tls_certificates": [{"certificate_chain": {"inline_string": cert[0].decode()},
                                     "private_key": {"inline_string": cert[1].decode()}}],
               "validation_context": {"trusted_ca": {"inline_string": ca_pem.decode()}}}}
    envoy.config.write_text(json.dumps({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": envoy.admin_port}}},
        "node": {"id": "tunnel~client", "cluster": "test"},
        "static_resources": {
            "listeners": [{"name": "in", "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
                           "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                               "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                               "stat_prefix": "tunnel", "cluster": "gateway",
                               "tunneling_config": {"hostname": authority, "headers_to_add": [
                                   {"header": {"key": "x-cilia-egress-policy", "value": egress_policy}}]}}}]}]}],
            "clusters": [{"name": "gateway", "type": "STATIC", "connect_timeout": "2s",
                          "typed_extension_protocol_options": {H2_OPTIONS: {
                              "@type": f"type.googleapis.com/{H2_OPTIONS}",
                              "explicit_http_config": {"http2_protocol_options": {}}}},
                          "load_assignment": {"cluster_name": "gateway", "endpoints": [{"lb_endpoints": [{"endpoint": {
                              "address": {"socket_address": {"address": "127.0.0.1", "port_value": tunnel_port}}}}]}]},
                          "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": tls}}]}}))
    return envoy.start(), listen


def get_through(port: int, authority: str) -> bytes:
    """A GET to the client Envoy's listener: the response, or b"" when the tunnel was refused."""
    raw = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n".encode())
        try:
            while chunk := sock.recv(65536):
                raw += chunk
        except ConnectionResetError:
            pass
    return raw


def egress_status(cp: ControlPlaneThread, gateway_admin: int) -> dict[str, Any]:
    """`cilia status -o json --envoy-admin gw=...`: the gateway's egress counters per policy."""
    out = subprocess.run([sys.executable, "-m", "cilia", "status", "--admin", f"127.0.0.1:{cp.admin_port}",
                          "--envoy-admin", f"gw=127.0.0.1:{gateway_admin}", "-o", "json"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return dict(json.loads(out)["egress_traffic"]["gw"]["policies"])


def _status_or_0(tunnel_port: int, authority: str, tls: ssl.SSLContext | None = None) -> int:
    try:
        return connect_get(tunnel_port, authority, "legacy", timeout=2, tls=tls)[0]
    except OSError:  # ssl.SSLError too
        return 0


def tls_client(ca_pem: bytes, cert: tuple[bytes, bytes] | None, tmp: Path) -> ssl.SSLContext:
    """A client context trusting `ca_pem`, presenting `cert` (PEM chain, key) when given; the gateway is
    checked by its URI SAN below, not by host name."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=ca_pem.decode())
    ctx.set_alpn_protocols(["h2"])
    if cert is not None:
        (tmp / "c.pem").write_bytes(cert[0])
        (tmp / "k.pem").write_bytes(cert[1])
        ctx.load_cert_chain(tmp / "c.pem", tmp / "k.pem")
    return ctx


def server_uris(port: int, ctx: ssl.SSLContext) -> list[str]:
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5)) as sock:
        der = sock.getpeercert(binary_form=True)
    assert der is not None
    return list(x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier))


def refused(port: int, authority: str, ctx: ssl.SSLContext | None) -> bool:
    """No CONNECT gets through: the handshake fails or the connection is closed without a response."""
    try:
        return connect_get(port, authority, "legacy", timeout=3, tls=ctx)[0] == 0
    except (OSError, h2_exceptions.ProtocolError):  # ssl.SSLError is an OSError
        return True


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
        assert any("unauthenticated" in i for i in status["legacy"]["issues"])  # no CA

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

        # `cilia status` shows the gateway's flows and bytes for the policy, read from its Envoy: a flow
        # held open with a 100 kB request in it, then closed.
        before = egress_status(cp, envoys[0].admin_port)["legacy"]
        body = os.urandom(100_000)
        request = (f"POST / HTTP/1.1\r\nHost: {EXTERNAL}:{server_port}\r\ncontent-length: {len(body)}\r\n\r\n"
                   .encode() + body)
        tunnel = OpenTunnel(tunnel_port, f"{EXTERNAL}:{server_port}", "legacy")
        try:
            assert tunnel.status == 200
            response = tunnel.exchange(request)
            assert peer_of(response) == EGRESS_IPS[0]
            during = egress_status(cp, envoys[0].admin_port)["legacy"]
        finally:
            tunnel.close()
        assert during["flows"] == before["flows"] + 1 and during["total"] == before["total"] + 1
        assert during["bytes_sent"] - before["bytes_sent"] >= len(request)
        assert during["bytes_received"] - before["bytes_received"] >= len(response)
        deadline = time.monotonic() + 10
        while egress_status(cp, envoys[0].admin_port)["legacy"]["flows"] != before["flows"]:
            assert time.monotonic() < deadline, "the closed flow is still counted as open"
            time.sleep(0.2)
        # The table view names the policy and gateway node.
        table = subprocess.run([sys.executable, "-m", "cilia", "status", "--admin", f"127.0.0.1:{cp.admin_port}",
                                "--envoy-admin", f"gw=127.0.0.1:{envoys[0].admin_port}"],
                               capture_output=True, text=True, timeout=30, check=True).stdout
        assert any(line.split()[:2] == ["legacy", "gw"] for line in table.splitlines() if line.strip()), table

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


TD = "egress.test"


def test_mtls_tunnel_requires_a_workload_certificate(egress_ips: None, tmp_path: Path) -> None:
    host = local_ipv4()
    assert host is not None and set(EGRESS_IPS) <= set(host[0])
    ca_dir = tmp_path / "ca"
    init_ca_dir(ca_dir, TD)
    ca = load_ca_dir(ca_dir)
    server = EchoBackend("external", host=EXTERNAL).start()
    authority = f"{EXTERNAL}:{server.port}"
    md = ManifestDir()
    md.write("world.yaml", NODES_AND_PODS)
    md.write("policy.yaml", policy(EGRESS_IPS[0]))
    tunnel_port = free_port()
    opts = TranslateOptions(mesh_default_mode="node", mesh_capture_port=free_port(),
                            egress_tunnel_address="127.0.0.1", egress_tunnel_port=tunnel_port,
                            egress_local_ips=host[0], egress_interfaces=host[1])
    cp = ControlPlaneThread([str(md.path)], translate=opts, ca_dir=str(ca_dir), xds_tls=False).start()
    envoys: list[Envoy] = []
    try:
        for proxy in ("node~gw", "node~a"):
            envoy = Envoy(proxy, cp.xds_port).start()
            envoys.append(envoy)
            envoy.wait_for(lambda p=proxy: synced(cp, p), timeout=30, what=f"{proxy} synced (secrets too)")
        status = {s["metadata"]["name"]: s["status"] for s in cp.admin_json("/debug/status")
                  if s["kind"] == "CiliumEgressGatewayPolicy"}
        assert not any("unauthenticated" in i for i in status["legacy"].get("issues", []))

        leaf = ca.issue(uris=[workload_uri(TD, "shop", "default")], client=True)
        (tmp_path / "good").mkdir()
        good = tls_client(ca.bundle_pem, (leaf.cert_pem, leaf.key_pem), tmp_path / "good")
        envoys[0].wait_for(lambda: _status_or_0(tunnel_port, authority, good) == 200,
                           timeout=20, what="gateway mTLS tunnel listener up")
        # The gateway is the node identity of the trust domain.
        assert server_uris(tunnel_port, good) == [f"spiffe://{TD}/node/gw"]
        code, response = connect_get(tunnel_port, authority, "legacy", tls=good)
        assert code == 200 and peer_of(response) == EGRESS_IPS[0]

        # Refused: plaintext; TLS without a client certificate; a workload certificate of another CA; a
        # certificate of the trust domain that is no workload (a node identity, say).
        assert refused(tunnel_port, authority, None)
        (tmp_path / "none").mkdir()
        assert refused(tunnel_port, authority, tls_client(ca.bundle_pem, None, tmp_path / "none"))
        other = new_ca(TD)
        stranger = other.issue(uris=[workload_uri(TD, "shop", "default")], client=True)
        (tmp_path / "other").mkdir()
        assert refused(tunnel_port, authority,
                       tls_client(ca.bundle_pem, (stranger.cert_pem, stranger.key_pem), tmp_path / "other"))
        node_leaf = ca.issue(uris=[f"spiffe://{TD}/node/a"], client=True)
        (tmp_path / "node").mkdir()
        assert refused(tunnel_port, authority,
                       tls_client(ca.bundle_pem, (node_leaf.cert_pem, node_leaf.key_pem), tmp_path / "node"))
        # ... and the good one still works.
        code, response = connect_get(tunnel_port, authority, "legacy", tls=good)
        assert code == 200 and peer_of(response) == EGRESS_IPS[0]

        # A valid mesh workload certificate that the policy does not select is refused (403) for it;
        # so is any client naming a policy the gateway does not serve. Both count as denials.
        intruder = ca.issue(uris=[workload_uri(TD, "shop", "intruder")], client=True)
        (tmp_path / "intruder").mkdir()
        bad = tls_client(ca.bundle_pem, (intruder.cert_pem, intruder.key_pem), tmp_path / "intruder")
        assert connect_get(tunnel_port, authority, "legacy", tls=bad)[0] == 403
        assert connect_get(tunnel_port, authority, "nosuch", tls=good)[0] == 403
        code, response = connect_get(tunnel_port, authority, "legacy", tls=good)
        assert code == 200 and peer_of(response) == EGRESS_IPS[0]

        # The same through real client Envoys, as node proxies tunnel: the entitled identity's connection
        # leaves from the egress IP; the not entitled one's tunnel is refused and nothing reaches the
        # destination from it.
        entitled, entitled_port = tunnel_client_envoy(tunnel_port, authority, "legacy", (leaf.cert_pem, leaf.key_pem),
                                                      ca.bundle_pem)
        envoys.append(entitled)
        rogue, rogue_port = tunnel_client_envoy(tunnel_port, authority, "legacy",
                                                (intruder.cert_pem, intruder.key_pem), ca.bundle_pem)
        envoys.append(rogue)
        assert peer_of(get_through(entitled_port, authority)) == EGRESS_IPS[0]
        seen = len(server.requests)
        assert get_through(rogue_port, authority) == b""
        assert len(server.requests) == seen
        assert peer_of(get_through(entitled_port, authority)) == EGRESS_IPS[0]
        gw_rbac = envoys[0].stats("egress_gateway.rbac")
        assert gw_rbac.get("http.egress_gateway.rbac.policy_default_deny.denied", 0) >= 3, gw_rbac
        want = {("CiliumEgressGatewayPolicy legacy", "default-deny"): 2.0,
                ("CiliumEgressGatewayPolicy (unknown)", "default-deny"): 1.0}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not want.items() <= policy_denials(cp).items():
            time.sleep(0.1)
        assert want.items() <= policy_denials(cp).items(), policy_denials(cp)
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
