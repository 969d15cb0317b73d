"""Kubernetes Events (events.k8s.io/v1, type Warning) for the problems cilia reports on objects.

A condition on an object's status says what is wrong *now*; an Event says that something went wrong,
where users look first (`kubectl describe`, `kubectl get events`). The problems are the status writer's
issues (an invalid or rejected object, a warning on a served one) and NACKs attributed to a
CiliumEnvoyConfig.

* **One Event per problem, repeats counted.** A problem is (object, reason, message). Its Event has a
  name derived from that tuple, so every replica and every restart finds the same one: a problem that
  goes away and comes back bumps the Event's ``series.count`` (one merge patch) instead of creating a
  new Event, and a new leader adopts the Events of the previous one (a create answered 409 is followed by
  an empty patch, which returns the Event without changing it).
* **A standing problem is one occurrence.** Rebuilds that report it again change nothing; cilia
  restarting or a new leader taking over makes sure its Event exists, without counting it again.
* **Rate-limited.** Repeats of one Event are folded into at most one patch per ``series_min_interval_s``;
  new Events for one object come from a small token bucket, and all writes share a global one. What the
  buckets refuse waits (repeats) or is dropped with a debug log line (new Events beyond an object's
  budget), so a flapping object cannot flood the API server.
* **Only the leader writes.** Followers keep track of what is current and write nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from cilia.diagnostics import Issue
from cilia.k8s.kubeapi import KubeApi, KubeApiError, Resource
from cilia.k8s.kubesource import ObservedObject
from cilia.translate.context import ObjectStatus

log = logging.getLogger("cilia.events")

EVENTS = Resource("events.k8s.io", "v1", "events", True)
EVENT_VERBS = ("create", "patch")  # every verb the recorder uses on events (see cilia.k8s.rbac)
REPORTING_CONTROLLER = "cilia.io/control-plane"
NOTE_LIMIT = 1024  # bytes, the API server's limit on `note`
NAME_LIMIT = 253
MAX_TRACKED = 10_000  # problems remembered for de-duplication (oldest inactive ones are forgotten first)
FORGET_AFTER_S = 3600.0  # the API server's default Event TTL: after that the Event is gone anyway

# reason -> action, as `kubectl describe` shows them
REJECTED = "ConfigRejected"  # an issue of severity error: the object, or part of it, is not served
WARNING = "ConfigWarning"  # an issue of severity warning: served, but something is off
NACKED = "ProxyRejected"  # a connected proxy rejected the config
ACTIONS = {REJECTED: "Translate", WARNING: "Translate", NACKED: "Program"}

_LABEL = re.compile(r"^(?P<kind>[A-Z][A-Za-z0-9]*) (?:(?P<ns>[^/\s]+)/)?(?P<name>[^/\s]+)$")


@dataclass(frozen=True, slots=True, order=True)
class Problem:
    """Something wrong with one object, as one Event shows it."""

    kind: str
    namespace: str
    name: str
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class EventLimits:
    rate_per_s: float = 2.0  # all Event writes: sustained per second ...
    burst: int = 25  # ... and at once
    per_object_burst: int = 10  # new Events one object may get at once ...
    per_object_refill_s: float = 60.0  # ... and one more every this many seconds
    series_min_interval_s: float = 10.0  # repeats of one Event: at most one patch per this interval
    error_backoff_max_s: float = 60.0
    poll_s: float = 1.0


@dataclass(slots=True)
class EventStats:
    created: int = 0
    adopted: int = 0
    bumped: int = 0
    dropped: int = 0
    errors: int = 0


class ObjectView(Protocol):
    def observed(self, kind: str, namespace: str, name: str) -> ObservedObject | None: ...


# -- which problems ------------------------------------------------------------------------------------------
def _targets(label: str) -> list[tuple[str, str, str]]:
    """(kind, namespace, name) of every object an Issue's `object` names ("Kind ns/name", comma separated)."""
    out = []
    for part in label.split(", "):
        m = _LABEL.match(part.strip())
        if m:
            out.append((m.group("kind"), m.group("ns") or "", m.group("name")))
    return out


def problems_from(issues: Iterable[Issue], statuses: Iterable[ObjectStatus]) -> tuple[Problem, ...]:
    """The Events the current issues and statuses call for (pure; objects not in the API are sorted out later)."""
    found: set[Problem] = set()
    for issue in issues:
        reason = REJECTED if issue.severity == "error" else WARNING
        text = f"{issue.field}: {issue.message}" if issue.field else issue.message
        for kind, ns, name in _targets(issue.object):
            found.add(Problem(kind, ns, name, reason, text))
    for st in statuses:
        for cond in st.status.get("conditions") or ():
            if isinstance(cond, Mapping) and cond.get("type") == "Programmed" and cond.get("status") == "False" \
                    and cond.get("reason") == "Nacked":
                found.add(Problem(st.kind, st.namespace, st.name, NACKED, str(cond.get("message") or "")))
    return tuple(sorted(found))


