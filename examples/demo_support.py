"""What the example scripts share: free loopback ports, tiny HTTP backends, waiting, and cleaning up."""

from __future__ import annotations

import http.server
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_backend(host: str, port: int,
                  reply: Callable[[http.server.BaseHTTPRequestHandler], str]) -> http.server.ThreadingHTTPServer:
    """An HTTP server on host:port answering every GET with `reply(request)`."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = reply(self).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def wait_until(pred: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"example: timed out waiting for {what}")


def stop_all(procs: Iterable[subprocess.Popen[bytes]], servers: Iterable[http.server.ThreadingHTTPServer],
             workdir: Path) -> None:
    """Stop processes (newest first), backends, and remove the working directory."""
    for p in reversed(list(procs)):
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
    for s in servers:
        s.shutdown()
        s.server_close()
    shutil.rmtree(workdir, ignore_errors=True)
