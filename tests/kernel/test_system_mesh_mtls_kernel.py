"""Mesh mTLS and L7 policy, whole system on one host: the real control plane with a CA (workload
certificates over SDS), `cilia agent` (eBPF) and `cilia bootstrap`-ed Envoys in test cgroups.

Node mode: client pod -> (connect4) node Envoy outbound, which picks the client's workload certificate
by its source address -> mTLS to the server pod's IP, which the agent steers into the node Envoy's
inbound listener -> verified, policy checked, forwarded in plaintext (marked, so not steered again) to
the server app with `x-forwarded-client-cert`. Sidecar mode: client sidecar -> server sidecar over mTLS,
and the node Envoy's clients reach the sidecar pod over mTLS as well.

Pods share the host network namespace, so each client process binds its pod IP as source address
(`curl --interface`), as it would have in a pod of its own. Everything stays on 127.0.0.0/8.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from bpf_kernel_support import KernelEnv, free_port
from system_support import (
    AgentProcess,
    MeshEnvoy,
    docs,
    endpoint_slice,
    namespace,
    pod,
    service,
    wait_until,
)
from test_system_mesh_kernel import READY_TIMEOUT, Running, agent_ready, json_body

from cilia.security.ca import init_ca_dir
from cilia.translate.context import TranslateOptions
from support.backends import echo_backends
from support.controlplane import ControlPlaneThread, ManifestDir

pytestmark = pytest.mark.kernel

NODE = "n1"
TD = "mesh.test"
WEB_VIP, SC_VIP = "127.96.0.40", "127.96.0.41"
CLIENT_IP, OTHER_IP, SERVER_IP = "127.1.0.41", "127.1.0.42", "127.1.0.43"
SC_CLIENT_IP, SC_SERVER_IP, N_CLIENT_IP = "127.1.0.51", "127.1.0.52", "127.1.0.53"
MTLS_TYPES = ("listeners", "routes", "clusters", "endpoints", "secrets")
SETTLE_S = 2.0


def synced_newer(run: Running, proxy: str, before: str = "", timeout: float = 15) -> None:
    def done() -> bool:
        p = run.proxies().get(proxy)
        if not p or not p["connected"]:
            return False
        types = p["types"]
        bad = [t["last_nack"] for t in types.values() if t["state"] == "NACKED"]
        assert not bad, f"{proxy} NACKed: {bad}"
        return all(types.get(t, {}).get("state") == "SYNCED" for t in MTLS_TYPES) and \
            (not before or types["listeners"]["version_acked"] != before)

    wait_until(done, timeout, f"{proxy} SYNCED")


def settle(envoy: MeshEnvoy) -> None:
    wait_until(lambda: envoy.stats("warming").get("listener_manager.total_listeners_warming") == 0, 5,
               f"{envoy.proxy} listeners active")


def xfcc(body: str) -> str:
    return str(json_body(body).get("headers", {}).get("x-forwarded-client-cert", ""))


def until(check: Callable[[], bool], what: str, within: float = SETTLE_S) -> None:
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < within, f"{what}: not within {within} s"
        time.sleep(0.05)


# -- node mode ---------------------------------------------------------------------------------------
def test_node_mode_mtls_identity_policy_and_strict(kenv: KernelEnv, tmp_path: Path) -> None:
    proxy_cg = kenv.cgroup("mtls-node/proxy")
    client_cg, other_cg = kenv.cgroup("mtls-node/pods/client"), kenv.cgroup("mtls-node/pods/other")
    server_cg = kenv.cgroup("mtls-node/pods/server")
    capture, inbound = free_port(), free_port()
    init_ca_dir(tmp_path / "ca", TD)
    md = ManifestDir()
    with echo_backends(("server", SERVER_IP)) as (app,):

        def write(mtls: str, client_app: str = "client", policy: bool = False) -> None:
            objs: list[dict[str, Any]] = [
                namespace("shop", "node", {"cilia.io/mtls": mtls}),
                pod("shop", "client", NODE, CLIENT_IP, {"cilia.io/cgroup": kenv.rel(client_cg)},
                    service_account="client-sa", labels={"app": client_app}),
                pod("shop", "other", NODE, OTHER_IP, {"cilia.io/cgroup": kenv.rel(other_cg)},
                    service_account="other-sa"),
                pod("shop", "server", NODE, SERVER_IP, {"cilia.io/cgroup": kenv.rel(server_cg)},
                    ports=[{"name": "http", "containerPort": app.port}], service_account="server-sa"),
                service("shop", "web", WEB_VIP, 80, target_port=app.port, selector={"app": "server"}),
                endpoint_slice("shop", "web", SERVER_IP, app.port)]
            if policy:
                objs.append({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                             "metadata": {"name": "web-public", "namespace": "shop"},
                             "spec": {"endpointSelector": {"matchLabels": {"app": "server"}},
                                      "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}],
                                                   "toPorts": [{"ports": [{"port": "http"}], "rules": {
                                                       "http": [{"method": "GET", "path": "/public"}]}}]}]}})
            md.write("shop.yaml", docs(*objs))

        write("permissive")
        opts = TranslateOptions(mesh_capture_port=capture, mesh_capture_address="127.0.0.1",
                                mesh_inbound_port=inbound, mesh_node_inbound_address="127.0.0.1")
        cp = ControlPlaneThread([str(md.path)], translate=opts, ca_dir=str(tmp_path / "ca"), xds_tls=False).start()
        run = Running(cp, md, [])
        try:
            assert cp.admin_json("/debug/issues") == []
            node = MeshEnvoy(kenv, proxy_cg, f"node~{NODE}", cp.xds_port)
            run.envoys.append(node)
            synced_newer(run, node.proxy)
            assert node.listeners() == {"outbound|node": f"127.0.0.1:{capture}",
                                        "inbound|node": f"127.0.0.1:{inbound}"}
            run.agent = AgentProcess(kenv, xds_port=cp.xds_port, node=NODE, proxy_cgroup=proxy_cg,
                                     proxy_address=f"127.0.0.1:{capture}", sockmap=False)
            reported = wait_until(lambda: agent_ready(run, 4 + 3 * 3), READY_TIMEOUT, "agent policy applied")
            assert reported["last_error"] == "" and reported["map_entries"]["cilia_inbound"] == 3, reported

            # Each client pod speaks with its own identity, chosen by its address on the shared node Envoy.
            for ip, sa in ((CLIENT_IP, "client-sa"), (OTHER_IP, "other-sa")):
                r = kenv.curl(client_cg if sa == "client-sa" else other_cg, f"http://{WEB_VIP}/hello", source=ip)
                assert (r.rc, r.status) == (0, 200), r
                assert f"URI=spiffe://{TD}/ns/shop/sa/{sa}" in xfcc(r.body), r.body
            stats = node.stats("ssl.handshake")
            assert stats["cluster.shop/web_80|mtls|shop/client-sa.ssl.handshake"] >= 1, stats
            assert stats["cluster.shop/web_80|mtls|shop/other-sa.ssl.handshake"] >= 1, stats
            assert stats[f"listener.127.0.0.1_{inbound}.ssl.handshake"] >= 2, stats
            entry = node.wait_log(lambda e: e.get("path") == "/hello" and e.get("upstream_cluster") ==
                                  "mesh|inbound|http1", "inbound request forwarded to the pod")
            assert entry["upstream_host"] == f"{SERVER_IP}:{app.port}", entry
            ids = cp.admin_json("/debug/identities")["proxies"][f"node~{NODE}"]
            assert sorted(i["identity"] for i in ids) == [f"spiffe://{TD}/ns/shop/sa/{sa}"
                                                          for sa in ("client-sa", "other-sa", "server-sa")]

            # L7 policy: GET /public from app=client only; a label change flips it within SETTLE_S.
            before = run.listener_version(node.proxy)
            write("permissive", policy=True)
            synced_newer(run, node.proxy, before)
            settle(node)
            assert kenv.curl(client_cg, f"http://{WEB_VIP}/public", source=CLIENT_IP).status == 200
            assert kenv.curl(client_cg, f"http://{WEB_VIP}/public", source=CLIENT_IP, method="POST").status == 403
            assert kenv.curl(other_cg, f"http://{WEB_VIP}/public", source=OTHER_IP).status == 403
            write("permissive", client_app="renamed", policy=True)
            until(lambda: kenv.curl(client_cg, f"http://{WEB_VIP}/public", source=CLIENT_IP).status == 403,
                  "label change enforced")
            denied = node.stats("rbac")
            assert denied.get("http.inbound_shop_server.rbac.policy_default_deny.denied", 0) >= 3, denied
            status = [s for s in cp.admin_json("/debug/status") if s["kind"] == "CiliumNetworkPolicy"]
            assert status[0]["status"]["selectedPods"] == 1 and status[0]["status"]["enforcedPods"] == 1

            # Strict: a client the node Envoy cannot identify (not a pod address) goes out in plaintext,
            # which the inbound refuses; mTLS clients still pass. (Strict applies to new connections.)
            before = run.listener_version(node.proxy)
            write("strict")
            synced_newer(run, node.proxy, before)
            settle(node)
            r = kenv.curl(client_cg, f"http://{WEB_VIP}/plaintext")
            assert r.status == 503, r
            assert kenv.curl(client_cg, f"http://{WEB_VIP}/mtls", source=CLIENT_IP).status == 200
            refused = node.stats("plaintext_refused")
            assert refused["tcp.inbound_shop_server_plaintext_refused.downstream_cx_total"] >= 1, refused
            assert not any(r["path"] == "/plaintext" for r in app.requests)
            # Permissive accepts it, without identity.
            before = run.listener_version(node.proxy)
            write("permissive")
            synced_newer(run, node.proxy, before)
            settle(node)
            r = kenv.curl(client_cg, f"http://{WEB_VIP}/anonymous")
            assert r.status == 200 and xfcc(r.body) == "", r
        finally:
            run.stop()


# -- sidecar mode ------------------------------------------------------------------------------------
def test_sidecar_mode_mtls_whole_hop_and_strict(kenv: KernelEnv, tmp_path: Path) -> None:
    node_proxy = kenv.cgroup("mtls-sc/node-proxy")
    client_cg, server_cg = kenv.cgroup("mtls-sc/pods/client"), kenv.cgroup("mtls-sc/pods/server")
    nclient_cg = kenv.cgroup("mtls-sc/pods/nclient")
    client_sc, server_sc = kenv.cgroup("mtls-sc/sidecars/client"), kenv.cgroup("mtls-sc/sidecars/server")
    out_port, in_port = free_port(), free_port()
    init_ca_dir(tmp_path / "ca", TD)
    md = ManifestDir()
    with echo_backends(("app", "127.0.0.1")) as (app,):

        def write(mtls: str) -> None:
            md.write("pay.yaml", docs(
                namespace("pay", "sidecar", {"cilia.io/mtls": mtls}),
                namespace("shop", "node"),
                pod("pay", "client", NODE, SC_CLIENT_IP, {
                    "cilia.io/cgroup": kenv.rel(client_cg), "cilia.io/sidecar-cgroup": kenv.rel(client_sc)},
                    service_account="client-sa"),
                pod("pay", "server", NODE, SC_SERVER_IP, {
                    "cilia.io/cgroup": kenv.rel(server_cg), "cilia.io/sidecar-cgroup": kenv.rel(server_sc)},
                    ports=[{"name": "http", "containerPort": app.port}], service_account="server-sa"),
                pod("shop", "nclient", NODE, N_CLIENT_IP, {"cilia.io/cgroup": kenv.rel(nclient_cg)},
                    service_account="nclient-sa"),
                service("pay", "server", SC_VIP, target_port=app.port, selector={"app": "server"}),
                endpoint_slice("pay", "server", SC_SERVER_IP, app.port),
            ))

        write("permissive")
        opts = TranslateOptions(mesh_capture_port=out_port, mesh_inbound_port=in_port,
                                mesh_capture_address="127.0.0.1", mesh_node_inbound_address="127.0.0.1",
                                mesh_sidecar_capture_address="pod-ip", mesh_inbound_address="pod-ip")
        cp = ControlPlaneThread([str(md.path)], translate=opts, ca_dir=str(tmp_path / "ca"), xds_tls=False).start()
        run = Running(cp, md, [])
        try:
            assert cp.admin_json("/debug/issues") == []
            node = MeshEnvoy(kenv, node_proxy, f"node~{NODE}", cp.xds_port)
            run.envoys.append(node)
            client = MeshEnvoy(kenv, client_sc, "sidecar~pay/client", cp.xds_port, SC_CLIENT_IP)
            run.envoys.append(client)
            server = MeshEnvoy(kenv, server_sc, "sidecar~pay/server", cp.xds_port, SC_SERVER_IP)
            run.envoys.append(server)
            for e in (node, client, server):
                synced_newer(run, e.proxy)
            run.agent = AgentProcess(kenv, xds_port=cp.xds_port, node=NODE, proxy_cgroup=node_proxy,
                                     proxy_address=f"127.0.0.1:{out_port}", sockmap=False)
            wait_until(lambda: agent_ready(run, 3 * 4 + 3 * 3), READY_TIMEOUT, "agent policy applied")

            # sidecar -> sidecar over mTLS: the app sees the client's identity; both ends handshook.
            r = kenv.curl(client_cg, f"http://{SC_VIP}/via-sidecars")
            assert (r.rc, r.status) == (0, 200), r
            assert f"URI=spiffe://{TD}/ns/pay/sa/client-sa" in xfcc(r.body), r.body
            assert client.stats("ssl.handshake")["cluster.pay/server_80|mtls.ssl.handshake"] >= 1
            assert server.stats("ssl.handshake")[f"listener.{SC_SERVER_IP}_{in_port}.ssl.handshake"] >= 1

            # node Envoy client (identified by its address) -> sidecar pod over mTLS.
            r = kenv.curl(nclient_cg, f"http://{SC_VIP}/from-node", source=N_CLIENT_IP)
            assert r.status == 200 and f"URI=spiffe://{TD}/ns/shop/sa/nclient-sa" in xfcc(r.body), r
            before = run.listener_version(server.proxy)
            write("strict")
            synced_newer(run, server.proxy, before)
            settle(server)
            r = kenv.curl(nclient_cg, f"http://{SC_VIP}/plaintext")  # unidentified: plaintext, refused
            assert r.status == 503, r
            assert not any(q["path"] == "/plaintext" for q in app.requests)
            assert kenv.curl(client_cg, f"http://{SC_VIP}/still-mtls").status == 200
            assert kenv.curl(nclient_cg, f"http://{SC_VIP}/node-mtls", source=N_CLIENT_IP).status == 200
            refused = server.stats("plaintext_refused")
            assert refused[f"tcp.inbound_{app.port}_plaintext_refused.downstream_cx_total"] >= 1, refused

            # Permissive: the unidentified client's plaintext is accepted, without identity.
            before = run.listener_version(server.proxy)
            write("permissive")
            synced_newer(run, server.proxy, before)
            settle(server)
            r = kenv.curl(nclient_cg, f"http://{SC_VIP}/anonymous")
            assert r.status == 200 and xfcc(r.body) == "", r
        finally:
            run.stop()
