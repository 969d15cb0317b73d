"""Mesh demo: one node Envoy and one sidecar Envoy, fed by `cilia serve`, carrying real traffic.

Run: `.venv/bin/python examples/mesh/demo.py`. Everything is on 127.0.0.0/8. There is no eBPF
redirect here, so the capture listeners are bound on the Service VIPs themselves (the capture port
is the Services' port) and the sidecar's inbound listener on its pod IP at the app's port: a direct
connection then matches the same filter chain a redirected one would.
"""

from __future__ import annotations

import http.client
import http.server
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
PORT = 18080  # the Services' port and the capture port
BACKENDS = {"web": ("127.0.0.2", 18081), "db": ("127.0.0.3", 18082), "app": ("127.0.0.1", 18090)}

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from demo_support import free_port, start_backend, stop_all, wait_until  # noqa: E402

WEB_VIP, DB_VIP, SERVER_POD_IP = "127.96.0.10", "127.96.0.11", "127.1.0.5"






def get(host: str, port: int, path: str = "/") -> str:
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return f"{resp.status} {resp.read().decode().strip()}"
    finally:
        conn.close()




def main() -> int:
    for host, port in [*BACKENDS.values(), (WEB_VIP, PORT), (DB_VIP, PORT), (SERVER_POD_IP, 18090)]:
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                raise SystemExit(f"demo: {host}:{port} is in use; free it first")
    workdir = Path(tempfile.mkdtemp(prefix="cilia-mesh-demo-"))
    manifests = workdir / "manifests"  # only manifests here: cilia reads every YAML file in it
    manifests.mkdir()
    shutil.copy(HERE / "workloads.yaml", manifests / "workloads.yaml")
    xds, admin = free_port(), free_port()
    cilia = [sys.executable, "-m", "cilia"]
    procs: list[subprocess.Popen[bytes]] = []
    servers = [start_backend(host, port, lambda req, n=name: f"hello from {n} (x-request-id: "
                                                          f"{req.headers.get('x-request-id', '-')})\n")
               for name, (host, port) in BACKENDS.items()]
    try:
        procs.append(subprocess.Popen(
            [*cilia, "serve", "-f", str(manifests), "--xds", f"127.0.0.1:{xds}", "--admin", f"127.0.0.1:{admin}",
             "--mesh-capture-port", str(PORT), "--mesh-capture-address", WEB_VIP,
             "--mesh-sidecar-capture-address", DB_VIP, "--mesh-inbound-address", "pod-ip",
             "--mesh-inbound-port", "18090"], stdout=open(workdir / "cilia.log", "wb"), stderr=subprocess.STDOUT))
        envoy = shutil.which("envoy", path=str(Path(sys.executable).parent)) or "envoy"
        envoy_admin: dict[str, int] = {}
        roles = [("node~node-1", []), ("sidecar~pay/server-0", ["--pod-ip", SERVER_POD_IP])]
        for i, (proxy, extra) in enumerate(roles):
            envoy_admin[proxy] = free_port()
            boot = subprocess.run([*cilia, "bootstrap", "--proxy", proxy, "--xds", f"127.0.0.1:{xds}",
                                   "--admin-port", str(envoy_admin[proxy]), *extra],
                                  check=True, capture_output=True, text=True).stdout
            path = workdir / f"envoy-{i}.yaml"
            path.write_text(boot)
            procs.append(subprocess.Popen(
                [envoy, "-c", str(path), "--base-id", str(9000 + i), "--disable-hot-restart", "--concurrency", "1",
                 "--log-level", "warning"], stdout=open(workdir / f"envoy-{i}.log", "wb"), stderr=subprocess.STDOUT))

        def synced() -> bool:
            proxies = fetch_json(f"http://127.0.0.1:{admin}/debug/proxies")
            return all(p in proxies and proxies[p]["connected"] and proxies[p]["types"] and all(
                t["state"] == "SYNCED" for t in proxies[p]["types"].values()) for p in envoy_admin)

        wait_until(synced, 30, "both proxies to ACK their config")
        print(f"node~node-1 outbound, HTTP chain   http://{WEB_VIP}:{PORT}/ -> {wait_get(WEB_VIP, PORT)}")
        print(f"sidecar outbound, TCP chain        http://{DB_VIP}:{PORT}/ -> {wait_get(DB_VIP, PORT)}")
        print(f"sidecar inbound, HTTP chain        http://{SERVER_POD_IP}:18090/ -> {wait_get(SERVER_POD_IP, 18090)}")
        side_admin = envoy_admin["sidecar~pay/server-0"]
        print(f"sidecar readiness on the pod IP    http://{SERVER_POD_IP}:{side_admin}/ready -> "
              f"{get(SERVER_POD_IP, side_admin, '/ready')}")
        print()
        subprocess.run([*cilia, "status", "--admin", f"127.0.0.1:{admin}"], check=False)
        return 0
    finally:
        stop_all(procs, servers, workdir)


def wait_get(host: str, port: int) -> str:
    result = ""

    def ok() -> bool:
        nonlocal result
        result = get(host, port)
        return result.startswith("200")

    wait_until(ok, 15, f"{host}:{port} to answer")
    return result


def fetch_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


if __name__ == "__main__":
    sys.exit(main())
