"""The rendered world: every bundle's resources serialised once, and each proxy's view of them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import compress
from operator import is_not
from types import MappingProxyType
from typing import Any

from cilia.diagnostics import Issue
from cilia.identity import ProxyId
from cilia.ir import model as ir
from cilia.render import envoy as r
from cilia.render.raw import RawParseError, parse_raw
from cilia.render.redirect import render_redirect_policy
from cilia.render.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    REDIRECT_POLICY,
    ROUTE,
    SECRET,
    TYPE_ORDER,
    Resource,
    set_version,
)

TypeMap = Mapping[str, Mapping[str, Resource]]
EMPTY: Mapping[str, Resource] = MappingProxyType({})


class ProxyResources:
    """What one proxy may receive, by type and name. Shared by every proxy with the same bundles."""

    __slots__ = ("_versions", "bundle_keys", "by_type")

    def __init__(self, by_type: dict[str, Mapping[str, Resource]], bundle_keys: tuple[str, ...]) -> None:
        self.by_type = by_type
        self.bundle_keys = bundle_keys
        self._versions: dict[str, str] = {}

    def of(self, type_url: str) -> Mapping[str, Resource]:
        return self.by_type.get(type_url, EMPTY)

    def version(self, type_url: str) -> str:
        v = self._versions.get(type_url)
        if v is None:
            v = self._versions[type_url] = set_version(self.of(type_url).values())
        return v


@dataclass(frozen=True, slots=True)
class RenderedBundle:
    key: str
    scope: ir.ProxyScope
    resources: Mapping[str, Mapping[str, Resource]]


# (type URL, id(node)) -> the node's resource. A bundle's entries are for nodes of that very Bundle,
# which its _BundleRender holds: while the entries can be looked up, no other object can have those ids.
IdEntries = dict[tuple[str, int], "Resource"]


@dataclass(slots=True)
class _BundleRender:
    """One bundle's render, reused whole while the translator hands back the very same Bundle object."""

    bundle: ir.Bundle
    rendered: RenderedBundle | None  # None: left out (a resource in it does not parse)
    issues: tuple[Issue, ...]
    ids: IdEntries  # the identity-cache entries its nodes use
    names: dict[str, frozenset[str]]  # by type




