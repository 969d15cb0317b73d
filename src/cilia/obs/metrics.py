"""Metrics: OpenTelemetry SDK instruments, served as Prometheus text on the admin `/metrics`.

Cost model. An OpenTelemetry SDK `add`/`record` costs ~6-20 us in CPython, about as much as a grpc.aio
write, so the xDS hot path never calls the SDK: `XdsMetrics` (the xDS observer) only bumps plain dict
counters, which observable instruments read at collection time, and the per-ACK convergence histogram is
a `LocalHistogram` whose cumulative points are added, as SDK `HistogramDataPoint`s, to what the SDK reader
collects (Prometheus) and to what the OTLP exporter sends. An ACK only appends its sample to a list
(`observe_later`); the samples are folded into the buckets in bulk (one sort, a bisect per bucket bound)
when the histogram is read or a list grows long, so a change ACKed by a thousand proxies costs one fold,
not a thousand bucket updates.
Per-batch work (translation, debounce, source events) uses the SDK directly: once per change, not per
proxy.

Names follow Prometheus conventions with the unit in the name (`_seconds`, `_bytes`); counters get
`_total` when rendered.
"""

from __future__ import annotations

import bisect
import gc
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from cilia import __version__
from cilia.obs.traces import Tracing
from cilia.xds.hooks import XdsObserver

SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TYPE_LABELS = {"Listener": "listeners", "RouteConfiguration": "routes", "Cluster": "clusters",
               "ClusterLoadAssignment": "endpoints", "Secret": "secrets", "NodeRedirectPolicy": "redirects"}


PENDING_LIMIT = 4096  # samples held per histogram key before they are folded in (bounds memory)


def _bucket_counts(counts: list[int], bounds: tuple[float, ...], values: list[float]) -> None:
    """Add sorted `values` to `counts`, bucketed as `counts[bisect_left(bounds, v)] += 1` would."""
    prev = 0
    for i, bound in enumerate(bounds):
        upto = bisect.bisect_right(values, bound, prev)
        counts[i] += upto - prev
        prev = upto
    counts[-1] += len(values) - prev


def _take(pending: list[float]) -> list[float]:
    """The samples in `pending` so far, sorted, removed from it. Another thread may append meanwhile: those
    stay (slicing and deleting a prefix are single operations under the GIL)."""
    n = len(pending)
    values = sorted(pending[:n])
    del pending[:n]
    return values


def type_label(type_url: str) -> str:
    """`type.googleapis.com/envoy.config.listener.v3.Listener` -> `listeners`."""
    short = type_url.rsplit(".", 1)[-1]
    return TYPE_LABELS.get(short, short.lower())


class LocalHistogram:
    """A cumulative explicit-bucket histogram cheap enough for the hot path, by one label."""

    def __init__(self, name: str, description: str, unit: str, label: str,
                 bounds: tuple[float, ...] = SECONDS_BUCKETS) -> None:
        self.name = name
        self.description = description
        self.unit = unit
        self.label = label
        self.bounds = bounds
        self.start_ns = time.time_ns()
        self._series: dict[str, list[Any]] = {}  # label value -> [bucket counts, sum, count, min, max]
        self._pending: dict[str, list[float]] = {}  # label value -> samples not folded in yet
        self._lock = threading.Lock()  # folds (collection may run in an exporter thread)

    def observe_later(self, key: str, value: float) -> None:
        """Hot path: keep the sample; it is counted at the next fold (any read folds first)."""
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = []
        pending.append(value)
        if len(pending) >= PENDING_LIMIT:
            self.fold()

    def fold(self) -> None:
        with self._lock:
            for key, pending in list(self._pending.items()):
                if pending:
                    self._add_sorted(key, _take(pending))

    def _add_sorted(self, key: str, values: list[float]) -> None:
        s = self._series.get(key)
        if s is None:
            s = self._series[key] = [[0] * (len(self.bounds) + 1), 0.0, 0, values[0], values[-1]]
        _bucket_counts(s[0], self.bounds, values)
        s[1] += math.fsum(values)
        s[2] += len(values)
        if values[0] < s[3]:
            s[3] = values[0]
        if values[-1] > s[4]:
            s[4] = values[-1]

    def observe(self, key: str, value: float) -> None:
        s = self._series.get(key)
        if s is None:
            s = self._series[key] = [[0] * (len(self.bounds) + 1), 0.0, 0, value, value]
        s[0][bisect.bisect_left(self.bounds, value)] += 1
        s[1] += value
        s[2] += 1
        if value < s[3]:
            s[3] = value
        if value > s[4]:
            s[4] = value

    def metric(self, label_of: Callable[[str], str] = str) -> Metric | None:
        self.fold()
        if not self._series:
            return None
        now = time.time_ns()
        points = [HistogramDataPoint({self.label: label_of(k)}, self.start_ns, now, s[2], s[1], list(s[0]),
                                     list(self.bounds), s[3], s[4]) for k, s in sorted(self._series.items())]
        return Metric(self.name, self.description, self.unit,
                      Histogram(points, AggregationTemporality.CUMULATIVE))


