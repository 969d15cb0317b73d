"""The rendered world: every bundle's resources serialised once, and each proxy's view of them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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


class ResourceCache:
    """Reuses Resource objects (and their bytes and hashes) for IR nodes seen in an earlier render.

    Looked up by identity first: output reused from the previous translation is the very same objects,
    so unchanged parts of a large config cost no hashing at all; then by value.
    """

    def __init__(self) -> None:
        self._by_node: dict[Any, Resource] = {}
        self._next: dict[Any, Resource] = {}
        self._by_id: dict[tuple[str, int], tuple[Any, Resource]] = {}
        self._next_by_id: dict[tuple[str, int], tuple[Any, Resource]] = {}

    def get(self, type_url: str, node: Any, build: Any, name: str, same_as: Any = None) -> Resource:
        """`same_as`: the object whose identity stands for `node` (when `node` is a fresh wrapper)."""
        anchor = node if same_as is None else same_as
        ident = (type_url, id(anchor))
        hit = self._by_id.get(ident) or self._next_by_id.get(ident)
        if hit is not None and hit[0] is anchor:
            res = hit[1]
        else:
            key = (type_url, node)
            found = self._by_node.get(key) or self._next.get(key)
            res = found if found is not None else Resource.of(type_url, name, build(node))
            self._next[key] = res
        self._next_by_id[ident] = (anchor, res)  # holds `anchor`, so its id cannot be reused meanwhile
        return res

    def rotate(self) -> None:
        """Forget what the last render did not use."""
        self._by_node, self._next = self._next, {}
        self._by_id, self._next_by_id = self._next_by_id, {}


class RenderedWorld:
    def __init__(self, bundles: tuple[RenderedBundle, ...], pool: Mapping[str, Resource],
                 node_labels: Mapping[str, Mapping[str, str]], issues: tuple[Issue, ...],
                 generation: int) -> None:
        self.bundles = bundles
        self.pool = pool
        self.node_labels = node_labels
        self.issues = issues
        self.generation = generation
        self._by_keys: dict[tuple[str, ...], ProxyResources] = {}

    def bundles_for(self, proxy: ProxyId) -> tuple[RenderedBundle, ...]:
        return tuple(b for b in self.bundles if b.scope.matches(proxy.role, proxy.name, self.node_labels))

    def for_proxy(self, proxy: ProxyId) -> ProxyResources:
        chosen = self.bundles_for(proxy)
        keys = tuple(b.key for b in chosen)
        cached = self._by_keys.get(keys)
        if cached is not None:
            return cached
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
        result = ProxyResources(frozen, keys)
        self._by_keys[keys] = result
        return result


BUILDERS: tuple[tuple[str, str, Any], ...] = (
    (LISTENER, "listeners", r.render_listener),
    (LISTENER, "api_listeners", r.render_api_listener),
    (ROUTE, "routes", r.render_route_config),
    (CLUSTER, "clusters", r.render_cluster),
    (ENDPOINT, "endpoints", r.render_endpoints),
    (SECRET, "secrets", r.render_secret),
    (REDIRECT_POLICY, "redirect_policies", render_redirect_policy),
)


def render_world(model: ir.MeshIR, cache: ResourceCache | None = None, generation: int = 0) -> RenderedWorld:
    cache = cache or ResourceCache()
    issues: list[Issue] = []
    owners: dict[tuple[str, str], list[tuple[str, str, ir.ProxyScope]]] = {}  # -> (who, version, scope)
    rendered: list[RenderedBundle] = []
    for bundle in sorted(model.bundles, key=lambda b: b.key):
        resources: dict[str, dict[str, Resource]] = {}
        bad = False
        for type_url, attr, build in BUILDERS:
            for node in getattr(bundle, attr):
                resources.setdefault(type_url, {})[node.name] = cache.get(type_url, node, build, node.name)
        for raw in bundle.raw:
            try:
                res = cache.get(raw.type_url, _RawKey(raw), lambda k: parse_raw(k.raw.type_url, k.raw.body),
                                raw.name, same_as=raw)
            except RawParseError as exc:
                issues.append(Issue(", ".join(raw.sources), raw.field or f"resource {raw.name!r}",
                                    f"{raw.type_url.rsplit('.', 1)[-1]} {raw.name!r} does not parse: {exc}; "
                                    "the whole config is left out"))
                bad = True
                continue
            resources.setdefault(raw.type_url, {})[raw.name] = res
        for type_url, extra_name, body in bundle.extra:
            resources.setdefault(type_url, {})[extra_name] = Resource(type_url, extra_name, body)
        if bad:
            continue  # a config with a resource that does not parse is rejected whole
        who = ", ".join(bundle.sources) or bundle.key
        for type_url, by_name in resources.items():
            for name, res in by_name.items():
                for prev_who, prev_version, prev_scope in owners.get((type_url, name), ()):
                    if prev_version != res.version and prev_scope.may_overlap(bundle.scope):
                        # Per proxy the first definition (by bundle key) wins; see RenderedWorld.for_proxy.
                        issues.append(Issue(who, "name", f"{type_url.rsplit('.', 1)[-1]} {name!r} is also defined, "
                                            f"differently, by {prev_who}; proxies that receive both use that one",
                                            severity="warning"))
                        break
                owners.setdefault((type_url, name), []).append((who, res.version, bundle.scope))
        rendered.append(RenderedBundle(bundle.key, bundle.scope,
                                       MappingProxyType({t: MappingProxyType(v) for t, v in resources.items()})))
    pool = {name: cache.get(ENDPOINT, es, r.render_endpoints, name) for name, es in model.endpoints.items()}
    cache.rotate()
    return RenderedWorld(tuple(rendered), MappingProxyType(pool), model.node_labels, tuple(issues), generation)


@dataclass(frozen=True, slots=True)
class _RawKey:
    """Hashable identity of a raw resource (its JSON body is a dict)."""

    raw: ir.RawResource

    def __hash__(self) -> int:
        return hash((self.raw.type_url, self.raw.name, _freeze(self.raw.body)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _RawKey) and self.raw.type_url == other.raw.type_url and \
            self.raw.name == other.raw.name and self.raw.body == other.raw.body


def _freeze(v: Any) -> Any:
    if isinstance(v, Mapping):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    return v


__all__ = ["TYPE_ORDER", "ProxyResources", "RenderedWorld", "ResourceCache", "render_world"]
