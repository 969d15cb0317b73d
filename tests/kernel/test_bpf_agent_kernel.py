"""End-to-end tests of `cilia agent`: policy over Delta ADS from an in-test server, real Envoy,
live updates, NACK on bad input, cleanup on SIGTERM, reclaim of a SIGKILLed agent's pins."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from bpf_kernel_support import (
    SRC,
    Backend,
    Envoy,
    KernelEnv,
    bpftool_cgroup_progs,
    capture_listener,
    firewall_rules,
    free_port,
    http_backend,
    route_to,
    run_envoy,
    static_cluster,
)
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import json_format

from cilia.api import redirect_v1 as api
from cilia.bpf import sys as bsys
from cilia.bpf.agent import pin_name

pytestmark = pytest.mark.kernel

NODE = "kt-agent.node.local"  # dots are not allowed in bpffs names: the pin dir maps them
VIP, VIP2 = "127.96.0.10", "127.96.0.11"
REPLY_TIMEOUT = 30.0  # s; covers the agent's start (program compile ~4 s)


class PolicyServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """A minimal Delta ADS server holding one NodeRedirectPolicy; records every client request."""

    def __init__(self) -> None:
        self.policy: Any = None
        self.version = 0
        self.nonce = 0
        self.nonce_version: dict[str, str] = {}
        self.requests: list[Any] = []
        self.streams: list[asyncio.Queue[Any]] = []
        self.changed = asyncio.Event()

    def _response(self) -> Any:
        self.nonce += 1
        nonce = f"n{self.nonce}"
        resp = discovery_pb2.DeltaDiscoveryResponse(type_url=api.TYPE_URL, nonce=nonce)
        if self.policy is None:
            resp.removed_resources.append(NODE)
        else:
            res = resp.resources.add(name=NODE, version=str(self.version))
            res.resource.Pack(self.policy)
        self.nonce_version[nonce] = str(self.version)
        return resp

    def set(self, policy: Any) -> str:
        """Store and push a new policy version to every connected agent; returns the version."""
        self.version += 1
        self.policy = policy
        for q in self.streams:
            q.put_nowait(self._response())
        return str(self.version)

    async def DeltaAggregatedResources(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        out: asyncio.Queue[Any] = asyncio.Queue()
        self.streams.append(out)

        async def read() -> None:
            async for req in request_iterator:
                self.requests.append(req)
                self.changed.set()
                if req.resource_names_subscribe and self.policy is not None:
                    out.put_nowait(self._response())

        reader = asyncio.create_task(read())
        try:
            while True:
                yield await out.get()
        finally:
            reader.cancel()
            self.streams.remove(out)

    async def reply_for(self, version: str) -> Any:
        """The agent's ACK/NACK to (the latest response carrying) `version`."""
        async with asyncio.timeout(REPLY_TIMEOUT):
            while True:
                for req in reversed(self.requests):
                    if req.response_nonce and self.nonce_version.get(req.response_nonce) == version:
                        return req
                self.changed.clear()
                await self.changed.wait()


@dataclass
class AgentTopo:
    kenv: KernelEnv
    proxy: Path
    pod: Path
    envoy: Envoy
    capture: str
    backend: Backend


@pytest.fixture(scope="module")
def agent_topo(kenv: KernelEnv) -> Iterator[AgentTopo]:
    proxy, pod = kenv.cgroup("agent/proxy"), kenv.cgroup("agent/pod-a")
    port = free_port()
    with http_backend("v1", "127.0.0.3") as v1:
        listener = capture_listener(
            "capture",
            "127.0.0.1",
            port,
            [(VIP, 80, [route_to("v1")]), (VIP2, 80, [route_to("v1")])],
            "@ACCESS_LOG@",
        )
        with run_envoy(kenv, proxy, [listener], [static_cluster("v1", v1.host, v1.port)]) as envoy:
            yield AgentTopo(kenv, proxy, pod, envoy, f"127.0.0.1:{port}", v1)


@pytest.fixture
async def server() -> AsyncIterator[tuple[PolicyServer, int]]:
    srv = grpc.aio.server()
    ps = PolicyServer()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ps, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    try:
        yield ps, port
    finally:
        await srv.stop(0.5)


