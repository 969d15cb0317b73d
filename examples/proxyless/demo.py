"""Proxyless gRPC demo: a gRPC client with no proxy, configured by cilia over xDS, calling two servers.

Run: `.venv/bin/python examples/proxyless/demo.py`. Everything is on 127.0.0.0/8: `cilia serve` reads
services.yaml (copied, with a free port for the servers), the client's bootstrap comes from
`cilia bootstrap --grpc`, and grpcio's own xDS client does the rest: round robin, the GRPCRoute's
header match, and an EndpointSlice edit picked up by the same channel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

HERE = Path(__file__).parent
TARGET = "xds:///echo.default.svc.cluster.local:7070"
SERVERS = {"grpc-a": "127.1.0.11", "grpc-b": "127.1.0.12"}

sys.path.insert(0, str(HERE.parent))
from demo_support import free_port, stop_all, wait_until  # noqa: E402


def echo_server(name: str, host: str, port: int) -> grpc.Server:
    """A gRPC server answering any method of echo.Echo with its own name (generic handler, raw bytes)."""
    def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
        return name.encode()

    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "echo.Echo", {"Call": grpc.unary_unary_rpc_method_handler(handle)}),))
    if server.add_insecure_port(f"{host}:{port}") != port:
        raise SystemExit(f"demo: cannot listen on {host}:{port}")
    server.start()
    return server


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="cilia-proxyless-demo-"))
    manifests = workdir / "manifests"  # only manifests here: cilia reads every YAML file in it
    manifests.mkdir()
    port = free_port()
    services = (HERE / "services.yaml").read_text().replace("port: 17070", f"port: {port}")
    (manifests / "services.yaml").write_text(services)
    xds, admin = free_port(), free_port()
    cilia = [sys.executable, "-m", "cilia"]
    procs: list[subprocess.Popen[bytes]] = []
    servers = [echo_server(name, host, port) for name, host in SERVERS.items()]
    channel: grpc.Channel | None = None
    try:
        procs.append(subprocess.Popen([*cilia, "serve", "-f", str(manifests), "--xds", f"127.0.0.1:{xds}",
                                       "--admin", f"127.0.0.1:{admin}"],
                                      stdout=open(workdir / "cilia.log", "wb"), stderr=subprocess.STDOUT))
        wait_until(lambda: urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1), 20, "cilia")
        bootstrap = subprocess.run([*cilia, "bootstrap", "--proxy", "grpc~default/client", "--grpc",
                                    "--xds", f"127.0.0.1:{xds}"], check=True, capture_output=True, text=True).stdout
        (workdir / "bootstrap.json").write_text(bootstrap)
        os.environ["GRPC_XDS_BOOTSTRAP"] = str(workdir / "bootstrap.json")  # before the channel is created
        channel = grpc.insecure_channel(TARGET)
        call = channel.unary_unary("/echo.Echo/Call")

        def calls(n: int, metadata: tuple[tuple[str, str], ...] = ()) -> list[str]:
            return [call(b"", metadata=metadata or None, timeout=5).decode() for _ in range(n)]

        seen: set[str] = set()
        wait_until(lambda: seen.update(calls(2)) or seen == set(SERVERS), 20, "both servers answering")
        print(f"{TARGET}")
        print(f"  6 calls:                  {calls(6)}")
        print(f"  4 with x-version: v2:     {calls(4, (('x-version', 'v2'),))}")
        started = time.monotonic()
        (manifests / "services.yaml").write_text(services.replace("- addresses: [127.1.0.11]\n", "", 1))
        wait_until(lambda: set(calls(4)) == {"grpc-b"}, 10, "grpc-a removed from echo's endpoints")
        print(f"  grpc-a left the EndpointSlice; {time.monotonic() - started:.2f} s later, same channel: {calls(4)}")
        proxies = json.load(urllib.request.urlopen(f"http://127.0.0.1:{admin}/debug/proxies", timeout=5))
        acked = {t: s["version_acked"] for t, s in proxies["grpc~default/client"]["types"].items()}
        print(f"cilia status: grpc~default/client ACKed {acked}")
        print(subprocess.run([*cilia, "status", "--admin", f"127.0.0.1:{admin}"], capture_output=True,
                             text=True).stdout.split("\n\n")[0])
        return 0
    finally:
        if channel is not None:
            channel.close()
        for s in servers:
            s.stop(0)
        stop_all(procs, [], workdir)


if __name__ == "__main__":
    sys.exit(main())
