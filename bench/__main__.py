"""`python -m bench` (or `make bench`): xDS fan-out vs the grpc.aio floor, translation, real Envoy.

Prints tables, writes bench/results/bench-<time>.json with the machine's description. The default size
finishes in well under five minutes; `--clients 100,500,1000,2000` is the full matrix.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import machine, table, write_result

XDS_HEADER = ["server", "xDS", "clients", "held", "connect s", "RSS MB", "CPU ms/change", "main thread ms/change",
              "ack p50 ms", "ack p99 ms", "all ACKed p50 ms", "all ACKed max ms", "trigger->all p50 ms",
              "trigger->all p99 ms", "cilia/floor p99", "cilia/floor CPU", "cilia/gcp p99", "cilia/gcp CPU", "missed"]


def _cpu_per_change(r: dict[str, Any], key: str = "server_cpu_s_changes") -> float:
    return float(r.get(key, float("nan"))) / max(1, r["changes"]) * 1000


def xds_rows(results: list[dict[str, Any]]) -> list[list[Any]]:
    """One row per run; cilia's rows carry its ratios to the floor and go-control-plane of the same size
    and round."""
    by = {(r["server"], r["variant"], r["clients"], r.get("round", 0)): r for r in results}
    nan = float("nan")
    rows = []
    for r in results:
        key = (r["variant"], r["clients"], r.get("round", 0))
        f, g = by.get(("floor", *key)), by.get(("gcp", *key))
        mine = r["server"] == "cilia"
        rows.append([r["server"], r["variant"], r["clients"], r["held"], r["connect_all_s"], r["rss_connected_mb"],
                     _cpu_per_change(r), _cpu_per_change(r, "server_main_thread_cpu_s_changes"),
                     r["client_ack_p50_ms"], r["client_ack_p99_ms"], r["all_acked_p50_ms"],
                     r["all_acked_max_ms"], r["trigger_to_all_acked_p50_ms"],
                     r.get("trigger_to_all_acked_p99_ms", nan),
                     r["client_ack_p99_ms"] / f["client_ack_p99_ms"] if (f and mine) else nan,
                     _cpu_per_change(r) / max(1e-9, _cpu_per_change(f)) if (f and mine) else nan,
                     r["client_ack_p99_ms"] / g["client_ack_p99_ms"] if (g and mine) else nan,
                     _cpu_per_change(r) / max(1e-9, _cpu_per_change(g)) if (g and mine) else nan,
                     r.get("missed_receipts", 0)])
    return rows


def ratio_rows(results: list[dict[str, Any]]) -> list[list[Any]]:
    """Per size, cilia's ratios to each peer round by round (each round ran both back to back) and their
    median: on a noisy machine one run's ratio says little."""
    by = {(r["server"], r["variant"], r["clients"], r.get("round", 0)): r for r in results}
    rows = []
    for variant, clients in dict.fromkeys((r["variant"], r["clients"]) for r in results):
        rounds = sorted({r.get("round", 0) for r in results if (r["variant"], r["clients"]) == (variant, clients)})
        for peer in ("floor", "gcp"):
            cpu, main, p99 = [], [], []
            for k in rounds:
                mine, other = by.get(("cilia", variant, clients, k)), by.get((peer, variant, clients, k))
                if mine and other:
                    cpu.append(_cpu_per_change(mine) / max(1e-9, _cpu_per_change(other)))
                    theirs = _cpu_per_change(other, "server_main_thread_cpu_s_changes")
                    if peer == "floor" and theirs:  # gcp is Go: its main thread is not where its work runs
                        main.append(_cpu_per_change(mine, "server_main_thread_cpu_s_changes") / theirs)
                    p99.append(mine["client_ack_p99_ms"] / other["client_ack_p99_ms"])
            if cpu:
                rows.append([f"cilia/{peer}", variant, clients, len(cpu), " ".join(f"{x:.2f}" for x in cpu),
                             statistics.median(cpu), max(cpu), statistics.median(main) if main else float("nan"),
                             " ".join(f"{x:.2f}" for x in p99), statistics.median(p99)])
    return rows


