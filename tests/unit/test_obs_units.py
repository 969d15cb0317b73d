"""Pure pieces of observability: Prometheus rendering, the xDS metrics observer, CSDS matchers, Envoy
telemetry options, status views."""

from __future__ import annotations

import gc
import time

import pytest
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.matcher.v3 import node_pb2, string_pb2
from google.protobuf import struct_pb2

from cilia.ir import model as ir
from cilia.obs.metrics import Metrics, parse_prometheus
from cilia.obs.status_view import proxy_detail, status_table
from cilia.render.envoy import render_listener
from cilia.translate.context import TranslateOptions
from cilia.translate.telemetry import COLLECTOR_CLUSTER, apply_telemetry, collector_cluster
from cilia.xds.csds import MatcherError, node_matches, string_matches

LST = "type.googleapis.com/envoy.config.listener.v3.Listener"


def test_xds_observer_counts_and_convergence_histogram() -> None:
    m = Metrics()
    x = m.xds
    x.stream_opened("node", "delta")
    x.stream_opened("sidecar", "sotw")
    x.stream_closed("sidecar", "sotw")
    seq = x.begin_change(time.monotonic() - 0.03)
    x.pushed(LST, "change", 100)
    x.pushed(LST, "initial", 50)
    x.acked("node~a", "delta", LST, time.monotonic(), seq, "v1")
    x.nacked("node~a", "delta", LST, time.monotonic(), seq, "bad")
    x.acked("node~a", "delta", LST, time.monotonic(), 0, "v1")  # not change-driven: no sample
    text = m.prometheus_text()
    got = parse_prometheus(text)
    assert got['cilia_xds_streams{role="node",variant="delta"}'] == 1
    assert got['cilia_xds_streams{role="sidecar",variant="sotw"}'] == 0
    assert got['cilia_xds_pushes_total{reason="change",type="listeners"}'] == 1
    assert got['cilia_xds_push_bytes_total{type="listeners"}'] == 150
    assert got['cilia_xds_acks_total{type="listeners"}'] == 2
    assert got['cilia_xds_nacks_total{type="listeners"}'] == 1
    assert got['cilia_xds_convergence_seconds_count{type="listeners"}'] == 1
    assert got['cilia_xds_convergence_seconds_bucket{type="listeners",le="0.01"}'] == 0
    assert got['cilia_xds_convergence_seconds_bucket{type="listeners",le="0.05"}'] == 1
    assert 0.03 <= got['cilia_xds_convergence_seconds_sum{type="listeners"}'] < 1
    assert "# TYPE cilia_xds_convergence_seconds histogram" in text
    assert "# TYPE cilia_xds_pushes_total counter" in text


def test_per_batch_metrics_and_views() -> None:
    m = Metrics()
    m.source_event(["Service", "EndpointSlice"])
    m.watch_restarted("Service", "expired")
    m.set_object_counts({"Service": 3})
    m.observe(proxies=lambda: {("node", "delta"): 2}, snapshot=lambda: {"clusters": (4, 1234)},
              issues=lambda: {"error": 1})
    got = parse_prometheus(m.prometheus_text())
    assert got['cilia_source_events_total{kind="Service"}'] == 1
    assert got['cilia_kubernetes_watch_restarts_total{kind="Service",reason="expired"}'] == 1
    assert got['cilia_input_objects{kind="Service"}'] == 3
    assert got['cilia_xds_connected_proxies{role="node",variant="delta"}'] == 2
    assert got['cilia_snapshot_resources{type="clusters"}'] == 4
    assert got['cilia_snapshot_bytes{type="clusters"}'] == 1234
    assert got['cilia_config_issues{severity="error"}'] == 1


def test_collector_metrics_count_and_time_full_collections() -> None:
    m = Metrics()
    before = parse_prometheus(m.prometheus_text())
    gc.collect()  # a full collection: generation 2
    got = parse_prometheus(m.prometheus_text())
    full = '{generation="2"}'
    assert got["cilia_gc_collections_total" + full] >= before["cilia_gc_collections_total" + full] + 1
    assert got["cilia_gc_pause_seconds_total" + full] > before["cilia_gc_pause_seconds_total" + full]
    assert {f'cilia_gc_collections_total{{generation="{g}"}}' for g in range(3)} <= set(got)