def start_agent(t: AgentTopo, xds_port: int, sockmap: str = "off", tag: str = "") -> subprocess.Popen[Any]:
    argv = [
        sys.executable, "-m", "cilia.bpf.agent",
        "--xds", f"127.0.0.1:{xds_port}",
        "--node", NODE,
        "--cgroup-root", str(t.kenv.cgroup_root),
        "--proxy-cgroup", t.kenv.rel(t.proxy),
        "--proxy-address", t.capture,
        "--sockmap", sockmap,
        "--bpffs", str(t.kenv.bpffs),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(t.kenv.tmp / f"agent{tag}.log", "w") as log:
        return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)


def agent_log(t: AgentTopo, tag: str = "") -> str:
    return (t.kenv.tmp / f"agent{tag}.log").read_text()


def policy(t: AgentTopo, services: list[tuple[str, str, int]], extra_pods: list[Any] | None = None) -> Any:
    return api.NodeRedirectPolicy(
        node_name=NODE,
        pods=[
            api.MeshPod(namespace="default", name="pod-a", cgroup_path=t.kenv.rel(t.pod)),
            *(extra_pods or []),
        ],
        services=[api.MeshService(namespace="default", name=n, vip=ip, port=p) for n, ip, p in services],
    )


def agent_status(req: Any) -> dict[str, Any]:
    meta = json_format.MessageToDict(req.node.metadata)
    return dict(meta["cilia_agent"])


async def curl(t: AgentTopo, url: str) -> Any:
    return await asyncio.to_thread(t.kenv.curl, t.pod, url)


def pin_dir(t: AgentTopo) -> Path:
    return t.kenv.bpffs / "cilia" / pin_name(NODE)


