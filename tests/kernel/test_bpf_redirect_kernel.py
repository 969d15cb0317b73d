"""Kernel tests of the redirect programs through real Envoy (no iptables anywhere).

A client process in a mesh "pod" cgroup connects to a VIP where nothing listens; connect4 sends it
to Envoy's capture listener, getsockopt(SO_ORIGINAL_DST) gives Envoy the VIP back, and Envoy's
VIP filter chain forwards to a backend. Plans are built from NodeRedirectPolicy messages, as the
agent does.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from bpf_kernel_support import (
    Backend,
    Envoy,
    KernelEnv,
    capture_listener,
    free_port,
    http_backend,
    route_to,
    run_envoy,
    static_cluster,
)

from cilia.api import redirect_v1 as api
from cilia.bpf import sys as bsys
from cilia.bpf.policy import Endpoint, build_plan, make_resolver

pytestmark = pytest.mark.kernel

VIP = "127.96.0.10"
SIDECAR_VIP = "127.96.0.20"
SERVER_POD_IP = "127.1.0.2"


@dataclass
class Topo:
    kenv: KernelEnv
    proxy: Path
    pod: Path
    plain: Path
    envoy: Envoy
    capture: Endpoint
    v1: Backend
    v2: Backend
    dp: Any


@pytest.fixture(scope="module")
def topo(kenv: KernelEnv) -> Iterator[Topo]:
    from cilia.bpf.datapath import Datapath

    proxy, pod, plain = kenv.cgroup("dp/proxy"), kenv.cgroup("dp/pod-a"), kenv.cgroup("dp/plain")
    capture = Endpoint("127.0.0.1", free_port())
    with http_backend("v1", "127.0.0.3") as v1, http_backend("v2", "127.0.0.4") as v2:
        listener = capture_listener(
            "capture",
            capture.ip,
            capture.port,
            [(VIP, 80, [route_to("v2", ("x-version", "v2")), route_to("v1")])],
            "@ACCESS_LOG@",
        )
        clusters = [static_cluster("v1", v1.host, v1.port), static_cluster("v2", v2.host, v2.port)]
        with run_envoy(kenv, proxy, [listener], clusters) as envoy:
            dp = Datapath(str(kenv.bpffs / "cilia" / "kt-dp"), sockmap=False)
            try:
                yield Topo(kenv, proxy, pod, plain, envoy, capture, v1, v2, dp)
            finally:
                dp.close()
                for cg in (proxy, pod, plain):
                    assert bsys.cgroup_programs(str(cg)) == {}, f"programs left on {cg}"
                assert not (kenv.bpffs / "cilia" / "kt-dp").exists()


def node_policy(topo: Topo, *vips: tuple[str, int]) -> Any:
    return api.NodeRedirectPolicy(
        node_name="kt",
        pods=[
            api.MeshPod(namespace="default", name="pod-a", cgroup_path=topo.kenv.rel(topo.pod), mode=api.NODE)
        ],
        services=[
            api.MeshService(namespace="default", name=f"svc{i}", vip=ip, port=port)
            for i, (ip, port) in enumerate(vips)
        ],
    )


def apply(topo: Topo, policy: Any) -> None:
    result = build_plan(
        policy,
        make_resolver(str(topo.kenv.cgroup_root)),
        topo.capture,
        proxy_cgroup=str(topo.proxy),
        proxy_cgroup_id=bsys.cgroup_id(str(topo.proxy)),
    )
    assert result.errors == ()
    assert topo.dp.apply(result.plan) == []


def stat(envoy: Envoy, name: str) -> int:
    return envoy.stats().get(name, 0)


@pytest.mark.parametrize("sockmap", [False, True], ids=["sockmap-off", "sockmap-on"])
def test_mesh_pod_reaches_backend_through_envoy(topo: Topo, sockmap: bool) -> None:
    topo.dp.set_sockmap(sockmap)
    apply(topo, node_policy(topo, (VIP, 80)))
    listener_cx = f"listener.{topo.capture.ip}_{topo.capture.port}.downstream_cx_total"
    before_cx, before_rq = stat(topo.envoy, listener_cx), stat(topo.envoy, "cluster.v1.upstream_rq_completed")
    before = topo.dp.stats()

    r = topo.kenv.curl(topo.pod, f"http://{VIP}/hello")
    assert (r.rc, r.status, r.body) == (0, 200, "v1 /hello"), r

    assert stat(topo.envoy, listener_cx) == before_cx + 1
    assert stat(topo.envoy, "cluster.v1.upstream_rq_completed") == before_rq + 1
    lines = topo.envoy.wait_log(lambda line: line.startswith(f"{VIP}:80 "))
    assert f"{VIP}:80 {topo.v1.host}:{topo.v1.port} 200 v1" in lines
    after = topo.dp.stats()
    assert after["redirected"] == before["redirected"] + 1
    assert after["origdst_hit"] >= before["origdst_hit"] + 1
    if sockmap:
        # both ends of client<->Envoy entered the sockhash, payload was spliced both ways
        assert after["sockmap_add"] >= before["sockmap_add"] + 2
        assert after["msg_redirect"] >= before["msg_redirect"] + 2
    else:
        assert after["sockmap_add"] == before["sockmap_add"]
        assert after["msg_redirect"] == before["msg_redirect"]


def test_header_route_picks_v2_for_mesh_client(topo: Topo) -> None:
    topo.dp.set_sockmap(False)
    apply(topo, node_policy(topo, (VIP, 80)))
    r = topo.kenv.curl(topo.pod, f"http://{VIP}/x", "x-version: v2")
    assert (r.status, r.body) == (200, "v2 /x"), r


def test_non_mesh_cgroup_is_not_redirected(topo: Topo) -> None:
    apply(topo, node_policy(topo, (VIP, 80)))
    before = topo.dp.stats()["redirected"]
    r = topo.kenv.curl(topo.plain, f"http://{VIP}/")
    assert r.rc == 7, r  # curl: couldn't connect (nothing listens on the VIP)
    r = topo.kenv.curl(topo.proxy, f"http://{VIP}/")  # the proxy's own connects are never redirected
    assert r.rc == 7, r
    assert topo.dp.stats()["redirected"] == before


def test_unlisted_port_and_removed_vip_are_not_redirected(topo: Topo) -> None:
    apply(topo, node_policy(topo, (VIP, 80)))
    assert topo.kenv.curl(topo.pod, f"http://{VIP}:81/").rc == 7
    apply(topo, node_policy(topo))
    assert topo.kenv.curl(topo.pod, f"http://{VIP}/").rc == 7
    apply(topo, node_policy(topo, (VIP, 80)))
    assert topo.kenv.curl(topo.pod, f"http://{VIP}/").status == 200


def test_dual_stack_socket_to_mapped_vip_is_redirected(topo: Topo) -> None:
    """connect6: an AF_INET6 socket connecting to ::ffff:VIP is steered like connect4."""
    apply(topo, node_policy(topo, (VIP, 80)))
    code = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM); s.settimeout(3)\n"
        f"s.connect(('::ffff:{VIP}', 80))\n"
        f"s.sendall(b'GET /six HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n')\n"
        "data = b''\n"
        "while chunk := s.recv(4096): data += chunk\n"
        "print(data.decode().splitlines()[0]); print(data.decode().splitlines()[-1])\n"
    )
    import sys

    r = topo.kenv.run_in(topo.pod, [sys.executable, "-c", code])
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["HTTP/1.1 200 OK", "v1 /six"]


def test_getsockopt_answers_only_recorded_connections(topo: Topo) -> None:
    """A plain connection to Envoy's capture port has no SO_ORIGINAL_DST record: Envoy gets ENOENT-ish
    failure from the kernel (no conntrack), i.e. the program does not invent one."""
    apply(topo, node_policy(topo, (VIP, 80)))
    before = topo.dp.stats()["origdst_miss"]
    r = topo.kenv.curl(topo.plain, f"http://{topo.capture.ip}:{topo.capture.port}/")
    # no filter chain matches the capture address itself, so Envoy closes the connection
    assert r.status != 200, r
    assert topo.dp.stats()["origdst_miss"] == before + 1


def _so_original_dst(sock: socket.socket) -> tuple[str, int]:
    raw = sock.getsockopt(socket.SOL_IP, 80, 16)
    _family, port = struct.unpack("=HH", raw[:4])
    return socket.inet_ntoa(raw[4:8]), socket.ntohs(port)


def test_sidecar_mode_outbound_and_inbound_pass_both_sidecars(topo: Topo) -> None:
    """Client pod (sidecar) -> VIP -> its sidecar -> server pod IP:port -> server's sidecar 15006 -> app."""
    kenv = topo.kenv
    client_pod, client_sc = kenv.cgroup("sc/client-pod"), kenv.cgroup("sc/client-sidecar")
    server_pod, server_sc = kenv.cgroup("sc/server-pod"), kenv.cgroup("sc/server-sidecar")
    out_port, in_port = free_port(), free_port(SERVER_POD_IP)
    with http_backend("app", SERVER_POD_IP) as app:
        client_listener = capture_listener(
            "outbound", "127.0.0.1", out_port, [(SIDECAR_VIP, 80, [route_to("server")])], "@ACCESS_LOG@"
        )
        server_listener = capture_listener(
            "inbound", SERVER_POD_IP, in_port, [(SERVER_POD_IP, app.port, [route_to("app")])], "@ACCESS_LOG@"
        )
        with (
            run_envoy(
                kenv, client_sc, [client_listener], [static_cluster("server", SERVER_POD_IP, app.port)]
            ) as c_env,
            run_envoy(
                kenv, server_sc, [server_listener], [static_cluster("app", SERVER_POD_IP, app.port)]
            ) as s_env,
        ):
            policy = api.NodeRedirectPolicy(
                node_name="kt",
                pods=[
                    api.MeshPod(
                        namespace="default",
                        name="client",
                        cgroup_path=kenv.rel(client_pod),
                        pod_ips=["127.1.0.1"],
                        mode=api.SIDECAR,
                        sidecar_port=out_port,
                        sidecar_cgroup_path=kenv.rel(client_sc),
                        inbound_port=free_port(),
                    ),
                    api.MeshPod(
                        namespace="default",
                        name="server",
                        cgroup_path=kenv.rel(server_pod),
                        pod_ips=[SERVER_POD_IP],
                        mode=api.SIDECAR,
                        sidecar_port=free_port(),
                        sidecar_cgroup_path=kenv.rel(server_sc),
                        inbound_port=in_port,
                    ),
                    api.MeshPod(namespace="default", name="pod-a", cgroup_path=kenv.rel(topo.pod)),
                ],
                services=[api.MeshService(namespace="default", name="server", vip=SIDECAR_VIP, port=80)],
            )
            apply(topo, policy)
            before = topo.dp.stats()
            r = kenv.curl(client_pod, f"http://{SIDECAR_VIP}/via-sidecars")
            assert (r.status, r.body) == (200, "app /via-sidecars"), r
            after = topo.dp.stats()
            assert after["redirected"] == before["redirected"] + 1
            assert after["inbound_redirected"] == before["inbound_redirected"] + 1
            c_lines = c_env.wait_log(lambda s: s.startswith(f"{SIDECAR_VIP}:80 "))
            assert f"{SIDECAR_VIP}:80 {SERVER_POD_IP}:{app.port} 200 server" in c_lines
            s_lines = s_env.wait_log(lambda s: s.startswith(f"{SERVER_POD_IP}:{app.port} "))
            assert f"{SERVER_POD_IP}:{app.port} {SERVER_POD_IP}:{app.port} 200 app" in s_lines
            # the node-mode pod is unaffected by the sidecar pods' entries: the VIP goes to the node proxy,
            # which has no chain for it (so no 200), and direct pod-IP traffic from a pod is not captured
            assert os.path.exists(os.path.join(topo.dp.pin_dir, "map_cilia_inbound"))
            r = kenv.curl(topo.pod, f"http://{SERVER_POD_IP}:{app.port}/direct")
            assert (r.status, r.body) == (200, "app /direct"), r
            assert topo.dp.stats()["inbound_redirected"] == after["inbound_redirected"]
    apply(topo, node_policy(topo, (VIP, 80)))
    for cg in (client_pod, client_sc, server_pod, server_sc):
        assert bsys.cgroup_programs(str(cg)) == {}, f"programs left on removed pod cgroup {cg}"


