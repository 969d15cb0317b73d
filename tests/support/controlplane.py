"""cilia's control plane for tests: in a thread of its own (inspectable) or as a `cilia serve` process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from cilia.app import ControlPlane, Debounce, ServeOptions
from cilia.translate.context import TranslateOptions
from support.net import free_port, wait_port


class ManifestDir:
    """A temporary manifest directory; `write` replaces a file atomically, as editors do."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="cilia-manifests-"))

    def write(self, name: str, text: str) -> Path:
        target = self.path / name
        tmp = self.path / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, target)
        return target

    def remove(self, name: str) -> None:
        (self.path / name).unlink()

    def cleanup(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class ControlPlaneThread:
    """Runs ControlPlane on its own event loop in a daemon thread."""

    def __init__(self, paths: list[str], *, translate: TranslateOptions | None = None,
                 debounce: Debounce | None = None, ca_dir: str | None = None, xds_tls: bool = True,
                 **serve: Any) -> None:
        """With `ca_dir`, the mesh runs mTLS, and (unless `xds_tls=False`) xDS is also served over mTLS
        (`xds_tls_port`) with that CA. `serve`: further ServeOptions fields."""
        self.opts = ServeOptions(paths=tuple(paths), xds_address="127.0.0.1:0", admin_address="127.0.0.1:0",
                                 debounce=debounce or Debounce(0.05, 0.5),
                                 translate=translate or TranslateOptions(), ca_dir=ca_dir,
                                 xds_tls_address="127.0.0.1:0" if ca_dir and xds_tls else None, **serve)
        self.cp: ControlPlane | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cilia-cp", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)

        async def main() -> None:
            self.cp = ControlPlane(self.opts)
            ready = asyncio.Event()
            task = asyncio.create_task(self.cp.run(ready))
            await ready.wait()
            self._ready.set()
            await task

        try:
            loop.run_until_complete(main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
        finally:
            loop.close()

    def start(self) -> ControlPlaneThread:
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError(f"control plane failed to start: {self._error!r}")
        return self

    @property
    def xds_port(self) -> int:
        assert self.cp is not None
        return self.cp.xds_port

    @property
    def xds_tls_port(self) -> int:
        assert self.cp is not None
        return self.cp.xds_tls_port

    @property
    def admin_port(self) -> int:
        assert self.cp is not None
        return self.cp.admin_port

    def call(self, fn: Any, *args: Any) -> Any:
        """Run `fn(*args)` on the control plane's loop and return its result."""
        assert self.loop is not None

        async def wrapper() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(10)

    def admin_json(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as resp:
            return json.load(resp)

    def stop(self) -> None:
        if self.cp is not None and self.loop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.cp.stop)
            self._thread.join(10)


class CiliaProcess:
    """`cilia serve` as a real process (for restart tests and the CLI contract)."""

    def __init__(self, paths: list[str], *, xds_port: int | None = None, admin_port: int | None = None,
                 extra: list[str] | None = None) -> None:
        self.xds_port = xds_port or free_port()
        self.admin_port = admin_port or free_port()
        self.args = [sys.executable, "-m", "cilia", "serve", "--xds", f"127.0.0.1:{self.xds_port}",
                     "--admin", f"127.0.0.1:{self.admin_port}", "--debounce-quiet-ms", "50",
                     "--debounce-max-ms", "500", *[a for p in paths for a in ("-f", p)], *(extra or [])]
        self.log = Path(tempfile.mkstemp(prefix="cilia-serve-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> CiliaProcess:
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(self.args, stdout=logf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cilia serve exited {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                wait_port("127.0.0.1", self.admin_port, 0.2)
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/readyz", timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"cilia serve not ready:\n{self.log.read_text()}")

    def admin_json(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as resp:
            return json.load(resp)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def policy_denials(cp: ControlPlaneThread) -> dict[tuple[str, str], float]:
    """cilia_policy_denials_total from cilia's /metrics: (policy, reason) -> count."""
    with urllib.request.urlopen(f"http://127.0.0.1:{cp.admin_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for m in re.finditer(r'^cilia_policy_denials_total\{([^}]*)\} (\S+)$', text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        out[(labels["policy"], labels["reason"])] = float(m.group(2))
    return out
