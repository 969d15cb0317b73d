"""xDS under abuse: authenticated Delta clients receive route changes over mTLS while attackers make failed
TLS handshakes (no certificate, or random bytes) and hold idle unauthenticated connections.

One `cilia serve` process (pinned to CPU 0), two phases on it: `baseline` (changes only), then `attack`
(the same changes while the attacker process runs). Reported: per-client change->ACK p50/p99 and the
time until all clients ACKed, for each phase and their ratio; server RSS before, at the end of, and 5 s
after the attack; how many handshakes failed and how many idle connections the server closed.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import ssl
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.common import percentile, rss_mb
from bench.xds_bench import ROUTE_NAME, Server, _expect, stop_workers
from bench.xds_clients import ClientSpec, worker_main
from cilia.identity import ProxyId
from cilia.security.ca import init_ca_dir, write_credentials
from cilia.security.spiffe import proxy_id_uri


def _credentials(ca_dir: Path, out: Path, clients: int) -> None:
    ca = init_ca_dir(ca_dir)
    for i in range(clients):
        leaf = ca.issue(uris=[proxy_id_uri(ca.trust_domain, ProxyId.parse(f"node~bench-{i}"))])
        write_credentials(out / f"bench-{i}", leaf.cert_pem, leaf.key_pem, ca.bundle_pem)


async def _attack(port: int, handshakes: int, idle: int, spread_s: float, conn: Connection) -> None:
    """Hold `idle` silent connections; make `handshakes` failing TLS handshakes, 64 at a time."""
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    for _ in range(idle):
        try:
            held.append(await asyncio.open_connection("127.0.0.1", port))
        except OSError:
            pass
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # an attacker without a client certificate
    failed = 0
    gate = asyncio.Semaphore(64)

    async def one(i: int) -> None:
        nonlocal failed
        async with gate:
            try:
                if i % 2:
                    r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
                    w.write(os.urandom(512))
                    await w.drain()
                    await asyncio.wait_for(r.read(1024), 5)
                else:
                    r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=ctx), 5)
                    w.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                    await asyncio.wait_for(r.read(1024), 5)  # the server's alert: certificate required
                w.close()
            except (OSError, TimeoutError, ssl.SSLError):
                pass
            failed += 1

    async def paced(i: int) -> None:
        await asyncio.sleep(i * spread_s / max(1, handshakes))  # spread over the whole change window
        await one(i)

    t0 = time.monotonic()
    await asyncio.gather(*(paced(i) for i in range(handshakes)))
    conn.send(("attacked", failed, time.monotonic() - t0))
    await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # hold the idle ones until told
    closed = 0
    for r, _ in held:
        try:
            closed += await asyncio.wait_for(r.read(1), 0.05) == b""
        except (TimeoutError, OSError):
            pass
    for _, w in held:
        w.close()
    conn.send(("released", closed))


def _attacker_main(port: int, handshakes: int, idle: int, spread_s: float, conn: Connection) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {1})
    asyncio.run(_attack(port, handshakes, idle, spread_s, conn))


def _changes(server: Server, workers: list[tuple[Any, Any]], first: int, count: int,
             timeout_s: float) -> dict[str, float]:
    fan: list[float] = []
    all_acked: list[float] = []
    missing_total = 0
    for k in range(first, first + count):
        server.trigger(k)
        got, _, missing, _ = _expect(workers, k, timeout_s)
        missing_total += missing
        if got:
            t0 = min(r for _, r, _ in got)
            acks = [a - t0 for _, _, a in got]
            fan += acks
            all_acked.append(max(acks))
        time.sleep(0.3)
    return {"ack_p50_ms": percentile(fan, 50) * 1000, "ack_p99_ms": percentile(fan, 99) * 1000,
            "all_acked_p50_ms": percentile(all_acked, 50) * 1000,
            "all_acked_max_ms": max(all_acked, default=float("nan")) * 1000, "missing": missing_total}


def run(clients: int = 200, changes: int = 10, handshakes: int = 2000, idle: int = 500,
        timeout_s: float = 60.0) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="cilia-abuse-"))
    _credentials(work / "ca", work / "clients", clients)
    cores = os.cpu_count() or 1
    server = Server("cilia", 0 if cores >= 2 else None, ca_dir=work / "ca")
    server.start()
    ctx = mp.get_context("spawn")
    workers: list[tuple[Any, Any]] = []
    out: dict[str, Any] = {"clients": clients, "changes": changes, "handshakes": handshakes, "idle": idle}
    attacker = None
    try:
        assert server.proc is not None
        parent, child = ctx.Pipe()
        spec = ClientSpec(f"127.0.0.1:{server.port}", clients, True, 0, ROUTE_NAME,
                          cpu=1 if cores >= 2 else None, tls_dir=str(work / "clients"))
        p = ctx.Process(target=worker_main, args=(spec, child), daemon=True)
        p.start()
        workers.append((p, parent))
        held, _, _, errors = _expect(workers, 0, timeout_s)
        out["held"] = len(held)
        out["connect_errors"] = errors
        time.sleep(0.5)
        out["baseline"] = _changes(server, workers, 1, changes, timeout_s)
        out["rss_before_attack_mb"] = rss_mb(server.proc.pid)

        spread = changes * 0.4  # about as long as the changes take
        rounds = []
        for round_no in range(2):  # a second round shows whether memory keeps growing
            a_parent, a_child = ctx.Pipe()
            attacker = ctx.Process(target=_attacker_main, args=(server.port, handshakes, idle, spread, a_child),
                                   daemon=True)
            attacker.start()
            time.sleep(1.0)  # the idle connections are open and the handshakes under way
            phase = _changes(server, workers, 1 + changes * (round_no + 1), changes, timeout_s)
            if not a_parent.poll(timeout_s * 2):
                raise TimeoutError("attacker did not finish")
            _, failed, attack_s = a_parent.recv()
            rss_end = rss_mb(server.proc.pid)
            time.sleep(max(0.0, 11.0 - attack_s))  # past the server's 10 s handshake timeout
            a_parent.send(("stop",))
            _, closed = a_parent.recv()
            attacker.join(10)
            time.sleep(5.0)
            rounds.append({**phase, "failed_handshakes": failed, "attack_duration_s": attack_s,
                           "rss_end_of_attack_mb": rss_end, "idle_closed_by_server": closed,
                           "rss_5s_after_mb": rss_mb(server.proc.pid)})
        out["attack"] = rounds[0]
        out["attack_rounds"] = rounds
        out["failed_handshakes"] = rounds[0]["failed_handshakes"]
        out["attack_duration_s"] = rounds[0]["attack_duration_s"]
        out["rss_end_of_attack_mb"] = rounds[0]["rss_end_of_attack_mb"]
        out["idle_closed_by_server"] = rounds[0]["idle_closed_by_server"]
        out["rss_5s_after_mb"] = rounds[0]["rss_5s_after_mb"]
        out["rss_after_second_round_mb"] = rounds[1]["rss_5s_after_mb"]
        out["p99_ratio_attack_vs_baseline"] = out["attack"]["ack_p99_ms"] / max(1e-9, out["baseline"]["ack_p99_ms"])
        out["all_acked_ratio_attack_vs_baseline"] = \
            out["attack"]["all_acked_p50_ms"] / max(1e-9, out["baseline"]["all_acked_p50_ms"])
        metrics = server.metrics()
        out["still_connected"] = sum(1 for line in metrics.splitlines()
                                     if line.startswith("cilia_xds_connected_proxies"))
    finally:
        if attacker is not None and attacker.is_alive():
            attacker.terminate()
        stop_workers(workers)
        server.stop()
    return out


def main() -> None:
    import json

    from bench.common import machine, table, write_result

    r = run()
    phases = [("baseline", r["baseline"])] + [(f"attack {i + 1}", a) for i, a in enumerate(r["attack_rounds"])]
    rows = [[name, p["ack_p50_ms"], p["ack_p99_ms"], p["all_acked_p50_ms"], p["all_acked_max_ms"], p["missing"]]
            for name, p in phases]
    print(table(rows, ["phase", "ack p50 ms", "ack p99 ms", "all ACKed p50 ms", "all ACKed max ms", "missed"]))
    print(f"p99 attack/baseline {r['p99_ratio_attack_vs_baseline']:.2f}; RSS MB before {r['rss_before_attack_mb']:.0f}"
          f", end of attack {r['rss_end_of_attack_mb']:.0f}, 5 s after {r['rss_5s_after_mb']:.0f}; "
          f"{r['failed_handshakes']} failed handshakes in {r['attack_duration_s']:.1f} s; "
          f"{r['idle_closed_by_server']}/{r['idle']} idle connections closed by the server; "
          f"RSS after a second round {r['rss_after_second_round_mb']:.0f} MB")
    path = write_result("abuse", {"machine": machine(), "abuse": r})
    print(json.dumps(r, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
