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
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

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
from cilia.xds.status import ProxyStatus, TypeStatus

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
# A response ready to write, and the event its ACK sets (make-before-break waits on those of dependency types).
Out = tuple[bytes, "asyncio.Event | None"]


class Selection:
    """What a subscription (wildcard, names) selects from one view of one type, and its version: shared by
    every stream with that subscription to that view, so a change fanned out to many proxies selects and
    hashes once. Never mutated."""

    __slots__ = ("resources", "sotw_head", "version")

    def __init__(self, resources: Mapping[str, Resource], version: str) -> None:
        self.resources = resources
        self.version = version
        self.sotw_head = b""  # SotW response up to the nonce, filled on first use


class Transition:
    """A Delta stream holding `known` (name -> version) of one type, subscribed to `names`, brought to
    `sel`: what to send and what it holds afterwards. Streams in the same state share one transition, so
    the diff and the response body are computed once per distinct state, not once per stream."""

    __slots__ = ("absent", "after", "carried", "head", "known", "names", "removal", "sel", "tail", "updates")

    def __init__(self, known: Mapping[str, str], sel: Selection, names: frozenset[str],
                 updates: tuple[Resource, ...], absent: tuple[str, ...], after: Mapping[str, str], head: bytes,
                 tail: bytes) -> None:
        self.known = known  # held, so the id() in the memo key stays this object's
        self.sel = sel
        self.names = names
        # The removals transition from `after` to `sel` (the same pass's second step), found once for all
        # the streams that share this transition.
        self.removal: Transition | None = None
        self.updates = updates
        self.absent = absent
        self.after = after
        self.head = head  # the response before the nonce
        self.tail = tail  # after it (removed names)
        self.carried: tuple[tuple[str, ...], bool] = (tuple(r.name for r in updates), False)


EMPTY_KNOWN: Mapping[str, str] = MappingProxyType({})


