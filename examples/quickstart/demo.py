"""The quickstart demo: cilia serve + a real Envoy + two HTTP backends, a live edit, then clean up.

Run with `make demo`. Everything listens on 127.0.0.1; the manifests are copied to a temporary
directory so the edit does not touch the repository.
"""

from __future__ import annotations

import collections
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).parent
VENV_BIN = Path(sys.executable).parent
BACKEND_PORTS = {"echo-v1": 18081, "echo-v2": 18082}
LISTENER = "http://127.0.0.1:10000/"

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from demo_support import free_port, start_backend, stop_all, wait_until  # noqa: E402


def split(n: int = 100) -> dict[str, int]:
    counts: collections.Counter[str] = collections.Counter()
    for _ in range(n):
        with urllib.request.urlopen(LISTENER, timeout=5) as resp:
            counts[resp.read().decode().strip().removeprefix("hello from ")] += 1
    return dict(sorted(counts.items()))


def main() -> int:
    for name, port in BACKEND_PORTS.items():
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                raise SystemExit(f"demo: port {port} (for {name}) is in use; free it first")
    workdir = Path(tempfile.mkdtemp(prefix="cilia-demo-"))
    manifests = workdir / "manifests"
    shutil.copytree(HERE, manifests, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    xds, admin, envoy_admin = free_port(), free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    servers = [start_backend("127.0.0.1", p, lambda _req, n=n: f"hello from {n}\n") for n, p in BACKEND_PORTS.items()]
    try:
        print(f"1. cilia serve -f {manifests}  (xDS 127.0.0.1:{xds}, admin 127.0.0.1:{admin})")
        procs.append(subprocess.Popen(
            [str(VENV_BIN / "cilia"), "serve", "-f", str(manifests), "--xds", f"127.0.0.1:{xds}",
             "--admin", f"127.0.0.1:{admin}", "--log-level", "warning"]))
        wait_until(lambda: urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1).status == 200,
                   20, "cilia serve")
        bootstrap = workdir / "envoy.yaml"
        bootstrap.write_text(subprocess.run(
            [str(VENV_BIN / "cilia"), "bootstrap", "--proxy", "node~demo", "--xds", f"127.0.0.1:{xds}",
             "--admin-port", str(envoy_admin)], check=True, capture_output=True, text=True).stdout)
        print("2. envoy -c envoy.yaml  (bootstrap from `cilia bootstrap --proxy node~demo`)")
        procs.append(subprocess.Popen([str(VENV_BIN / "envoy"), "-c", str(bootstrap), "--log-level", "error",
                                       "--base-id", str(envoy_admin), "--disable-hot-restart"],
                                      stdout=subprocess.DEVNULL))
        wait_until(lambda: urllib.request.urlopen(LISTENER, timeout=1).status == 200, 20, "Envoy listener")
        print(f"3. 100 requests to {LISTENER} (weights 80/20): {split()}")
        cec = manifests / "envoy-config.yaml"
        cec.write_text(cec.read_text().replace("weight: 80", "weight: 0").replace("weight: 20", "weight: 100"))
        print("4. edited envoy-config.yaml: all traffic to echo-v2 (no Envoy restart)")
        t0 = time.monotonic()
        wait_until(lambda: split(10) == {"echo-v2": 10}, 10, "the edit to take effect")
        print(f"   live after {time.monotonic() - t0:.2f}s; 100 requests: {split()}")
        print("5. cilia status:")
        subprocess.run([str(VENV_BIN / "cilia"), "status", "--admin", f"127.0.0.1:{admin}"], check=False)
        return 0
    finally:
        stop_all(procs, servers, workdir)
        print("6. stopped cilia, Envoy and the backends")


if __name__ == "__main__":
    sys.exit(main())
