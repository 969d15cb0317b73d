"""Status write-back: the ObjectStatus stanzas translators produce, written to the status subresource.

* **Only when changed.** Each desired stanza is compared with the status the object already has (as
  the watch last reported it). Conditions keep their ``lastTransitionTime`` while their status stays
  the same, so an unchanged stanza compares equal and costs no request. A write not yet echoed back
  by the watch is not repeated.
* **JSON merge patch** on ``/status``. Top-level status fields cilia wrote before and no longer
  produces are removed (``null``). Route ``status.parents`` entries of other controllers are kept (a
  merge patch replaces lists whole), and such a patch carries the object's resourceVersion, so a
  concurrent writer answers 409 and the write is retried on fresh data.
* **Bounded rate.** Writes are coalesced per object (the newest desired stanza wins) and limited by a
  per-object minimum interval plus a global token bucket, so a flapping object cannot storm the API
  server. Throttling (429) and server errors back off with jitter; a rejected write (4xx) is not
  retried until the desired stanza changes.
* **Only the leader writes** (``is_leader``); followers keep their desired state current, and a new
  leader re-checks every object on taking over.

CiliumEnvoyConfig / CiliumClusterwideEnvoyConfig get two conditions computed here:
``Accepted`` (False with the issue texts when translation, rendering or validation rejected something
in the config) and ``Programmed`` (False when a connected proxy NACKed a resource of the config).
Which config a NACK belongs to: the xDS server keeps, per proxy and type, each rejected resource
with Envoy's words about it, for as long as the rejection stands (a Delta proxy's later ACK of other
resources does not end it). cilia qualifies every CEC resource name as ``namespace/cec-name/resource``
(CCEC: ``/ccec-name/resource``), so a rejected resource with that prefix belongs to that config, and
every config with a rejected resource gets ``Programmed=False`` with Envoy's text about its own
resources. A NACK that names none of the several resources it answered is attributed by its text
(a config whose prefix the text contains); one naming no such prefix is attributed to no config.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from cilia.diagnostics import Issue
from cilia.k8s.kubeapi import KubeApi, KubeApiError, Resource
from cilia.k8s.kubesource import SOURCE, ObservedObject
from cilia.translate.context import ObjectStatus

log = logging.getLogger("cilia.status")

# Kinds whose status cilia writes, and the one verb it uses on their status subresource (cilia.k8s.rbac).
STATUS_KINDS = frozenset({
    "Ingress", "GatewayClass", "Gateway", "HTTPRoute", "GRPCRoute", "TLSRoute", "TCPRoute", "ListenerSet",
    "BackendTLSPolicy", "CiliumEnvoyConfig", "CiliumClusterwideEnvoyConfig", "CiliumNetworkPolicy",
    "CiliumClusterwideNetworkPolicy",
})
STATUS_VERBS = ("patch",)
CEC_KINDS = ("CiliumEnvoyConfig", "CiliumClusterwideEnvoyConfig")
MAX_MESSAGE = 1024

Key = tuple[str, str, str]  # kind, namespace, name


@dataclass(frozen=True, slots=True)
class WriteLimits:
    min_interval_s: float = 1.0  # per object: at most one write per this interval
    rate_per_s: float = 10.0  # global token bucket: sustained writes per second ...
    burst: int = 20  # ... and how many may go at once
    error_backoff_max_s: float = 60.0
    poll_s: float = 1.0  # how often NACKs and leadership are looked at between changes


@dataclass(slots=True)
class WriterStats:
    writes: int = 0
    conflicts: int = 0
    errors: int = 0
    not_found: int = 0


@dataclass(frozen=True, slots=True, order=True)
class Nack:
    """A proxy's current rejection of the last version it was sent of one resource type."""

    proxy: str
    type_url: str
    message: str
    resource: str = ""  # the rejected resource, when known


class ObjectView(Protocol):
    """What the API server says objects are now (KubernetesSource implements it)."""

    def observed(self, kind: str, namespace: str, name: str) -> ObservedObject | None: ...

    def observed_objects(self, kind: str) -> list[ObservedObject]: ...

    def resource(self, kind: str) -> Resource | None: ...