def test_observer_on_an_ancestor_answers_original_dst_without_proxy_cgroup(topo: Topo) -> None:
    """Without --proxy-cgroup the agent attaches getsockopt+sockops to the cgroup root ("observer");
    here the test's base cgroup stands in for the root (it holds both Envoy's and the pod's cgroups,
    so the pod's sockets also run sockops twice)."""
    base = str(topo.kenv.base)
    result = build_plan(node_policy(topo, (VIP, 80)), make_resolver(str(topo.kenv.cgroup_root)), topo.capture)
    assert result.errors == () and result.plan.proxies == ()
    topo.dp.set_sockmap(True)
    try:
        assert topo.dp.apply(replace(result.plan, observers=(base,))) == []
        assert set(bsys.cgroup_programs(base)) == {"sock_ops", "getsockopt"}
        assert bsys.cgroup_programs(str(topo.proxy)) == {}
        before = topo.dp.stats()
        r = topo.kenv.curl(topo.pod, f"http://{VIP}/observer")
        assert (r.status, r.body) == (200, "v1 /observer"), r
        after = topo.dp.stats()
        assert after["origdst_hit"] == before["origdst_hit"] + 1
        assert after["msg_redirect"] >= before["msg_redirect"] + 2
    finally:
        topo.dp.set_sockmap(False)
        apply(topo, node_policy(topo, (VIP, 80)))
    assert bsys.cgroup_programs(base) == {}
