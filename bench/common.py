"""Shared helpers: machine facts, percentiles, process RSS, tables, result files."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    versions: dict[str, str] = {}
    for mod in ("grpc", "google.protobuf"):
        try:
            versions[mod] = str(__import__(mod, fromlist=["__version__"]).__version__)
        except Exception:
            versions[mod] = "?"
    commit = ""
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "host": platform.node(),
            "kernel": platform.release(), "python": sys.version.split()[0], "cpu": cpu,
            "cores": os.cpu_count(), "memory_gb": round(mem_kb / 1024 / 1024, 1), "versions": versions,
            "commit": commit}


def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cpu_seconds(pid: int, stat: str = "") -> float:
    try:
        fields = Path(stat or f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def main_thread_cpu_seconds(pid: int) -> float:
    """CPU of the process's main thread alone (where asyncio, and so all of a server's Python, runs; grpc's
    event-engine threads are the rest)."""
    return cpu_seconds(pid, f"/proc/{pid}/task/{pid}/stat")


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [[str(h) for h in header]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != v:
            return "-"
        return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
    return str(v)


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"{name}-{stamp}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def cec_manifest(listener_port: int, routes: list[dict[str, Any]]) -> str:
    """The benchmarks' CiliumEnvoyConfig: a listener on 127.0.0.1:listener_port whose route table is
    `routes`, and the EDS cluster default/echo (Service echo's endpoints)."""
    resources = [
        {"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", "name": "listener",
         "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener_port}},
         "filter_chains": [{"filters": [{
             "name": "envoy.filters.network.http_connection_manager",
             "typed_config": {
                 "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                          "HttpConnectionManager",
                 "stat_prefix": "bench", "rds": {"route_config_name": "routes"},
                 "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                     "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]},
        {"@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration", "name": "routes",
         "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
        {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "default/echo", "type": "EDS",
         "connect_timeout": "1s"},
    ]
    return json.dumps({"apiVersion": "cilium.io/v2", "kind": "CiliumEnvoyConfig",
                       "metadata": {"name": "bench", "namespace": "default"},
                       "spec": {"backendServices": [{"name": "echo", "namespace": "default"}],
                                "resources": resources}})
