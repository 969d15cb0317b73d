"""The whole system on one host: manifests -> the real control plane -> `cilia agent` (eBPF) and
`cilia bootstrap`-ed Envoys -> real traffic from test "pod" cgroups to Service VIPs nobody listens on.

Node mode: a mesh pod's `curl http://127.96.0.10/` is steered by the agent's connect4 program into
the node Envoy's `outbound|node` listener, whose `original_dst` filter (answered by the agent's
getsockopt program) picks the VIP's chain; GAMMA routes pick v1 or v2; a non-mesh pod is left alone;
no firewall rule is made; SIGTERM leaves nothing attached or pinned.

Sidecar mode: client pod -> its own sidecar (outbound) -> the server pod's IP, steered into the
server's sidecar (inbound) -> the server app: both sidecars log the request. The pods share the
host network namespace here, so each sidecar binds its listeners on its pod IP (`pod-ip`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from bpf_kernel_support import KernelEnv, bpftool_cgroup_progs, firewall_rules, free_port
from system_support import (
    MESH_TYPES,
    AgentProcess,
    Fatal,
    MeshEnvoy,
    cilia,
    docs,
    endpoint_slice,
    gamma_route,
    namespace,
    pod,
    proxy_synced,
    service,
    wait_until,
)

from cilia.bpf import sys as bsys
from cilia.bpf.agent import pin_name
from cilia.translate.context import TranslateOptions
from support.backends import EchoBackend, echo_backends
from support.controlplane import ControlPlaneThread, ManifestDir

pytestmark = pytest.mark.kernel

NODE = "n1"
WEB_VIP, WEB_V2_VIP, API_VIP = "127.96.0.10", "127.96.0.11", "127.96.0.12"
CLIENT_IP, LEGACY_IP = "127.1.0.11", "127.1.0.12"
READY_TIMEOUT = 40.0  # s: agent start (program compile ~4 s) + xDS + Envoy


@dataclass
class Running:
    """One whole-system set-up; `stop()` ends everything in reverse order of start."""

    cp: ControlPlaneThread
    md: ManifestDir
    envoys: list[MeshEnvoy]
    agent: AgentProcess | None = None

    def proxies(self) -> dict[str, Any]:
        return dict(self.cp.admin_json("/debug/proxies"))

    def listener_version(self, proxy: str) -> str:
        return str(self.proxies()[proxy]["types"]["listeners"]["version_acked"])

    def wait_synced(self, proxy: str, timeout: float = 15, newer_than: str = "") -> None:
        """All mesh types ACKed (with a listener version other than `newer_than`, when given)."""

        def done() -> bool:
            proxies = self.proxies()
            if not proxy_synced(proxies, proxy, MESH_TYPES):
                return False
            return not newer_than or proxies[proxy]["types"]["listeners"]["version_acked"] != newer_than

        wait_until(done, timeout, f"{proxy} SYNCED")

    def stop(self) -> None:
        try:
            if self.agent is not None:
                self.agent.stop()
        finally:
            try:
                for e in reversed(self.envoys):
                    e.stop()
            finally:
                self.cp.stop()
                self.md.cleanup()


def agent_ready(run: Running, programs: int, services: int | None = None) -> dict[str, Any] | None:
    """The agent's reported state once its policy is ACKed with `programs` programs attached (and
    `services` VIP:port entries in its service map, when given)."""
    p = run.proxies().get(f"agent~{NODE}")
    if p and p["types"].get("redirects", {}).get("state") == "NACKED":
        raise Fatal(f"agent~{NODE} NACKed its policy: {p['types']['redirects']['last_nack']}")
    if not p or not proxy_synced({"a": p}, "a", ("redirects",)):
        return None
    rep = p.get("reported") or {}
    ok = rep.get("programs_attached") == programs and rep.get("acked_version")
    if services is not None:
        ok = ok and rep.get("map_entries", {}).get("cilia_svc") == services
    return dict(rep) if ok else None


def json_body(text: str) -> dict[str, Any]:
    try:
        return dict(json.loads(text))
    except ValueError:
        return {}


# -- node mode ---------------------------------------------------------------------------------------
NodeWorld = tuple[KernelEnv, Path, Path, Path, EchoBackend, EchoBackend]


@pytest.fixture
def node_world(kenv: KernelEnv) -> Iterator[NodeWorld]:
    """Cgroups for the node Envoy, a mesh pod and a non-mesh pod; backends v1 and v2."""
    proxy = kenv.cgroup("sys-node/proxy")
    client = kenv.cgroup("sys-node/pods/client")
    legacy = kenv.cgroup("sys-node/pods/legacy")
    with echo_backends(("web-v1", "127.0.0.21"), ("web-v2", "127.0.0.22")) as (v1, v2):
        yield kenv, proxy, client, legacy, v1, v2


@pytest.mark.parametrize("sockmap", [False, True], ids=["sockmap-off", "sockmap-on"])
def test_node_mode_whole_system(node_world: NodeWorld, sockmap: bool) -> None:
    kenv, proxy_cg, client_cg, legacy_cg, v1, v2 = node_world
    capture_port = free_port()
    md = ManifestDir()
    md.write("shop.yaml", docs(
        namespace("shop", "node"),
        namespace("legacy", None),
        pod("shop", "client", NODE, CLIENT_IP, {"cilia.io/cgroup": kenv.rel(client_cg)}),
        pod("legacy", "old", NODE, LEGACY_IP, {"cilia.io/cgroup": kenv.rel(legacy_cg)}),
        service("shop", "web", WEB_VIP),
        endpoint_slice("shop", "web", v1.host, v1.port),
        service("shop", "web-v2", WEB_V2_VIP),
        endpoint_slice("shop", "web-v2", v2.host, v2.port),
        gamma_route("shop", "web-split", "web", 80, [
            {"matches": [{"headers": [{"name": "x-version", "value": "v2"}]}],
             "backendRefs": [{"name": "web-v2", "port": 80}]},
            {"backendRefs": [{"name": "web", "port": 80}]},
        ]),
    ))
    opts = TranslateOptions(mesh_capture_port=capture_port, mesh_capture_address="127.0.0.1")
    cp = ControlPlaneThread([str(md.path)], translate=opts).start()
    run = Running(cp, md, [])
    try:
        issues = cp.admin_json("/debug/issues")
        assert issues == [], issues
        node_envoy = MeshEnvoy(kenv, proxy_cg, f"node~{NODE}", cp.xds_port)
        run.envoys.append(node_envoy)
        run.wait_synced(f"node~{NODE}")
        assert node_envoy.listeners() == {"outbound|node": f"127.0.0.1:{capture_port}"}

        rules_before = firewall_rules()
        # Nothing listens on the VIP: without the agent even the mesh pod's connect is refused.
        assert kenv.curl(client_cg, f"http://{WEB_VIP}/").rc == 7

        run.agent = AgentProcess(kenv, xds_port=cp.xds_port, node=NODE, proxy_cgroup=proxy_cg,
                                 proxy_address=f"127.0.0.1:{capture_port}", sockmap=sockmap)
        # node proxy cgroup: connect4/6, sockops, getsockopt; the mesh pod: connect4/6, sockops; + sk_msg
        programs = 7 + (1 if sockmap else 0)
        reported = wait_until(lambda: agent_ready(run, programs), READY_TIMEOUT, "agent~n1 policy applied")
        assert reported["cgroups"] == {kenv.rel(proxy_cg): "proxy", kenv.rel(client_cg): "pod"}, reported
        assert reported["map_entries"]["cilia_svc"] == 2 and reported["map_entries"]["cilia_pods"] == 1
        assert reported["last_error"] == "" and reported["sockmap"] is sockmap
        assert bpftool_cgroup_progs(client_cg) in (None, ["cilia_connect4", "cilia_connect6", "cilia_sockops"])

        # Mesh pod -> VIP: answered by v1 through the node Envoy.
        r = kenv.curl(client_cg, f"http://{WEB_VIP}/hello")
        assert (r.rc, r.status) == (0, 200), r
        body = json_body(r.body)
        assert body["backend"] == "web-v1" and body["path"] == "/hello", body
        assert "x-request-id" in body["headers"], "the request passed an HTTP connection manager"
        entry = node_envoy.wait_log(lambda e: e.get("path") == "/hello", "GET /hello")
        assert entry["upstream_cluster"] == "shop/web:80" and entry["upstream_host"] == f"{v1.host}:{v1.port}"
        assert entry["authority"] == WEB_VIP and entry["response_code"] == 200

        # GAMMA: the header match sends the mesh client to v2.
        r = kenv.curl(client_cg, f"http://{WEB_VIP}/canary", "x-version: v2")
        assert (r.status, json_body(r.body).get("backend")) == (200, "web-v2"), r
        entry = node_envoy.wait_log(lambda e: e.get("path") == "/canary", "GET /canary")
        assert entry["upstream_cluster"] == "shop/web-v2:80"
        assert entry["upstream_host"] == f"{v2.host}:{v2.port}"

        # The non-mesh pod is not redirected: its connect to the VIP is refused, no Envoy involved.
        r = kenv.curl(legacy_cg, f"http://{WEB_VIP}/legacy")
        assert r.rc == 7, r
        assert bsys.cgroup_programs(str(legacy_cg)) == {}

        # The capture listener, the VIP's chain and the clusters counted exactly the two mesh requests.
        stats = node_envoy.stats()
        assert stats[f"listener.127.0.0.1_{capture_port}.downstream_cx_total"] == 2
        assert stats["http.outbound_shop_web_80.downstream_rq_2xx"] == 2
        assert stats["cluster.shop/web_80.upstream_rq_2xx"] == 1  # Envoy writes ':' in stat names as '_'
        assert stats["cluster.shop/web-v2_80.upstream_rq_2xx"] == 1
        assert len(v1.requests) == 1 and len(v2.requests) == 1
        assert not any(e.get("path") == "/legacy" for e in node_envoy.access_log())

        # Live update: a new Service in the manifests reaches the agent (new policy version, ACKed
        # with fresh counters) and the node Envoy (a new chain) without restarting anything.
        listeners_before = run.listener_version(f"node~{NODE}")
        md.write("api.yaml", docs(service("shop", "api", API_VIP), endpoint_slice("shop", "api", v1.host, v1.port)))
        reported = wait_until(lambda: agent_ready(run, programs, services=3), 15, "policy with the new VIP ACKed")
        counters = reported["counters"]
        assert counters["redirected"] == 2 and counters["origdst_hit"] == 2, counters  # /hello, /canary
        if sockmap:  # both legs of each redirected pair were spliced
            assert counters["sockmap_add"] >= 4 and counters["msg_redirect"] >= 4, counters
        else:
            assert counters["sockmap_add"] == 0 and counters["msg_redirect"] == 0, counters
        run.wait_synced(f"node~{NODE}", newer_than=listeners_before)
        wait_until(lambda: node_envoy.stats("warming").get("listener_manager.total_listeners_warming") == 0, 5,
                   "new listener version active")
        r = kenv.curl(client_cg, f"http://{API_VIP}/api")
        assert (r.status, json_body(r.body).get("backend")) == (200, "web-v1"), r
        assert node_envoy.wait_log(lambda e: e.get("path") == "/api", "GET /api")["upstream_cluster"] == "shop/api:80"

        # No firewall rules for any of this.
        assert firewall_rules() == rules_before

        # `cilia status` shows the agent with its programs and the node Envoy in sync.
        st = cilia("status", "--admin", f"127.0.0.1:{cp.admin_port}", "-o", "json")
        assert st.returncode == 0, st.stderr
        proxies = json.loads(st.stdout)["proxies"]
        assert proxy_synced(proxies, f"node~{NODE}", MESH_TYPES), proxies[f"node~{NODE}"]
        assert proxy_synced(proxies, f"agent~{NODE}", ("redirects",))
        assert proxies[f"agent~{NODE}"]["reported"]["phase"] == "running"
        table = cilia("status", "--admin", f"127.0.0.1:{cp.admin_port}")
        assert table.returncode == 0, table.stderr
        agent_rows = [line.split() for line in table.stdout.splitlines() if line.startswith(f"agent~{NODE} ")]
        assert [row[:3] for row in agent_rows[-1:]] == [[f"agent~{NODE}", "running", str(programs)]], table.stdout

        # SIGTERM: clean exit, nothing attached, nothing pinned, the VIP is dead again.
        assert run.agent.terminate() == 0, run.agent.text()[-2000:]
        assert "all programs detached" in run.agent.text()
        assert not (kenv.bpffs / "cilia" / pin_name(NODE)).exists()
        for cg in (client_cg, proxy_cg):
            assert bsys.cgroup_programs(str(cg)) == {}, cg
            assert bpftool_cgroup_progs(cg) in (None, [])
        assert kenv.curl(client_cg, f"http://{WEB_VIP}/after").rc == 7
        assert firewall_rules() == rules_before
    finally:
        run.stop()


# -- sidecar mode ------------------------------------------------------------------------------------
SERVER_VIP = "127.96.0.20"
SC_CLIENT_IP, SC_SERVER_IP = "127.1.0.21", "127.1.0.22"


@pytest.mark.parametrize("sockmap", [False, True], ids=["sockmap-off", "sockmap-on"])
def test_sidecar_mode_whole_system(kenv: KernelEnv, sockmap: bool) -> None:
    node_proxy = kenv.cgroup("sys-sc/node-proxy")  # no node-mode pods here: stays empty
    client_cg, server_cg = kenv.cgroup("sys-sc/pods/client"), kenv.cgroup("sys-sc/pods/server")
    client_sc, server_sc = kenv.cgroup("sys-sc/sidecars/client"), kenv.cgroup("sys-sc/sidecars/server")
    out_port, in_port = free_port(), free_port()
    md = ManifestDir()
    # The app listens on 127.0.0.1 only, where its sidecar's inbound listener forwards to (as in a pod
    # of its own): nothing answers at the pod IP itself unless the inbound capture sends it there.
    with echo_backends(("app", "127.0.0.1")) as (app,):
        md.write("pay.yaml", docs(
            namespace("pay", "sidecar"),
            pod("pay", "client", NODE, SC_CLIENT_IP, {
                "cilia.io/cgroup": kenv.rel(client_cg), "cilia.io/sidecar-cgroup": kenv.rel(client_sc)}),
            pod("pay", "server", NODE, SC_SERVER_IP, {
                "cilia.io/cgroup": kenv.rel(server_cg), "cilia.io/sidecar-cgroup": kenv.rel(server_sc)},
                ports=[{"name": "http", "containerPort": app.port}]),
            service("pay", "server", SERVER_VIP, target_port=app.port, selector={"app": "server"}),
            endpoint_slice("pay", "server", SC_SERVER_IP, app.port),
        ))
        opts = TranslateOptions(mesh_capture_port=out_port, mesh_inbound_port=in_port,
                                mesh_sidecar_capture_address="pod-ip", mesh_inbound_address="pod-ip")
        cp = ControlPlaneThread([str(md.path)], translate=opts).start()
        run = Running(cp, md, [])
        try:
            assert cp.admin_json("/debug/issues") == []
            client_envoy = MeshEnvoy(kenv, client_sc, "sidecar~pay/client", cp.xds_port, SC_CLIENT_IP)
            run.envoys.append(client_envoy)
            server_envoy = MeshEnvoy(kenv, server_sc, "sidecar~pay/server", cp.xds_port, SC_SERVER_IP)
            run.envoys.append(server_envoy)
            run.wait_synced(client_envoy.proxy)
            run.wait_synced(server_envoy.proxy)
            listeners = client_envoy.listeners()
            assert listeners["outbound|sidecar|pay/client"] == f"{SC_CLIENT_IP}:{out_port}", listeners
            assert server_envoy.listeners()["inbound|sidecar|pay/server"] == f"{SC_SERVER_IP}:{in_port}"

            rules_before = firewall_rules()
            run.agent = AgentProcess(kenv, xds_port=cp.xds_port, node=NODE, proxy_cgroup=node_proxy,
                                     proxy_address=f"127.0.0.1:{out_port}", sockmap=sockmap)
            # three proxy cgroups x 4 (connect4/6, sockops, getsockopt) + two pods x 3, + sk_msg
            programs = 3 * 4 + 2 * 3 + (1 if sockmap else 0)
            reported = wait_until(lambda: agent_ready(run, programs), READY_TIMEOUT, "agent~n1 policy applied")
            assert reported["last_error"] == "", reported["last_error"]
            assert reported["cgroups"] == {
                kenv.rel(node_proxy): "proxy", kenv.rel(client_sc): "proxy", kenv.rel(server_sc): "proxy",
                kenv.rel(client_cg): "pod", kenv.rel(server_cg): "pod"}, reported["cgroups"]

            # Nothing listens at the server pod's IP:port: a pod's own connect there is not captured.
            assert kenv.curl(client_cg, f"http://{SC_SERVER_IP}:{app.port}/").rc == 7

            # client -> VIP -> client sidecar (outbound) -> server pod IP -> server sidecar (inbound) -> app
            r = kenv.curl(client_cg, f"http://{SERVER_VIP}/via-sidecars")
            assert (r.rc, r.status) == (0, 200), r
            body = json_body(r.body)
            assert body["backend"] == "app" and body["path"] == "/via-sidecars", body
            out = client_envoy.wait_log(lambda e: e.get("path") == "/via-sidecars", "outbound request")
            assert out["upstream_cluster"] == "pay/server:80", out
            assert out["upstream_host"] == f"{SC_SERVER_IP}:{app.port}" and out["authority"] == SERVER_VIP
            inb = server_envoy.wait_log(lambda e: e.get("path") == "/via-sidecars", "inbound request")
            assert inb["upstream_cluster"] == f"inbound|{app.port}", inb
            assert inb["upstream_host"] == f"127.0.0.1:{app.port}"
            # one request, seen by both sidecars and the app under the same request id
            assert out["request_id"] and out["request_id"] == inb["request_id"] == body["headers"]["x-request-id"]
            assert client_envoy.stats("downstream_rq_2xx")["http.outbound_pay_server_80.downstream_rq_2xx"] == 1
            assert server_envoy.stats("downstream_rq_2xx")[f"http.inbound_{app.port}.downstream_rq_2xx"] == 1
            assert len(app.requests) == 1
            assert firewall_rules() == rules_before

            assert run.agent.terminate() == 0, run.agent.text()[-2000:]
            assert not (kenv.bpffs / "cilia" / pin_name(NODE)).exists()
            for cg in (node_proxy, client_cg, server_cg, client_sc, server_sc):
                assert bsys.cgroup_programs(str(cg)) == {}, cg
            assert kenv.curl(client_cg, f"http://{SERVER_VIP}/after").rc == 7
        finally:
            run.stop()
