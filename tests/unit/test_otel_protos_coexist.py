"""xds-protos ships an old `opentelemetry/proto`; the OTLP exporter needs opentelemetry-proto's. Both must
import in one process (install opentelemetry-proto after xds-protos; scripts/setup.sh checks this)."""

from __future__ import annotations


def test_envoy_and_otlp_protos_import_together() -> None:
    from envoy.config.trace.v3 import opentelemetry_pb2 as envoy_otel
    from envoy.service.discovery.v3 import discovery_pb2
    from envoy.service.status.v3 import csds_pb2
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
    from opentelemetry.proto.trace.v1 import trace_pb2

    assert discovery_pb2.DeltaDiscoveryRequest.DESCRIPTOR.full_name.startswith("envoy.service.discovery")
    assert csds_pb2.ClientStatusRequest.DESCRIPTOR.fields_by_name["node_matchers"]
    assert envoy_otel.OpenTelemetryConfig.DESCRIPTOR.fields_by_name["grpc_service"]
    # Fields only opentelemetry-proto's newer schema has (the exporter sets them).
    assert "flags" in trace_pb2.Span.DESCRIPTOR.fields_by_name
    assert "dropped_attributes_count" in trace_pb2.Span.Link.DESCRIPTOR.fields_by_name
    assert trace_service_pb2.ExportTraceServiceRequest().resource_spans is not None
    assert trace_service_pb2_grpc.TraceServiceStub is not None
    assert OTLPSpanExporter(endpoint="http://127.0.0.1:1", insecure=True) is not None