# -- the Event objects ---------------------------------------------------------------------------------------
def event_name(p: Problem) -> str:
    """Stable per problem, so replicas and restarts agree on it: `<object>.<16 hex digits>`."""
    digest = hashlib.blake2b("\0".join((p.kind, p.namespace, p.name, p.reason, p.message)).encode(),
                             digest_size=8).hexdigest()
    base = p.name[: NAME_LIMIT - len(digest) - 1].rstrip(".-") or "object"
    return f"{base}.{digest}"


def event_namespace(p: Problem) -> str:
    return p.namespace or "default"  # cluster-scoped objects: their Events live in `default`


def clip_note(text: str) -> str:
    data = text.encode()
    if len(data) <= NOTE_LIMIT:
        return text
    return data[: NOTE_LIMIT - 3].decode(errors="ignore") + "..."


def _micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_body(p: Problem, seen: ObservedObject, instance: str) -> dict[str, Any]:
    regarding: dict[str, Any] = {"apiVersion": seen.api_version, "kind": p.kind, "name": p.name}
    if p.namespace:
        regarding["namespace"] = p.namespace
    if seen.uid:
        regarding["uid"] = seen.uid
    return {"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": event_name(p), "namespace": event_namespace(p),
                         "labels": {"app.kubernetes.io/managed-by": "cilia"}},
            "eventTime": _micro_time(), "type": "Warning", "reason": p.reason,
            "action": ACTIONS.get(p.reason, "Translate"), "note": clip_note(p.message),
            "reportingController": REPORTING_CONTROLLER, "reportingInstance": instance[:128],
            "regarding": regarding}


# -- the recorder -------------------------------------------------------------------------------------------
class _Bucket:
    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst = rate, float(max(1, burst))
        self.tokens, self.stamp = self.burst, now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(slots=True)
class _Track:
    """What this replica knows of one problem's Event."""

    count: int = 0  # series count the Event has in the API as far as we know (0: not known to exist)
    pending: int = 0  # occurrences not written yet
    next_at: float = 0.0  # earliest next write
    attempts: int = 0
    touched: float = 0.0  # last occurrence or write, for forgetting
    failed: bool = False  # rejected by the API server (4xx): not retried


@dataclass(slots=True)
class _State:
    active: frozenset[Problem] = frozenset()
    tracks: dict[Problem, _Track] = field(default_factory=dict)
    baseline: bool = True  # the next input is the first: what it holds is not a new occurrence


