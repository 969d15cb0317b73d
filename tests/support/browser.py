"""Debian's headless chromium, driven through chromedriver's W3C WebDriver HTTP API (no client library)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from support.net import free_port, wait_port

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")


class Browser:
    """One chromedriver process and one headless chromium session; loopback only, no network beyond it."""

    def __init__(self, width: int = 1280, height: int = 900) -> None:
        if CHROMIUM is None or CHROMEDRIVER is None:
            raise RuntimeError("chromium and chromedriver are needed (scripts/setup.sh installs them)")
        self.port = free_port()
        self.profile = Path(tempfile.mkdtemp(prefix="cilia-chromium-"))
        self.log = self.profile / "chromedriver.log"
        self.size = (width, height)
        self.proc: subprocess.Popen[bytes] | None = None
        self.session = ""

    def start(self) -> Browser:
        self.proc = subprocess.Popen([str(CHROMEDRIVER), f"--port={self.port}", "--allowed-ips=127.0.0.1",
                                      f"--log-path={self.log}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port("127.0.0.1", self.port, 20)
        args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-extensions", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--proxy-server=direct://",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                f"--window-size={self.size[0]},{self.size[1]}", f"--user-data-dir={self.profile / 'profile'}"]
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": str(CHROMIUM), "args": args}}}}
        self.session = self._call("POST", "/session", caps, timeout=60)["sessionId"]
        return self

    def _call(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.load(resp)["value"]
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"webdriver {method} {path}: {exc.read().decode(errors='replace')}") from None

    def get(self, url: str) -> None:
        self._call("POST", f"/session/{self.session}/url", {"url": url})

    def run(self, script: str, *args: Any) -> Any:
        """Run `script` (a function body; `arguments[i]` are `args`) in the page; returns its value."""
        return self._call("POST", f"/session/{self.session}/execute/sync", {"script": script, "args": list(args)})

    def wait_for(self, script: str, timeout: float, step: float = 0.05) -> tuple[Any, float]:
        """Poll `script` until it returns something truthy; (value, seconds waited)."""
        t0 = time.monotonic()
        while True:
            value = self.run(script)
            if value:
                return value, time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"page never satisfied {script!r} within {timeout} s")
            time.sleep(step)

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self._call("GET", f"/session/{self.session}/screenshot")))

    def close(self) -> None:
        try:
            if self.session:
                self._call("DELETE", f"/session/{self.session}", timeout=20)
        except (RuntimeError, OSError):
            pass
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.profile, ignore_errors=True)