class ResourceCache:
    """Reuses Resource objects (and their bytes and hashes) for IR nodes seen in an earlier render.

    A Bundle object seen in the last render is not walked again at all. A new Bundle's nodes are
    looked up by identity first, among the nodes of the last render's bundle with the same key:
    output reused from the previous translation is the very same objects, so unchanged parts of a
    large config cost no hashing at all; then by value.
    """

    def __init__(self) -> None:
        self._by_node: dict[Any, Resource] = {}
        self._next: dict[Any, Resource] = {}
        self._bundles: dict[int, _BundleRender] = {}
        self._next_bundles: dict[int, _BundleRender] = {}
        self._by_key: dict[str, _BundleRender] = {}  # the last render's bundles, by key
        self._next_by_key: dict[str, _BundleRender] = {}
        self.conflicts = _Conflicts()
        # raw resources by (type, name): the last render's, and this one's
        self._raw_last: dict[tuple[str, str], list[_RawSeen]] = {}
        self._raw_next: dict[tuple[str, str], list[_RawSeen]] = {}
        self._pool: dict[str, ir.EndpointSet] = {}  # the last render's sets, and their resources
        self._pool_res: dict[str, Resource] = {}

    def get(self, type_url: str, node: Any, build: Any, name: str, sink: IdEntries | None = None,
            prev: IdEntries | None = None, by_content: bool = True) -> Resource:
        """`sink` collects the identity entries of a bundle's nodes (for reusing it whole; `node` must be
        one the bundle holds); `prev`: those of the bundle's previous render, looked in first. Without
        `by_content`, a node not found by identity is built, not looked up by its content."""
        ident = (type_url, id(node))
        hit = prev.get(ident) if prev is not None else None
        if hit is None and sink is not None:
            hit = sink.get(ident)
        if hit is not None:
            res = hit
        elif not by_content:
            built = build(node)
            res = Resource(type_url, name, built) if isinstance(built, bytes) else Resource.of(type_url, name, built)
        else:
            key = _NodeKey(type_url, node)  # hashed once: IR nodes hash their whole content
            found = self._by_node.get(key) or self._next.get(key)
            if found is not None:
                res = found
            else:
                built = build(node)  # a message, or its serialised bytes (fast paths)
                res = Resource(type_url, name, built) if isinstance(built, bytes) else \
                    Resource.of(type_url, name, built)
            self._next[key] = res
        if sink is not None:
            sink[ident] = res
        return res

    def get_raw(self, raw: ir.RawResource, sink: IdEntries, prev: IdEntries | None) -> Resource:
        """`get` for a user-written resource: by identity, else by content among the resources of that
        type and name seen in this render and the last (`_raw_key`, worked out only when there is one to
        compare with: most names are defined once), else parsed (RawParseError when it does not parse)."""
        ident = (raw.type_url, id(raw))
        hit = (prev.get(ident) if prev is not None else None) or sink.get(ident)
        if hit is None:
            named = (raw.type_url, raw.name)
            here = self._raw_next.setdefault(named, [])
            seen = _RawSeen(raw)
            hit = seen.same_as(here) if here else None
            if hit is None:
                before = self._raw_last.get(named)
                hit = seen.same_as(before) if before else None
                if hit is None:
                    seen.res = hit = Resource.of(raw.type_url, raw.name, parse_raw(raw.type_url, raw.body))
                here.append(seen)  # found in the last render or parsed: this render's from now on
        sink[ident] = hit
        return hit

    def bundle(self, bundle: ir.Bundle) -> _BundleRender:
        hit = self._bundles.get(id(bundle)) or self._next_bundles.get(id(bundle))
        if hit is None or hit.bundle is not bundle:
            prev = self._by_key.get(bundle.key)
            hit = _render_bundle(bundle, self, prev.ids if prev is not None else None)
        self._next_bundles[id(bundle)] = hit
        self._next_by_key[bundle.key] = hit
        return hit

    def endpoint_pool(self, endpoints: Mapping[str, ir.EndpointSet]) -> dict[str, Resource]:
        """Every endpoint set's resource; a set that is the very object of the last render costs a look-up.
        Another set is written, not looked up by content: its bytes come from its localities (shared by the
        three names of a Service port) in less time than hashing its content takes."""
        last, last_res = self._pool, self._pool_res
        out: dict[str, Resource]
        memo: dict[int, Any] = {}

        def build(es: ir.EndpointSet, name: str) -> Resource:  # what `get` does without `by_content`
            return Resource(ENDPOINT, name, r.endpoints_bytes(es, memo))

        if len(endpoints) == len(last) and list(endpoints) == list(last):  # same names, same order
            # the names whose set is not the very object of the last render (compared at C speed)
            changed = list(compress(endpoints, map(is_not, endpoints.values(), last.values())))
            if not changed:
                return last_res  # the same sets: the last render's pool, as it was
            out = dict(last_res)
            for name in changed:
                out[name] = build(endpoints[name], name)
        else:
            out = {}
            for name, es in endpoints.items():
                if last.get(name) is es:
                    out[name] = last_res[name]
                else:
                    out[name] = build(es, name)
        self._pool, self._pool_res = dict(endpoints), out
        return out  # never changed afterwards (a later render with the same sets hands it back again)

    def rotate(self) -> None:
        """Forget what the last render did not use."""
        self._by_node, self._next = self._next, {}
        self._raw_last, self._raw_next = self._raw_next, {}
        self._bundles, self._next_bundles = self._next_bundles, {}
        self._by_key, self._next_by_key = self._next_by_key, {}