class ResponseMemo:
    """Selections, Delta transitions and serialised response bodies shared by all streams: one change fanned
    out to a thousand proxies is selected, diffed and encoded once per distinct subscription and state;
    each stream only appends its nonce. Bounded: past `limit` entries a table starts over."""

    def __init__(self, limit: int = 4096) -> None:
        self._prefixes: dict[tuple[object, ...], bytes] = {}
        self._selections: dict[tuple[object, ...], Selection] = {}
        self._transitions: dict[tuple[object, ...], Transition] = {}
        self.limit = limit

    def select(self, view: ProxyResources, type_url: str, wildcard: bool, names: frozenset[str]) -> Selection:
        """The resources of `type_url` in `view` that a stream subscribed to `names` (and "*" when
        `wildcard`) receives, with their version."""
        key = (view, type_url, wildcard, names)
        sel = self._selections.get(key)
        if sel is None:
            resources = view.of(type_url)
            if wildcard:
                # Every named resource that exists is covered by the wildcard already.
                sel = Selection(resources, view.version(type_url))
            else:
                chosen = {n: resources[n] for n in sorted(names) if n in resources}
                sel = Selection(chosen, set_version(chosen.values()))
            if len(self._selections) >= self.limit:
                self._selections.clear()
            self._selections[key] = sel
        return sel

    def transition(self, type_url: str, known: Mapping[str, str], sel: Selection,
                   names: frozenset[str]) -> Transition:
        """Delta updates: what `sel` has that `known` lacks at that version, and subscribed names that do
        not exist (said once, as removed)."""
        key = (type_url, id(known), id(sel), names)
        tr = self._transitions.get(key)
        if tr is None or tr.known is not known or tr.sel is not sel:
            desired = sel.resources
            updates = tuple(r for n, r in desired.items() if known.get(n) != r.version)
            absent = tuple(n for n in sorted(names) if n not in desired and n not in known)
            after = dict(known)
            for r in updates:
                after[r.name] = r.version
            for n in absent:
                after[n] = ""
            tr = self._new_transition(key, known, sel, names, updates, absent,
                                      after if (updates or absent) else known, type_url)
        return tr

    def removals(self, type_url: str, known: Mapping[str, str], sel: Selection,
                 names: frozenset[str]) -> Transition:
        """Delta removals: what `known` holds that `sel` no longer has (`updates` is empty)."""
        key = ("-", type_url, id(known), id(sel), names)
        tr = self._transitions.get(key)
        if tr is None or tr.known is not known or tr.sel is not sel:
            desired = sel.resources
            gone = tuple(n for n, v in known.items() if v and n not in desired)
            after = {n: ("" if n in gone else v) for n, v in known.items() if n in names or n not in gone}
            tr = self._new_transition(key, known, sel, names, (), gone, after if gone else known, type_url)
        return tr

    def removals_after(self, type_url: str, update: Transition) -> Transition:
        """`removals` from the state `update` leaves, kept on `update` for every stream that took it."""
        tr = update.removal
        if tr is None:
            tr = update.removal = self.removals(type_url, update.after, update.sel, update.names)
        return tr

    def _new_transition(self, key: tuple[object, ...], known: Mapping[str, str], sel: Selection,
                        names: frozenset[str], updates: tuple[Resource, ...], absent: tuple[str, ...],
                        after: Mapping[str, str], type_url: str) -> Transition:
        head = b"".join([field_bytes(1, sel.version.encode()), *(field_bytes(2, r.delta_bytes) for r in updates),
                         field_bytes(4, type_url.encode())])
        tail = b"".join(field_bytes(6, n.encode()) for n in absent)
        tr = Transition(known, sel, names, updates, absent, after, head, tail)
        if len(self._transitions) >= self.limit:
            self._transitions.clear()
        self._transitions[key] = tr
        return tr

    def sotw_head(self, sel: Selection, type_url: str) -> bytes:
        """The SotW response for a selection, up to the nonce."""
        head = sel.sotw_head
        if not head:
            head = sel.sotw_head = self._prefix(False, sel.version, tuple(sel.resources.values()), type_url)
        return head

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
        return self.sotw_prefix(version, resources, type_url) + field_bytes(5, nonce.encode())

    def sotw_prefix(self, version: str, resources: Iterable[Resource], type_url: str) -> bytes:
        return self._prefix(False, version, tuple(resources), type_url)


_NONCES: dict[int, tuple[str, bytes]] = {}
NONCE_MEMO_LIMIT = 4096


def nonce_of(seq: int) -> tuple[str, bytes]:
    """Nonce number `seq` as text and as the response's encoded nonce field. Every stream counts its
    nonces 1, 2, ... per type, so a fan-out uses the same few: each is made once, not once per stream."""
    pair = _NONCES.get(seq)
    if pair is None:
        if len(_NONCES) >= NONCE_MEMO_LIMIT:
            _NONCES.clear()
        text = str(seq)
        pair = _NONCES[seq] = (text, field_bytes(5, text.encode()))
    return pair


# What a response in flight carried, by nonce: (monotonic sent, change seq, version sent, (names of the
# resources carried, whether it was the whole set), event set on its ACK or None when nothing waits on it).
Sent = tuple[float, int, str, tuple[tuple[str, ...], bool], asyncio.Event | None]
MAX_IN_FLIGHT = 64  # responses remembered per type; a proxy that never ACKs must not grow this without bound


@dataclass(slots=True)
class _TypeState:
    ts: TypeStatus
    type_url: str = ""
    initialized: bool = False
    wildcard: bool = False
    names: frozenset[str] = frozenset()
    named: bool = False  # SotW: the stream has named resources for this type (ends legacy wildcard)
    answer: set[str] | None = None  # Delta: unsubscribed while wildcard; say removed if not served
    nonce_seq: int = 0
    last_nonce: str = ""
    # SotW: what the last response carried. Delta: what the client holds (name -> version, "" = absent),
    # never changed in place: streams in the same state share one mapping (see ResponseMemo.transition).
    sent: Mapping[str, Resource] = field(default_factory=dict)
    known: Mapping[str, str] = field(default_factory=lambda: EMPTY_KNOWN)
    sent_version: str = ""
    force: bool = False  # a request that must be answered even when nothing changed
    in_flight: dict[str, Sent] = field(default_factory=dict)
    # A pass that completed against view version `synced_key` with no request since (`requests` still equal
    # to `synced_requests`) leaves nothing to do for that type until the view changes.
    synced_key: str = ""
    requests: int = 0
    synced_requests: int = -1
    pass_key: str = ""  # the view version and request count the current pass started from
    pass_requests: int = 0
    # The last selection and what it was made for: the updates and removals of one pass select once.
    sel: Selection | None = None
    sel_view: ProxyResources | None = None
    sel_names: frozenset[str] = frozenset()
    sel_wildcard: bool = False
    last_tr: Transition | None = None  # Delta: the update transition of the last pass (see removals_after)


