"""Per-stream xDS protocol state for State-of-the-World and Delta, with make-before-break pushes.

Each gRPC stream has one reader (requests -> state) and one writer (state + world -> responses).
The writer sends, in order, secrets, clusters, endpoints, listeners, routes; after sending new
clusters or secrets it waits (bounded) for the proxy's ACK before sending what refers to them, and it
sends removals last, in reverse order, so a proxy never holds a route to a cluster it lacks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

from cilia.identity import ProxyId
from cilia.render.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    SECRET,
    TYPE_ORDER,
    Resource,
    field_bytes,
    not_found_errors,
    set_version,
)
from cilia.render.world import ProxyResources
from cilia.xds.hooks import XdsObserver
from cilia.xds.status import ProxyStatus

log = logging.getLogger("cilia.xds")

FULL_STATE_TYPES = frozenset({LISTENER, CLUSTER})  # SotW: every response carries the whole set
# SotW: roles told NOT_FOUND (resource_errors) for subscribed names they never held. gRPC's xDS client does
# not take a name's absence from a response as "does not exist" for a name it has not received yet (it
# waits 15 s); with these errors it fails the channel at once. Envoys are not sent them.
NOT_FOUND_ROLES = frozenset({"grpc"})
DEPENDENCY_TYPES = frozenset({SECRET, CLUSTER, ENDPOINT})  # referred to by later types
WILDCARD = "*"


@dataclass(frozen=True, slots=True)
class StreamLimits:
    ack_wait_s: float = 2.0  # how long make-before-break waits for an ACK before going on
    max_subscriptions: int = 100_000  # resource names one stream may subscribe to, per type


Writer = Callable[[bytes], Awaitable[None]]


class ResponseMemo:
    """Serialised response bodies shared by all streams: one change fanned out to a thousand proxies is
    encoded once; each stream only appends its nonce (and, Delta, its removals). Bounded."""

    def __init__(self, limit: int = 1024) -> None:
        self._prefixes: dict[tuple[object, ...], bytes] = {}
        self.limit = limit

    def _prefix(self, delta: bool, version: str, resources: tuple[Resource, ...], type_url: str) -> bytes:
        key = (delta, type_url, version, resources)
        prefix = self._prefixes.get(key)
        if prefix is None:
            if len(self._prefixes) >= self.limit:
                self._prefixes.clear()
            parts = [field_bytes(1, version.encode())]
            parts.extend(field_bytes(2, r.delta_bytes if delta else r.any_bytes) for r in resources)
            parts.append(field_bytes(4, type_url.encode()))
            prefix = self._prefixes[key] = b"".join(parts)
        return prefix

    def delta(self, version: str, resources: Iterable[Resource], type_url: str, removed: Iterable[str],
              nonce: str) -> bytes:
        """Same bytes as `delta_response`."""
        tail = b"".join(field_bytes(6, n.encode()) for n in removed)
        return self._prefix(True, version, tuple(resources), type_url) + field_bytes(5, nonce.encode()) + tail

    def sotw(self, version: str, resources: Iterable[Resource], type_url: str, nonce: str) -> bytes:
        """Same bytes as `sotw_response`."""
        return self._prefix(False, version, tuple(resources), type_url) + field_bytes(5, nonce.encode())


@dataclass(slots=True)
class _TypeState:
    initialized: bool = False
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    named: bool = False  # SotW: the stream has named resources for this type (ends legacy wildcard)
    answer: set[str] = field(default_factory=set)  # Delta: unsubscribed while wildcard; say removed if not served
    nonce_seq: int = 0
    last_nonce: str = ""
    # SotW: what the last response carried; Delta: what the client holds (name -> version, "" = absent)
    sent: dict[str, Resource] = field(default_factory=dict)
    known: dict[str, str] = field(default_factory=dict)
    sent_version: str = ""
    force: bool = False  # a request that must be answered even when nothing changed
    pending_acks: dict[str, asyncio.Event] = field(default_factory=dict)
    # nonce -> (monotonic sent, change seq, version sent)
    sent_info: dict[str, tuple[float, int, str]] = field(default_factory=dict)
    # nonce -> (names of the resources the response carried, whether it carried the whole set)
    carried: dict[str, tuple[tuple[str, ...], bool]] = field(default_factory=dict)
    # A pass that completed against view version `synced_key` with no request since (`requests` still equal
    # to `synced_requests`) leaves nothing to do for that type until the view changes.
    synced_key: str = ""
    requests: int = 0
    synced_requests: int = -1
    desired_memo: tuple[ProxyResources, int, Mapping[str, Resource]] | None = None  # Delta, named subscriptions


class BaseStream:
    variant = ""

    def __init__(self, proxy: ProxyId, resources: Callable[[ProxyId], ProxyResources], status: ProxyStatus,
                 write: Writer, allowed_types: frozenset[str], limits: StreamLimits,
                 observer: XdsObserver | None = None, memo: ResponseMemo | None = None) -> None:
        self.proxy = proxy
        self.observer = observer or XdsObserver()
        self.memo = memo or ResponseMemo(limit=8)
        self._synced_seq = self.observer.change_seq
        self._change_driven = False  # the current sync pass carries a new change batch
        self._resources = resources
        self.status = status
        self._write = write
        self.allowed_types = allowed_types
        self.limits = limits
        self.types: dict[str, _TypeState] = {}
        self.wake = asyncio.Event()

    def _state(self, type_url: str) -> _TypeState:
        st = self.types.get(type_url)
        if st is None:
            st = self.types[type_url] = _TypeState()
        return st

    def _next_nonce(self, st: _TypeState) -> str:
        st.nonce_seq += 1
        st.last_nonce = f"{st.nonce_seq}"
        return st.last_nonce

    def _ack(self, type_url: str, st: _TypeState, nonce: str, version: str, error: str) -> None:
        ts = self.status.type(type_url)
        sent_at, seq, _ = st.sent_info.pop(nonce, (0.0, 0, ""))
        ts.settle(st.carried.pop(nonce, None), error)
        if error:
            self.observer.nacked(self.status.proxy_id, self.variant, type_url, sent_at, seq, error)
            ts.nacks += 1
            ts.last_nack = error
            ts.last_nack_version = ts.version_sent if nonce == st.last_nonce else version
            ts.last_nack_time = time.time()
            log.warning("%s NACKed %s (nonce %s): %s", self.proxy, type_url.rsplit(".", 1)[-1], nonce, error,
                        extra={"proxy_id": str(self.proxy)})
        else:
            if sent_at:
                self.observer.acked(self.status.proxy_id, self.variant, type_url, sent_at, seq, version)
            ts.acks += 1
            ts.version_acked = version
            ts.acked_time = time.time()
        ev = st.pending_acks.pop(nonce, None)
        if ev is not None:
            ev.set()

    async def _send(self, type_url: str, st: _TypeState, payload: bytes, version: str, count: int,
                    nonce: str, names: tuple[str, ...] = (), complete: bool = False) -> asyncio.Event:
        ev = asyncio.Event()
        st.carried[nonce] = (names, complete)
        if len(st.carried) > 64:
            st.carried.pop(next(iter(st.carried)))
        st.pending_acks[nonce] = ev
        if len(st.pending_acks) > 64:  # a proxy that never ACKs must not grow this without bound
            st.pending_acks.pop(next(iter(st.pending_acks)))
        ts = self.status.type(type_url)
        ts.version_sent = version
        ts.nonce_sent = nonce
        ts.resources_sent = count
        ts.sent_time = time.time()
        if st.nonce_seq == 1:
            reason = "initial"
        else:
            reason = "change" if self._change_driven else "request"
        seq = self._synced_seq if reason == "change" else 0
        st.sent_info[nonce] = (time.monotonic(), seq, version)
        if len(st.sent_info) > 64:
            st.sent_info.pop(next(iter(st.sent_info)))
        self.observer.pushed(type_url, reason, len(payload))
        await self._write(payload)
        return ev

    def _note_in_sync(self, type_url: str, version: str) -> None:
        """A proxy that reconnected holding the current config is in sync without being sent anything."""
        ts = self.status.type(type_url)
        if not ts.version_sent:
            ts.version_sent = ts.version_acked = version

    def _ordered_types(self) -> list[str]:
        known = [t for t in TYPE_ORDER if t in self.types]
        return known + sorted(t for t in self.types if t not in TYPE_ORDER)

    async def run_writer(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            await self.sync()

    async def sync(self) -> None:
        """Bring the proxy up to date.

        Secrets, clusters and endpoints go first, without waiting in between: Envoy ACKs new clusters
        only once their endpoints arrived, so waiting for that ACK before sending endpoints would stall.
        Listeners and routes wait until those ACKs are in (bounded by `ack_wait_s`), so they never
        point at a cluster the proxy is still warming. Any request arriving meanwhile restarts the pass.
        """
        outstanding: list[asyncio.Event] = []
        deadline: float | None = None
        seq = self.observer.change_seq
        self._change_driven = seq != self._synced_seq
        self._synced_seq = seq
        for _ in range(64):  # bounded: every round sends something or waits for the proxy
            view = self._resources(self.proxy)
            types = self._ordered_types()
            restart = False
            # Types whose resources for this proxy did not change since a completed pass, with no
            # request since, are skipped: a change to one type costs the other types nothing.
            start = {t: (view.version(t), self.types[t].requests) for t in types}
            todo = [t for t in types if self.types[t].initialized
                    and (self.types[t].synced_key, self.types[t].synced_requests) != start[t]]
            for type_url in todo:
                st = self.types[type_url]
                if type_url not in DEPENDENCY_TYPES:
                    outstanding = [ev for ev in outstanding if not ev.is_set()]
                    if outstanding and self.has_updates(type_url, st, view):
                        loop = asyncio.get_running_loop()
                        if deadline is None:
                            deadline = loop.time() + self.limits.ack_wait_s
                        if loop.time() < deadline:
                            await self._wait_acks_or_wake(outstanding, deadline - loop.time())
                            restart = True
                            break
                        log.info("%s: dependencies not ACKed within %.1fs, going on", self.proxy,
                                 self.limits.ack_wait_s)
                        outstanding = []
                ev = await self.push_updates(type_url, st, view)
                if ev is not None and type_url in DEPENDENCY_TYPES:
                    outstanding.append(ev)
            if restart:
                continue
            for type_url in reversed(todo):
                await self.push_removals(type_url, self.types[type_url], view)
            for type_url in todo:
                st = self.types[type_url]
                st.synced_key, st.synced_requests = start[type_url]
            return

    async def _wait_acks_or_wake(self, events: list[asyncio.Event], wait_s: float) -> None:
        async def all_acked() -> None:
            for ev in events:
                await ev.wait()

        acked = asyncio.ensure_future(all_acked())
        woken = asyncio.ensure_future(self.wake.wait())
        try:
            await asyncio.wait({acked, woken}, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            acked.cancel()
            woken.cancel()
        self.wake.clear()

    def sent_resources(self, type_url: str) -> list[tuple[str, str, Resource | None]]:
        """What the proxy was last sent of `type_url`: (name, version, resource or None when the
        bytes of that version are no longer at hand), sorted by name. For debug views and CSDS."""
        raise NotImplementedError

    # subclasses
    def has_updates(self, type_url: str, st: _TypeState, view: ProxyResources) -> bool:
        raise NotImplementedError

    async def push_updates(self, type_url: str, st: _TypeState, view: ProxyResources) -> asyncio.Event | None:
        raise NotImplementedError

    async def push_removals(self, type_url: str, st: _TypeState, view: ProxyResources) -> None:
        raise NotImplementedError


class SotwStream(BaseStream):
    variant = "sotw"

    def sent_resources(self, type_url: str) -> list[tuple[str, str, Resource | None]]:
        st = self.types.get(type_url)
        if st is None:
            return []
        return [(name, res.version, res) for name, res in sorted(st.sent.items())]

    def handle(self, type_url: str, version_info: str, names: Iterable[str], nonce: str, error: str) -> None:
        st = self._state(type_url)
        # Nonces live as long as their stream: one sent on an earlier stream (nothing sent yet on this one)
        # is no ACK of anything, and the request is served like one without a nonce.
        if nonce and st.last_nonce and nonce != st.last_nonce:
            log.debug("%s: stale nonce %s for %s (current %s), ignored", self.proxy, nonce, type_url, st.last_nonce)
            # The proxy did process that response: a make-before-break wait on it is over, though the
            # request itself is superseded (spec: no response to a stale nonce, no state change).
            st.sent_info.pop(nonce, None)
            st.carried.pop(nonce, None)
            ev = st.pending_acks.pop(nonce, None)
            if ev is not None:
                ev.set()
            return
        acked = bool(nonce) and nonce == st.last_nonce
        if acked:
            self._ack(type_url, st, nonce, version_info, error)
        new_names = set(names)
        if len(new_names) > self.limits.max_subscriptions:
            raise ValueError(f"{len(new_names)} resource names for {type_url}: over the limit of "
                             f"{self.limits.max_subscriptions}")
        # Legacy wildcard (LDS/CDS): an empty list means "*" only while no request of this type on the
        # stream has named anything; after that it unsubscribes from everything.
        legacy = type_url in FULL_STATE_TYPES and not new_names and not st.named
        st.named = st.named or bool(new_names)
        wildcard = legacy or WILDCARD in new_names
        new_names.discard(WILDCARD)
        wake = not acked  # a plain ACK/NACK with unchanged names needs no pass (ACK waits use events)
        if not st.initialized:
            st.initialized = True
            # A reconnecting proxy tells us what it has; if that is current, nothing needs sending.
            st.sent_version = version_info
            st.force = not version_info
            st.wildcard = wildcard
            st.names = new_names
            wake = True
        elif wildcard != st.wildcard or new_names != st.names:
            st.wildcard = wildcard
            st.names = new_names
            st.force = True
            wake = True
        if wake:
            st.requests += 1
            self.wake.set()

    def _selected(self, type_url: str, st: _TypeState, view: ProxyResources) -> dict[str, Resource]:
        resources = view.of(type_url)
        if st.wildcard:
            out = dict(resources)
            for n in st.names:
                if n in resources:
                    out[n] = resources[n]
            return out
        return {n: resources[n] for n in st.names if n in resources}

    def _version(self, type_url: str, st: _TypeState, selected: Mapping[str, Resource],
                 view: ProxyResources) -> str:
        if st.wildcard and not st.names:
            return view.version(type_url)
        return set_version(selected.values())

    def has_updates(self, type_url: str, st: _TypeState, view: ProxyResources) -> bool:
        selected = self._selected(type_url, st, view)
        return st.force or self._version(type_url, st, selected, view) != st.sent_version

    async def push_updates(self, type_url: str, st: _TypeState, view: ProxyResources) -> asyncio.Event | None:
        selected = self._selected(type_url, st, view)
        version = self._version(type_url, st, selected, view)
        if not st.force and version == st.sent_version:
            self._note_in_sync(type_url, version)
            return None
        if type_url == CLUSTER:
            # Hold clusters that are going away until listeners and routes stop using them (not those the
            # proxy unsubscribed from: it no longer wants them).
            held = {n: r for n, r in st.sent.items() if n not in selected and (st.wildcard or n in st.names)}
            if held:
                selected = {**held, **selected}
                version = set_version(selected.values())
                if version == st.sent_version and not st.force:
                    return None
        held = st.sent
        st.force = False
        st.sent = selected
        st.sent_version = version
        nonce = self._next_nonce(st)
        payload = self.memo.sotw(version, selected.values(), type_url, nonce)
        if self.proxy.role in NOT_FOUND_ROLES and not st.wildcard:
            # Only names the client does not hold: a name that was in the last response and is now left out
            # is a deletion (LDS/CDS), which an error would turn into "keep the cached copy".
            payload += not_found_errors(sorted(n for n in st.names if n not in selected and n not in held))
        return await self._send(type_url, st, payload, version, len(selected), nonce, tuple(selected), True)

    async def push_removals(self, type_url: str, st: _TypeState, view: ProxyResources) -> None:
        if type_url != CLUSTER:
            return
        selected = self._selected(type_url, st, view)
        if set(st.sent) - set(selected):
            version = self._version(type_url, st, selected, view)
            st.sent = selected
            st.sent_version = version
            nonce = self._next_nonce(st)
            await self._send(type_url, st, self.memo.sotw(version, selected.values(), type_url, nonce), version,
                             len(selected), nonce, tuple(selected), True)


class DeltaStream(BaseStream):
    variant = "delta"

    def sent_resources(self, type_url: str) -> list[tuple[str, str, Resource | None]]:
        # Delta keeps only versions per name (memory per stream); the bytes come from the current view
        # when its version is the one sent, which holds except while a newer one is in flight.
        st = self.types.get(type_url)
        if st is None:
            return []
        current = self._resources(self.proxy).of(type_url)
        out: list[tuple[str, str, Resource | None]] = []
        for name, version in sorted(st.known.items()):
            if not version:
                continue
            res = current.get(name)
            out.append((name, version, res if res is not None and res.version == version else None))
        return out

    def handle(self, type_url: str, subscribe: Iterable[str], unsubscribe: Iterable[str],
               initial_versions: Mapping[str, str], nonce: str, error: str) -> None:
        st = self._state(type_url)
        if nonce:
            if nonce in st.pending_acks or nonce == st.last_nonce:
                # Several responses may be in flight: the ACK is for the version sent with that nonce.
                info = st.sent_info.get(nonce)
                version = info[2] if info is not None else self.status.type(type_url).version_sent
                self._ack(type_url, st, nonce, version, error)
            else:
                log.info("%s: unknown nonce %s for %s, ACK part ignored", self.proxy, nonce, type_url)
        sub = set(subscribe)
        unsub = set(unsubscribe)
        # A plain ACK/NACK changes nothing to send (ACK waits use events): no writer pass for it.
        wake = not nonce or not st.initialized or bool(sub or unsub)
        first = not st.initialized
        if first:
            st.initialized = True
            # Legacy wildcard: the first request names nothing, in subscribe nor unsubscribe.
            st.wildcard = (not sub and not unsub) or WILDCARD in sub
            st.known = {n: v for n, v in initial_versions.items()}
            # A first wildcard request is answered even when there is nothing to send: Envoy's initialization
            # waits for that answer (15 s of initial_fetch_timeout per type otherwise).
            st.force = st.wildcard
        elif WILDCARD in sub:
            st.wildcard = True
        if WILDCARD in unsub:
            st.wildcard = False
        sub.discard(WILDCARD)
        unsub.discard(WILDCARD)
        st.names |= sub
        st.names -= unsub
        if len(st.names) > self.limits.max_subscriptions:
            raise ValueError(f"{len(st.names)} resource names for {type_url}: over the limit of "
                             f"{self.limits.max_subscriptions}")
        for n in unsub:
            st.known.pop(n, None)  # the client dropped it; a later subscribe must resend
            if st.wildcard:
                # Spec: with "*" plus this name, the client cannot tell whether to keep it, so it is
                # answered: sent again if the wildcard covers it, else named in removed_resources.
                st.answer.add(n)
        if not first:
            # Spec: a subscribe must be answered even if the client seems to hold the current version
            # (it may have forgotten it). On a new stream, initial_resource_versions say what it holds.
            for n in sub:
                st.known.pop(n, None)
                st.answer.discard(n)
        if wake:
            st.requests += 1
            self.wake.set()

    def _desired(self, type_url: str, st: _TypeState, view: ProxyResources) -> Mapping[str, Resource]:
        resources = view.of(type_url)
        if st.wildcard and not st.names:
            return resources
        memo = st.desired_memo
        if memo is not None and memo[0] is view and memo[1] == st.requests:
            return memo[2]  # names change only with a request, which bumps st.requests
        out = dict(resources) if st.wildcard else {}
        for n in st.names:
            if n in resources:
                out[n] = resources[n]
        st.desired_memo = (view, st.requests, out)
        return out

    def _diff(self, type_url: str, st: _TypeState, view: ProxyResources) -> tuple[list[Resource], list[str]]:
        desired = self._desired(type_url, st, view)
        known = st.known
        updates = [r for n, r in desired.items() if known.get(n) != r.version]
        # Named resources that do not exist: say so once, as removed, so the proxy stops waiting.
        absent = [n for n in st.names if n not in desired and n not in known]
        absent.extend(n for n in st.answer if n not in desired and n not in st.names)
        return updates, absent

    def has_updates(self, type_url: str, st: _TypeState, view: ProxyResources) -> bool:
        updates, absent = self._diff(type_url, st, view)
        return bool(updates or absent) or st.force

    def _system_version(self, type_url: str, st: _TypeState, view: ProxyResources) -> str:
        if st.wildcard and not st.names:
            return view.version(type_url)
        return set_version(self._desired(type_url, st, view).values())

    async def push_updates(self, type_url: str, st: _TypeState, view: ProxyResources) -> asyncio.Event | None:
        updates, absent = self._diff(type_url, st, view)
        if not updates and not absent and not st.force:
            st.answer.clear()
            self._note_in_sync(type_url, self._system_version(type_url, st, view))
            return None
        st.force = False
        for r in updates:
            st.known[r.name] = r.version
        for n in absent:
            if n in st.names:
                st.known[n] = ""
        st.answer.clear()
        version = self._system_version(type_url, st, view)
        nonce = self._next_nonce(st)
        payload = self.memo.delta(version, updates, type_url, absent, nonce)
        self.status.type(type_url).forget(absent)
        return await self._send(type_url, st, payload, version, len(updates), nonce, tuple(r.name for r in updates))

    async def push_removals(self, type_url: str, st: _TypeState, view: ProxyResources) -> None:
        desired = self._desired(type_url, st, view)
        gone = [n for n, v in st.known.items() if v and n not in desired]
        if not gone:
            return
        for n in gone:
            if n in st.names:
                st.known[n] = ""
            else:
                del st.known[n]
        version = self._system_version(type_url, st, view)
        nonce = self._next_nonce(st)
        self.status.type(type_url).forget(gone)
        await self._send(type_url, st, self.memo.delta(version, (), type_url, gone, nonce), version, 0, nonce)
