"""Real-Envoy route propagation: N routes (CiliumEnvoyConfig routes, or HTTPRoutes on a Gateway) added
to, and one edited in, a running `cilia serve`, timed from the file write until a real Envoy serves the
new route (HTTP 200 from the backend through it) and, for HTTPRoutes, until the edited route's status
says Accepted for its new generation."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from bench.common import ROOT, cec_manifest

sys.path.insert(0, str(ROOT / "tests"))

from support.backends import echo_backends
from support.controlplane import CiliaProcess, ManifestDir
from support.envoy import Envoy
from support.http import get
from support.manifests import docs, endpoint_slice, service
from support.net import free_port


def cec(port: int, routes: int, edited: int = -1) -> str:
    return cec_manifest(port, [{"match": {"path": f"/r{i}" + ("-edited" if i == edited else "")},
                                "route": {"cluster": "default/echo"}} for i in range(routes)])


def gateway(port: int) -> str:
    return "\n---\n".join(json.dumps(d) for d in [
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": "cilia"},
         "spec": {"controllerName": "cilia.io/gateway-controller"}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
         "metadata": {"name": "gw", "namespace": "default"},
         "spec": {"gatewayClassName": "cilia", "addresses": [{"type": "IPAddress", "value": "127.0.0.1"}],
                  "listeners": [{"name": "http", "port": port, "protocol": "HTTP"}]}}])


def httproutes(routes: int, edited: int = -1, generation: int = 1) -> str:
    """One HTTPRoute per path; the edited one gets a new path and a new generation."""
    out = []
    for i in range(routes):
        gen = generation if i == edited else 1
        path = f"/r{i}" + (f"-edited{generation}" if i == edited else "")
        out.append(json.dumps({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": f"r{i}", "namespace": "default", "generation": gen},
            "spec": {"parentRefs": [{"name": "gw"}], "rules": [{
                "matches": [{"path": {"type": "Exact", "value": path}}],
                "backendRefs": [{"name": "echo", "port": 80}]}]}}))
    return "\n---\n".join(out)


def _accepted(cp: CiliaProcess, name: str, generation: int) -> bool:
    for st in cp.admin_json("/debug/status"):
        if st["kind"] == "HTTPRoute" and st["metadata"]["name"] == name:
            return all(c["type"] != "Accepted" or (c["status"] == "True" and c["observedGeneration"] == generation)
                       for p in st["status"].get("parents", []) for c in p["conditions"])
    return False


def _served(url: str) -> bool:
    try:
        return get(url, timeout=1).status == 200
    except OSError:
        return False


def _wait_served(url: str, timeout_s: float = 15.0) -> float:
    t0 = time.monotonic()
    for _ in range(100_000):
        if _served(url):
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout_s:
            break
        time.sleep(0.005)
    return float("nan")


def run_httproutes(routes: int = 1000, delta: bool = True) -> dict[str, Any]:
    md = ManifestDir()
    port = free_port()
    out: dict[str, Any] = {"routes": routes, "variant": "delta" if delta else "sotw", "kind": "HTTPRoute"}
    with echo_backends(("echo", "127.0.0.2")) as (echo,):
        md.write("services.yaml", docs(service("echo", 80, vip="127.96.0.10"),
                                       endpoint_slice("echo", [(echo.host, echo.port)])))
        md.write("gateway.yaml", gateway(port))
        md.write("routes.yaml", httproutes(1))
        cp = CiliaProcess([str(md.path)], extra=["--debounce-quiet-ms", "20", "--debounce-max-ms", "200"])
        cp.start()
        envoy = Envoy("gateway~default/gw", cp.xds_port, delta=delta).start()
        try:
            out["first_route_served_s"] = _wait_served(f"http://127.0.0.1:{port}/r0", 20)
            t = time.monotonic()
            md.write("routes.yaml", httproutes(routes))
            last = _wait_served(f"http://127.0.0.1:{port}/r{routes - 1}")
            out["add_routes_served_s"] = last if last != last else time.monotonic() - t
            served, accepted = [], []
            for k in range(3):
                target, gen = routes // 2 + k, 2 + k
                t = time.monotonic()
                md.write("routes.yaml", httproutes(routes, edited=target, generation=gen))
                took = _wait_served(f"http://127.0.0.1:{port}/r{target}-edited{gen}")
                served.append(took if took != took else time.monotonic() - t)
                for _ in range(2000):
                    if _accepted(cp, f"r{target}", gen) or time.monotonic() - t > 15:
                        break
                    time.sleep(0.005)
                accepted.append(time.monotonic() - t)
            out["edit_one_route_served_s"] = sorted(served)[1]
            out["edit_one_route_max_s"] = max(served)
            out["edit_one_route_accepted_s"] = sorted(accepted)[1]
            out["cilia_rss_mb"] = _rss(cp)
        finally:
            envoy.stop()
            cp.stop()
            cp.log.unlink(missing_ok=True)
            md.cleanup()
    return out


def run(routes: int = 1000, delta: bool = True) -> dict[str, Any]:
    md = ManifestDir()
    port = free_port()
    out: dict[str, Any] = {"routes": routes, "variant": "delta" if delta else "sotw"}
    with echo_backends(("echo", "127.0.0.2")) as (echo,):
        md.write("services.yaml", docs(service("echo", 80, vip="127.96.0.10"),
                                       endpoint_slice("echo", [(echo.host, echo.port)])))
        md.write("cec.yaml", cec(port, 1))
        # The later flags win over CiliaProcess's own debounce defaults.
        cp = CiliaProcess([str(md.path)], extra=["--debounce-quiet-ms", "20", "--debounce-max-ms", "200"])
        cp.start()
        envoy = Envoy("node~bench", cp.xds_port, delta=delta).start()
        try:
            out["first_route_served_s"] = _wait_served(f"http://127.0.0.1:{port}/r0", 20)
            t = time.monotonic()
            md.write("cec.yaml", cec(port, routes))
            last = _wait_served(f"http://127.0.0.1:{port}/r{routes - 1}")
            out["add_routes_served_s"] = last if last != last else time.monotonic() - t
            edits = []
            for k in range(3):
                target = routes // 2 + k
                t = time.monotonic()
                md.write("cec.yaml", cec(port, routes, edited=target))
                took = _wait_served(f"http://127.0.0.1:{port}/r{target}-edited")
                edits.append(took if took != took else time.monotonic() - t)
            out["edit_one_route_served_s"] = sorted(edits)[len(edits) // 2]
            out["edit_one_route_max_s"] = max(edits)
            proxies = cp.admin_json("/debug/proxies")
            out["envoy_state"] = {t: v["state"] for t, v in proxies["node~bench"]["types"].items()}
            out["cilia_rss_mb"] = _rss(cp)
        finally:
            envoy.stop()
            cp.stop()
            cp.log.unlink(missing_ok=True)
            md.cleanup()
    return out


def _rss(cp: CiliaProcess) -> float:
    from bench.common import rss_mb

    return rss_mb(cp.proc.pid) if cp.proc is not None else float("nan")


__all__ = ["run"]
