"""Benchmark: plain loopback TCP vs client -> Envoy -> server through the eBPF redirect (sockmap off/on).

Run as root: `python bench/bpf_redirect.py [--runs N]`. It mounts a private cgroup2 and bpffs under
a temp dir, puts a real Envoy (tcp_proxy chain for the VIP, original_dst listener filter) in a
proxy cgroup and the client in a mesh-pod cgroup, loads cilia's redirect programs, and measures,
per run and scenario (scenarios interleaved, so drift hits all alike):
  - rr: request/response round trips of 64 bytes on one connection (p50, p99, requests/s)
  - connect: new connection + one round trip (p50, p99) - includes connect4/sockops/getsockopt
  - bulk: one-way stream of 32 MiB in 64 KiB writes (MiB/s)
Scenarios: plain (client -> server), envoy-direct (client dials Envoy's plain tcp_proxy listener: the
proxy's own cost), ebpf (client dials the VIP; connect4 + SO_ORIGINAL_DST steer it into Envoy's
capture listener), ebpf+sockmap (same, client<->Envoy payload spliced by sk_msg).
Prints a table of medians with [min-max] across runs and writes bench/results/bpf_redirect.json.
Traffic stays on 127.0.0.0/8; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cilia.bpf import sys as bsys  # noqa: E402
from cilia.bpf.policy import Endpoint, PodPlan, ProxyPlan, RedirectPlan  # noqa: E402

VIP, VIP_PORT = "127.96.0.10", 9000
SERVER_HOST = "127.0.0.3"
MSG = 64
TIME_BUDGET_S = 100.0

CLIENT = r"""
import json, socket, sys, time
host = sys.argv[1]
port, n_rr, n_conn, bulk_mib, msg = (int(a) for a in sys.argv[2:7])
def pct(xs, p):
    xs = sorted(xs); return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]
def rr(s, payload):
    s.sendall(payload); got = 0
    while got < len(payload):
        chunk = s.recv(65536)
        if not chunk: raise SystemExit("server closed")
        got += len(chunk)
payload = b"E" * msg
s = socket.create_connection((host, port), timeout=5); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.sendall(b"E")
for _ in range(200): rr(s, payload)  # warm-up
lat = []
t0 = time.perf_counter()
for _ in range(n_rr):
    a = time.perf_counter(); rr(s, payload); lat.append(time.perf_counter() - a)
elapsed = time.perf_counter() - t0
s.close()
conn = []
for _ in range(n_conn):
    a = time.perf_counter()
    c = socket.create_connection((host, port), timeout=5)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.sendall(b"E"); rr(c, payload); conn.append(time.perf_counter() - a); c.close()