class RenderedWorld:
    def __init__(self, bundles: tuple[RenderedBundle, ...], pool: Mapping[str, Resource],
                 node_labels: Mapping[str, Mapping[str, str]], issues: tuple[Issue, ...],
                 generation: int, deferred_roles: frozenset[str] = frozenset()) -> None:
        self.bundles = bundles
        self.deferred_roles = deferred_roles  # roles not served from this world (ir.MeshIR.deferred_roles)
        self.pool = pool
        self.node_labels = node_labels
        self.issues = issues
        self.generation = generation
        self._by_keys: dict[tuple[int, ...], ProxyResources] = {}
        self._selection_key: tuple[object, ...] | None = None

    def bundles_for(self, proxy: ProxyId) -> tuple[RenderedBundle, ...]:
        return tuple(b for b in self.bundles if b.scope.matches(proxy.role, proxy.name, self.node_labels))

    def selection_key(self) -> tuple[object, ...]:
        """What decides which bundles a proxy receives: worlds with equal keys select alike."""
        key = self._selection_key
        if key is None:
            key = self._selection_key = (tuple((b.key, b.scope) for b in self.bundles), self.node_labels)
        return key

    def keys_for(self, proxy: ProxyId) -> tuple[int, ...]:
        """Which of `bundles` (by position) `proxy` receives; the same in any world with an equal
        `selection_key`."""
        labels = self.node_labels
        return tuple(i for i, b in enumerate(self.bundles) if b.scope.matches(proxy.role, proxy.name, labels))

    def for_proxy(self, proxy: ProxyId) -> ProxyResources:
        return self.view_of(self.keys_for(proxy))

    def view_of(self, keys: tuple[int, ...]) -> ProxyResources:
        """The view of a proxy that receives the bundles at positions `keys` (as `keys_for` gives them)."""
        cached = self._by_keys.get(keys)
        if cached is not None:
            return cached
        chosen = [self.bundles[i] for i in keys]
        by_type: dict[str, dict[str, Resource]] = {}
        for b in chosen:
            for type_url, resources in b.resources.items():
                slot = by_type.setdefault(type_url, {})
                for name, res in resources.items():
                    slot.setdefault(name, res)
        endpoints: Mapping[str, Resource] = self.pool
        if ENDPOINT in by_type:
            endpoints = {**self.pool, **by_type[ENDPOINT]}
        frozen: dict[str, Mapping[str, Resource]] = {t: MappingProxyType(v) for t, v in by_type.items()}
        frozen[ENDPOINT] = MappingProxyType(dict(endpoints)) if endpoints is not self.pool else self.pool
        result = ProxyResources(frozen, tuple(b.key for b in chosen))
        self._by_keys[keys] = result
        return result


def _always(node: Any) -> bool:
    return True


def _never(node: Any) -> bool:
    return False


def _not_for_grpc(rc: ir.RouteConfig) -> bool:
    return rc.client != "grpc"


# (type, bundle attribute, builder, whether a node is looked up by content among other bundles' and
# renders' when not found by identity: not API listeners, nor a proxyless gRPC client's route configs
# (one per Service port), which are written in less time than hashing their content takes)
BUILDERS: tuple[tuple[str, str, Any, Callable[[Any], bool]], ...] = (
    (LISTENER, "listeners", r.render_listener, _always),
    (LISTENER, "api_listeners", r.api_listener_bytes, _never),
    (ROUTE, "routes", r.render_route_config, _not_for_grpc),
    (CLUSTER, "clusters", r.render_cluster, _always),
    (ENDPOINT, "endpoints", r.endpoints_bytes, _always),
    (SECRET, "secrets", r.render_secret, _always),
    (REDIRECT_POLICY, "redirect_policies", render_redirect_policy, _always),
)


