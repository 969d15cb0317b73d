"""Egress gateway, whole system on one host (loopback only): manifests -> the control plane -> `cilia agent`
(eBPF, node a) and two `cilia bootstrap`-ed Envoys: `node~a` (in the node proxy cgroup) and `node~gw` (the
gateway). "External" HTTP servers on 127.0.8.x record each request's peer address.

The selected pod's connect to 127.0.8.5 is steered by connect4 into node~a's capture listener, tunnelled
over HTTP/2 CONNECT to node~gw, and leaves from the egress IP (added to `lo` here, removed after); an
unselected mesh pod's request and the selected pod's request to an excluded CIDR arrive with their own
source; an egressIP edit applies to new connections within 2 s. Two gateway nodes (127.0.0.1, 127.0.0.2):
one client's flows stay on one; its Envoy stopped, they move to the other; both stopped, connections fail
at once and recover when one returns; no firewall rule is made. With a CA (mesh mTLS) the same path
runs over an mTLS tunnel (both Envoys count the handshake; the gateway's RBAC allows the client pod's
identity for the policy), and `cilia status --envoy-admin` shows the gateway's flows and bytes.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bpf_kernel_support import KernelEnv, firewall_rules, free_port
from system_support import AgentProcess, Fatal, MeshEnvoy, cilia, docs, namespace, pod, proxy_synced, wait_until

from cilia.mesh.egresshost import local_ipv4
from cilia.security.ca import init_ca_dir
from cilia.translate.context import TranslateOptions
from support.backends import echo_backends
from support.controlplane import ControlPlaneThread, ManifestDir

pytestmark = pytest.mark.kernel

CLIENT_IP, OTHER_IP = "127.1.0.11", "127.1.0.12"
EGRESS_IPS = ("127.0.9.1", "127.0.9.2")
READY_TIMEOUT = 40.0


def node(name: str, labels: dict[str, str], address: str = "127.0.0.1") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
            "status": {"addresses": [{"type": "InternalIP", "address": address}]}}


def policy(egress_ip: str) -> str:
    return docs({"apiVersion": "cilium.io/v2", "kind": "CiliumEgressGatewayPolicy", "metadata": {"name": "legacy"},
                 "spec": {"selectors": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                          "destinationCIDRs": ["127.0.8.0/24"], "excludedCIDRs": ["127.0.8.128/25"],
                          "egressGateway": {"nodeSelector": {"matchLabels": {"egress": "true"}},
                                            "egressIP": egress_ip}}})


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


def peer(kenv: KernelEnv, cg: Path, url: str, source: str) -> str:
    r = kenv.curl(cg, url, source=source)
    if r.rc != 0 or r.status != 200:
        return f"failed: rc={r.rc} status={r.status}"
    return str(json.loads(r.body)["peer"])


def tunnels(gateway: MeshEnvoy) -> int:
    """CONNECT tunnels a gateway Envoy accepted."""
    return gateway.stats("egress_gateway").get("http.egress_gateway.downstream_rq_total", 0)


def test_egress_gateway_whole_system(kenv: KernelEnv, egress_ips: None) -> None:
    host = local_ipv4()
    assert host is not None and set(EGRESS_IPS) <= set(host[0])
    proxy_cg = kenv.cgroup("egress/a-proxy")
    gw_cg = kenv.cgroup("egress/gw-proxy")
    gw2_cg = kenv.cgroup("egress/gw2-proxy")
    client_cg = kenv.cgroup("egress/pods/client")
    other_cg = kenv.cgroup("egress/pods/other")
    capture_port = free_port()
    md = ManifestDir()
    md.write("world.yaml", docs(
        node("a", {}), node("gw", {"egress": "true"}), node("gw2", {"egress": "true"}, "127.0.0.2"),
        namespace("shop", "node"),
        pod("shop", "client", "a", CLIENT_IP, {"cilia.io/cgroup": kenv.rel(client_cg)}),
        pod("shop", "other", "a", OTHER_IP, {"cilia.io/cgroup": kenv.rel(other_cg)}),
    ))
    md.write("policy.yaml", policy(EGRESS_IPS[0]))
    opts = TranslateOptions(mesh_capture_port=capture_port, mesh_capture_address="127.0.0.1",
                            egress_tunnel_address="node-ip", egress_tunnel_port=free_port(),
                            egress_local_ips=host[0], egress_interfaces=host[1])
    cp = ControlPlaneThread([str(md.path)], translate=opts).start()
    envoys: list[MeshEnvoy] = []
    agent: AgentProcess | None = None
    rules_before = firewall_rules()
    try:
        with echo_backends(("legacy-db", "127.0.8.5"), ("direct", "127.0.8.200")) as (db, direct):
            envoys.append(MeshEnvoy(kenv, gw_cg, "node~gw", cp.xds_port))
            envoys.append(MeshEnvoy(kenv, proxy_cg, "node~a", cp.xds_port))
            envoys.append(MeshEnvoy(kenv, gw2_cg, "node~gw2", cp.xds_port))
            for proxy, types in (("node~gw", ("listeners", "routes", "clusters")),
                                 ("node~gw2", ("listeners", "routes", "clusters")),
                                 ("node~a", ("listeners", "clusters"))):
                wait_until(lambda p=proxy, t=types: proxy_synced(cp.admin_json("/debug/proxies"), p, t), 20,
                           f"{proxy} SYNCED")
            agent = AgentProcess(kenv, xds_port=cp.xds_port, node="a", proxy_cgroup=proxy_cg,
                                 proxy_address=f"127.0.0.1:{capture_port}", sockmap=False)

            def ready() -> dict[str, Any] | None:
                p = cp.admin_json("/debug/proxies").get("agent~a")
                if p and p["types"].get("redirects", {}).get("state") == "NACKED":
                    raise Fatal(f"agent~a NACKed: {p['types']['redirects']['last_nack']}")
                rep = (p or {}).get("reported") or {}
                # proxy: connect4/6, sockops, getsockopt; each of the two pods: connect4/6, sockops
                ok = rep.get("programs_attached") == 10 and rep.get("map_entries", {}).get("cilia_egress") == 1
                return dict(rep) if ok else None

            wait_until(ready, READY_TIMEOUT, "agent~a policy applied")
            db_url, direct_url = f"http://127.0.8.5:{db.port}/", f"http://127.0.8.200:{direct.port}/"

            assert peer(kenv, client_cg, db_url, CLIENT_IP) == EGRESS_IPS[0]
            assert peer(kenv, other_cg, db_url, OTHER_IP) == OTHER_IP  # not selected: its own source
            assert peer(kenv, client_cg, direct_url, CLIENT_IP) == CLIENT_IP  # excluded CIDR: direct
            stats = envoys[1].stats("egress")
            assert stats.get("tcp.egress_legacy.downstream_cx_total") == 1, stats
            table = cilia("status", "--admin", f"127.0.0.1:{cp.admin_port}")
            assert table.returncode == 0, table.stderr
            assert ["legacy", "True", "1", "gw,gw2", EGRESS_IPS[0]] in [line.split() for line in
                                                                        table.stdout.splitlines()], table.stdout
            # One client's flows stay on one gateway (ring hash on its address).
            for _ in range(3):
                assert peer(kenv, client_cg, db_url, CLIENT_IP) == EGRESS_IPS[0]
            served = {i: tunnels(envoys[i]) for i in (0, 2)}
            assert sorted(served.values()) == [0, 4], served

            md.write("policy.yaml", policy(EGRESS_IPS[1]))
            t0 = time.monotonic()
            seen = ""
            while time.monotonic() - t0 < 10:
                seen = peer(kenv, client_cg, db_url, CLIENT_IP)
                if seen == EGRESS_IPS[1]:
                    break
                time.sleep(0.05)
            assert seen == EGRESS_IPS[1], seen
            assert time.monotonic() - t0 < 2.0, f"took {time.monotonic() - t0:.2f} s"

            # The serving gateway's Envoy gone: within the health check interval the flows move to the
            # other gateway (a flow hashed to the dead one meanwhile fails at once).
            first = max(served, key=lambda i: served[i])
            other = 2 if first == 0 else 0
            before = tunnels(envoys[other])
            envoys[first].stop()
            wait_until(lambda: peer(kenv, client_cg, db_url, CLIENT_IP) == EGRESS_IPS[1], 5, "failed over")
            assert tunnels(envoys[other]) > before

            # Both gateways gone: the selected pod's connections fail at once (no hang), and never
            # leave directly; back when one returns.
            envoys[other].stop()
            t0 = time.monotonic()
            r = kenv.curl(client_cg, db_url, source=CLIENT_IP)
            assert r.rc != 0 and r.status == 0, r
            assert time.monotonic() - t0 < 1.5, f"failing took {time.monotonic() - t0:.2f} s"
            assert all(q["peer"] != CLIENT_IP for q in db.requests)
            envoys[0] = MeshEnvoy(kenv, gw_cg, "node~gw", cp.xds_port)
            wait_until(lambda: peer(kenv, client_cg, db_url, CLIENT_IP) == EGRESS_IPS[1], 20, "gateway back")
            assert firewall_rules() == rules_before
    except BaseException:
        if len(envoys) > 1 and envoys[1].proc.poll() is None:  # node~a's view of the gateways
            print([line for line in envoys[1].admin("/clusters").splitlines() if "egress|" in line])
        for e in envoys:
            print(e.proxy, e.tail())
        if agent is not None:
            print(agent.text()[-3000:])
        raise
    finally:
        if agent is not None:
            agent.stop()
        for e in reversed(envoys):
            e.stop()
        cp.stop()
        md.cleanup()


TD = "egress.test"


def test_egress_gateway_over_mesh_mtls(kenv: KernelEnv, egress_ips: None, tmp_path: Path) -> None:
    """With a CA the tunnel node~a -> node~gw is mTLS (the client pod's ServiceAccount certificate, the
    gateway's node identity), and the selected pod still leaves from the egress IP."""
    host = local_ipv4()
    assert host is not None and set(EGRESS_IPS) <= set(host[0])
    init_ca_dir(tmp_path / "ca", TD)
    proxy_cg = kenv.cgroup("egress-mtls/a-proxy")
    gw_cg = kenv.cgroup("egress-mtls/gw-proxy")
    client_cg = kenv.cgroup("egress-mtls/pods/client")
    other_cg = kenv.cgroup("egress-mtls/pods/other")
    capture_port, tunnel_port = free_port(), free_port()
    md = ManifestDir()
    md.write("world.yaml", docs(
        node("a", {}), node("gw", {"egress": "true"}), namespace("shop", "node"),
        pod("shop", "client", "a", CLIENT_IP, {"cilia.io/cgroup": kenv.rel(client_cg)}),
        pod("shop", "other", "a", OTHER_IP, {"cilia.io/cgroup": kenv.rel(other_cg)}),
    ))
    md.write("policy.yaml", policy(EGRESS_IPS[0]))
    opts = TranslateOptions(mesh_capture_port=capture_port, mesh_capture_address="127.0.0.1",
                            mesh_inbound_port=free_port(), mesh_node_inbound_address="127.0.0.1",
                            egress_tunnel_address="node-ip", egress_tunnel_port=tunnel_port,
                            egress_local_ips=host[0], egress_interfaces=host[1])
    cp = ControlPlaneThread([str(md.path)], translate=opts, ca_dir=str(tmp_path / "ca"), xds_tls=False).start()
    envoys: list[MeshEnvoy] = []
    agent: AgentProcess | None = None
    try:
        with echo_backends(("legacy-db", "127.0.8.5")) as (db,):
            envoys.append(MeshEnvoy(kenv, gw_cg, "node~gw", cp.xds_port))
            envoys.append(MeshEnvoy(kenv, proxy_cg, "node~a", cp.xds_port))
            for proxy in ("node~gw", "node~a"):
                wait_until(lambda p=proxy: proxy_synced(cp.admin_json("/debug/proxies"), p,
                                                        ("listeners", "clusters", "secrets")), 20, f"{proxy} SYNCED")
            status = {s["metadata"]["name"]: s["status"] for s in cp.admin_json("/debug/status")
                      if s["kind"] == "CiliumEgressGatewayPolicy"}
            assert not any("unauthenticated" in i for i in status["legacy"].get("issues", [])), status
            agent = AgentProcess(kenv, xds_port=cp.xds_port, node="a", proxy_cgroup=proxy_cg,
                                 proxy_address=f"127.0.0.1:{capture_port}", sockmap=False)

            def ready() -> dict[str, Any] | None:
                p = cp.admin_json("/debug/proxies").get("agent~a")
                if p and p["types"].get("redirects", {}).get("state") == "NACKED":
                    raise Fatal(f"agent~a NACKed: {p['types']['redirects']['last_nack']}")
                rep = (p or {}).get("reported") or {}
                return dict(rep) if rep.get("map_entries", {}).get("cilia_egress") == 1 else None

            wait_until(ready, READY_TIMEOUT, "agent~a policy applied")
            db_url = f"http://127.0.8.5:{db.port}/"
            seen = ""
            for _ in range(40):  # the node identity secret may follow the listener by a moment
                seen = peer(kenv, client_cg, db_url, CLIENT_IP)
                if seen == EGRESS_IPS[0]:
                    break
                time.sleep(0.1)
            assert seen == EGRESS_IPS[0]
            assert peer(kenv, other_cg, db_url, OTHER_IP) == OTHER_IP  # not selected: its own source
            client_stats = envoys[1].stats("ssl.handshake")
            assert client_stats.get("cluster.egress|legacy|tunnel|shop/default.ssl.handshake", 0) >= 1, client_stats
            gw_stats = envoys[0].stats("ssl.handshake")
            assert gw_stats.get(f"listener.127.0.0.1_{tunnel_port}.ssl.handshake", 0) >= 1, gw_stats
            assert tunnels(envoys[0]) >= 1
            # The gateway's RBAC let node~a claim the policy with the client pod's identity ...
            rbac = envoys[0].stats("egress_gateway.rbac")
            assert rbac.get("http.egress_gateway.rbac.policy_default_deny.allowed", 0) >= 1, rbac
            assert rbac.get("http.egress_gateway.rbac.policy_default_deny.denied", 0) == 0, rbac
            # ... and `cilia status` shows the flows and bytes that went through it.
            out = cilia("status", "--admin", f"127.0.0.1:{cp.admin_port}", "--envoy-admin",
                        f"gw=127.0.0.1:{envoys[0].admin_port}", "-o", "json")
            assert out.returncode == 0, out.stderr
            flows = json.loads(out.stdout)["egress_traffic"]["gw"]["policies"]["legacy"]
            assert flows["total"] >= 1, flows
            assert flows["bytes_sent"] >= len(f"GET / HTTP/1.1\r\nHost: 127.0.8.5:{db.port}\r\n\r\n"), flows
            assert flows["bytes_received"] >= len(json.dumps({"peer": EGRESS_IPS[0]})), flows
    except BaseException:
        for e in envoys:
            print(e.proxy, e.tail())
        if agent is not None:
            print(agent.text()[-3000:])
        raise
    finally:
        if agent is not None:
            agent.stop()
        for e in reversed(envoys):
            e.stop()
        cp.stop()
        md.cleanup()
