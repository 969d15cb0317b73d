"""xDS fan-out benchmark: `cilia serve` (a real subprocess) against the grpc.aio floor, same clients."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench.common import ROOT, cpu_seconds, main_thread_cpu_seconds, percentile, rss_mb
from bench.common import cec_manifest as common_cec
from bench.xds_clients import ClientSpec, worker_main

ROUTE_NAME = "default/bench/routes"
MAX_WORKERS = 16  # client processes; past 4,000 clients each holds more than 250


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _pin(cpu: int | None) -> Any:
    if cpu is None:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, {cpu})
    return pin


def cec_manifest(marker: int, listener_port: int) -> str:
    return common_cec(listener_port, [{"match": {"prefix": f"/bench-{marker}"}, "route": {"cluster": "default/echo"}}])


SERVICES = """apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec: {clusterIP: 127.96.0.10, ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: echo-1, namespace: default, labels: {kubernetes.io/service-name: echo}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [127.1.0.1], conditions: {ready: true}}]
"""


GCP_DIR = ROOT / "bench" / "peers" / "go-control-plane"


def build_gcp() -> Path:
    """The go-control-plane peer, built once into ~/.cache/cilia/peers (keyed by its sources)."""
    import hashlib

    digest = hashlib.sha256(b"".join((GCP_DIR / f).read_bytes() for f in ("main.go", "go.mod", "go.sum")))
    out = Path(os.environ.get("CILIA_CACHE", Path.home() / ".cache" / "cilia")) / "peers" / \
        f"gcp-{digest.hexdigest()[:12]}"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "GOFLAGS": "-buildvcs=false", "GOTOOLCHAIN": "local"}
        subprocess.run(["go", "build", "-o", str(out), "."], cwd=GCP_DIR, check=True, env=env, timeout=1800)
    return out


class Server:
    """`cilia serve` over a manifest dir, the grpc.aio floor, or the go-control-plane peer ("gcp"); each a
    subprocess pinned to one CPU."""

    def __init__(self, kind: str, cpu: int | None, ca_dir: Path | None = None) -> None:
        """With `ca_dir` (cilia only), clients connect to the mTLS port (`self.port`)."""
        self.kind = kind
        self.cpu = cpu
        self.ca_dir = ca_dir
        self.port = free_port()
        self.plain_port = free_port()  # cilia with mTLS: its loopback plaintext port; gcp: the trigger port
        self.admin_port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="cilia-bench-"))
        self.log = self.dir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def write_cec(self, marker: int) -> None:
        tmp = self.dir / "manifests" / ".cec.yaml.tmp"
        tmp.write_text(cec_manifest(marker, 15999))
        os.replace(tmp, self.dir / "manifests" / "cec.yaml")

    def start(self) -> None:
        logf = open(self.log, "wb")
        if self.kind == "cilia":
            (self.dir / "manifests").mkdir()
            (self.dir / "manifests" / "services.yaml").write_text(SERVICES)
            self.write_cec(0)
            xds = ["--xds", f"127.0.0.1:{self.port}"] if self.ca_dir is None else \
                ["--xds", f"127.0.0.1:{self.plain_port}", "--xds-tls", f"127.0.0.1:{self.port}",
                 "--ca-dir", str(self.ca_dir)]
            args = [sys.executable, "-m", "cilia", "--log-level", "warning", "serve",
                    "-f", str(self.dir / "manifests"), *xds,
                    "--admin", f"127.0.0.1:{self.admin_port}", "--debounce-quiet-ms", "5",
                    "--debounce-max-ms", "50", "--max-streams", "50000"]
        elif self.kind == "gcp":
            args = [str(build_gcp()), "-port", str(self.port), "-trigger-port", str(self.plain_port),
                    "-route", ROUTE_NAME]
        else:
            args = [sys.executable, "-m", "bench.floor", str(self.port), ROUTE_NAME]
        self.proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, env=_env(),
                                     preexec_fn=_pin(self.cpu))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} server exited:\n{self.log.read_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    pass
                if self.kind == "cilia":
                    with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/readyz", timeout=1):
                        pass
                return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"{self.kind} server not ready:\n{self.log.read_text()[-3000:]}")

    def trigger(self, marker: int) -> None:
        if self.kind == "cilia":
            self.write_cec(marker)
        elif self.kind == "gcp":
            req = urllib.request.Request(f"http://127.0.0.1:{self.plain_port}/push?marker={marker}", method="POST")
            with urllib.request.urlopen(req, timeout=10):
                pass
        else:
            with grpc.insecure_channel(f"127.0.0.1:{self.port}") as ch:
                ch.unary_unary("/bench.Floor/Push")(str(marker).encode(), timeout=10)

    def metrics(self) -> str:
        if self.kind != "cilia":
            return ""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=30) as r:
            return str(r.read().decode())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass(frozen=True)
class XdsCase:
    server: str  # "cilia" | "floor" | "gcp"
    clients: int
    delta: bool
    changes: int = 10
    processes: int = 0  # 0: one per 250 clients, at least 2, at most MAX_WORKERS


def run_case(case: XdsCase, timeout_s: float = 60.0, profile: Path | None = None) -> dict[str, Any]:
    """One server kind, one client count: connect all, then `changes` route changes, each timed to the
    ACK of every client. With `profile`, py-spy samples the server during the changes (collapsed stacks)."""
    cores = os.cpu_count() or 1
    server_cpu = 0 if cores >= 2 else None
    client_cpus = list(range(1, cores)) if cores >= 2 else [None]
    nproc = case.processes or min(MAX_WORKERS, max(2, -(-case.clients // 250)))
    server = Server(case.server, server_cpu)
    server.start()
    ctx = mp.get_context("spawn")
    workers: list[tuple[Any, Any]] = []
    out: dict[str, Any] = {"server": case.server, "variant": "delta" if case.delta else "sotw",
                           "clients": case.clients, "processes": nproc, "server_cpu": server_cpu}
    try:
        assert server.proc is not None
        rss_idle = rss_mb(server.proc.pid)
        t_connect = time.monotonic()
        base = 0
        for i in range(nproc):
            n = case.clients // nproc + (1 if i < case.clients % nproc else 0)
            parent, child = ctx.Pipe()
            spec = ClientSpec(f"127.0.0.1:{server.port}", n, case.delta, base, ROUTE_NAME,
                              cpu=client_cpus[i % len(client_cpus)])
            base += n
            p = ctx.Process(target=worker_main, args=(spec, child), daemon=True)
            p.start()
            workers.append((p, parent))
        held, _, missing, errors = _expect(workers, 0, timeout_s)
        out["connect_all_s"] = time.monotonic() - t_connect
        out["held"] = len(held)
        out["connect_errors"] = errors
        time.sleep(0.5)
        out["rss_idle_mb"] = rss_idle
        out["rss_connected_mb"] = rss_mb(server.proc.pid)
        stream_errors: list[str] = []
        gc0 = _collector(server.metrics()) if case.server == "cilia" else {}
        cpu0 = cpu_seconds(server.proc.pid)
        main0 = main_thread_cpu_seconds(server.proc.pid)
        spy = None
        if profile is not None:
            spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(server.proc.pid),
                                    "-o", str(profile), "--format", "raw", "-r", "100", "--gil"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        fan: list[float] = []
        all_acked: list[float] = []
        e2e: list[float] = []
        incomplete = 0
        missed = 0  # client x change pairs that never saw the change
        for k in range(1, case.changes + 1):
            t_trigger = time.monotonic()
            server.trigger(k)
            got, _, missing, errors = _expect(workers, k, timeout_s)
            if missing:
                incomplete += 1
                missed += missing
            stream_errors = errors
            if not got:
                continue
            t0 = min(r for _, r, _ in got)
            acks = [a - t0 for _, _, a in got]
            fan += acks
            all_acked.append(max(acks))
            e2e.append(max(a for _, _, a in got) - t_trigger)
            time.sleep(0.3)
        out["server_cpu_s_changes"] = cpu_seconds(server.proc.pid) - cpu0
        out["server_main_thread_cpu_s_changes"] = main_thread_cpu_seconds(server.proc.pid) - main0
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)
        out["rss_after_mb"] = rss_mb(server.proc.pid)
        out["changes"] = case.changes
        out["changes_incomplete"] = incomplete
        out["missed_receipts"] = missed
        out["stream_errors"] = stream_errors if case.changes else []
        out["all_acked_ms"] = [x * 1000 for x in all_acked]
        out["client_ack_p50_ms"] = percentile(fan, 50) * 1000
        out["client_ack_p99_ms"] = percentile(fan, 99) * 1000
        out["all_acked_p50_ms"] = percentile(all_acked, 50) * 1000
        out["all_acked_max_ms"] = max(all_acked, default=float("nan")) * 1000
        out["trigger_to_all_acked_p50_ms"] = percentile(e2e, 50) * 1000
        out["trigger_to_all_acked_p99_ms"] = percentile(e2e, 99) * 1000
        if case.server == "cilia":
            t = time.monotonic()
            text = server.metrics()
            out["metrics_scrape_ms"] = (time.monotonic() - t) * 1000
            out["metrics_lines"] = len(text.splitlines())
            # The cyclic collector over the change phase (it pauses every stream), per change.
            gc1 = _collector(text)
            for key, value in gc1.items():
                out[f"{key}_per_change"] = (value - gc0.get(key, 0.0)) / max(1, case.changes)
    finally:
        stop_workers(workers)
        server.stop()
    return out


def _collector(metrics_text: str) -> dict[str, float]:
    """gc_collections_genN and gc_pause_ms_genN from cilia's /metrics, and rebuild_ms (translate + render,
    all results): what of the server's CPU per change is not fan-out."""
    out: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith("cilia_rebuild_duration_seconds_sum"):
            out["rebuild_ms"] = out.get("rebuild_ms", 0.0) + float(line.rsplit(" ", 1)[1]) * 1000
        for metric, key, scale in (("cilia_gc_collections_total", "gc_collections", 1.0),
                                   ("cilia_gc_pause_seconds_total", "gc_pause_ms", 1000.0)):
            if line.startswith(metric + '{generation="'):
                gen = line.split('"', 2)[1]
                out[f"{key}_gen{gen}"] = float(line.rsplit(" ", 1)[1]) * scale
    return out


def stop_workers(workers: list[tuple[Any, Any]]) -> None:
    """Ask every client worker process to stop; terminate those that do not within 15 s."""
    for _, conn in workers:
        try:
            conn.send(("stop",))
        except (OSError, BrokenPipeError):
            pass
    for p, _ in workers:
        p.join(15)
        if p.is_alive():
            p.terminate()
            p.join(5)


def _expect(workers: list[tuple[Any, Any]], marker: int,
            timeout_s: float) -> tuple[list[tuple[int, float, float]], int, int, list[str]]:
    for _, conn in workers:
        conn.send(("expect", marker, timeout_s))
    got: list[tuple[int, float, float]] = []
    missing = 0
    errors: list[str] = []
    for _, conn in workers:
        if not conn.poll(timeout_s + 30):
            raise TimeoutError("client worker did not answer")
        _, g, m, e = conn.recv()
        got += g
        missing += m
        errors += e
    return got, len(got), missing, sorted(set(errors))[:5]
