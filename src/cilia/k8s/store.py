"""The store: objects from every source, and immutable InputSnapshots of them.

Objects are keyed by (kind, namespace, name). A key belongs to the first source that provided it; a
later source offering the same key is reported and ignored, so a duplicate never displaces what is
already serving. A source whose input fails to parse keeps its last good objects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cilia.diagnostics import Issue
from cilia.k8s.manifest import FileResult
from cilia.k8s.objects import KubeObject

Key = tuple[str, str, str]  # kind, namespace, name
ChangeListener = Callable[[frozenset[str]], None]
Stamp = tuple[object, int]  # a store's lineage and a revision: one snapshot of that store
ISSUES = "__issues__"  # pseudo-kind: the set of reported issues changed
_EMPTY: Mapping[tuple[str, str], KubeObject] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class InputSnapshot:
    """All objects at one revision. Never mutated; translators read it.

    Each kind's mapping holds its objects in (namespace, name) order, so listing a kind costs no sort.
    `changed_kinds` says which kinds changed since the store's previous snapshot; `changes_since` what
    changed since any of its recent ones (`lineage` names the store; a snapshot not from a store has none)."""

    revision: int
    objects: Mapping[str, Mapping[tuple[str, str], KubeObject]]
    issues: tuple[Issue, ...] = ()
    changed_kinds: frozenset[str] = field(default_factory=frozenset)
    lineage: object | None = None
    history: tuple[Change, ...] = ()  # the store's last snapshots' changes, this one's last
    _since: dict[int, tuple[frozenset[str], frozenset[Key]] | None] = field(default_factory=dict, compare=False,
                                                                           repr=False)

    @property
    def stamp(self) -> Stamp | None:
        """Names this snapshot among the store's: (lineage, revision); None when not taken from a store."""
        return None if self.lineage is None else (self.lineage, self.revision)

    def changes_after(self, stamp: Stamp | None) -> tuple[frozenset[str], frozenset[Key]] | None:
        """`changes_since` the snapshot `stamp` names; None when that is not one of this store's."""
        if stamp is None or self.lineage is None or stamp[0] is not self.lineage:
            return None
        return self.changes_since(stamp[1])

    def changes_since(self, revision: int) -> tuple[frozenset[str], frozenset[Key]] | None:
        """The kinds and keys changed between the same store's snapshot of `revision` and this one; None
        when the store no longer remembers that far back."""
        if revision not in self._since:
            self._since[revision] = _changes_since(self.history, revision)
        return self._since[revision]

    def list(self, kind: str) -> Iterator[KubeObject]:
        return iter(self.objects.get(kind, _EMPTY).values())

    def get(self, kind: str, namespace: str, name: str) -> KubeObject | None:
        return self.objects.get(kind, {}).get((namespace, name))

    def count(self, kind: str | None = None) -> int:
        if kind is not None:
            return len(self.objects.get(kind, {}))
        return sum(len(v) for v in self.objects.values())

    @classmethod
    def of(cls, objects: Iterable[KubeObject], revision: int = 1) -> InputSnapshot:
        """A snapshot straight from objects (tests, `cilia translate`); later duplicates are ignored."""
        kinds: dict[str, dict[tuple[str, str], KubeObject]] = {}
        for obj in objects:
            kinds.setdefault(obj.kind, {}).setdefault((obj.meta.namespace, obj.meta.name), obj)
        return cls(revision, MappingProxyType({k: MappingProxyType(dict(sorted(v.items())))
                                               for k, v in kinds.items()}))


@dataclass(frozen=True, slots=True)
class Change:
    """What changed between two consecutive snapshots of a store."""

    base: int | None  # the revision of the snapshot before
    revision: int
    kinds: frozenset[str]
    keys: frozenset[Key]


HISTORY = 64  # snapshots whose changes a snapshot carries


def _changes_since(history: tuple[Change, ...], revision: int) -> tuple[frozenset[str], frozenset[Key]] | None:
    kinds: set[str] = set()
    keys: set[Key] = set()
    for change in reversed(history):
        if change.revision == revision:
            return frozenset(kinds), frozenset(keys)
        if change.revision < revision:  # not a revision a snapshot was taken at
            return None
        if change.base is None:
            return None
        kinds |= change.kinds
        keys |= change.keys
        if change.base == revision:
            return frozenset(kinds), frozenset(keys)
    return None


