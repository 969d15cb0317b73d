"""Whole-system kernel test helpers: the real control plane, `cilia bootstrap`-ed Envoys running in
test cgroups, and `cilia agent` as a subprocess.

Everything stays on 127.0.0.0/8 (VIPs 127.96.0.0/16, pod IPs 127.1.0.0/16, backends 127.0.0.x);
every process started here is stopped by its owner (`stop()`), never by name.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bpf_kernel_support import ENVOY, SRC, KernelEnv, free_port

MESH_TYPES = ("listeners", "routes", "clusters", "endpoints")


def cilia_env() -> dict[str, str]:
    """The environment for `python -m cilia ...`: this tree's sources, no inherited POD_IP/NODE_NAME."""
    env = {k: v for k, v in os.environ.items() if k not in ("POD_IP", "NODE_NAME")}
    env["PYTHONPATH"] = SRC + os.pathsep + os.environ.get("PYTHONPATH", "")
    return env


def cilia(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run one `cilia` CLI command to completion."""
    return subprocess.run([sys.executable, "-m", "cilia", *args], capture_output=True, text=True,
                          timeout=timeout, env=cilia_env())


class Fatal(AssertionError):
    """Raised by a `wait_until` predicate when waiting longer cannot help (e.g. a NACK)."""


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `predicate` (exceptions other than Fatal count as "not yet") until truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Fatal:
            raise
        except Exception as exc:  # retried until the deadline
            last = exc
        time.sleep(0.05)
    raise AssertionError(f"{what}: not reached within {timeout:.0f} s (last error: {last!r})")


def proxy_synced(proxies: dict[str, Any], proxy: str, types: tuple[str, ...]) -> bool:
    """`proxy` is connected and every one of `types` was sent and ACKed (SYNCED)."""
    p = proxies.get(proxy)
    if not p or not p["connected"]:
        return False
    return all(p["types"].get(t, {}).get("state") == "SYNCED" for t in types)


class MeshEnvoy:
    """A real Envoy with the bootstrap `cilia bootstrap` prints, running as a member of a cgroup.

    Its stdout (the JSON access log cilia configures) and stderr go to one file; `access_log()`
    returns the JSON lines of it.
    """

    def __init__(self, kenv: KernelEnv, cgroup: Path, proxy: str, xds_port: int, pod_ip: str = "") -> None:
        self.proxy = proxy
        self.admin_port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="envoy-", dir=kenv.tmp))
        args = ["bootstrap", "--proxy", proxy, "--xds", f"127.0.0.1:{xds_port}",
                "--admin-port", str(self.admin_port), "-o", "json"]
        if pod_ip:
            args += ["--pod-ip", pod_ip]
        r = cilia(*args)
        assert r.returncode == 0, f"cilia bootstrap {proxy}: {r.stderr}"
        self.config = self.dir / "bootstrap.json"
        self.config.write_text(r.stdout)
        self.log = self.dir / "envoy.log"
        argv = [ENVOY, "-c", str(self.config), "--disable-hot-restart", "--concurrency", "1",
                "-l", "warning", "--file-flush-interval-msec", "100"]  # fmt: skip
        with open(self.log, "wb") as out:
            self.proc = kenv.popen_in(cgroup, argv, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until(self._ready, 20, f"{proxy} admin ready")
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"envoy {self.proxy} exited {self.proc.returncode}: {self.tail()}")
        return self.admin("/ready").strip() == "LIVE"

    def admin(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as resp:
            return str(resp.read().decode())

    def stats(self, filter_: str = "") -> dict[str, int]:
        out: dict[str, int] = {}
        for line in self.admin(f"/stats?filter={filter_}").splitlines():
            name, _, value = line.partition(": ")
            if value.strip().isdigit():
                out[name] = int(value)
        return out

    def listeners(self) -> dict[str, str]:
        """Active listener name -> bound address (`/listeners` admin view)."""
        out = {}
        for line in self.admin("/listeners").splitlines():
            name, _, address = line.partition("::")
            if name:
                out[name] = address
        return out

    def access_log(self) -> list[dict[str, Any]]:
        entries = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    entries.append(json.loads(line))
                except ValueError:
                    continue
        return entries

    def wait_log(self, predicate: Callable[[dict[str, Any]], bool], what: str, timeout: float = 5) -> dict[str, Any]:
        """The first access log entry matching `predicate` (stdout is flushed every 100 ms)."""
        return wait_until(lambda: next((e for e in self.access_log() if predicate(e)), None), timeout,
                          f"{self.proxy} access log: {what}")

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


class AgentProcess:
    """`cilia agent` as a subprocess on the test's own cgroup2 and bpffs mounts."""

    def __init__(self, kenv: KernelEnv, *, xds_port: int, node: str, proxy_cgroup: Path, proxy_address: str,
                 sockmap: bool, tls_dir: Path | None = None) -> None:
        self.log = kenv.tmp / f"agent-{node}-{'sockmap' if sockmap else 'plain'}.log"
        argv = [
            sys.executable, "-m", "cilia", "agent",
            "--xds", f"127.0.0.1:{xds_port}",
            "--node", node,
            "--cgroup-root", str(kenv.cgroup_root),
            "--proxy-cgroup", kenv.rel(proxy_cgroup),
            "--proxy-address", proxy_address,
            "--sockmap", "on" if sockmap else "off",
            "--bpffs", str(kenv.bpffs),  # the test's private bpffs, not the host's /sys/fs/bpf
        ]  # fmt: skip
        if tls_dir is not None:
            argv += ["--tls-dir", str(tls_dir)]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(argv, env=cilia_env(), stdout=out, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def terminate(self, timeout: float = 15) -> int:
        """SIGTERM and wait: the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """SIGTERM (so it detaches what it attached), SIGKILL if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


# -- manifests (JSON documents; YAML reads them as well) -----------------------------------------------
def docs(*parts: dict[str, Any]) -> str:
    return "\n---\n".join(json.dumps(p) for p in parts) + "\n"


def namespace(name: str, mesh: str | None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    labels = {"cilia.io/mesh": mesh} if mesh else {}
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels, "annotations": annotations or {}}}


def pod(ns: str, name: str, node: str, ip: str, annotations: dict[str, str],
        ports: list[dict[str, Any]] | None = None, service_account: str = "",
        labels: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"nodeName": node, "containers": [{"name": "app", "image": "app", "ports": ports or []}]}
    if service_account:
        spec["serviceAccountName"] = service_account
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "uid": f"uid-{ns}-{name}",
                         "labels": labels if labels is not None else {"app": name}, "annotations": annotations},
            "spec": spec, "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}


def service(ns: str, name: str, vip: str, port: int = 80, target_port: int | None = None,
            selector: dict[str, str] | None = None) -> dict[str, Any]:
    p: dict[str, Any] = {"name": "http", "port": port, "protocol": "TCP"}
    if target_port is not None:
        p["targetPort"] = target_port
    spec: dict[str, Any] = {"clusterIP": vip, "clusterIPs": [vip], "ports": [p]}
    if selector:
        spec["selector"] = selector
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": spec}


def endpoint_slice(ns: str, service_name: str, address: str, port: int) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{service_name}-1", "namespace": ns,
                         "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [address], "conditions": {"ready": True}}]}


def gamma_route(ns: str, name: str, service_name: str, port: int, rules: list[dict[str, Any]]) -> dict[str, Any]:
    """An HTTPRoute attached to a Service (GAMMA), i.e. applying to mesh traffic sent to it."""
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": ns, "generation": 1},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": service_name, "port": port}],
                     "rules": rules}}
