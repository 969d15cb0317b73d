"""Change-batch traces (and metrics) exported over OTLP/gRPC to an in-process receiver, through a real Envoy."""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from test_cec_envoy import cec, route

from support.backends import echo_backends
from support.controlplane import ControlPlaneThread, ManifestDir
from support.envoy import Envoy
from support.http import get
from support.manifests import docs, endpoint_slice, service
from support.net import free_port

pytestmark = pytest.mark.e2e


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans: list[trace_pb2.Span] = []
        self.metrics: dict[str, Any] = {}
        self.lock = threading.Lock()

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,
               context: Any) -> trace_service_pb2.ExportTraceServiceResponse:
        with self.lock:
            for rs in request.resource_spans:
                for ss in rs.scope_spans:
                    self.spans.extend(ss.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def metric_names(self) -> set[str]:
        with self.lock:
            return set(self.metrics)

    def named(self, name: str) -> list[trace_pb2.Span]:
        with self.lock:
            return [s for s in self.spans if s.name == name]


class MetricsReceiver(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, into: Receiver) -> None:
        self.into = into

    def Export(self, request: metrics_service_pb2.ExportMetricsServiceRequest,
               context: Any) -> metrics_service_pb2.ExportMetricsServiceResponse:
        with self.into.lock:
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        self.into.metrics[m.name] = m
        return metrics_service_pb2.ExportMetricsServiceResponse()


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, int]]:
    rec = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(rec, server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(MetricsReceiver(rec), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield rec, port
    finally:
        server.stop(0)


def test_change_batch_span_tree_over_otlp(receiver: tuple[Receiver, int]) -> None:
    rec, otlp_port = receiver
    md = ManifestDir()
    listen = free_port()
    with echo_backends(("echo-a", "127.0.0.2"), ("other", "127.0.0.4")) as (a, other):
        md.write("services.yaml", docs(service("echo", 80, vip="127.96.0.10"),
                                       endpoint_slice("echo", [(a.host, a.port)]),
                                       service("other", 80, vip="127.96.0.11"),
                                       endpoint_slice("other", [(other.host, other.port)])))
        md.write("cec.yaml", cec(listen, [route("/", "default/echo")]))
        cp = ControlPlaneThread([str(md.path)])
        cp.opts = dataclasses.replace(cp.opts, otlp_endpoint=f"127.0.0.1:{otlp_port}")
        cp.start()
        envoy = Envoy("node~local", cp.xds_port).start()
        url = f"http://127.0.0.1:{listen}"
        try:
            envoy.wait_for(lambda: get(url + "/").status == 200, what="listener serving")
            md.write("cec.yaml", cec(listen, [route("/other", "default/other"), route("/", "default/echo")],
                                     clusters=("default/echo", "default/other")))
            envoy.wait_for(lambda: get(url + "/other").json()["backend"] == "other", what="new route")
            time.sleep(0.2)  # the route ACK follows the listener being served by a moment
        finally:
            envoy.stop()
            cp.stop()  # shuts the tracer provider down, which flushes the exporter
            md.cleanup()

    batches = [s for s in rec.named("cilia.change")
               if any(a.key == "cilia.change.kinds" and "CiliumEnvoyConfig" in
                      [v.string_value for v in a.value.array_value.values] for a in s.attributes)]
    assert len(batches) == 1, [s.name for s in rec.spans]
    batch = batches[0]
    children = {s.name: s for s in rec.spans if s.parent_span_id == batch.span_id}
    assert set(children) == {"cilia.debounce", "cilia.translate", "cilia.render", "cilia.push"}
    assert all(c.trace_id == batch.trace_id for c in children.values())
    order = [children[n] for n in ("cilia.debounce", "cilia.translate", "cilia.render", "cilia.push")]
    assert all(x.start_time_unix_nano <= y.start_time_unix_nano for x, y in itertools.pairwise(order))
    assert batch.start_time_unix_nano <= order[0].start_time_unix_nano
    assert order[-1].end_time_unix_nano <= batch.end_time_unix_nano

    pushes = [s for s in rec.named("cilia.xds.push")
              if any(link.span_id == batch.span_id and link.trace_id == batch.trace_id for link in s.links)]
    assert pushes, "no per-proxy push span linked to the batch"
    attrs = {a.key: a.value for a in pushes[0].attributes}
    assert attrs["cilia.proxy.id"].string_value == "node~local"
    assert attrs["cilia.xds.outcome"].string_value == "ack"
    assert {a["cilia.xds.type"].string_value for a in
            ({x.key: x.value for x in p.attributes} for p in pushes)} >= {"routes"}
    assert all(p.end_time_unix_nano >= p.start_time_unix_nano >= batch.start_time_unix_nano for p in pushes)

    # The metrics went over OTLP too (the last export happens at shutdown), including the convergence
    # histogram that is kept outside the SDK for cost.
    names = rec.metric_names()
    assert {"cilia_xds_pushes", "cilia_translate_duration_seconds", "cilia_xds_convergence_seconds"} <= names
    conv = rec.metrics["cilia_xds_convergence_seconds"].histogram
    assert sum(p.count for p in conv.data_points) >= 1