b = socket.create_connection((host, port), timeout=10)
b.sendall(b"B"); chunk = b"x" * 65536; total = bulk_mib * 1024 * 1024
a = time.perf_counter()
for _ in range(total // len(chunk)): b.sendall(chunk)
b.shutdown(socket.SHUT_WR)
ack = b""
while len(ack) < 8:
    part = b.recv(8)
    if not part: break
    ack += part
bulk_s = time.perf_counter() - a
assert int.from_bytes(ack, "big") == total, ack
b.close()
print(json.dumps({"rr_p50_us": pct(lat, 50) * 1e6, "rr_p99_us": pct(lat, 99) * 1e6,
                  "rr_per_s": n_rr / elapsed, "connect_p50_us": pct(conn, 50) * 1e6,
                  "connect_p99_us": pct(conn, 99) * 1e6,
                  "bulk_mib_s": bulk_mib / bulk_s}))
"""


def _serve_conn(c: socket.socket) -> None:
    with c:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        mode = c.recv(1)
        if mode == b"E":
            while data := c.recv(65536):
                c.sendall(data)
        elif mode == b"B":
            total = 0
            while data := c.recv(1 << 20):
                total += len(data)
            c.sendall(total.to_bytes(8, "big"))


def echo_server(stop: threading.Event) -> tuple[socket.socket, int]:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((SERVER_HOST, 0))
    srv.listen(128)
    srv.settimeout(0.2)

    def loop() -> None:
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except (TimeoutError, OSError):
                continue
            c.settimeout(None)
            threading.Thread(target=_serve_conn, args=(c,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return srv, srv.getsockname()[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def envoy_bootstrap(capture_port: int, direct_port: int, admin_port: int, server_port: int) -> dict[str, Any]:
    ext = "type.googleapis.com/envoy.extensions."
    tcp_proxy = {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": ext + "filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "vip",
            "cluster": "server",
        },
    }
    direct = {
        "name": "direct",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": direct_port}},
        "filter_chains": [{"filters": [tcp_proxy]}],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "capture",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": capture_port}},
                    "listener_filters": [
                        {
                            "name": "envoy.filters.listener.original_dst",
                            "typed_config": {"@type": ext + "filters.listener.original_dst.v3.OriginalDst"},
                        }
                    ],
                    "filter_chains": [
                        {
                            "filter_chain_match": {
                                "prefix_ranges": [{"address_prefix": VIP, "prefix_len": 32}],
                                "destination_port": VIP_PORT,
                            },
                            "filters": [tcp_proxy],
                        }
                    ],
                },
                direct,
            ],
            "clusters": [
                {
                    "name": "server",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "server",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": SERVER_HOST,
                                                    "port_value": server_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ],
        },
    }


def in_cgroup(cgroup: Path, argv: list[str]) -> list[str]:
    return ["sh", "-c", 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"', "sh", str(cgroup), *argv]


@contextlib.contextmanager
def environment(tmp: Path) -> Iterator[dict[str, Path]]:
    """Private cgroup2 + bpffs mounts and the proxy/pod cgroups; all removed on exit."""
    cg_root, bpffs = tmp / "cgroup2", tmp / "bpffs"
    bsys.mount("cgroup2", str(cg_root))
    bsys.mount("bpf", str(bpffs))
    base = cg_root / f"cilia-bench-{os.getpid()}"
    dirs = {"base": base, "proxy": base / "proxy", "pod": base / "pod", "cg_root": cg_root, "bpffs": bpffs}
    for name in ("base", "proxy", "pod"):
        dirs[name].mkdir()
    try:
        yield dirs
    finally:
        for name in ("proxy", "pod", "base"):
            for _ in range(50):
                try:
                    dirs[name].rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)
        bsys.umount(str(bpffs))
        bsys.umount(str(cg_root))


def run_client(pod: Path, host: str, port: int, args: argparse.Namespace) -> dict[str, float]:
    argv = [
        sys.executable,
        "-c",
        CLIENT,
        host,
        str(port),
        str(args.rr),
        str(args.connects),
        str(args.bulk_mib),
        str(MSG),
    ]
    r = subprocess.run(in_cgroup(pod, argv), capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"client failed ({host}:{port}): {r.stderr[-1500:]}")
    return dict(json.loads(r.stdout))


def machine_info(envoy: str) -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    ver = subprocess.run([envoy, "--version"], capture_output=True, text=True, timeout=20).stdout.strip()
    return {
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "envoy": ver.split("version:", 1)[-1].strip(),
    }


def summarize(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    out = {}
    for key in runs[0]:
        vals = [r[key] for r in runs]
        out[key] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--rr", type=int, default=2000, help="round trips per run")
    p.add_argument("--connects", type=int, default=200, help="new connections per run")
    p.add_argument("--bulk-mib", type=int, default=32)
    p.add_argument("--envoy", default=os.environ.get("CILIA_ENVOY") or shutil.which("envoy") or "envoy")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "bpf_redirect.json"))
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bpf_redirect: needs root (cgroup2, bpffs, bcc)", file=sys.stderr)
        return 1
    if not os.path.exists(args.envoy):
        venv_envoy = Path(sys.executable).parent / "envoy"
        args.envoy = str(venv_envoy) if venv_envoy.exists() else args.envoy
    args.runs = max(1, min(args.runs, 20))
    from cilia.bpf.datapath import Datapath

    started = time.monotonic()
    stop = threading.Event()
    tmp = Path(tempfile.mkdtemp(prefix="cilia-bench-"))
    results: dict[str, list[dict[str, float]]] = {
        "plain": [],
        "envoy-direct": [],
        "ebpf": [],
        "ebpf+sockmap": [],
    }
    envoy_proc = None
    try:
        with environment(tmp) as d:
            srv, server_port = echo_server(stop)
            capture, direct, admin = free_port(), free_port(), free_port()
            cfg = tmp / "envoy.json"
            cfg.write_text(json.dumps(envoy_bootstrap(capture, direct, admin, server_port)))
            envoy_cmd = [
                args.envoy,
                "-c",
                str(cfg),
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "-l",
                "error",
            ]
            envoy_proc = subprocess.Popen(in_cgroup(d["proxy"], envoy_cmd), stdout=subprocess.DEVNULL)
            deadline = time.monotonic() + 15
            while True:
                with contextlib.suppress(OSError):
                    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1) as r:
                        if r.status == 200:
                            break
                if time.monotonic() > deadline or envoy_proc.poll() is not None:
                    raise RuntimeError("envoy did not start")
                time.sleep(0.1)
            dp = Datapath(str(d["bpffs"] / "cilia" / "bench"), sockmap=False)
            try:
                plan = RedirectPlan(
                    services=frozenset({Endpoint(VIP, VIP_PORT)}),
                    pods=(PodPlan("bench/pod", str(d["pod"]), bsys.cgroup_id(str(d["pod"])), 1,
                                  Endpoint("127.0.0.1", capture)),),
                    proxies=(ProxyPlan("bench/proxy", str(d["proxy"]), bsys.cgroup_id(str(d["proxy"]))),),
                )  # fmt: skip
                errors = dp.apply(plan)
                if errors:
                    raise RuntimeError("; ".join(errors))
                for i in range(args.runs):
                    if time.monotonic() - started > TIME_BUDGET_S:
                        print(f"time budget reached after {i} runs", file=sys.stderr)
                        break
                    dp.set_sockmap(False)
                    results["plain"].append(run_client(d["pod"], SERVER_HOST, server_port, args))
                    results["envoy-direct"].append(run_client(d["pod"], "127.0.0.1", direct, args))
                    results["ebpf"].append(run_client(d["pod"], VIP, VIP_PORT, args))
                    dp.set_sockmap(True)
                    results["ebpf+sockmap"].append(run_client(d["pod"], VIP, VIP_PORT, args))
                counters = dp.stats()
            finally:
                dp.close()
                envoy_proc.terminate()
                envoy_proc.wait(10)
                stop.set()
                srv.close()
    finally:
        if envoy_proc is not None and envoy_proc.poll() is None:
            envoy_proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    summary = {name: summarize(runs) for name, runs in results.items() if runs}
    cols = [
        ("rr_p50_us", "rr p50 us"),
        ("rr_p99_us", "rr p99 us"),
        ("rr_per_s", "rr/s"),
        ("connect_p50_us", "conn p50 us"),
        ("connect_p99_us", "conn p99 us"),
        ("bulk_mib_s", "bulk MiB/s"),
    ]
    n = len(results["plain"])
    print(f"\neBPF redirect benchmark: {n} runs per scenario, median [min-max]")
    print(f"{'scenario':<14}" + "".join(f"{title:>24}" for _, title in cols))
    for name, s in summary.items():
        cells = [f"{s[k]['median']:.0f} [{s[k]['min']:.0f}-{s[k]['max']:.0f}]" for k, _ in cols]
        print(f"{name:<14}" + "".join(f"{c:>24}" for c in cells))
    print(f"datapath counters: {counters}")
    doc = {
        "benchmark": "bpf_redirect",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(args.envoy),
        "config": {
            "runs": n,
            "rr": args.rr,
            "connects": args.connects,
            "bulk_mib": args.bulk_mib,
            "msg_bytes": MSG,
            "envoy_concurrency": 1,
            "server": "python threaded echo",
            "client": "python, one process",
        },
        "summary": summary,
        "runs": results,
        "datapath_counters": counters,
        "elapsed_s": round(time.monotonic() - started, 2),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