class TokenBucket:
    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(max(1, burst))
        self.tokens = self.burst
        self.stamp = now

    def _refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, now: float) -> bool:
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def wait(self, now: float) -> float:
        self._refill(now)
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate


# -- CiliumEnvoyConfig conditions ---------------------------------------------------------------------------
def current_nacks(registry: Any) -> tuple[Nack, ...]:
    """NACKs that still stand in a `cilia.xds.status.StatusRegistry`: the proxy rejected the latest
    version it was sent of that type."""
    out: list[Nack] = []
    for pid, ps in registry.proxies.items():
        if not ps.streams:
            continue
        for type_url, ts in ps.types.items():
            rejected = ts.rejected
            out.extend(Nack(pid, type_url, text, name) for name, text in rejected.items())
            if ts.state != "NACKED":
                continue
            if ts.unattributed:
                out.append(Nack(pid, type_url, ts.unattributed))
            elif not rejected and ts.last_nack:
                out.append(Nack(pid, type_url, ts.last_nack))
    return tuple(sorted(out))


def _prefix_pattern(kind: str, namespace: str, name: str) -> re.Pattern[str]:
    prefix = f"{namespace}/{name}/" if kind == "CiliumEnvoyConfig" else f"/{name}/"
    return re.compile(r"(?<![\w.-])" + re.escape(prefix))


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def envoy_config_statuses(configs: Iterable[ObservedObject], issues: Iterable[Issue], nacks: Sequence[Nack],
                          source: str = SOURCE, *, file_mode: bool = False) -> tuple[ObjectStatus, ...]:
    """`Accepted` and `Programmed` conditions for every CEC/CCEC (pure; times are filled in on write).

    An error reported by the source (the object failed validation when read: its last valid version
    still serves) is told apart from one found by translation or rendering (the config is left out):
    in Kubernetes mode by the issue's location being `source`, in file mode by it naming a file."""
    by_object: dict[str, list[Issue]] = {}
    for issue in issues:
        if issue.severity == "error":
            by_object.setdefault(issue.object, []).append(issue)
    out = []
    for cfg in configs:
        label = f"{cfg.kind} {cfg.namespace}/{cfg.name}" if cfg.namespace else f"{cfg.kind} {cfg.name}"
        errors = sorted(set(by_object.get(label, ())))
        if errors:
            accepted = {"type": "Accepted", "status": "False", "reason": "Invalid",
                        "message": _clip("; ".join(f"{i.field}: {i.message}" if i.field else i.message
                                                   for i in errors))}
        else:
            accepted = {"type": "Accepted", "status": "True", "reason": "Accepted",
                        "message": "the config is valid"}
        # Rejected by translation or rendering: nothing of it is served. Rejected by validation when
        # read from the API (issue from the source): its last valid version still is.
        left_out = any((not i.location) if file_mode else i.location != source for i in errors)
        pattern = _prefix_pattern(cfg.kind, cfg.namespace, cfg.name)
        mine = [n for n in nacks if pattern.search(n.resource or n.message)]
        if left_out:
            programmed = {"type": "Programmed", "status": "False", "reason": "Invalid",
                          "message": "the config is not sent to proxies while it has errors"}
        elif mine:
            text = "; ".join(f"{n.proxy} rejected {n.type_url.rsplit('.', 1)[-1]}"
                             f"{' ' + repr(n.resource) if n.resource else ''}: {n.message}" for n in mine)
            programmed = {"type": "Programmed", "status": "False", "reason": "Nacked", "message": _clip(text)}
        else:
            programmed = {"type": "Programmed", "status": "True", "reason": "Programmed",
                          "message": "no connected proxy has rejected this config"}
        conditions: list[dict[str, Any]] = [{**c, "observedGeneration": cfg.generation}
                                            for c in (accepted, programmed)]
        out.append(ObjectStatus(cfg.api_version, cfg.kind, cfg.namespace, cfg.name, cfg.generation,
                                {"conditions": conditions}))
    return tuple(out)