RATIO_HEADER = ["ratio", "xDS", "clients", "rounds", "CPU per round", "CPU median", "CPU max",
                "main thread CPU median", "p99 per round", "p99 median"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", default="500", help="comma-separated client counts (default 500)")
    p.add_argument("--variants", default="delta,sotw", help="delta,sotw (default both)")
    p.add_argument("--changes", type=int, default=10, help="route changes per xDS case (default 10)")
    p.add_argument("--no-floor", action="store_true", help="skip the grpc.aio floor runs")
    p.add_argument("--servers", default="cilia,floor,gcp",
                   help="xDS servers to compare: cilia, floor (grpc.aio), gcp (go-control-plane); default all")
    p.add_argument("--services", type=int, default=5000, help="translation: Services (default 5000)")
    p.add_argument("--routes", type=int, default=10_000, help="translation: routes (default 10000)")
    p.add_argument("--envoy-routes", type=int, default=1000, help="real Envoy: routes (default 1000)")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: xds,translate,envoy")
    p.add_argument("--profile", type=Path, default=None, help="py-spy the cilia and floor servers into this folder")
    p.add_argument("--repeat", type=int, default=1,
                   help="xDS: run every size this many rounds, the servers' order reversed each round, and print "
                        "cilia's ratios per round with their median (default 1)")
    args = p.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    started = time.monotonic()
    report: dict[str, Any] = {"machine": machine(), "args": vars(args) | {"profile": str(args.profile or "")}}
    print(f"machine: {report['machine']}", flush=True)

    if "xds" not in skip:
        from bench.xds_bench import XdsCase, run_case

        results = []
        for n in [int(x) for x in args.clients.split(",") if x]:
            for variant in [v for v in args.variants.split(",") if v]:
                servers = [x for x in args.servers.split(",") if x and not (args.no_floor and x == "floor")]
                for k in range(max(1, args.repeat)):
                    for server in servers if k % 2 == 0 else servers[::-1]:
                        prof = None
                        if args.profile is not None and server in ("cilia", "floor"):
                            args.profile.mkdir(parents=True, exist_ok=True)
                            prof = args.profile / f"{server}-{variant}-{n}{f'-{k}' if k else ''}.txt"
                        changes = args.changes if n <= 1000 else max(3, args.changes // 2)
                        r = run_case(XdsCase(server, n, variant == "delta", changes), profile=prof)
                        r["round"] = k
                        print(f"  {server} {variant} {n}: all ACKed p50 {r['all_acked_p50_ms']:.0f} ms, "
                              f"RSS {r['rss_connected_mb']:.0f} MB, held {r['held']}", flush=True)
                        results.append(r)
        report["xds"] = results
        print("\nxDS fan-out (one route change -> ACK; times from the first client's receipt of it)")
        print(table(xds_rows(results), XDS_HEADER))
        if args.repeat > 1:
            report["xds_ratios"] = [dict(zip(RATIO_HEADER, row, strict=True)) for row in ratio_rows(results)]
            print("\ncilia's ratios round by round (each round ran the servers back to back)")
            print(table(ratio_rows(results), RATIO_HEADER))

    if "translate" not in skip:
        from bench.translate_bench import run as run_translate

        t = run_translate(args.services, args.routes)
        report["translate"] = t
        print("\nTranslation (CiliumEnvoyConfig routes + Services)")
        print(table([[t["services"], t["routes"], t["parse_s"], t["translate_s"], t["render_s"],
                      t["scratch_total_s"], t["endpoint_edit_ms"], t["route_edit_ms"]]],
                    ["services", "routes", "parse s", "translate s", "render s", "scratch total s",
                     "endpoint edit ms", "route edit ms"]))
        print("\nFrom scratch: the first translation in a fresh process, and a later one of an unseen world, as "
              "`cilia serve` starts (proxyless gRPC targets are built when the first gRPC client connects)")
        print(table([["first (cold)", t["translate_s"], t["render_s"], t["scratch_total_s"]],
                     ["later (warm)", t["warm_translate_s"], t["warm_render_s"], t["warm_scratch_total_s"]],
                     ["+ gRPC targets added", t["grpc_added_translate_s"], t["grpc_added_render_s"],
                      t["grpc_added_translate_s"] + t["grpc_added_render_s"]],
                     ["later, gRPC targets built", t["grpc_scratch_translate_s"], t["grpc_scratch_render_s"],
                      t["grpc_scratch_total_s"]]],
                    ["scratch", "translate s", "render s", "total s"]))
        print(f"\nOne-object edits (translate + render; {t['gateways']} Gateways, {t['httproutes']} HTTPRoutes, "
              f"{t['ingresses']} Ingresses alongside)")
        print(table([[kind, e["translate"], e["render"], e["total"]] for kind, e in t["edits_ms"].items()],
                    ["edited kind", "translate ms", "render ms", "total ms"]))

    if "envoy" not in skip:
        from bench.envoy_bench import run as run_envoy
        from bench.envoy_bench import run_httproutes

        e = run_envoy(args.envoy_routes)
        h = run_httproutes(args.envoy_routes)
        report["envoy"] = e
        report["envoy_httproute"] = h
        print("\nReal Envoy (file write -> route served; HTTPRoute also -> status Accepted for the new generation)")
        print(table([["CEC routes", e["routes"], e["variant"], e["add_routes_served_s"], e["edit_one_route_served_s"],
                      e["edit_one_route_max_s"], "-"],
                     ["HTTPRoutes", h["routes"], h["variant"], h["add_routes_served_s"], h["edit_one_route_served_s"],
                      h["edit_one_route_max_s"], h["edit_one_route_accepted_s"]]],
                    ["routes as", "routes", "xDS", "add all s", "edit one s (median)", "edit one s (max)",
                     "edit one -> Accepted s"]))

    report["elapsed_s"] = time.monotonic() - started
    path = write_result("bench", report)
    print(f"\nwrote {path} ({report['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
