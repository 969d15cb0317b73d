"""Per-unit memo for translators: reuse one unit's output (a route's resolved rules, a Gateway's IR) when
none of the objects it read changed since it was computed.

`ObjectReads` records what one unit of work read, object by object: `get` records the object it returned
(or that there was none), `list`/`count` record the kind's whole mapping. The store replaces only objects
whose content changed and keeps a kind's mapping object while nothing of that kind changed, so identity
(`is`) says "unchanged" without comparing content. Anything else read through the view makes the unit
opaque, and an opaque unit is never reused. Checking a record replays its reads through the snapshot the
translator is given, so outer recorders (the per-translator kind recorder in translate/__init__.py, or a
unit enclosing this one) learn what the reused unit depends on, exactly as if it had been recomputed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from cilia.k8s.objects import KubeObject
from cilia.k8s.store import InputSnapshot, Stamp
from cilia.translate.context import Memo

V = TypeVar("V")
_DISABLED: list[bool] = []  # non-empty: every unit is computed afresh and nothing is memoised


@contextmanager
def memo_disabled() -> Iterator[None]:
    """Translate from scratch inside this block (the oracle an incremental translation is checked with)."""
    _DISABLED.append(True)
    try:
        yield
    finally:
        _DISABLED.pop()


def memo_enabled() -> bool:
    """False inside `memo_disabled()`: translators must then neither reuse nor remember results."""
    return not _DISABLED


def root_snapshot(snapshot: Any) -> InputSnapshot | None:
    """The InputSnapshot under any recording views; None when it cannot be found (then nothing is reused)."""
    for _ in range(16):
        if isinstance(snapshot, InputSnapshot):
            return snapshot
        inner = getattr(type(snapshot), "_snapshot", None)
        if inner is None:
            return None
        snapshot = inner.__get__(snapshot)
    return None


def _kind_map(root: InputSnapshot, kind: str) -> Any:
    return root.objects.get(kind)


@dataclass(frozen=True, slots=True)
class Reads:
    """What one unit read: objects by key (None: looked up and absent) and whole kinds (their mapping)."""

    objects: tuple[tuple[str, str, str, KubeObject | None], ...]
    kinds: tuple[tuple[str, Any], ...]
    keys: frozenset[tuple[str, str, str]] = frozenset()  # the objects' keys
    kind_names: frozenset[str] = frozenset()  # every kind read, by object or whole

    @classmethod
    def of(cls, objects: tuple[tuple[str, str, str, KubeObject | None], ...],
           kinds: tuple[tuple[str, Any], ...]) -> Reads:
        return cls(objects, kinds, frozenset((k, ns, n) for k, ns, n, _ in objects),
                   frozenset(k for k, *_ in objects) | frozenset(k for k, _ in kinds))

    def unchanged_since(self, root: InputSnapshot, stamp: Stamp) -> bool:
        """Whether nothing read changed between the store's snapshot `stamp` names and `root`, by the
        changes the store recorded (meaningful for a record known to hold at `stamp`)."""
        changes = root.changes_after(stamp)
        return changes is not None and not (self.kind_names & changes[0]) and self.keys.isdisjoint(changes[1])

    def replay(self, snapshot: InputSnapshot) -> None:
        """Tell the views around `snapshot` what a reused unit read, as if it had read it again."""
        note = getattr(type(snapshot), "note_reads", None)
        if note is not None:
            note(snapshot, self)
            return
        for kind, _ in self.kinds:
            snapshot.count(kind)
        for kind, ns, name, _ in self.objects:
            snapshot.get(kind, ns, name)

    def still_valid(self, snapshot: InputSnapshot) -> bool:
        """Whether every read would return the same now; replays the reads through `snapshot`."""
        root = root_snapshot(snapshot)
        if root is None:
            return False
        for kind, mapping in self.kinds:
            snapshot.count(kind)  # records the kind in outer views
            if _kind_map(root, kind) is not mapping:
                return False
        for kind, ns, name, obj in self.objects:
            if snapshot.get(kind, ns, name) is not obj:
                return False
        return True


class ObjectReads:
    """A view of a snapshot that records the objects and kinds one unit of work read."""

    __slots__ = ("_kinds", "_objects", "_root", "_snapshot", "opaque")

    def __init__(self, snapshot: InputSnapshot) -> None:
        self._snapshot = snapshot
        self._root = root_snapshot(snapshot)
        self._objects: dict[tuple[str, str, str], KubeObject | None] = {}
        self._kinds: dict[str, Any] = {}
        self.opaque = self._root is None

    def list(self, kind: str) -> Iterator[KubeObject]:
        if self._root is not None:
            self._kinds.setdefault(kind, _kind_map(self._root, kind))
        return self._snapshot.list(kind)

    def get(self, kind: str, namespace: str, name: str) -> KubeObject | None:
        obj = self._snapshot.get(kind, namespace, name)
        self._objects.setdefault((kind, namespace, name), obj)
        return obj

    def count(self, kind: str | None = None) -> int:
        if kind is None:
            self.opaque = True
        elif self._root is not None:
            self._kinds.setdefault(kind, _kind_map(self._root, kind))
        return self._snapshot.count(kind)

    def note_reads(self, reads: Reads) -> None:
        """A unit inside this one was reused: its reads become this unit's, and the views' outside."""
        for kind, mapping in reads.kinds:
            self._kinds.setdefault(kind, mapping)
        for kind, ns, name, obj in reads.objects:
            self._objects.setdefault((kind, ns, name), obj)
        reads.replay(self._snapshot)

    def __getattr__(self, name: str) -> Any:
        self.opaque = True
        return getattr(self._snapshot, name)

    def record(self) -> Reads | None:
        """The reads so far; None when the unit read something that cannot be checked."""
        if self.opaque:
            return None
        return Reads.of(tuple((k, ns, n, o) for (k, ns, n), o in self._objects.items()), tuple(self._kinds.items()))


class Ident:
    """Compares (and hashes) by identity: for signatures holding objects that are unchanged when they
    are the very same object. Holding the object keeps its id from being reused."""

    __slots__ = ("obj",)

    def __init__(self, obj: object) -> None:
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ident) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)


@dataclass(slots=True)
class _Entry(Generic[V]):
    signature: Any
    reads: Reads
    value: V
    stamp: Stamp | None = None  # the store's snapshot at which the reads last held


class UnitMemo(Generic[V]):
    """Units' outputs from the last two runs, by unit key. An entry is reused when its signature (what the
    unit was given: compared with ==, objects wrapped in `Ident`) is equal and its reads are still valid.
    A value is a pure function of signature and reads, so sharing one memo between translations of
    different snapshots (or control planes) in one process is safe; call `rotate` after each run."""

    def __init__(self) -> None:
        self._memo: Memo[_Entry[V]] = Memo()
        self.hits = 0
        self.misses = 0

    def compute(self, key: Any, signature: Any, snapshot: InputSnapshot,
                build: Callable[[InputSnapshot], V], root: InputSnapshot | None = None) -> V:
        """The unit's value: the memoised one when still valid, else `build(view)`, whose reads through
        `view` are recorded. `root` (the snapshot under `snapshot`'s views) saves looking it up."""
        if _DISABLED:
            return build(snapshot)
        if root is None:
            root = root_snapshot(snapshot)
        now = None if root is None else root.stamp
        entry = self._memo.get(key)
        if entry is not None and entry.signature == signature:
            stamp = entry.stamp
            if root is not None and stamp is not None and entry.reads.unchanged_since(root, stamp):
                entry.reads.replay(snapshot)  # held at the previous snapshot, and nothing it read changed
            elif not entry.reads.still_valid(snapshot):
                entry = None
            if entry is not None:
                entry.stamp = now
                self.hits += 1
                return entry.value
        self.misses += 1
        view = ObjectReads(snapshot)
        value = build(view)  # type: ignore[arg-type]  # a recording view of the snapshot
        reads = view.record()
        if reads is not None:
            self._memo.put(key, _Entry(signature, reads, value, now))
        return value

    def reads_of(self, key: Any, value: V) -> Reads | None:
        """What `key`'s unit read to give `value`; None when that is not recorded."""
        entry = self._memo.peek(key)
        return entry.reads if entry is not None and entry.value is value else None

    def forget(self, key: Any) -> None:
        self._memo.forget(key)

    def keep(self, key: Any) -> None:
        """Carry `key`'s entry into the next run unused (its value lives on inside an enclosing unit's)."""
        if not _DISABLED:
            self._memo.get(key)

    def rotate(self) -> None:
        if not _DISABLED:
            self._memo.rotate()
