"""Traces: one span per change batch (debounce -> translate -> render -> push), and per-proxy push spans
linked to it. Off unless an exporter is configured (OTLP endpoint, or one given by a test): then no
provider exists and every call is a cheap no-op.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter

from cilia import __version__


def wall_ns(monotonic_t: float) -> int:
    """Wall-clock nanoseconds for a time.monotonic() instant (spans carry wall time)."""
    return time.time_ns() - int((time.monotonic() - monotonic_t) * 1e9)


def otlp_span_exporter(endpoint: str) -> SpanExporter:
    """An OTLP/gRPC span exporter for HOST:PORT (or http://HOST:PORT); plaintext, as collectors on a node
    usually are. Needs the `otlp` extra (opentelemetry-exporter-otlp-proto-grpc)."""
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise RuntimeError("--otlp-endpoint needs the OTLP exporter: pip install 'cilia[otlp]'") from exc
    target = endpoint if "://" in endpoint else f"http://{endpoint}"
    return OTLPSpanExporter(endpoint=target, insecure=True, timeout=5)


class Tracing:
    """Owns the TracerProvider (no global one is installed, so embedding cilia never changes the
    process-wide OpenTelemetry setup)."""

    def __init__(self, exporter: SpanExporter | None = None, *, batch: bool = True,
                 service_name: str = "cilia", max_proxy_spans_per_batch: int = 200) -> None:
        self.enabled = exporter is not None
        self.max_proxy_spans_per_batch = max_proxy_spans_per_batch
        self._provider: TracerProvider | None = None
        self._tracer: trace.Tracer = trace.NoOpTracer()
        if exporter is not None:
            resource = Resource.create({"service.name": service_name, "service.version": __version__})
            self._provider = TracerProvider(resource=resource)
            processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
            self._provider.add_span_processor(processor)
            self._tracer = self._provider.get_tracer("cilia", __version__)

    @property
    def tracer(self) -> trace.Tracer:
        return self._tracer

    @contextmanager
    def span(self, name: str, *, start_monotonic: float | None = None, parent: trace.Span | None = None,
             attributes: dict[str, Any] | None = None) -> Iterator[trace.Span]:
        if not self.enabled:
            yield trace.INVALID_SPAN
            return
        ctx = trace.set_span_in_context(parent) if parent is not None else None
        start = wall_ns(start_monotonic) if start_monotonic is not None else None
        span = self._tracer.start_span(name, context=ctx, start_time=start, attributes=attributes)
        try:
            yield span
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(trace.Status(trace.StatusCode.ERROR, str(exc)))
            raise
        finally:
            span.end()

    def record(self, name: str, start_monotonic: float, end_monotonic: float, *,
               parent: trace.Span | None = None, links: tuple[trace.SpanContext, ...] = (),
               attributes: dict[str, Any] | None = None, error: str = "") -> None:
        """A span for something already over (e.g. a push, once the proxy answered)."""
        if not self.enabled:
            return
        ctx = trace.set_span_in_context(parent) if parent is not None else None
        span = self._tracer.start_span(name, context=ctx, start_time=wall_ns(start_monotonic),
                                       attributes=attributes, links=[trace.Link(c) for c in links if c.is_valid])
        if error:
            span.set_status(trace.Status(trace.StatusCode.ERROR, error))
        span.end(end_time=wall_ns(end_monotonic))

    def force_flush(self, timeout_s: float = 5.0) -> bool:
        return self._provider.force_flush(int(timeout_s * 1000)) if self._provider is not None else True

    def shutdown(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()
            self._provider = None
            self.enabled = False
            self._tracer = trace.NoOpTracer()


__all__ = ["Tracing", "otlp_span_exporter", "wall_ns"]
