"""Translation benchmark: N Services (+ EndpointSlices) and N routes (CiliumEnvoyConfig route tables) from
scratch, then one-object edits (an endpoint, a route) through translate + render with the previous
result and render cache, as the control plane does."""

from __future__ import annotations

import gc
import json
import time
from dataclasses import replace
from typing import Any

from cilia.app import GC_THRESHOLDS, ServeOptions, collector_paused, starting_translate_options
from cilia.k8s import kinds as _kinds  # noqa: F401 - registers the kinds
from cilia.k8s.manifest import parse_text
from cilia.k8s.store import Store
from cilia.render.world import RenderedWorld, ResourceCache, render_world
from cilia.translate import TranslationResult, translate
from cilia.translate.context import TranslateOptions

ROUTES_PER_CEC = 100


def _service(i: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"svc-{i}", "namespace": "bench"},
            "spec": {"clusterIP": f"127.96.{i // 250}.{i % 250 + 1}", "ports": [{"name": "http", "port": 80}]}}


def _slice(i: int, host_octet: int = 1) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"svc-{i}-1", "namespace": "bench",
                         "labels": {"kubernetes.io/service-name": f"svc-{i}"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": [f"127.1.{i // 250}.{(i % 250) + host_octet}"],
                           "conditions": {"ready": True}}]}


def _cec(c: int, services: int, variant: int = 0) -> dict[str, Any]:
    routes = []
    backends = sorted({(c * ROUTES_PER_CEC + r) % services for r in range(ROUTES_PER_CEC)})
    for r in range(ROUTES_PER_CEC):
        svc = (c * ROUTES_PER_CEC + r) % services
        routes.append({"match": {"prefix": f"/c{c}/r{r}" + (f"/v{variant}" if variant and r == 0 else "")},
                       "route": {"cluster": f"bench/svc-{svc}"}})
    resources = [
        {"@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration", "name": "routes",
         "virtual_hosts": [{"name": "all", "domains": [f"c{c}.example"], "routes": routes}]},
        *[{"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": f"bench/svc-{s}",
           "type": "EDS", "connect_timeout": "1s"} for s in backends],
    ]
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumEnvoyConfig",
            "metadata": {"name": f"cec-{c}", "namespace": "bench"},
            "spec": {"backendServices": [{"name": f"svc-{s}", "namespace": "bench"} for s in backends],
                     "resources": resources}}


GATEWAYS = 20
ROUTES_PER_GATEWAY = 50
INGRESSES = 200


def _gateway_objs(services: int) -> list[dict[str, Any]]:
    """GatewayClass + Gateways, one port each (so each is its own listener)."""
    out: list[dict[str, Any]] = [{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                                  "metadata": {"name": "cilia"},
                                  "spec": {"controllerName": "cilia.io/gateway-controller"}}]
    out += [{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
             "metadata": {"name": f"gw-{g}", "namespace": "bench"},
             "spec": {"gatewayClassName": "cilia", "listeners": [{"name": "http", "port": 20000 + g,
                                                                  "protocol": "HTTP"}]}}
            for g in range(GATEWAYS)]
    return out


def _httproute(g: int, k: int, services: int, variant: int = 0) -> dict[str, Any]:
    svc = (g * ROUTES_PER_GATEWAY + k) % services
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": f"hr-{g}-{k}", "namespace": "bench"},
            "spec": {"parentRefs": [{"name": f"gw-{g}"}], "hostnames": [f"h{k}.gw{g}.example"],
                     "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": f"/r{k}/v{variant}"}}],
                                "backendRefs": [{"name": f"svc-{svc}", "port": 80}]}]}}


def _ingress(i: int, services: int, variant: int = 0) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": f"ing-{i}", "namespace": "bench"},
            "spec": {"ingressClassName": "cilia",
                     "rules": [{"host": f"i{i}.example", "http": {"paths": [
                         {"path": f"/p{variant}", "pathType": "Prefix",
                          "backend": {"service": {"name": f"svc-{i % services}", "port": {"number": 80}}}}]}}]}}


def _docs(objs: list[dict[str, Any]]) -> str:
    return "\n---\n".join(json.dumps(o) for o in objs) + "\n"


def _in_namespace(text: str, ns: str) -> str:
    """The bench objects' text with namespace `bench` (and names qualified by it) renamed to `ns`."""
    return text if ns == "bench" else text.replace('"bench"', f'"{ns}"').replace('"bench/', f'"{ns}/')


def _load(store: Store, services: int, cecs: int, ns: str = "bench") -> None:
    def put(source: str, objs: list[dict[str, Any]]) -> None:
        store.replace_source(source, parse_text(_in_namespace(_docs(objs), ns), source))

    put("slices", [_slice(i) for i in range(1, services)])
    put("slice-0", [_slice(0)])
    put("cecs", [_cec(c, services) for c in range(1, cecs)])
    put("cec-0", [_cec(0, services)])
    put("svc-0", [_service(0)])
    put("services", [_service(i) for i in range(1, services)])
    put("gateways", _gateway_objs(services))
    put("httproutes", [_httproute(g, k, services) for g in range(GATEWAYS) for k in range(ROUTES_PER_GATEWAY)
                       if (g, k) != (0, 0)])
    put("hr-0", [_httproute(0, 0, services)])
    put("ingresses", [_ingress(i, services) for i in range(1, INGRESSES)])
    put("ing-0", [_ingress(0, services)])