def test_string_and_node_matchers() -> None:
    assert string_matches(string_pb2.StringMatcher(prefix="node~"), "node~a")
    assert not string_matches(string_pb2.StringMatcher(exact="node~a"), "node~b")
    assert string_matches(string_pb2.StringMatcher(exact="NODE~A", ignore_case=True), "node~a")
    assert string_matches(string_pb2.StringMatcher(safe_regex={"regex": "sidecar~.*/web-.*"}), "sidecar~ns/web-1")
    md = struct_pb2.Struct()
    md.update({"pod": {"ip": "127.1.0.5"}})
    m = node_pb2.NodeMatcher(node_id={"prefix": "sidecar~"})
    m.node_metadatas.add(path=[{"key": "pod"}, {"key": "ip"}], value={"string_match": {"exact": "127.1.0.5"}})
    assert node_matches(m, "sidecar~ns/p", md)
    assert not node_matches(m, "node~n", md)
    other = struct_pb2.Struct()
    other.update({"pod": {"ip": "127.1.0.6"}})
    assert not node_matches(m, "sidecar~ns/p", other)
    with pytest.raises(MatcherError, match="safe_regex"):
        string_matches(string_pb2.StringMatcher(safe_regex={"regex": "("}), "x")


def _bundle() -> ir.Bundle:
    li = ir.Listener("ns/gw/http", "0.0.0.0", 8080, (ir.FilterChain("ns/gw/http", ir.HttpApp("ns/gw/routes")),))
    tcp = ir.Listener("ns/gw/tcp", "0.0.0.0", 9000, (ir.FilterChain("tcp", ir.TcpApp((ir.Backend("c"),))),))
    return ir.Bundle("k", ir.ProxyScope(frozenset({"gateway"})), listeners=(li, tcp))


def test_envoy_telemetry_pass() -> None:
    model = ir.MeshIR((_bundle(),))
    assert apply_telemetry(model, TranslateOptions()) is model
    out = apply_telemetry(model, TranslateOptions(envoy_otel_collector="127.0.0.1:4317",
                                                  envoy_listener_stat_prefix=True, envoy_tracing_sampling=10))
    b = out.bundles[0]
    assert [c.name for c in b.clusters] == [COLLECTOR_CLUSTER]
    assert b.clusters[0].discovery == "STATIC" and b.clusters[0].protocol == "http2"
    http, tcp = b.listeners
    assert http.stat_prefix == "ns_gw_http" and tcp.stat_prefix == "ns_gw_tcp"
    rendered = render_listener(http)
    assert rendered.stat_prefix == "ns_gw_http"
    hcm = hcm_pb2.HttpConnectionManager()
    rendered.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    assert hcm.tracing.provider.name == "envoy.tracers.opentelemetry"
    assert hcm.tracing.random_sampling.value == 10
    assert len(hcm.access_log) == 1  # access logs stay on
    assert collector_cluster("otel.monitoring:4317").discovery == "STRICT_DNS"
    with pytest.raises(ValueError, match="HOST:PORT"):
        collector_cluster("nope")


def test_status_views() -> None:
    proxies = {"node~a": {"connected": True, "streams": 1, "variant": "delta", "connected_since": 1.0,
                          "user_agent": "envoy/1.40", "types": {
                              "listeners": {"state": "NACKED", "last_nack": "bad\nfilter chain " + "x" * 200,
                                            "last_nack_version": "v2", "version_sent": "v2", "acks": 1, "nacks": 1,
                                            "rejected": {"/a/l": "route: unknown\n cluster 'x'"}},
                              "routes": {"state": "SYNCED", "version_sent": "r1", "version_acked": "r1"}}}}
    table = status_table(proxies)
    row = table.splitlines()[1]
    assert row.split()[:6] == ["node~a", "node", "yes", "delta", "NACKED", "SYNCED"]
    assert "listeners: bad filter chain" in row and row.endswith("...")
    detail = proxy_detail("node~a", proxies["node~a"])
    assert "Last NACK of listeners (version v2, rejected, still in force)" in detail
    assert "  filter chain" in detail
    assert "Rejected listeners (still in force):\n  /a/l: route: unknown cluster 'x'" in detail
    assert "(no proxies have connected)" in status_table({})


