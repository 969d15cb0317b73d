"""A proxyless gRPC client (grpcio's xDS client in its own process) driven from tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

CLIENT = Path(__file__).with_name("grpc_xds_client.py")
# gRPC (C-core, Python 1.85) reads per-resource errors (xDS data error handling, A88) only when asked to.
DATA_ERRORS_ENV = {"GRPC_EXPERIMENTAL_XDS_DATA_ERROR_HANDLING": "true"}


def grpc_bootstrap(proxy: str, xds_port: int, *extra: str) -> str:
    """`cilia bootstrap --grpc` for `proxy`, as the JSON text it prints."""
    out = subprocess.run([sys.executable, "-m", "cilia", "bootstrap", "--proxy", proxy, "--grpc",
                          "--xds", f"127.0.0.1:{xds_port}", *extra], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


class ProxylessClient:
    """The client process; the bootstrap file is written before the process (and its channels) start."""

    def __init__(self, bootstrap_json: str, env: dict[str, str] | None = None) -> None:
        fd, path = tempfile.mkstemp(prefix="cilia-grpc-bootstrap-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            f.write(bootstrap_json)
        self.bootstrap = Path(path)
        self.proc = subprocess.Popen([sys.executable, str(CLIENT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env={**os.environ, **(env or {}), "GRPC_XDS_BOOTSTRAP": path})

    def ask(self, target: str, n: int = 1, metadata: tuple[tuple[str, str], ...] = (), timeout: float = 5.0,
            method: str = "/cilia.test.Echo/Call") -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        cmd = {"target": target, "method": method, "n": n, "metadata": [list(m) for m in metadata],
               "timeout": timeout}
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"gRPC client exited with {self.proc.wait(5)}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def calls(self, target: str, n: int = 1, metadata: tuple[tuple[str, str], ...] = (),
              timeout: float = 5.0, method: str = "/cilia.test.Echo/Call") -> list[str]:
        return list(self.ask(target, n, metadata, timeout, method)["results"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.bootstrap.unlink(missing_ok=True)
