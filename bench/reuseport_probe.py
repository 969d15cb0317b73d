"""Does serving xDS from several processes pay on this machine? `python -m bench.reuseport_probe`

W floor processes (bench/floor.py: pre-serialised responses, no config model, what a worker fed
ready-made snapshots would do) share one port with SO_REUSEPORT; the kernel spreads the clients'
connections over them. Each layout takes the same route changes from the same clients (pinned to the
last CPU, as in `python -m bench`); reported: all-ACKed per change and the CPU of all server processes
together. Layouts: one process on CPU 0 (today's cilia), two on CPU 0, two on CPUs 0 and the clients'.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time
from typing import Any

import grpc

from bench.common import cpu_seconds, percentile, rss_mb, table, write_result
from bench.xds_bench import ROUTE_NAME, _env, _expect, _pin, free_port, stop_workers
from bench.xds_clients import ClientSpec, worker_main


def _start(cpus: list[int], port: int) -> list[tuple[subprocess.Popen[bytes], int]]:
    procs = []
    for cpu in cpus:
        control = free_port()
        p = subprocess.Popen([sys.executable, "-m", "bench.floor", str(port), ROUTE_NAME, str(control)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=_env(), preexec_fn=_pin(cpu))
        procs.append((p, control))
    for p, control in procs:
        deadline = time.monotonic() + 30
        while True:
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("floor worker did not start")
            try:
                with socket.create_connection(("127.0.0.1", control), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
    return procs


def run_layout(cpus: list[int], clients: int, changes: int, client_cpu: int) -> dict[str, Any]:
    port = free_port()
    procs = _start(cpus, port)
    ctx = mp.get_context("spawn")
    workers: list[tuple[Any, Any]] = []
    nproc = max(2, -(-clients // 250))
    try:
        base = 0
        for i in range(nproc):
            n = clients // nproc + (1 if i < clients % nproc else 0)
            parent, child = ctx.Pipe()
            p = ctx.Process(target=worker_main, daemon=True, args=(
                ClientSpec(f"127.0.0.1:{port}", n, True, base, ROUTE_NAME, cpu=client_cpu), child))
            p.start()
            workers.append((p, parent))
            base += n
        held, _, _, _ = _expect(workers, 0, 60)
        time.sleep(0.5)
        cpu0 = sum(cpu_seconds(p.pid) for p, _ in procs)
        all_acked: list[float] = []
        missed = 0
        for k in range(1, changes + 1):
            for _, control in procs:
                with grpc.insecure_channel(f"127.0.0.1:{control}") as ch:
                    ch.unary_unary("/bench.Floor/Push")(str(k).encode(), timeout=10)
            got, _, missing, _ = _expect(workers, k, 60)
            missed += missing
            if got:
                t0 = min(r for _, r, _ in got)
                all_acked.append(max(a for _, _, a in got) - t0)
            time.sleep(0.3)
        cpu = sum(cpu_seconds(p.pid) for p, _ in procs) - cpu0
        return {"layout": "+".join(f"cpu{c}" for c in cpus), "processes": len(cpus), "clients": clients,
                "held": len(held), "cpu_ms_per_change": cpu / changes * 1000,
                "all_acked_p50_ms": percentile(all_acked, 50) * 1000,
                "all_acked_max_ms": max(all_acked, default=float("nan")) * 1000, "missed": missed,
                "rss_mb": sum(rss_mb(p.pid) for p, _ in procs)}
    finally:
        stop_workers(workers)
        for server, _ in procs:
            server.terminate()
            server.wait(15)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.reuseport_probe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--changes", type=int, default=10)
    args = ap.parse_args(argv)
    last = (os.cpu_count() or 2) - 1
    layouts = [[0], [0, 0], [0, last]] if last else [[0], [0, 0]]
    rows = [run_layout(cpus, args.clients, args.changes, last) for cpus in layouts]
    header = ["layout", "processes", "clients", "held", "cpu_ms_per_change", "all_acked_p50_ms",
              "all_acked_max_ms", "missed", "rss_mb"]
    print(table([[r[h] for h in header] for r in rows], header))
    print(f"wrote {write_result('reuseport', {'rows': rows, 'args': vars(args)})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