class Store:
    def __init__(self) -> None:
        self._kinds: dict[str, dict[tuple[str, str], KubeObject]] = {}
        self._owner: dict[Key, str] = {}
        self._by_source: dict[str, dict[Key, KubeObject]] = {}
        self._issues: dict[str, tuple[Issue, ...]] = {}
        self._revision = 0
        self._frozen: dict[str, Mapping[tuple[str, str], KubeObject]] = {}
        self._dirty_kinds: set[str] = set()
        self._reordered_kinds: set[str] = set()  # dirty kinds whose set of keys changed
        self._pending_changes: set[str] = set()
        self._pending_keys: set[Key] = set()
        self._last_snapshot_revision: int | None = None
        self._lineage = object()
        self._history: tuple[Change, ...] = ()
        self._listeners: list[ChangeListener] = []

    # -- listening -------------------------------------------------------------------------------
    def subscribe(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    def _notify(self, changed: set[str]) -> None:
        if not changed:
            return
        self._revision += 1
        self._dirty_kinds |= changed
        self._pending_changes |= changed
        frozen = frozenset(changed)
        for listener in self._listeners:
            listener(frozen)

    # -- writes ------------------------------------------------------------------------------------
    def _put(self, source: str, key: Key, obj: KubeObject, changed: set[str], issues: list[Issue]) -> None:
        owner = self._owner.get(key)
        if owner is not None and owner != source:
            kind, ns, name = key
            label = f"{kind} {ns}/{name}" if ns else f"{kind} {name}"
            issues.append(Issue(label, "metadata.name",
                                f"duplicate: already defined in {owner}; this definition is ignored",
                                str(obj.origin or source)))
            return
        self._owner[key] = source
        self._by_source.setdefault(source, {})[key] = obj
        current = self._kinds.setdefault(key[0], {}).get((key[1], key[2]))
        if current is None or current.content_hash != obj.content_hash:
            self._kinds[key[0]][(key[1], key[2])] = obj
            changed.add(key[0])
            self._pending_keys.add(key)
            if current is None:
                self._reordered_kinds.add(key[0])

    def _remove(self, source: str, key: Key, changed: set[str]) -> None:
        if self._owner.get(key) != source:
            return
        del self._owner[key]
        self._by_source.get(source, {}).pop(key, None)
        if self._kinds.get(key[0], {}).pop((key[1], key[2]), None) is not None:
            changed.add(key[0])
            self._pending_keys.add(key)
            self._reordered_kinds.add(key[0])

    def replace_source(self, source: str, result: FileResult) -> bool:
        """Set everything `source` (one file) provides. Returns whether anything served changed."""
        changed: set[str] = set()
        issues = list(result.issues)
        if result.ok:
            new: dict[Key, KubeObject] = {}
            for obj in result.objects:
                key = (obj.kind, obj.meta.namespace, obj.meta.name)
                if key in new:
                    issues.append(Issue(str(obj.ref), "metadata.name",
                                        f"duplicate in the same file (first at {new[key].origin})",
                                        str(obj.origin or source)))
                    continue
                new[key] = obj
            old = self._by_source.get(source, {})
            for key in result.rejected:
                key = _normalise_key(key, old)
                if key in old and key not in new:
                    new[key] = old[key]  # keep the last good version of an object now invalid
            for key in list(old):
                if key not in new:
                    self._remove(source, key, changed)
            for key, obj in new.items():
                self._put(source, key, obj, changed, issues)
        self._set_issues(source, issues, changed)
        self._notify(changed)
        return bool(changed - {ISSUES})

    def forget_source(self, source: str) -> bool:
        """The source is gone (file deleted): drop its objects and issues."""
        changed: set[str] = set()
        for key in list(self._by_source.get(source, {})):
            self._remove(source, key, changed)
        self._by_source.pop(source, None)
        self._set_issues(source, [], changed)
        self._notify(changed)
        return bool(changed - {ISSUES})

    def upsert(self, source: str, obj: KubeObject) -> bool:
        changed: set[str] = set()
        issues: list[Issue] = []
        self._put(source, (obj.kind, obj.meta.namespace, obj.meta.name), obj, changed, issues)
        if issues:
            self._add_issues(source, issues, changed)
        self._notify(changed)
        return bool(changed - {ISSUES})

    def delete(self, source: str, kind: str, namespace: str, name: str) -> bool:
        changed: set[str] = set()
        self._remove(source, (kind, namespace, name), changed)
        self._notify(changed)
        return bool(changed - {ISSUES})

    def replace_kind(self, source: str, kind: str, objects: Iterable[KubeObject], namespace: str | None = None) -> bool:
        """A relist: `objects` is everything `source` has of `kind` (in `namespace`, when given: a source
        that reads a kind namespace by namespace). Unchanged objects change nothing."""
        changed: set[str] = set()
        issues: list[Issue] = []
        wanted = {(o.kind, o.meta.namespace, o.meta.name): o for o in objects}
        for key in [k for k in self._by_source.get(source, {})
                    if k[0] == kind and (namespace is None or k[1] == namespace) and k not in wanted]:
            self._remove(source, key, changed)
        for key, obj in wanted.items():
            self._put(source, key, obj, changed, issues)
        if issues:
            self._add_issues(source, issues, changed)
        self._notify(changed)
        return bool(changed - {ISSUES})

    def set_source_issues(self, source: str, issues: Iterable[Issue]) -> None:
        changed: set[str] = set()
        self._set_issues(source, list(issues), changed)
        self._notify(changed)

    def _set_issues(self, source: str, issues: list[Issue], changed: set[str]) -> None:
        new = tuple(issues)
        if self._issues.get(source, ()) != new:
            if new:
                self._issues[source] = new
            else:
                self._issues.pop(source, None)
            changed.add(ISSUES)

    def _add_issues(self, source: str, issues: list[Issue], changed: set[str]) -> None:
        merged = tuple(dict.fromkeys((*self._issues.get(source, ()), *issues)))
        self._set_issues(source, list(merged), changed)

    # -- reads -------------------------------------------------------------------------------------
    @property
    def revision(self) -> int:
        return self._revision

    def issues(self) -> tuple[Issue, ...]:
        return tuple(i for source in sorted(self._issues) for i in self._issues[source])

    def snapshot(self) -> InputSnapshot:
        for kind in self._dirty_kinds:
            if kind not in self._kinds:
                continue
            live = self._kinds[kind]
            before = self._frozen.get(kind)
            if before is None or kind in self._reordered_kinds:
                self._frozen[kind] = MappingProxyType(dict(sorted(live.items())))
            else:  # same keys: keep the order, take the objects
                self._frozen[kind] = MappingProxyType({k: live[k] for k in before})
        self._dirty_kinds.clear()
        self._reordered_kinds.clear()
        changes, keys = frozenset(self._pending_changes), frozenset(self._pending_keys)
        self._pending_changes.clear()
        self._pending_keys.clear()
        base, self._last_snapshot_revision = self._last_snapshot_revision, self._revision
        self._history = (*self._history[-(HISTORY - 1):], Change(base, self._revision, changes, keys))
        return InputSnapshot(self._revision, MappingProxyType(dict(self._frozen)), self.issues(), changes,
                             self._lineage, self._history)

    def objects_of_kind(self, kind: str) -> list[KubeObject]:
        """The current objects of one kind, sorted by namespace/name."""
        by_key = self._kinds.get(kind, {})
        return [by_key[k] for k in sorted(by_key)]

    def snapshot_count(self) -> int:
        """How many objects the store holds now (all kinds)."""
        return sum(len(v) for v in self._kinds.values())

    def get(self, kind: str, namespace: str, name: str) -> KubeObject | None:
        """The current object, between snapshots (for lookups such as the webhook's)."""
        return self._kinds.get(kind, {}).get((namespace, name))

    def objects_of(self, source: str) -> Mapping[Key, KubeObject]:
        return MappingProxyType(self._by_source.get(source, {}))


def _normalise_key(key: Key, old: Mapping[Key, Any]) -> Key:
    """A rejected document without a namespace means the default namespace for namespaced kinds."""
    if key in old or key[1]:
        return key
    alt = (key[0], "default", key[2])
    return alt if alt in old else key