# -- comparing with what the object has ------------------------------------------------------------------------
def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _item_key(item: Any, index: int) -> Any:
    if isinstance(item, Mapping):
        if "parentRef" in item:
            return ("parent", json.dumps(item.get("parentRef"), sort_keys=True), item.get("controllerName"))
        if "name" in item:
            return ("name", item.get("name"))
    return ("index", index)


def with_transition_times(desired: Any, current: Any, now: str) -> Any:
    """A copy of `desired` whose conditions carry lastTransitionTime: the object's current one when the
    condition's status did not change, else `now` (translators are pure and cannot know the time; what
    they put there is replaced). Lists of named items (listeners, parents) are matched by key."""
    if isinstance(desired, Mapping):
        cur = current if isinstance(current, Mapping) else {}
        out: dict[str, Any] = {}
        for k, v in desired.items():
            if k == "conditions" and isinstance(v, list):
                old = {c.get("type"): c for c in (cur.get(k) or []) if isinstance(c, Mapping)}
                conds = []
                for c in v:
                    c = dict(c) if isinstance(c, Mapping) else c
                    if isinstance(c, dict):
                        prev = old.get(c.get("type"))
                        if prev is not None and prev.get("status") == c.get("status") \
                                and prev.get("lastTransitionTime"):
                            c["lastTransitionTime"] = prev["lastTransitionTime"]
                        else:  # new or changed: it transitions now, whatever a pure translator assumed
                            c["lastTransitionTime"] = now
                    conds.append(c)
                out[k] = conds
            else:
                out[k] = with_transition_times(v, cur.get(k), now)
        return out
    if isinstance(desired, list):
        cur_items = current if isinstance(current, list) else []
        by_key = {_item_key(c, i): c for i, c in enumerate(cur_items)}
        return [with_transition_times(d, by_key.get(_item_key(d, i)), now) for i, d in enumerate(desired)]
    return copy.deepcopy(desired)


def merge_foreign_parents(desired: dict[str, Any], current: Mapping[str, Any]) -> bool:
    """Keep `status.parents` entries written by other controllers. Returns whether any were kept."""
    parents = desired.get("parents")
    cur = current.get("parents")
    if not isinstance(parents, list) or not isinstance(cur, list):
        return False
    ours = {p.get("controllerName") for p in parents if isinstance(p, Mapping)}
    foreign = [p for p in cur if isinstance(p, Mapping) and p.get("controllerName") not in ours]
    if foreign:
        desired["parents"] = [*foreign, *parents]
    return bool(foreign)


@dataclass(frozen=True, slots=True)
class _Plan:
    resource: Resource
    body: dict[str, Any]
    fingerprint: str
    keys: frozenset[str]
    rv_before: str