def _render_bundle(bundle: ir.Bundle, cache: ResourceCache, prev: IdEntries | None) -> _BundleRender:
    resources: dict[str, dict[str, Resource]] = {}
    ids: IdEntries = {}
    issues: list[Issue] = []
    for type_url, attr, build, by_content in BUILDERS:
        nodes = getattr(bundle, attr)
        if not nodes:
            continue
        bucket = resources.setdefault(type_url, {})
        for node in nodes:
            bucket[node.name] = cache.get(type_url, node, build, node.name, sink=ids, prev=prev,
                                          by_content=by_content(node))
    for raw in bundle.raw:
        try:
            res = cache.get_raw(raw, ids, prev)
        except RawParseError as exc:
            issues.append(Issue(", ".join(raw.sources), raw.field or f"resource {raw.name!r}",
                                f"{raw.type_url.rsplit('.', 1)[-1]} {raw.name!r} {exc.verb}: {exc}; "
                                "the whole config is left out"))
            continue
        resources.setdefault(raw.type_url, {})[raw.name] = res
    for type_url, extra_name, body in bundle.extra:
        resources.setdefault(type_url, {})[extra_name] = Resource(type_url, extra_name, body)
    names = {t: frozenset(v) for t, v in resources.items()}
    if issues:  # a config with a resource that does not parse is rejected whole
        return _BundleRender(bundle, None, tuple(issues), ids, {})
    rendered = RenderedBundle(bundle.key, bundle.scope,
                              MappingProxyType({t: MappingProxyType(v) for t, v in resources.items()}))
    return _BundleRender(bundle, rendered, (), ids, names)


class _Conflicts:
    """Names defined by more than one bundle, kept across renders so an edit costs what it changed.

    `owners[type][name]` lists the rendered bundles defining that name, in bundle-key order; the warning
    for one of a bundle's names depends only on that name's earlier owners, so only names whose owners
    changed are looked at again (a new bundle's names all are).
    """

    __slots__ = ("order", "owners", "warnings")

    def __init__(self) -> None:
        self.order: list[_BundleRender] = []
        self.owners: dict[str, dict[str, list[_BundleRender]]] = {}
        # per bundle: its warnings by (type, name), in the order of its resources
        self.warnings: dict[int, dict[tuple[str, str], Issue]] = {}

    def update(self, brs: list[_BundleRender]) -> list[tuple[Issue, ...]]:
        live = [br for br in brs if br.rendered is not None]
        before = {id(br): br for br in self.order}
        now = {id(br): br for br in live}
        removed = [br for i, br in before.items() if i not in now]
        added = [br for i, br in now.items() if i not in before]
        # Only a kept bundle is rechecked by name; with none (a first render), every name's owners are new.
        kept = len(live) > len(added)
        dirty: set[tuple[str, str]] = set()
        for br in removed:
            for type_url, names in br.names.items():
                by_name = self.owners[type_url]
                for name in names:
                    owners = by_name[name]
                    owners.remove(br)
                    if not owners:
                        del by_name[name]
                    dirty.add((type_url, name))
        rank = {id(br): i for i, br in enumerate(live)}
        shared: set[tuple[str, str]] = set()  # names an added bundle shares with another bundle
        for br in added:
            for type_url, names in br.names.items():
                by_name = self.owners.setdefault(type_url, {})
                for name in names:
                    owners = by_name.setdefault(name, [])
                    owners.append(br)
                    if len(owners) > 1:
                        owners.sort(key=lambda o: rank[id(o)])
                        shared.add((type_url, name))
                    if kept:
                        dirty.add((type_url, name))
        # An added bundle can be warned only about names it shares: those are all it is checked for.
        added_ids = {id(br) for br in added}
        shared_by: dict[int, list[tuple[str, str]]] = {}
        for type_url, name in shared:
            for o in self.owners[type_url][name]:
                if id(o) in added_ids:
                    shared_by.setdefault(id(o), []).append((type_url, name))
        recheck: dict[int, list[tuple[str, str]]] = {}
        for type_url, name in dirty:
            for o in self.owners.get(type_url, {}).get(name, ()):
                recheck.setdefault(id(o), []).append((type_url, name))
        warnings: dict[int, dict[tuple[str, str], Issue]] = {}
        for br in live:
            key = id(br)
            got = self.warnings.get(key)
            if got is None:
                got = self._recheck(br, {}, shared_by[key]) if key in shared_by else {}
            elif key in recheck:
                got = self._recheck(br, got, recheck[key])
            warnings[key] = got
        self.order, self.warnings = live, warnings
        return [tuple(warnings[id(br)].values()) if id(br) in warnings else () for br in brs]

    def _recheck(self, br: _BundleRender, had: dict[tuple[str, str], Issue],
                 names: list[tuple[str, str]]) -> dict[tuple[str, str], Issue]:
        assert br.rendered is not None
        got = dict(had)
        new_key = False
        for type_url, name in names:
            issue = self._warning(br, type_url, name, br.rendered.resources[type_url][name])
            if issue is None:
                got.pop((type_url, name), None)
            else:
                new_key = new_key or (type_url, name) not in got
                got[(type_url, name)] = issue
        if new_key:  # back into the order of the bundle's resources
            got = {k: got[k] for t, by_name in br.rendered.resources.items() for n in by_name
                   if (k := (t, n)) in got}
        return got

    def _warning(self, br: _BundleRender, type_url: str, name: str, res: Resource) -> Issue | None:
        owners = self.owners[type_url][name]
        if len(owners) < 2 or owners[0] is br:
            return None
        bundle = br.bundle
        for prev in owners:
            if prev is br:
                break
            assert prev.rendered is not None
            if prev.rendered.resources[type_url][name].version != res.version and \
                    prev.bundle.scope.may_overlap(bundle.scope):
                who = ", ".join(bundle.sources) or bundle.key
                prev_who = ", ".join(prev.bundle.sources) or prev.bundle.key
                # Per proxy the first definition (by bundle key) wins; see RenderedWorld.for_proxy.
                return Issue(who, "name", f"{type_url.rsplit('.', 1)[-1]} {name!r} is also "
                             f"defined, differently, by {prev_who}; proxies that receive both "
                             "use that one", severity="warning")
        return None