def test_response_memo_matches_wire_helpers() -> None:
    from cilia.render.resources import CLUSTER, Resource, delta_response, sotw_response
    from cilia.xds.stream import ResponseMemo

    a, b = Resource(CLUSTER, "a", b"\x0a\x01a"), Resource(CLUSTER, "b", b"\x0a\x01b")
    memo = ResponseMemo(limit=2)
    for nonce in ("1", "2", "3"):
        assert memo.delta("v1", [a, b], CLUSTER, ["gone"], nonce) == delta_response("v1", [a, b], CLUSTER,
                                                                                    ["gone"], nonce)
        assert memo.sotw("v1", [a], CLUSTER, nonce) == sotw_response("v1", [a], CLUSTER, nonce)
        assert memo.delta("v2", [], CLUSTER, [], nonce) == delta_response("v2", [], CLUSTER, [], nonce)


def test_minute_histogram_keeps_the_last_hour_per_minute() -> None:
    from cilia.obs.metrics import MinuteHistogram

    h = MinuteHistogram()
    base = 600_000.0  # a monotonic time at the start of a minute
    for v in (0.002, 0.004, 0.03, 0.2):  # minute 0
        h.observe(base + 1, v)
    for _ in range(99):
        h.observe(base + 60 * 5 + 1, 0.007)  # five minutes later: 99 fast ACKs and one slow
    h.observe(base + 60 * 5 + 2, 3.0)
    series = h.series(now=base + 60 * 5 + 30)
    assert [(s["minutes_ago"], s["count"]) for s in series] == [(5, 4), (0, 100)]
    old, new = series
    assert old["max"] == 0.2 and 0.0025 <= old["p50"] <= 0.005
    assert 0.005 <= new["p50"] <= 0.01 and new["p99"] <= 0.01 and new["max"] == 3.0
    # An hour on, the ring slot of minute 0 is reused and the old samples are gone.
    h.observe(base + 3600 + 1, 0.05)
    later = h.series(now=base + 3600 + 2)
    assert [(s["minutes_ago"], s["count"]) for s in later] == [(55, 100), (0, 1)]
    assert h.series(now=base + 3 * 3600) == []


def test_acks_of_changes_feed_the_minute_histogram() -> None:
    m = Metrics()
    seq = m.xds.begin_change(time.monotonic() - 0.02)
    m.xds.acked("node~a", "delta", LST, time.monotonic(), seq, "v1")
    m.xds.acked("node~a", "delta", LST, time.monotonic(), 0, "v1")  # not change-driven
    m.xds.nacked("node~a", "delta", LST, time.monotonic(), seq, "bad")  # a NACK is no convergence
    (minute,) = m.xds.recent.series()
    assert minute["count"] == 1 and 0.02 <= minute["max"] < 1


def test_histograms_folded_in_bulk_count_as_sample_by_sample() -> None:
    """ACKs append their samples and a read folds them in (sorted, a bisect per bound): the buckets, sums,
    extremes and per-minute slots are those of observing each sample as it came, bounds included."""
    import random

    from cilia.obs.metrics import SECONDS_BUCKETS, LocalHistogram, MinuteHistogram

    rng = random.Random(7)
    values = [rng.choice(SECONDS_BUCKETS) if rng.random() < 0.3 else rng.uniform(0, 40) for _ in range(3000)]
    one, bulk = LocalHistogram("h", "", "s", "type"), LocalHistogram("h", "", "s", "type")
    m_one, m_bulk = MinuteHistogram(), MinuteHistogram()
    base = 600_000.0
    for i, v in enumerate(values):
        key = ("routes", "clusters")[i % 2]
        one.observe(key, v)
        bulk.observe_later(key, v)
        now = base + i * 0.05  # 150 s: three minutes
        m_one.observe(now, v)
        m_bulk.observe_later(now, v)
        if i == 1000:
            assert m_bulk.series(now=now) == m_one.series(now=now)  # a read in the middle folds what is there
    a, b = one.metric(), bulk.metric()
    assert a is not None and b is not None
    for pa, pb in zip(a.data.data_points, b.data.data_points, strict=True):
        assert (pa.attributes, pa.count, pa.bucket_counts, pa.min, pa.max) == \
            (pb.attributes, pb.count, pb.bucket_counts, pb.min, pb.max)
        assert abs(pa.sum - pb.sum) < 1e-6
    now = base + 150
    assert m_bulk.series(now=now) == m_one.series(now=now)
    assert [s["count"] for s in m_bulk.series(now=now)] == [1200, 1200, 600]