class StatusWriter:
    """Keeps object statuses in step with the latest translation. Feed it with `set_inputs`, run `run()`."""

    def __init__(self, api: KubeApi, view: ObjectView, *, limits: WriteLimits | None = None,
                 is_leader: Callable[[], bool] = lambda: True, field_manager: str = "cilia",
                 source: str = SOURCE, clock: Callable[[], float] = time.monotonic,
                 on_recompute: Callable[[Sequence[Issue], Sequence[ObjectStatus]], None] | None = None) -> None:
        self.api = api
        self.view = view
        self.limits = limits or WriteLimits()
        self.is_leader = is_leader
        self.field_manager = field_manager
        self.source = source
        self.clock = clock
        self.on_recompute = on_recompute  # told the issues and desired statuses after each change (Events)
        self.stats = WriterStats()
        self._translated: dict[Key, ObjectStatus] = {}
        self._issues: tuple[Issue, ...] = ()
        self._nacks: tuple[Nack, ...] = ()
        self._desired: dict[Key, ObjectStatus] = {}
        self._dirty: set[Key] = set()
        self._next_allowed: dict[Key, float] = {}
        self._attempts: dict[Key, int] = {}
        self._pending: dict[Key, str] = {}  # resourceVersion before our last write, until the watch moves on
        self._owned: dict[Key, frozenset[str]] = {}  # top-level status fields cilia wrote
        self._failed: dict[Key, str] = {}  # fingerprint of a desired stanza the server rejected
        self._settled: dict[Key, tuple[ObjectStatus, str]] = {}  # (desired, resourceVersion) found in step
        self._skipped_kinds: set[str] = set()
        self._bucket = TokenBucket(self.limits.rate_per_s, self.limits.burst, clock())
        self._paused_until = 0.0
        self._wake = asyncio.Event()
        self._was_leader = False

    # -- inputs ------------------------------------------------------------------------------------------
    def set_inputs(self, statuses: Iterable[ObjectStatus], issues: Iterable[Issue]) -> None:
        """After every rebuild: the statuses translators produced and every issue found."""
        translated: dict[Key, ObjectStatus] = {}
        for st in statuses:
            if st.kind not in STATUS_KINDS:
                if st.kind not in self._skipped_kinds:
                    self._skipped_kinds.add(st.kind)
                    log.info("status of %s objects is not written back (not among the kinds cilia may patch)",
                             st.kind)
                continue
            translated[(st.kind, st.namespace, st.name)] = st
        self._translated = translated
        self._issues = tuple(issues)
        self._recompute()
        self._dirty |= set(self._desired)
        self.wake()

    def set_nacks(self, nacks: Iterable[Nack]) -> None:
        new = tuple(sorted(nacks))
        if new == self._nacks:
            return
        self._nacks = new
        self._recompute()
        self._dirty |= {k for k in self._desired if k[0] in CEC_KINDS}
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    def desired(self) -> list[ObjectStatus]:
        return [self._desired[k] for k in sorted(self._desired)]

    def _recompute(self) -> None:
        desired = dict(self._translated)
        configs = [o for kind in CEC_KINDS for o in self.view.observed_objects(kind)]
        for st in envoy_config_statuses(configs, self._issues, self._nacks, self.source):
            key = (st.kind, st.namespace, st.name)
            prev = desired.get(key)
            if prev is not None:  # a translator said something too: its conditions win by type
                theirs = list(prev.status.get("conditions") or [])
                types = {c.get("type") for c in theirs if isinstance(c, Mapping)}
                conds = theirs + [c for c in st.status["conditions"] if c["type"] not in types]
                st = ObjectStatus(prev.api_version, prev.kind, prev.namespace, prev.name, prev.generation,
                                  {**prev.status, "conditions": conds})
            desired[key] = st
        self._desired = desired
        if self.on_recompute is not None:
            self.on_recompute(self._issues, tuple(desired.values()))

    # -- planning ------------------------------------------------------------------------------------------
    def _plan(self, key: Key) -> _Plan | None:
        """The patch that brings the object to its desired status, or None when there is nothing to do."""
        want = self._desired.get(key)
        if want is None:
            return None
        seen = self.view.observed(*key)
        res = self.view.resource(key[0])
        if seen is None or res is None:
            return None  # not (or no longer) in the API; a later rebuild brings it back if it appears
        if want.generation and seen.generation and want.generation < seen.generation:
            return None  # computed from an older generation; the rebuild for the new one follows
        pending = self._pending.get(key)
        if pending is not None:
            if seen.resource_version == pending:
                return None  # our last write is not echoed back yet
            del self._pending[key]
        if self._settled.get(key) == (want, seen.resource_version):
            return None  # compared before, and neither side has changed since
        current = dict(seen.status or {})
        full = with_transition_times(want.status, current, _now())
        shared = merge_foreign_parents(full, current)
        patch: dict[str, Any] = {k: v for k, v in full.items() if current.get(k) != v}
        for k in self._owned.get(key, frozenset()) - full.keys():
            if k in current:
                patch[k] = None
        if not patch:
            self._settled[key] = (want, seen.resource_version)
            return None
        body: dict[str, Any] = {"status": patch}
        if shared:
            body["metadata"] = {"resourceVersion": seen.resource_version}
        # What the server rejected is the desired stanza (not the patch, whose new transition times vary).
        fingerprint = json.dumps(want.status, sort_keys=True, default=str)
        if self._failed.get(key) == fingerprint:
            return None
        return _Plan(res, body, fingerprint, frozenset(full), seen.resource_version)

    # -- running -------------------------------------------------------------------------------------------
    async def run(self, registry: Any = None) -> None:
        """Write until cancelled. With `registry` (a StatusRegistry), NACKs are polled every `poll_s`."""
        while True:
            timeout = self._next_due()
            poll = self.limits.poll_s
            timeout = poll if timeout is None else min(timeout, poll)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass
            self._wake.clear()
            if registry is not None:
                self.set_nacks(current_nacks(registry))
                self._wake.clear()
            leader = self.is_leader()
            if leader and not self._was_leader:
                log.info("leading: checking the status of %d objects", len(self._desired))
                self._dirty |= set(self._desired)
                self._pending.clear()
                self._settled.clear()
            self._was_leader = leader
            if leader:
                try:
                    await self._flush()
                except Exception:  # never let a bug in here stop xDS serving
                    log.exception("status write-back failed; retrying")
                    await asyncio.sleep(self.limits.poll_s)

    def _next_due(self) -> float | None:
        if not self._dirty or not self._was_leader:
            return None
        now = self.clock()
        due = min(self._next_allowed.get(k, 0.0) for k in self._dirty) - now
        return max(0.0, due, self._bucket.wait(now), self._paused_until - now)

    async def _flush(self) -> None:
        now = self.clock()
        if now < self._paused_until:
            return
        for key in sorted(self._dirty, key=lambda k: (self._next_allowed.get(k, 0.0), k)):
            if not self.is_leader():
                return
            if self._next_allowed.get(key, 0.0) > now:
                continue
            plan = self._plan(key)
            if plan is None:
                self._dirty.discard(key)
                continue
            if not self._bucket.take(now):
                return
            self._dirty.discard(key)
            await self._write(key, plan)
            now = self.clock()
            if now < self._paused_until:
                return

    async def _write(self, key: Key, plan: _Plan) -> None:
        kind, ns, name = key
        label = f"{kind} {ns}/{name}" if ns else f"{kind} {name}"
        try:
            resp = await self.api.patch_status(plan.resource, ns or None, name, plan.body, self.field_manager)
        except KubeApiError as exc:
            now = self.clock()
            if exc.status == 404:
                self.stats.not_found += 1
                log.debug("%s: gone before its status could be written", label)
            elif exc.status == 409:
                self.stats.conflicts += 1
                self._dirty.add(key)
                self._next_allowed[key] = now + self.limits.min_interval_s
            elif exc.retryable:
                self.stats.errors += 1
                n = self._attempts[key] = self._attempts.get(key, 0) + 1
                delay = min(self.limits.error_backoff_max_s, self.limits.min_interval_s * 2 ** n)
                self._next_allowed[key] = now + random.uniform(delay / 2, delay)
                self._dirty.add(key)
                if exc.retry_after:
                    self._paused_until = now + exc.retry_after
                log.warning("%s: status write failed (%s); retrying", label, exc)
            else:
                self.stats.errors += 1
                self._failed[key] = plan.fingerprint
                log.warning("%s: status write rejected (%s); not retried until the status changes", label, exc)
            return
        self.stats.writes += 1
        new_rv = str((resp.get("metadata") or {}).get("resourceVersion") or "")
        if new_rv and new_rv != plan.rv_before:
            self._pending[key] = plan.rv_before
        self._owned[key] = plan.keys
        self._attempts.pop(key, None)
        self._failed.pop(key, None)
        self._next_allowed[key] = self.clock() + self.limits.min_interval_s
        log.debug("%s: status written", label)