class MinuteHistogram:
    """Samples per minute over the last `minutes`, as bucket counts: a fixed ring of slots, so a sample costs
    an append (folded in bulk, as in LocalHistogram) however many proxies ACK, and an hour at any scale fits
    in a few KB."""

    __slots__ = ("_lock", "_pending", "_pending_end", "_pending_minute", "_pending_start", "bounds", "slots")

    def __init__(self, minutes: int = 60, bounds: tuple[float, ...] = SECONDS_BUCKETS) -> None:
        self.bounds = bounds
        # [minute number (monotonic // 60), bucket counts, sample count, largest sample]
        self.slots: list[list[Any]] = [[-1, [], 0, 0.0] for _ in range(minutes)]
        # Samples of one minute not folded in yet (see LocalHistogram.observe_later), and that minute's span.
        self._pending: list[float] = []
        self._pending_minute = -1
        self._pending_start = self._pending_end = 0.0
        self._lock = threading.Lock()

    def observe_later(self, now: float, value: float) -> None:
        """Hot path: keep the sample; it is counted at the next fold (a read, another minute, or many)."""
        if not self._pending_start <= now < self._pending_end or len(self._pending) >= PENDING_LIMIT:
            self.fold()
            minute = int(now // 60)
            self._pending_minute, self._pending_start, self._pending_end = minute, minute * 60.0, minute * 60.0 + 60
        self._pending.append(value)

    def fold(self) -> None:
        with self._lock:
            if self._pending:
                self._add_sorted(self._pending_minute, _take(self._pending))

    def _add_sorted(self, minute: int, values: list[float]) -> None:
        s = self.slots[minute % len(self.slots)]
        if s[0] != minute:
            s[0], s[1], s[2], s[3] = minute, [0] * (len(self.bounds) + 1), 0, 0.0
        _bucket_counts(s[1], self.bounds, values)
        s[2] += len(values)
        if values[-1] > s[3]:
            s[3] = values[-1]

    def observe(self, now: float, value: float) -> None:
        self.fold()  # a slot is reset for a newer minute: pending samples of an older one go in first
        minute = int(now // 60)
        s = self.slots[minute % len(self.slots)]
        if s[0] != minute:
            s[0], s[1], s[2], s[3] = minute, [0] * (len(self.bounds) + 1), 0, 0.0
        s[1][bisect.bisect_left(self.bounds, value)] += 1
        s[2] += 1
        if value > s[3]:
            s[3] = value

    def series(self, now: float | None = None) -> list[dict[str, float]]:
        """Per minute with samples, oldest first: minutes ago (0 = this one), count, p50, p99, max (seconds)."""
        self.fold()
        current = int((time.monotonic() if now is None else now) // 60)
        out = []
        for minute, counts, count, largest in sorted((s for s in self.slots if s[2]), key=lambda s: s[0]):
            age = current - minute
            if 0 <= age < len(self.slots):
                out.append({"minutes_ago": age, "count": count, "p50": self._quantile(counts, count, largest, 0.5),
                            "p99": self._quantile(counts, count, largest, 0.99), "max": largest})
        return out

    def _quantile(self, counts: list[int], count: int, largest: float, q: float) -> float:
        """Linear interpolation inside the bucket holding the q-th sample (as Prometheus does), capped by the
        largest sample seen."""
        rank = q * count
        seen = 0
        for i, c in enumerate(counts):
            if c and seen + c >= rank:
                lower = self.bounds[i - 1] if i > 0 else 0.0
                upper = self.bounds[i] if i < len(self.bounds) else largest
                return min(largest, lower + (upper - lower) * (rank - seen) / c)
            seen += c
        return largest


def with_extra(data: MetricsData | None, extra: list[Metric]) -> MetricsData | None:
    """`data` plus `extra` metrics in a scope of their own (the SDK's types are frozen: rebuilt)."""
    if data is None or not extra:
        return data
    from opentelemetry.sdk.metrics.export import ResourceMetrics

    first = data.resource_metrics[0] if data.resource_metrics else None
    scope = ScopeMetrics(InstrumentationScope("cilia.xds", __version__), extra, "")
    if first is None:
        return data
    patched = ResourceMetrics(first.resource, [*first.scope_metrics, scope], first.schema_url)
    return MetricsData([patched, *data.resource_metrics[1:]])


class XdsMetrics(XdsObserver):
    """The xDS observer that counts. Every method is a few dict updates (see the module docstring)."""

    __slots__ = ("_batches", "acks", "convergence", "denied", "nacks", "policy_denials", "push_bytes", "pushes",
                 "recent", "streams", "tracing")

    def __init__(self, tracing: Tracing | None = None) -> None:
        super().__init__()
        self.tracing = tracing or Tracing()
        self.streams: dict[tuple[str, str], int] = {}
        self.denied: dict[str, int] = {}
        self.pushes: dict[tuple[str, str], int] = {}
        self.push_bytes: dict[str, int] = {}
        self.acks: dict[str, int] = {}
        self.nacks: dict[str, int] = {}
        self.policy_denials: dict[tuple[str, str], int] = {}  # (policy, reason) -> requests refused
        self.convergence = LocalHistogram(
            "cilia_xds_convergence_seconds", "Change observed by a source -> ACK of the response carrying it, "
            "per proxy and type.", "s", "type")
        self.recent = MinuteHistogram()  # the same samples per minute of the last hour (admin page chart)
        # change seq -> [observed_at, batch span context or None, proxy spans made]
        self._batches: dict[int, list[Any]] = {}

    # -- called by the app, once per batch ------------------------------------------------------------
    def begin_change(self, observed_at: float | None = None, span_context: Any = None) -> int:  # type: ignore[override]
        seq = super().begin_change(observed_at)
        self._batches[seq] = [self.change_observed_at, span_context, 0]
        while len(self._batches) > 64:
            self._batches.pop(next(iter(self._batches)))
        return seq

    def access_denied(self, proxy_id: str, rule: str, route: str) -> None:
        """Rule names are `Kind/ns/name:field` (cilia.translate.policy); a default-deny refusal counts for
        every policy the route names (those selecting the pod)."""
        if rule == "none":
            keys = [(p, "default-deny") for p in route.split(",") if p and p != "default"] or \
                [("(unknown)", "default-deny")]
        else:
            kind, _, ref = rule.partition(":")[0].partition("/")
            keys = [(f"{kind} {ref}" if ref else kind, "deny")]
        for key in keys:
            self.policy_denials[key] = self.policy_denials.get(key, 0) + 1

    # -- hot path --------------------------------------------------------------------------------------
    def stream_opened(self, role: str, variant: str) -> None:
        key = (role, variant)
        self.streams[key] = self.streams.get(key, 0) + 1

    def stream_closed(self, role: str, variant: str) -> None:
        key = (role, variant)
        self.streams[key] = self.streams.get(key, 0) - 1

    def stream_denied(self, role: str) -> None:
        self.denied[role] = self.denied.get(role, 0) + 1

    def pushed(self, type_url: str, reason: str, nbytes: int) -> None:
        key = (type_url, reason)
        self.pushes[key] = self.pushes.get(key, 0) + 1
        self.push_bytes[type_url] = self.push_bytes.get(type_url, 0) + nbytes

    def acked(self, proxy_id: str, variant: str, type_url: str, sent_at: float, seq: int, version: str) -> None:
        acks = self.acks
        acks[type_url] = acks.get(type_url, 0) + 1
        if seq:
            batch = self._batches.get(seq)
            if batch is None:
                return
            now = time.monotonic()
            value = now - batch[0]
            self.convergence.observe_later(type_url, value)
            self.recent.observe_later(now, value)
            if self.tracing.enabled:
                self._span(proxy_id, variant, type_url, sent_at, seq, "", batch, now)

    def nacked(self, proxy_id: str, variant: str, type_url: str, sent_at: float, seq: int, error: str) -> None:
        self.nacks[type_url] = self.nacks.get(type_url, 0) + 1
        if seq and self.tracing.enabled:
            batch = self._batches.get(seq)
            if batch is not None:
                self._span(proxy_id, variant, type_url, sent_at, seq, error or "rejected", batch, time.monotonic())

    def _span(self, proxy_id: str, variant: str, type_url: str, sent_at: float, seq: int, error: str,
              batch: list[Any], now: float) -> None:
        """The push's span (sent -> ACK or NACK), linked to its change batch; a bounded number per batch."""
        tracing = self.tracing
        if batch[2] < tracing.max_proxy_spans_per_batch:
            batch[2] += 1
            links = (batch[1],) if batch[1] is not None else ()
            tracing.record("cilia.xds.push", sent_at, now, links=links, error=error, attributes={
                "cilia.proxy.id": proxy_id, "cilia.xds.variant": variant, "cilia.xds.type": type_label(type_url),
                "cilia.change.seq": seq, "cilia.xds.outcome": "nack" if error else "ack"})


Number = int | float
ProxyCounts = Callable[[], Mapping[tuple[str, str], int]]  # (role, variant) -> proxies
SnapshotSizes = Callable[[], Mapping[str, tuple[int, int]]]  # type label -> (resources, bytes)
Counts = Callable[[], Mapping[str, int]]
LeaderView = Callable[[], tuple[str, bool, Mapping[str, int]]]  # -> (lease ns/name, leading, errors by reason)


class CollectorClock:
    """Time spent in the cyclic garbage collector, by generation: a `gc.callbacks` entry (two clock reads
    per collection, none per allocation)."""

    def __init__(self) -> None:
        self.seconds = [0.0] * len(gc.get_stats())
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds[info["generation"]] += time.perf_counter() - self._started


_COLLECTOR_CLOCK: list[CollectorClock] = []


def collector_clock() -> CollectorClock:
    """The process's one CollectorClock (the collector is process-wide; every Metrics reads the same)."""
    if not _COLLECTOR_CLOCK:
        _COLLECTOR_CLOCK.append(CollectorClock())
        gc.callbacks.append(_COLLECTOR_CLOCK[0])
    return _COLLECTOR_CLOCK[0]


class Metrics:
    """All of cilia's metrics. One per control plane (no module globals); pass it where needed."""

    def __init__(self, tracing: Tracing | None = None, exporters: Iterable[MetricExporter] = (),
                 export_interval_s: float = 15.0) -> None:
        """`exporters` (e.g. OTLP) get every metric every `export_interval_s`; /metrics reads on demand."""
        self.tracing = tracing or Tracing()
        self.xds = XdsMetrics(self.tracing)
        self._reader = InMemoryMetricReader()
        readers: list[MetricReader] = [
            PeriodicExportingMetricReader(WithExtraMetrics(e, self.extra_metrics),
                                          export_interval_millis=int(export_interval_s * 1000))
            for e in exporters]
        self.provider = MeterProvider(metric_readers=[self._reader, *readers],
                                      resource=Resource.create({"service.name": "cilia",
                                                                "service.version": __version__}))
        m = self.provider.get_meter("cilia", __version__)
        self._proxy_counts: ProxyCounts | None = None
        self._snapshot_sizes: SnapshotSizes | None = None
        self._issue_counts: Counts | None = None
        self._leader: LeaderView | None = None
        self._sync_counts: ProxyCounts | None = None
        self._status_writes: Counts | None = None
        self._object_counts: dict[str, int] = {}
        self._xds_listeners: dict[tuple[str, str, str], int] = {}

        x = self.xds
        m.create_observable_counter(
            "cilia_xds_denied_streams", [self._obs_keyed(lambda: x.denied, "role")],
            description="xDS streams and fetches refused because the peer's certificate does not entitle the "
                        "node id it claimed, by claimed role.")
        m.create_observable_gauge(
            "cilia_xds_listener", [self._obs_listeners],
            description="xDS listeners: 1 per address, by transport (plaintext, mtls) and insecure=true when "
                        "plaintext is served beyond loopback (--xds-insecure).")
        m.create_observable_up_down_counter(
            "cilia_xds_streams", [self._obs_pairs(lambda: x.streams, ("role", "variant"))],
            description="Open xDS streams by proxy role and xDS variant (delta, sotw).")
        m.create_observable_gauge(
            "cilia_xds_connected_proxies", [self._obs_proxies],
            description="Connected proxies by role and xDS variant.")
        m.create_observable_gauge(
            "cilia_xds_proxy_sync", [self._obs_pairs(lambda: self._sync_counts() if self._sync_counts else {},
                                                      ("role", "state"))],
            description="Connected proxies by role and sync state: NACKED (a type's last version was rejected), "
                        "STALE (a version awaits its ACK), SYNCED (every type sent was ACKed), NOT_SENT.")
        m.create_observable_counter(
            "cilia_status_writes", [self._obs_keyed(lambda: self._status_writes() if self._status_writes else {},
                                                    "result")],
            description="Kubernetes status writes by the leader, by result (written, conflict, not_found, error).")
        m.create_observable_counter(
            "cilia_xds_pushes", [self._obs_pairs(lambda: x.pushes, ("type", "reason"), type_first=True)],
            description="xDS responses sent, by resource type and reason (initial, change, request).")
        m.create_observable_counter(
            "cilia_xds_push_bytes", [self._obs_by_type(lambda: x.push_bytes)], unit="By",
            description="Bytes of xDS responses sent, by resource type.")
        m.create_observable_counter(
            "cilia_xds_acks", [self._obs_by_type(lambda: x.acks)], description="xDS ACKs received, by type.")
        m.create_observable_counter(
            "cilia_xds_nacks", [self._obs_by_type(lambda: x.nacks)],
            description="xDS NACKs (rejected configuration) received, by type.")
        m.create_observable_counter(
            "cilia_policy_denials", [self._obs_pairs(lambda: x.policy_denials, ("policy", "reason"))],
            description="HTTP requests the mesh inbound proxies refused by policy, by policy and reason (deny: an "
                        "ingressDeny rule; default-deny: no rule of the policies selecting the pod allowed it).")
        self.debounce_wait = m.create_histogram(
            "cilia_debounce_wait_seconds", unit="s", explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
            description="Time a change batch waited in the debounce queue (first event -> rebuild start).")
        self.translate_duration = m.create_histogram(
            "cilia_translate_duration_seconds", unit="s", explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
            description="Translation (objects -> IR) time per rebuild.")
        self.render_duration = m.create_histogram(
            "cilia_render_duration_seconds", unit="s", explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
            description="Rendering (IR -> serialised Envoy resources) time per rebuild.")
        self.rebuild_duration = m.create_histogram(
            "cilia_rebuild_duration_seconds", unit="s", explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
            description="Whole rebuild (translate, render, install) time.")
        self.rebuilds = m.create_counter("cilia_rebuilds", description="Configuration rebuilds, by result.")
        self.source_events = m.create_counter(
            "cilia_source_events", description="Changes seen from sources, by object kind.")
        self.watch_restarts = m.create_counter(
            "cilia_kubernetes_watch_restarts", description="Kubernetes watches restarted, by kind and reason.")
        m.create_observable_gauge(
            "cilia_leader", [self._obs_leader],
            description="1 while this replica holds the leader Lease (label lease: namespace/name) and writes "
                        "status, else 0; absent without leader election.")
        m.create_observable_counter(
            "cilia_leader_election_errors", [self._obs_leader_errors],
            description="Failed attempts to acquire or renew the leader Lease, by reason (namespace_not_found, "
                        "forbidden, unauthorized, unreachable, server_error, invalid, error).")
        m.create_observable_gauge(
            "cilia_input_objects", [self._obs_keyed(lambda: self._object_counts, "kind")],
            description="Objects in the input snapshot of the last rebuild, by kind.")
        m.create_observable_gauge(
            "cilia_config_issues", [self._obs_keyed(lambda: self._issue_counts() if self._issue_counts else {},
                                                    "severity")],
            description="Problems found in the input, by severity.")
        m.create_observable_gauge(
            "cilia_snapshot_resources", [self._obs_sizes(0)],
            description="Distinct resources in the current configuration snapshot, by type.")
        m.create_observable_gauge(
            "cilia_snapshot_bytes", [self._obs_sizes(1)], unit="By",
            description="Serialised size of the current configuration snapshot, by type.")
        clock = collector_clock()
        m.create_observable_counter(
            "cilia_gc_collections",
            [lambda _o: [Observation(s["collections"], {"generation": str(g)}) for g, s in enumerate(gc.get_stats())]],
            description="Cyclic garbage collections of the process, by generation. A collection pauses the event "
                        "loop: every stream waits.")
        m.create_observable_counter(
            "cilia_gc_pause_seconds",
            [lambda _o: [Observation(t, {"generation": str(g)}) for g, t in enumerate(clock.seconds)]], unit="s",
            description="Time the process spent in cyclic garbage collection, by generation.")

    # -- wiring ------------------------------------------------------------------------------------------
    def observe(self, *, proxies: ProxyCounts | None = None, snapshot: SnapshotSizes | None = None,
                issues: Counts | None = None, leader: LeaderView | None = None, sync: ProxyCounts | None = None,
                status_writes: Counts | None = None) -> None:
        """Views read at collection time (never on the hot path). `sync`: (role, state) -> proxies;
        `status_writes`: result -> writes so far."""
        if leader is not None:
            self._leader = leader
        if sync is not None:
            self._sync_counts = sync
        if status_writes is not None:
            self._status_writes = status_writes
        if proxies is not None:
            self._proxy_counts = proxies
        if snapshot is not None:
            self._snapshot_sizes = snapshot
        if issues is not None:
            self._issue_counts = issues

    def set_xds_listeners(self, listeners: Iterable[tuple[str, str, bool]]) -> None:
        """(transport, address, insecure) of each xDS listener."""
        self._xds_listeners = {(t, a, "true" if insecure else "false"): 1 for t, a, insecure in listeners}

    def _obs_listeners(self, _o: CallbackOptions) -> Iterable[Observation]:
        return [Observation(v, {"transport": t, "address": a, "insecure": i})
                for (t, a, i), v in sorted(self._xds_listeners.items())]

    # -- called by sources and the app --------------------------------------------------------------------
    def source_event(self, kinds: Iterable[str]) -> None:
        for kind in kinds:
            self.source_events.add(1, {"kind": kind})

    def watch_restarted(self, kind: str, reason: str) -> None:
        """The Kubernetes source calls this whenever it re-lists/re-watches `kind` (reason: "expired",
        "error", "closed", ...)."""
        self.watch_restarts.add(1, {"kind": kind, "reason": reason})

    def set_object_counts(self, counts: Mapping[str, int]) -> None:
        self._object_counts = dict(counts)

    # -- collection ----------------------------------------------------------------------------------------
    def extra_metrics(self) -> list[Metric]:
        """Metrics kept outside the SDK for cost (see the module docstring), as SDK data."""
        conv = self.xds.convergence.metric(type_label)
        return [conv] if conv is not None else []

    def collect(self) -> MetricsData | None:
        return with_extra(self._reader.get_metrics_data(), self.extra_metrics())

    def prometheus_text(self) -> str:
        return render_prometheus(self.collect())

    def shutdown(self) -> None:
        self.provider.shutdown()

    # -- observable callbacks --------------------------------------------------------------------------------
    @staticmethod
    def _obs_pairs(source: Callable[[], Mapping[tuple[str, str], int]], labels: tuple[str, str],
                   type_first: bool = False) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def cb(_o: CallbackOptions) -> Iterable[Observation]:
            out = []
            for (a, b), v in sorted(source().items()):
                out.append(Observation(v, {labels[0]: type_label(a) if type_first else a, labels[1]: b}))
            return out
        return cb

    @staticmethod
    def _obs_by_type(source: Callable[[], Mapping[str, int]]) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def cb(_o: CallbackOptions) -> Iterable[Observation]:
            return [Observation(v, {"type": type_label(t)}) for t, v in sorted(source().items())]
        return cb

    @staticmethod
    def _obs_keyed(source: Callable[[], Mapping[str, int]],
                   label: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def cb(_o: CallbackOptions) -> Iterable[Observation]:
            return [Observation(v, {label: k}) for k, v in sorted(source().items())]
        return cb

    def _obs_leader(self, _o: CallbackOptions) -> Iterable[Observation]:
        if self._leader is None:
            return []
        lease, leading, _ = self._leader()
        return [Observation(1 if leading else 0, {"lease": lease})]

    def _obs_leader_errors(self, _o: CallbackOptions) -> Iterable[Observation]:
        if self._leader is None:
            return []
        return [Observation(v, {"reason": k}) for k, v in sorted(self._leader()[2].items())]

    def _obs_proxies(self, _o: CallbackOptions) -> Iterable[Observation]:
        counts = self._proxy_counts() if self._proxy_counts else {}
        return [Observation(v, {"role": r, "variant": var}) for (r, var), v in sorted(counts.items())]

    def _obs_sizes(self, index: int) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def cb(_o: CallbackOptions) -> Iterable[Observation]:
            sizes = self._snapshot_sizes() if self._snapshot_sizes else {}
            return [Observation(v[index], {"type": t}) for t, v in sorted(sizes.items())]
        return cb


# -- Prometheus text exposition ------------------------------------------------------------------------------
def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(attrs: Mapping[str, Any], extra: tuple[tuple[str, str], ...] = ()) -> str:
    items = [(k, str(v)) for k, v in sorted(attrs.items())] + list(extra)
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in items) + "}"


def _num(v: Number) -> str:
    if isinstance(v, float):
        if math.isinf(v):
            return "+Inf" if v > 0 else "-Inf"
        if v.is_integer() and abs(v) < 1e15:
            return str(int(v))
        return repr(v)
    return str(v)


def render_prometheus(data: MetricsData | None) -> str:
    """Prometheus text format 0.0.4 for what the SDK reader collected (cumulative temporality)."""
    lines: list[str] = []
    if data is None:
        return ""
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sorted(sm.metrics, key=lambda m: m.name):
                d = metric.data
                name = metric.name
                help_ = _escape(metric.description or "")
                if isinstance(d, Sum):
                    kind = "counter" if d.is_monotonic else "gauge"
                    if d.is_monotonic and not name.endswith("_total"):
                        name += "_total"
                    lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
                    lines += [f"{name}{_labels(p.attributes or {})} {_num(p.value)}" for p in d.data_points]
                elif isinstance(d, Gauge):
                    lines += [f"# HELP {name} {help_}", f"# TYPE {name} gauge"]
                    lines += [f"{name}{_labels(p.attributes or {})} {_num(p.value)}" for p in d.data_points]
                elif isinstance(d, Histogram):
                    lines += [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
                    for hp in d.data_points:
                        attrs = hp.attributes or {}
                        cumulative = 0
                        for bound, count in zip(hp.explicit_bounds, hp.bucket_counts, strict=False):
                            cumulative += count
                            lines.append(f"{name}_bucket{_labels(attrs, (('le', _num(float(bound))),))} {cumulative}")
                        lines.append(f"{name}_bucket{_labels(attrs, (('le', '+Inf'),))} {hp.count}")
                        lines.append(f"{name}_sum{_labels(attrs)} {_num(hp.sum)}")
                        lines.append(f"{name}_count{_labels(attrs)} {hp.count}")
    return "\n".join(lines) + "\n"


def parse_prometheus(text: str) -> dict[str, float]:
    """`name{labels}` -> value, for tests and the benchmark (no HELP/TYPE lines)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        out[key] = float(value)
    return out


class WithExtraMetrics(MetricExporter):
    """Wraps an exporter (OTLP) so it also sends the metrics kept outside the SDK."""

    def __init__(self, inner: MetricExporter, extra: Callable[[], list[Metric]]) -> None:
        super().__init__(preferred_temporality=inner._preferred_temporality,
                         preferred_aggregation=inner._preferred_aggregation)
        self._inner = inner
        self._extra = extra

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000,
               **kwargs: Any) -> MetricExportResult:
        data = with_extra(metrics_data, self._extra()) or metrics_data
        return self._inner.export(data, timeout_millis=timeout_millis, **kwargs)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._inner.shutdown(timeout_millis=timeout_millis, **kwargs)


__all__ = ["LocalHistogram", "Metrics", "MinuteHistogram", "WithExtraMetrics", "XdsMetrics", "parse_prometheus",
           "render_prometheus", "type_label"]