def render_world(model: ir.MeshIR, cache: ResourceCache | None = None, generation: int = 0) -> RenderedWorld:
    cache = cache or ResourceCache()
    issues: list[Issue] = []
    brs = [cache.bundle(bundle) for bundle in sorted(model.bundles, key=lambda b: b.key)]
    if len({br.bundle.key for br in brs}) != len(brs):
        cache.conflicts = _Conflicts()  # equal keys: their order is the model's; index from scratch
    warnings = cache.conflicts.update(brs)
    rendered: list[RenderedBundle] = []
    for br, warned in zip(brs, warnings, strict=True):
        issues.extend(br.issues)
        issues.extend(warned)
        if br.rendered is not None:
            rendered.append(br.rendered)
    pool = cache.endpoint_pool(model.endpoints)
    cache.rotate()
    return RenderedWorld(tuple(rendered), MappingProxyType(pool), model.node_labels, tuple(issues), generation,
                         model.deferred_roles)


class _NodeKey:
    """(type URL, IR node) as a cache key whose hash is worked out once."""

    __slots__ = ("_hash", "node", "type_url")

    def __init__(self, type_url: str, node: Any) -> None:
        self.type_url = type_url
        self.node = node
        self._hash = hash((type_url, node))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _NodeKey) and self.type_url == other.type_url and \
            (self.node is other.node or self.node == other.node)


class _RawSeen:
    """A raw resource met in a render, its resource, and its content key once one was needed."""

    __slots__ = ("_key", "raw", "res")

    def __init__(self, raw: ir.RawResource, res: Resource | None = None) -> None:
        self.raw = raw
        self.res = res
        self._key: str | None = None

    def key(self) -> str:
        if self._key is None:
            self._key = _raw_key(self.raw)
        return self._key

    def same_as(self, others: list[_RawSeen]) -> Resource | None:
        """The resource of the first of `others` with this content (a hit is recorded as this one's)."""
        key = self.key()
        for other in others:
            if other.key() == key:
                self.res = other.res
                return other.res
        return None


def _raw_key(raw: ir.RawResource) -> str:
    """What identifies a raw resource's parse among those of its type and name: its body's repr, which
    tells apart what == does not (1, 1.0 and True; "1" and 1) and is written at C speed. Bodies built
    alike (from the same manifest text) have equal reprs; equal content with keys in another order does
    not, and is only parsed once more. A value without a faithful repr (no JSON or YAML value) shows its
    identity, and the entry holding the key holds the body, so no other object can take that identity."""
    return repr(raw.body)


__all__ = ["TYPE_ORDER", "ProxyResources", "RenderedWorld", "ResourceCache", "render_world"]