class EventRecorder:
    """Writes Events for the current problems. Feed it with `set_problems`, run `run()`."""

    def __init__(self, api: KubeApi, view: ObjectView, *, instance: str, limits: EventLimits | None = None,
                 is_leader: Callable[[], bool] = lambda: True, clock: Callable[[], float] = time.monotonic) -> None:
        self.api = api
        self.view = view
        self.instance = instance
        self.limits = limits or EventLimits()
        self.is_leader = is_leader
        self.clock = clock
        self.stats = EventStats()
        self._s = _State()
        self._bucket = _Bucket(self.limits.rate_per_s, self.limits.burst, clock())
        self._per_object: dict[tuple[str, str, str], _Bucket] = {}
        self._wake = asyncio.Event()
        self._was_leader = False

    # -- inputs ------------------------------------------------------------------------------------------
    def set_problems(self, problems: Iterable[Problem]) -> None:
        now = self.clock()
        new = frozenset(problems)
        s = self._s
        if new == s.active and not s.baseline:
            return
        for p in new:
            track = s.tracks.get(p)
            if track is None:
                track = s.tracks[p] = _Track()
            track.touched = now
            if p not in s.active and not s.baseline:
                track.pending += 1  # it (re)appeared: one occurrence
                track.failed = False
        s.active = new
        s.baseline = False
        self._forget(now)
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    def _forget(self, now: float) -> None:
        tracks = self._s.tracks
        for p in [p for p, t in tracks.items() if p not in self._s.active and now - t.touched > FORGET_AFTER_S]:
            del tracks[p]
        if len(tracks) > MAX_TRACKED:
            idle = sorted((t.touched, p) for p, t in tracks.items() if p not in self._s.active)
            for _, p in idle[: len(tracks) - MAX_TRACKED]:
                del tracks[p]

    # -- running -----------------------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.limits.poll_s)
            except TimeoutError:
                pass
            self._wake.clear()
            leader = self.is_leader()
            if leader and not self._was_leader:
                # What another leader wrote meanwhile is unknown: find each current problem's Event again
                # (create, or adopt), and count nothing that happened before this replica led.
                for track in self._s.tracks.values():
                    track.count, track.pending, track.next_at, track.attempts = 0, 0, 0.0, 0
            self._was_leader = leader
            if leader:
                try:
                    await self._flush()
                except Exception:  # never let a bug here stop the control plane
                    log.exception("writing Events failed; retrying")
                    await asyncio.sleep(self.limits.poll_s)

    async def _flush(self) -> None:
        s = self._s
        now = self.clock()
        due = []
        for p, track in s.tracks.items():
            if track.failed or track.next_at > now:
                continue
            if track.count == 0 and p not in s.active:
                track.pending = 0  # gone before it was written: nothing to show any more
            elif track.count == 0 or track.pending:
                due.append(p)
        for p in sorted(due):
            if not self.is_leader():
                return
            current = s.tracks.get(p)
            if current is None:
                continue
            if current.count == 0:
                await self._ensure(p, current)
            else:
                await self._bump(p, current)

    async def _ensure(self, p: Problem, track: _Track) -> None:
        """Create the Event (first occurrence), or adopt the one that exists."""
        seen = self.view.observed(p.kind, p.namespace, p.name)
        if seen is None:
            return  # not an object in the API (file mode, or gone): no Event
        space = self.view.observed("Namespace", "", event_namespace(p))
        if space is not None and (space.status or {}).get("phase") == "Terminating":
            return  # the API server refuses new objects there (403), and the object goes with its namespace
        now = self.clock()
        key = (p.kind, p.namespace, p.name)
        bucket = self._per_object.get(key)
        if bucket is None:
            bucket = self._per_object[key] = _Bucket(1.0 / self.limits.per_object_refill_s,
                                                     self.limits.per_object_burst, now)
            if len(self._per_object) > MAX_TRACKED:
                self._per_object.pop(next(iter(self._per_object)))
        if not self._bucket.take(now):
            return  # over the global rate: next round
        if not bucket.take(now):
            self.stats.dropped += 1
            track.failed = True  # until the problem goes away and comes back
            log.debug("Event for %s %s/%s dropped: over the per-object Event budget", *key)
            return
        ns, name = event_namespace(p), event_name(p)
        try:
            await self.api.create(EVENTS, ns, event_body(p, seen, self.instance))
        except KubeApiError as exc:
            if exc.status != 409:
                self._failed(p, track, "create", exc)
                return
            try:
                current = await self.api.patch(EVENTS, ns, name, {})  # changes nothing, returns the Event
            except KubeApiError as exc2:
                self._failed(p, track, "adopt", exc2)
                return
            series = current.get("series")
            count = series.get("count") if isinstance(series, Mapping) else None
            track.count = count if isinstance(count, int) and count > 1 else 1
            self.stats.adopted += 1
        else:
            track.count = 1
            track.pending = max(0, track.pending - 1)
            self.stats.created += 1
            log.debug("Event %s/%s: %s %s on %s %s/%s", ns, name, p.reason, p.message, *key)
        self._written(track)

    async def _bump(self, p: Problem, track: _Track) -> None:
        if not self._bucket.take(self.clock()):
            return
        ns, name = event_namespace(p), event_name(p)
        count = track.count + track.pending
        try:
            await self.api.patch(EVENTS, ns, name, {"series": {"count": count, "lastObservedTime": _micro_time()}})
        except KubeApiError as exc:
            if exc.status == 404:  # expired (TTL) or deleted: start a new one
                track.count = 0
                return
            self._failed(p, track, "update", exc)
            return
        track.count, track.pending = count, 0
        self.stats.bumped += 1
        self._written(track)

    def _written(self, track: _Track) -> None:
        now = self.clock()
        track.attempts = 0
        track.touched = now
        track.next_at = now + self.limits.series_min_interval_s

    def _failed(self, p: Problem, track: _Track, what: str, exc: KubeApiError) -> None:
        self.stats.errors += 1
        if exc.retryable:
            track.attempts += 1
            delay = min(self.limits.error_backoff_max_s, 0.5 * 2 ** track.attempts)
            track.next_at = self.clock() + random.uniform(delay / 2, delay)
            log.warning("cannot %s the Event for %s %s/%s (%s); retrying", what, p.kind, p.namespace, p.name, exc)
        else:
            track.failed = True
            log.warning("the API server rejected the Event for %s %s/%s (%s: %s); not retried until the problem "
                        "comes back", p.kind, p.namespace, p.name, what, exc)
