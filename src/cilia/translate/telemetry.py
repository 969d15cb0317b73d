"""Envoy telemetry the control plane sets on every HTTP listener it generates: OpenTelemetry tracing
towards a collector (`--envoy-otel-collector`) and a per-listener stats prefix. Access logs (stdout,
JSON) are on by default in `HttpApp`/`TcpApp`. Runs after the translators, on their IR; user-written
Envoy resources (CiliumEnvoyConfig) are left as written.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re

from cilia.ir import model as ir
from cilia.translate.context import TranslateOptions

COLLECTOR_CLUSTER = "cilia-otel-collector"


def collector_cluster(address: str) -> ir.Cluster:
    """The cluster Envoy's tracer sends OTLP/gRPC to: STATIC for an IP, STRICT_DNS for a name."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"envoy OpenTelemetry collector: expected HOST:PORT, got {address!r}")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return ir.Cluster(COLLECTOR_CLUSTER, discovery="STRICT_DNS", protocol="http2", dns_name=host,
                          dns_port=int(port), connect_timeout_ms=1000)
    return ir.Cluster(COLLECTOR_CLUSTER, discovery="STATIC", protocol="http2",
                      static_endpoints=(ir.Endpoint(host, int(port)),), connect_timeout_ms=1000)


def listener_stat_prefix(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def _chain(fc: ir.FilterChain, tracing: ir.Tracing | None) -> ir.FilterChain:
    if tracing is None or not isinstance(fc.app, ir.HttpApp) or fc.app.tracing is not None:
        return fc
    return dataclasses.replace(fc, app=dataclasses.replace(fc.app, tracing=tracing))


def _listener(li: ir.Listener, tracing: ir.Tracing | None, stat_prefix: bool) -> ir.Listener:
    chains = tuple(_chain(fc, tracing) for fc in li.filter_chains)
    default = _chain(li.default_chain, tracing) if li.default_chain is not None else None
    prefix = li.stat_prefix or (listener_stat_prefix(li.name) if stat_prefix else "")
    if chains == li.filter_chains and default == li.default_chain and prefix == li.stat_prefix:
        return li
    return dataclasses.replace(li, filter_chains=chains, default_chain=default, stat_prefix=prefix)


def apply_telemetry(model: ir.MeshIR, opts: TranslateOptions) -> ir.MeshIR:
    """`model` with tracing and stats prefixes set as `opts` asks (unchanged when it asks nothing)."""
    if not opts.envoy_otel_collector and not opts.envoy_listener_stat_prefix:
        return model
    tracing = None
    cluster = None
    if opts.envoy_otel_collector:
        cluster = collector_cluster(opts.envoy_otel_collector)
        tracing = ir.Tracing(COLLECTOR_CLUSTER, opts.envoy_tracing_service_name, opts.envoy_tracing_sampling)
    bundles = []
    for b in model.bundles:
        listeners = tuple(_listener(li, tracing, opts.envoy_listener_stat_prefix) for li in b.listeners)
        traced = cluster is not None and any(
            isinstance(fc.app, ir.HttpApp) for li in listeners
            for fc in (*li.filter_chains, *((li.default_chain,) if li.default_chain else ())))
        clusters = (*b.clusters, cluster) if traced and cluster is not None else b.clusters
        if listeners != b.listeners or clusters != b.clusters:
            b = dataclasses.replace(b, listeners=listeners, clusters=clusters)
        bundles.append(b)
    return dataclasses.replace(model, bundles=tuple(bundles))


__all__ = ["COLLECTOR_CLUSTER", "apply_telemetry", "collector_cluster"]