def _timed_build(store: Store, opts: TranslateOptions, previous: TranslationResult | None, cache: ResourceCache,
                 generation: int) -> tuple[TranslationResult, RenderedWorld, float, float]:
    """Translate (from `previous`) and render as `cilia serve` does; the two stages' seconds."""
    t0 = time.perf_counter()
    with collector_paused(freeze=True):
        result = translate(store.snapshot(), opts, previous)
    t1 = time.perf_counter()
    with collector_paused(freeze=True):
        world = render_world(result.ir, cache, generation)
    return result, world, t1 - t0, time.perf_counter() - t1


def _warm_scratch(services: int, cecs: int, opts: TranslateOptions, ns: str) -> tuple[float, float]:
    """Translate + render from scratch in this process again (types loaded, code warm), of a world it has
    not seen: the same objects in another namespace, so no content-keyed memo holds any of it."""
    store = Store()
    _load(store, services, cecs, ns=ns)
    gc.collect()
    return _timed_build(store, opts, None, ResourceCache(), 1)[2:]


def run(services: int = 5000, routes: int = 10_000) -> dict[str, Any]:
    """`translate_s`/`render_s`: the first translation in this (fresh) process; `warm_*`: a later one.
    The collector is set as `cilia serve` sets it: its thresholds from the start, paused while a
    translation or render runs and what is alive frozen when each ends (collector_paused(freeze=True)),
    and what the process holds once it has started (the first world) frozen before the later
    translation."""
    before = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        return {**_run(services, routes), "gc": {"thresholds": list(GC_THRESHOLDS),
                                                 "frozen_before_warm_run": True,
                                                 "paused_during_translate_and_render": True,
                                                 "frozen_after_each_stage": True}}
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def _run(services: int, routes: int) -> dict[str, Any]:
    cecs = max(1, routes // ROUTES_PER_CEC)
    store = Store()
    t = time.perf_counter()
    _load(store, services, cecs)
    parse_s = time.perf_counter() - t
    opts = starting_translate_options(ServeOptions())  # as `cilia serve` starts: no gRPC targets yet
    with_grpc = replace(opts, grpc_targets=True)
    cache = ResourceCache()
    gc.collect()

    result, world, translate_s, render_s = _timed_build(store, opts, None, cache, 1)
    issues = len(result.issues) + len(world.issues)

    # The first proxyless gRPC client connects: its targets are added to the last translation. The edits
    # below are then measured with them built (a Service edit changes its targets too).
    result, world, *grpc_added = _timed_build(store, with_grpc, result, cache, 2)
    opts = with_grpc

    def edit(source: str, text: str) -> tuple[float, float]:
        nonlocal result, world
        store.replace_source(source, parse_text(text, source))
        result, world, translate_s, render_s = _timed_build(store, opts, result, cache, 2)
        return translate_s, render_s

    ep = [edit("slice-0", _docs([_slice(0, host_octet=2 + k % 2)])) for k in range(5)]
    rt = [edit("cec-0", _docs([_cec(0, services, variant=1 + k % 2)])) for k in range(3)]
    edits = {"endpointslice": ep, "cec": rt}
    edits["httproute"] = [edit("hr-0", _docs([_httproute(0, 0, services, variant=1 + k % 2)])) for k in range(3)]
    edits["ingress"] = [edit("ing-0", _docs([_ingress(0, services, variant=1 + k % 2)])) for k in range(3)]
    svc_variants = [_service(0), {**_service(0), "metadata": {**_service(0)["metadata"], "labels": {"v": "1"}}}]
    edits["service"] = [edit("svc-0", _docs([svc_variants[1 - k % 2]])) for k in range(3)]
    gc.collect()
    gc.freeze()  # as `cilia serve` does once started
    warm_translate_s, warm_render_s = _warm_scratch(services, cecs, starting_translate_options(ServeOptions()),
                                                    "bench-warm")
    grpc_translate_s, grpc_render_s = _warm_scratch(services, cecs, with_grpc, "bench-grpc")
    ep_best = min(ep, key=sum)
    rt_best = min(rt, key=sum)
    per_kind = {kind: min(runs, key=sum) for kind, runs in edits.items()}
    return {"services": services, "routes": cecs * ROUTES_PER_CEC, "cecs": cecs, "issues": issues,
            "parse_s": parse_s, "translate_s": translate_s, "render_s": render_s,
            "scratch_total_s": translate_s + render_s,
            "warm_translate_s": warm_translate_s, "warm_render_s": warm_render_s,
            "warm_scratch_total_s": warm_translate_s + warm_render_s,
            "grpc_added_translate_s": grpc_added[0], "grpc_added_render_s": grpc_added[1],
            "grpc_scratch_translate_s": grpc_translate_s, "grpc_scratch_render_s": grpc_render_s,
            "grpc_scratch_total_s": grpc_translate_s + grpc_render_s,
            "endpoint_edit_ms": sum(ep_best) * 1000, "endpoint_edit_translate_ms": ep_best[0] * 1000,
            "route_edit_ms": sum(rt_best) * 1000, "route_edit_translate_ms": rt_best[0] * 1000,
            "route_edit_render_ms": rt_best[1] * 1000,
            "gateways": GATEWAYS, "httproutes": GATEWAYS * ROUTES_PER_GATEWAY, "ingresses": INGRESSES,
            "edits_ms": {kind: {"translate": best[0] * 1000, "render": best[1] * 1000,
                                "total": sum(best) * 1000} for kind, best in per_kind.items()}}
