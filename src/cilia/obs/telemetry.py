"""The control plane's telemetry in one object: metrics, traces, and the change-batch recorder.

    telemetry = Telemetry.create(otlp_endpoint=None)
    with telemetry.change_batch(first_event_at, kinds) as batch:   # span + debounce wait
        with batch.stage("translate"): ...
        with batch.stage("render"): ...
        with batch.stage("push"):
            batch.begin_push()              # the xDS observer learns the batch (seq, time, span)
            cache.set_world(world)
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.metrics.export import MetricExporter
from opentelemetry.sdk.trace.export import SpanExporter

from cilia.obs.metrics import Metrics
from cilia.obs.traces import Tracing, otlp_span_exporter, wall_ns


def otlp_metric_exporter(endpoint: str) -> MetricExporter:
    try:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise RuntimeError("--otlp-endpoint needs the OTLP exporter: pip install 'cilia[otlp]'") from exc
    target = endpoint if "://" in endpoint else f"http://{endpoint}"
    return OTLPMetricExporter(endpoint=target, insecure=True, timeout=5)


class Telemetry:
    def __init__(self, metrics: Metrics, tracing: Tracing) -> None:
        self.metrics = metrics
        self.tracing = tracing

    @classmethod
    def create(cls, otlp_endpoint: str | None = None, *, span_exporter: SpanExporter | None = None,
               batch_spans: bool = True) -> Telemetry:
        """Metrics always (Prometheus on /metrics); traces and OTLP metrics only with an endpoint
        (or an exporter, for tests)."""
        exporter = span_exporter or (otlp_span_exporter(otlp_endpoint) if otlp_endpoint else None)
        tracing = Tracing(exporter, batch=batch_spans)
        exporters = [otlp_metric_exporter(otlp_endpoint)] if otlp_endpoint else []
        return cls(Metrics(tracing, exporters), tracing)

    @property
    def xds(self) -> Any:
        """The observer to give XdsServer."""
        return self.metrics.xds

    def change_batch(self, first_event_at: float | None, kinds: Iterable[str] = ()) -> ChangeBatch:
        return ChangeBatch(self, first_event_at if first_event_at else time.monotonic(), tuple(sorted(kinds)))

    def shutdown(self) -> None:
        self.tracing.shutdown()
        self.metrics.shutdown()


@dataclass
class ChangeBatch:
    telemetry: Telemetry
    first_event_at: float
    kinds: tuple[str, ...]
    started_at: float = 0.0
    seq: int = 0
    span: trace.Span = trace.INVALID_SPAN
    stages: dict[str, float] = field(default_factory=dict)

    def __enter__(self) -> ChangeBatch:
        self.started_at = time.monotonic()
        m = self.telemetry.metrics
        m.debounce_wait.record(max(0.0, self.started_at - self.first_event_at))
        tracing = self.telemetry.tracing
        if tracing.enabled:
            self.span = tracing.tracer.start_span(
                "cilia.change", start_time=wall_ns(self.first_event_at),
                attributes={"cilia.change.kinds": list(self.kinds)})
            tracing.record("cilia.debounce", self.first_event_at, self.started_at, parent=self.span)
        return self

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        with self.telemetry.tracing.span(f"cilia.{name}", parent=self.span if self.span.is_recording() else None):
            yield
        dt = time.monotonic() - t0
        self.stages[name] = dt
        m = self.telemetry.metrics
        hist = {"translate": m.translate_duration, "render": m.render_duration}.get(name)
        if hist is not None:
            hist.record(dt)

    def begin_push(self) -> int:
        """Tell the xDS observer that the world about to be installed carries this batch."""
        ctx = self.span.get_span_context() if self.span.is_recording() else None
        self.seq = self.telemetry.metrics.xds.begin_change(self.first_event_at, ctx)
        if self.span.is_recording():
            self.span.set_attribute("cilia.change.seq", self.seq)
        return self.seq

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        m = self.telemetry.metrics
        m.rebuilds.add(1, {"result": "error" if exc is not None else "ok"})
        m.rebuild_duration.record(time.monotonic() - self.started_at)
        if self.span.is_recording():
            if exc is not None:
                self.span.record_exception(exc)
                self.span.set_status(trace.Status(trace.StatusCode.ERROR, str(exc)))
            self.span.end()


__all__ = ["ChangeBatch", "Telemetry"]
