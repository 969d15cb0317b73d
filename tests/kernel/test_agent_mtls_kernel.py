"""`cilia agent --tls-dir`: the node agent fetches its redirect policy over mTLS as `agent~NODE`, and a
certificate for another identity gets no policy at all."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from bpf_kernel_support import KernelEnv, free_port
from system_support import AgentProcess, docs, endpoint_slice, namespace, pod, service, wait_until
from test_system_mesh_kernel import NODE, Running, agent_ready

from cilia.translate.context import TranslateOptions
from support.controlplane import ControlPlaneThread, ManifestDir

pytestmark = pytest.mark.kernel


def cert(ca: Path, proxy: str, out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "cilia", "cert", "--ca-dir", str(ca), "--proxy", proxy, "--out", str(out)],
                   check=True, capture_output=True, timeout=30)
    return out


def test_agent_over_mtls(kenv: KernelEnv, tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    subprocess.run([sys.executable, "-m", "cilia", "ca", "init", "--dir", str(ca)], check=True, capture_output=True)
    proxy_cg, client_cg = kenv.cgroup("mtls/proxy"), kenv.cgroup("mtls/pods/client")
    md = ManifestDir()
    md.write("world.yaml", docs(
        namespace("shop", "node"),
        pod("shop", "client", NODE, "127.1.0.41", {"cilia.io/cgroup": kenv.rel(client_cg)}),
        service("shop", "web", "127.96.0.41"), endpoint_slice("shop", "web", "127.0.0.41", 8080)))
    capture = free_port()
    cp = ControlPlaneThread([str(md.path)], translate=TranslateOptions(mesh_capture_port=capture),
                            ca_dir=str(ca)).start()
    run = Running(cp, md, [])
    try:
        wrong = AgentProcess(kenv, xds_port=cp.xds_tls_port, node=NODE, proxy_cgroup=proxy_cg,
                             proxy_address=f"127.0.0.1:{capture}", sockmap=False,
                             tls_dir=cert(ca, f"node~{NODE}", tmp_path / "node-cert"))
        try:
            wait_until(lambda: "PERMISSION_DENIED" in wrong.text(), 40, "the agent with a node certificate denied")
            assert f"agent~{NODE}" not in run.proxies()
        finally:
            wrong.stop()
        run.agent = AgentProcess(kenv, xds_port=cp.xds_tls_port, node=NODE, proxy_cgroup=proxy_cg,
                                 proxy_address=f"127.0.0.1:{capture}", sockmap=False,
                                 tls_dir=cert(ca, f"agent~{NODE}", tmp_path / "agent-cert"))
        try:
            wait_until(lambda: agent_ready(run, 7, services=1), 40, "agent policy applied over mTLS")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nagent log:\n{run.agent.text()[-3000:]}\nproxies: {run.proxies()}") from None
        assert run.proxies()[f"agent~{NODE}"]["peer"]["uris"] == [f"spiffe://cluster.local/proxy/agent/{NODE}"]
    finally:
        run.stop()