def wait_until(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


async def stop_agent(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> int:
    proc.send_signal(sig)
    return await asyncio.to_thread(proc.wait, 15)


async def test_agent_live_updates_nack_and_sigterm_cleanup(
    agent_topo: AgentTopo, server: tuple[PolicyServer, int]
) -> None:
    t, (ps, port) = agent_topo, server
    rules_before = firewall_rules()
    v = ps.set(policy(t, []))
    proc = start_agent(t, port)
    try:
        ack = await ps.reply_for(v)
        assert not ack.error_detail.message, ack.error_detail.message
        assert ack.node.id == f"agent~{NODE}"
        status = agent_status(ack)
        # node proxy cgroup: connect4/6, sockops, getsockopt; mesh pod: connect4/6, sockops
        assert status["programs_attached"] == 7
        assert status["cgroups"] == {t.kenv.rel(t.proxy): "proxy", t.kenv.rel(t.pod): "pod"}
        assert status["map_entries"]["cilia_svc"] == 0
        listed = bpftool_cgroup_progs(t.pod)  # cross-check with bpftool where installed
        assert listed in (None, ["cilia_connect4", "cilia_connect6", "cilia_sockops"]), listed
        assert (await curl(t, f"http://{VIP}/")).rc == 7  # no VIP yet: nothing listens there

        # live update: add the VIP
        v = ps.set(policy(t, [("web", VIP, 80)]))
        ack = await ps.reply_for(v)
        assert not ack.error_detail.message
        assert agent_status(ack)["map_entries"]["cilia_svc"] == 1
        r = await curl(t, f"http://{VIP}/live")
        assert (r.status, r.body) == (200, "v1 /live"), r
        assert f"{VIP}:80 " in "\n".join(t.envoy.wait_log(lambda s: s.startswith(f"{VIP}:80 ")))

        # no firewall rules were made for any of this
        assert firewall_rules() == rules_before

        # live update: remove it
        v = ps.set(policy(t, []))
        assert not (await ps.reply_for(v)).error_detail.message
        assert (await curl(t, f"http://{VIP}/")).rc == 7

        # bad input: unknown pod cgroup + VIP conflict -> NACK with the reasons; valid rest applied
        late_rel = t.kenv.rel(t.kenv.base / "agent" / "late-pod")  # created only after the NACK
        ghost = api.MeshPod(namespace="default", name="ghost", cgroup_path=late_rel)
        v = ps.set(policy(t, [("web", VIP, 80), ("other", VIP, 80), ("api", VIP2, 80)], [ghost]))
        nack = await ps.reply_for(v)
        text = nack.error_detail.message
        assert nack.error_detail.code == 3  # INVALID_ARGUMENT
        assert f"pod default/ghost: no cgroup '{late_rel}'" in text, text
        assert f"VIP {VIP}:80 conflicts with service default/web" in text, text
        assert proc.poll() is None, "agent must keep running after a NACK"
        assert agent_status(nack)["last_error"] == text
        assert (await curl(t, f"http://{VIP2}/")).status == 200  # the valid service was applied
        assert (await curl(t, f"http://{VIP}/")).rc == 7  # the conflicting one was left out
        # the missing cgroup appears (pod started late): the agent attaches it on its next retry
        late = t.kenv.cgroup("agent/late-pod")
        await asyncio.to_thread(wait_until, lambda: bsys.cgroup_programs(str(late)) != {}, 10.0)
        assert (await asyncio.to_thread(t.kenv.curl, late, f"http://{VIP2}/late")).status == 200

        # a correct version is ACKed again
        v = ps.set(policy(t, [("web", VIP, 80)]))
        ack = await ps.reply_for(v)
        assert not ack.error_detail.message and agent_status(ack)["last_error"] == ""
        assert (await curl(t, f"http://{VIP}/")).status == 200
        assert bsys.cgroup_programs(str(late)) == {}  # left the policy: detached

        assert await stop_agent(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = agent_log(t)
    assert "all programs detached" in log, log[-2000:]
    assert not pin_dir(t).exists()
    assert bsys.cgroup_programs(str(t.pod)) == {}
    assert bsys.cgroup_programs(str(t.proxy)) == {}
    assert bpftool_cgroup_progs(t.pod) in (None, []) and bpftool_cgroup_progs(t.proxy) in (None, [])
    assert (await curl(t, f"http://{VIP}/")).rc == 7  # redirect gone with the agent
    assert firewall_rules() == rules_before


@pytest.mark.parametrize("sockmap", ["off", "on"])
async def test_agent_sigkill_then_restart_reclaims_stale_pins(
    agent_topo: AgentTopo, server: tuple[PolicyServer, int], sockmap: str
) -> None:
    t, (ps, port) = agent_topo, server
    v = ps.set(policy(t, [("web", VIP, 80)]))
    first = start_agent(t, port, sockmap, tag="-1")
    second = None
    try:
        ack = await ps.reply_for(v)
        assert not ack.error_detail.message
        assert agent_status(ack)["sockmap"] is (sockmap == "on")
        assert (await curl(t, f"http://{VIP}/a")).status == 200
        old_ids = {p.id for progs in bsys.cgroup_programs(str(t.pod)).values() for p in progs}
        assert len(old_ids) == 3

        assert await stop_agent(first, signal.SIGKILL) == -signal.SIGKILL
        # pinned links keep the redirect working while no agent runs
        assert any(n.startswith("link_") for n in os.listdir(pin_dir(t)))
        assert {p.id for progs in bsys.cgroup_programs(str(t.pod)).values() for p in progs} == old_ids
        assert (await curl(t, f"http://{VIP}/b")).status == 200

        ps.policy = None  # hold the policy back until the new agent has loaded
        second = start_agent(t, port, sockmap, tag="-2")
        # make-before-break: the killed agent's programs stay attached (and working) while the new
        # agent loads; they are detached once the new one has applied its first policy
        stale = pin_dir(t).parent / f"{pin_name(NODE)}-stale"
        await asyncio.to_thread(
            wait_until, lambda: stale.exists() and (pin_dir(t) / "map_cilia_svc").exists()
        )
        assert (await curl(t, f"http://{VIP}/during-restart")).status == 200
        assert {p.id for progs in bsys.cgroup_programs(str(t.pod)).values() for p in progs} >= old_ids
        v = ps.set(policy(t, [("web", VIP, 80)]))
        ack = await ps.reply_for(v)
        assert not ack.error_detail.message
        assert agent_status(ack)["reclaimed_links"] == 7
        progs = bsys.cgroup_programs(str(t.pod))
        new_ids = {p.id for ps_ in progs.values() for p in ps_}
        assert len(new_ids) == 3 and not new_ids & old_ids, (old_ids, progs)
        r = await curl(t, f"http://{VIP}/c")
        assert (r.status, r.body) == (200, "v1 /c")
        assert await stop_agent(second) == 0
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    assert "reclaimed 17 stale pins (7 links)" in agent_log(t, "-2")  # 10 maps + 7 links
    assert not pin_dir(t).exists() and not (pin_dir(t).parent / f"{pin_name(NODE)}-stale").exists()
    assert bsys.cgroup_programs(str(t.pod)) == {} and bsys.cgroup_programs(str(t.proxy)) == {}