class BaseStream:
    variant = ""

    def __init__(self, proxy: ProxyId, resources: Callable[[ProxyId], ProxyResources], status: ProxyStatus,
                 write: Writer, allowed_types: frozenset[str], limits: StreamLimits,
                 observer: XdsObserver | None = None, memo: ResponseMemo | None = None) -> None:
        self.proxy = proxy
        self.observer = observer or XdsObserver()
        self.memo = memo or ResponseMemo(limit=64)
        self._synced_seq = self.observer.change_seq
        self._change_driven = False  # the current sync pass carries a new change batch
        self._resources = resources
        self.status = status
        self._write = write
        self.allowed_types = allowed_types
        self.limits = limits
        self.types: dict[str, _TypeState] = {}
        self._order: tuple[_TypeState, ...] = ()  # self.types in push order
        self.wake = asyncio.Event()

    def _state(self, type_url: str) -> _TypeState:
        st = self.types.get(type_url)
        if st is None:
            st = self.types[type_url] = _TypeState(self.status.type(type_url), type_url)
            self._order = tuple(self.types[t] for t in self._ordered_types())
        return st

    def _select(self, type_url: str, st: _TypeState, view: ProxyResources) -> Selection:
        """`memo.select` for this type's subscription, kept on the type state while view and subscription
        are the same objects (names are replaced, never changed in place)."""
        sel = st.sel
        if sel is None or st.sel_view is not view or st.sel_names is not st.names or st.sel_wildcard != st.wildcard:
            sel = st.sel = self.memo.select(view, type_url, st.wildcard, st.names)
            st.sel_view, st.sel_names, st.sel_wildcard = view, st.names, st.wildcard
        return sel

    def _next_nonce(self, st: _TypeState) -> tuple[str, bytes]:
        """The type's next nonce, as text and as the encoded field that goes into the response."""
        st.nonce_seq += 1
        pair = nonce_of(st.nonce_seq)
        st.last_nonce = pair[0]
        return pair

    def _ack(self, type_url: str, st: _TypeState, nonce: str, sent: Sent | None, version: str, error: str) -> None:
        """The proxy's ACK (`error` empty) or NACK of the response `sent` with `nonce` (None: not in flight
        any more), already taken out of `st.in_flight`."""
        ts = st.ts
        if sent is None:
            sent_at, seq, carried, ev = 0.0, 0, None, None
        else:
            sent_at, seq, _, carried, ev = sent
        if error or ts.rejected or ts.unattributed:
            ts.settle(carried, error)
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
        if ev is not None:
            ev.set()

    def _sending(self, type_url: str, st: _TypeState, payload: bytes, version: str, count: int,
                 nonce: str, carried: tuple[tuple[str, ...], bool]) -> Out:
        """Record one response as sent (status, in-flight nonce, metrics); the caller writes it next, with no
        await in between. The event is set on its ACK, for dependency types (make-before-break waits on it).
        Computing a response is plain calls, not coroutines: a change fanned out to thousands of streams
        then leaves one coroutine per stream suspended in the write, not a chain of them for the collector."""
        ev = asyncio.Event() if type_url in DEPENDENCY_TYPES else None
        ts = st.ts
        ts.version_sent = version
        ts.nonce_sent = nonce
        ts.resources_sent = count
        ts.sent_time = time.time()
        if st.nonce_seq == 1:
            reason = "initial"
        else:
            reason = "change" if self._change_driven else "request"
        in_flight = st.in_flight
        in_flight[nonce] = (time.monotonic(), self._synced_seq if reason == "change" else 0, version, carried, ev)
        if len(in_flight) > MAX_IN_FLIGHT:
            del in_flight[next(iter(in_flight))]
        self.observer.pushed(type_url, reason, len(payload))
        return payload, ev

    def _note_in_sync(self, st: _TypeState, version: str) -> None:
        """A proxy that reconnected holding the current config is in sync without being sent anything."""
        ts = st.ts
        if not ts.version_sent:
            ts.version_sent = ts.version_acked = version

    def _ordered_types(self) -> list[str]:
        known = [t for t in TYPE_ORDER if t in self.types]
        return known + sorted(t for t in self.types if t not in TYPE_ORDER)

    async def run_writer(self) -> None:
        """Bring the proxy up to date each time the stream is woken (a new world, or a request to answer).

        Secrets, clusters and endpoints go first, without waiting in between: Envoy ACKs new clusters
        only once their endpoints arrived, so waiting for that ACK before sending endpoints would stall.
        Listeners and routes wait until those ACKs are in (bounded by `ack_wait_s`), so they never
        point at a cluster the proxy is still warming. Any request arriving meanwhile restarts the pass.

        The pass is written out here, with index loops, rather than in a coroutine of its own with list
        iterators: while a change fans out, every stream sits in its write at once, and each object held
        across that await is one more per stream for the young-generation collector to walk.
        """
        wake = self.wake
        write = self._write
        todo: list[_TypeState] = []  # the types a pass sends, reused: no new list per stream per change
        while True:
            await wake.wait()
            wake.clear()
            outstanding: list[asyncio.Event] | None = None
            deadline: float | None = None
            seq = self.observer.change_seq
            self._change_driven = seq != self._synced_seq
            self._synced_seq = seq
            for _ in range(64):  # bounded: every round sends something or waits for the proxy
                view = self._resources(self.proxy)
                restart = False
                # Types whose resources for this proxy did not change since a completed pass, with no
                # request since, are skipped: a change to one type costs the other types nothing.
                todo.clear()
                for st in self._order:
                    if st.initialized:
                        key = view.version(st.type_url)
                        if key != st.synced_key or st.requests != st.synced_requests:
                            st.pass_key, st.pass_requests = key, st.requests
                            todo.append(st)
                i = 0
                while i < len(todo):
                    st = todo[i]
                    i += 1
                    type_url = st.type_url
                    if outstanding and type_url not in DEPENDENCY_TYPES:
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
                            outstanding = None
                    out = self.next_update(type_url, st, view)
                    if out is not None:
                        payload, ev = out
                        del out
                        await write(payload)
                        if ev is not None:
                            if outstanding is None:
                                outstanding = []
                            outstanding.append(ev)
                if restart:
                    continue
                i = len(todo)
                while i:
                    i -= 1
                    st = todo[i]
                    removal = self.next_removal(st.type_url, st, view)
                    if removal is not None:
                        await write(removal)
                for st in todo:
                    st.synced_key, st.synced_requests = st.pass_key, st.pass_requests
                break

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

    def next_update(self, type_url: str, st: _TypeState, view: ProxyResources) -> Out | None:
        """The response bringing `type_url` up to date (recorded as sent), or None when none is due."""
        raise NotImplementedError

    def next_removal(self, type_url: str, st: _TypeState, view: ProxyResources) -> bytes | None:
        """The response removing what `view` no longer has (recorded as sent), or None."""
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
            sent = st.in_flight.pop(nonce, None)
            if sent is not None and sent[4] is not None:
                sent[4].set()
            return
        acked = bool(nonce) and nonce == st.last_nonce
        if acked:
            self._ack(type_url, st, nonce, st.in_flight.pop(nonce, None), version_info, error)
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
            st.names = frozenset(new_names)
            wake = True
        elif wildcard != st.wildcard or new_names != st.names:
            st.wildcard = wildcard
            st.names = frozenset(new_names)
            st.force = True
            wake = True
        if wake:
            st.requests += 1
            self.wake.set()

    def has_updates(self, type_url: str, st: _TypeState, view: ProxyResources) -> bool:
        return st.force or self._select(type_url, st, view).version != st.sent_version

    def next_update(self, type_url: str, st: _TypeState, view: ProxyResources) -> Out | None:
        sel = self._select(type_url, st, view)
        selected = sel.resources
        version = sel.version
        if not st.force and version == st.sent_version:
            self._note_in_sync(st, version)
            return None
        head = b""
        if type_url == CLUSTER:
            # Hold clusters that are going away until listeners and routes stop using them (not those the
            # proxy unsubscribed from: it no longer wants them).
            held = {n: r for n, r in st.sent.items() if n not in selected and (st.wildcard or n in st.names)}
            if held:
                selected = {**held, **selected}
                version = set_version(selected.values())
                if version == st.sent_version and not st.force:
                    return None
                head = self.memo.sotw_prefix(version, selected.values(), type_url)
        if not head:
            head = self.memo.sotw_head(sel, type_url)
        held_before = st.sent
        st.force = False
        st.sent = selected
        st.sent_version = version
        nonce, nonce_field = self._next_nonce(st)
        payload = head + nonce_field
        if self.proxy.role in NOT_FOUND_ROLES and not st.wildcard:
            # Only names the client does not hold: a name that was in the last response and is now left out
            # is a deletion (LDS/CDS), which an error would turn into "keep the cached copy".
            payload += not_found_errors(sorted(n for n in st.names if n not in selected and n not in held_before))
        return self._sending(type_url, st, payload, version, len(selected), nonce, (tuple(selected), True))

    def next_removal(self, type_url: str, st: _TypeState, view: ProxyResources) -> bytes | None:
        if type_url != CLUSTER:
            return None
        sel = self._select(type_url, st, view)
        selected = sel.resources
        if any(n not in selected for n in st.sent):
            st.sent = selected
            st.sent_version = sel.version
            nonce, nonce_field = self._next_nonce(st)
            payload = self.memo.sotw_head(sel, type_url) + nonce_field
            return self._sending(type_url, st, payload, sel.version, len(selected), nonce, (tuple(selected), True))[0]
        return None


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

    def handle(self, type_url: str, subscribe: Collection[str], unsubscribe: Collection[str],
               initial_versions: Mapping[str, str], nonce: str, error: str) -> None:
        st = self._state(type_url)
        if nonce:
            self._answer(type_url, st, nonce, error)
        first = not st.initialized
        # A plain ACK/NACK changes nothing to send (ACK waits use events): no writer pass for it.
        if nonce and not first and not subscribe and not unsubscribe:
            return
        sub = set(subscribe)
        unsub = set(unsubscribe)
        if first:
            st.initialized = True
            # Legacy wildcard: the first request names nothing, in subscribe nor unsubscribe.
            st.wildcard = (not sub and not unsub) or WILDCARD in sub
            st.known = dict(initial_versions) if initial_versions else EMPTY_KNOWN
            # A first wildcard request is answered even when there is nothing to send: Envoy's initialization
            # waits for that answer (15 s of initial_fetch_timeout per type otherwise).
            st.force = st.wildcard
        elif WILDCARD in sub:
            st.wildcard = True
        if WILDCARD in unsub:
            st.wildcard = False
        sub.discard(WILDCARD)
        unsub.discard(WILDCARD)
        names = (st.names | sub) - unsub
        if len(names) > self.limits.max_subscriptions:
            raise ValueError(f"{len(names)} resource names for {type_url}: over the limit of "
                             f"{self.limits.max_subscriptions}")
        if names != st.names:
            st.names = names
        # `known` is shared with other streams (copy on write): the client dropped these, or (a subscribe
        # on a stream it has used before) may have forgotten them; either way they are sent again.
        drop = unsub if first else unsub | sub
        if any(n in st.known for n in drop):
            st.known = {n: v for n, v in st.known.items() if n not in drop}
        if st.wildcard and unsub:
            # Spec: with "*" plus this name, the client cannot tell whether to keep it, so it is
            # answered: sent again if the wildcard covers it, else named in removed_resources.
            st.answer = (st.answer or set()) | unsub
        if st.answer and not first:
            st.answer -= sub
        st.requests += 1
        self.wake.set()

    def ack(self, type_url: str, nonce: str) -> None:
        """`handle` of a request that carries only `nonce`: the proxy's ACK of one response, which changes
        no subscription and needs no writer pass (the common request, once per stream per change)."""
        st = self.types.get(type_url)
        if st is None or not st.initialized:
            self.handle(type_url, (), (), EMPTY_KNOWN, nonce, "")
            return
        sent = st.in_flight.pop(nonce, None)
        if sent is not None:
            self._ack(type_url, st, nonce, sent, sent[2], "")
        else:
            self._answer_sent(type_url, st, nonce, None, "")

    def _answer(self, type_url: str, st: _TypeState, nonce: str, error: str) -> None:
        """The ACK/NACK part of a request: for the response in flight with `nonce`, or the last one sent."""
        self._answer_sent(type_url, st, nonce, st.in_flight.pop(nonce, None), error)

    def _answer_sent(self, type_url: str, st: _TypeState, nonce: str, sent: Sent | None, error: str) -> None:
        """`_answer`, with the response in flight for `nonce` already taken out (None: not in flight)."""
        if sent is not None:
            # Several responses may be in flight: the ACK is for the version sent with that nonce.
            self._ack(type_url, st, nonce, sent, sent[2], error)
        elif nonce == st.last_nonce:
            self._ack(type_url, st, nonce, None, st.ts.version_sent, error)
        else:
            log.info("%s: unknown nonce %s for %s, ACK part ignored", self.proxy, nonce, type_url)

    def has_updates(self, type_url: str, st: _TypeState, view: ProxyResources) -> bool:
        if st.force:
            return True
        sel = self._select(type_url, st, view)
        tr = self.memo.transition(type_url, st.known, sel, st.names)
        return bool(tr.updates or tr.absent or self._answered(st, sel))

    @staticmethod
    def _answered(st: _TypeState, sel: Selection) -> list[str]:
        """Names the client unsubscribed from while wildcard that it is not sent: told removed."""
        if not st.answer:
            return []
        return sorted(n for n in st.answer if n not in sel.resources and n not in st.names)

    def next_update(self, type_url: str, st: _TypeState, view: ProxyResources) -> Out | None:
        sel = self._select(type_url, st, view)
        tr = st.last_tr = self.memo.transition(type_url, st.known, sel, st.names)
        extra = self._answered(st, sel) if st.answer else ()
        st.answer = None
        if not tr.updates and not tr.absent and not extra and not st.force:
            self._note_in_sync(st, sel.version)
            return None
        st.force = False
        st.known = tr.after
        nonce, nonce_field = self._next_nonce(st)
        payload = tr.head + nonce_field + tr.tail
        if extra:
            payload += b"".join(field_bytes(6, n.encode()) for n in extra)
        if tr.absent or extra:
            st.ts.forget((*tr.absent, *extra))
        return self._sending(type_url, st, payload, sel.version, len(tr.updates), nonce, tr.carried)

    def next_removal(self, type_url: str, st: _TypeState, view: ProxyResources) -> bytes | None:
        sel = self._select(type_url, st, view)
        update = st.last_tr
        if (update is not None and update.after is st.known and update.sel is sel
                and (update.names is st.names or update.names == st.names)):
            tr = self.memo.removals_after(type_url, update)
        else:
            tr = self.memo.removals(type_url, st.known, sel, st.names)
        if not tr.absent:
            return None
        st.known = tr.after
        nonce, nonce_field = self._next_nonce(st)
        st.ts.forget(tr.absent)
        return self._sending(type_url, st, tr.head + nonce_field + tr.tail, sel.version, 0, nonce,
                             tr.carried)[0]
