"""Holds the current rendered world and wakes every stream when it changes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from cilia.identity import ProxyId
from cilia.render.world import ProxyResources, RenderedWorld

MAX_REMEMBERED_PROXIES = 100_000  # bundle selections kept across worlds; past that they are recomputed


def empty_world() -> RenderedWorld:
    return RenderedWorld((), MappingProxyType({}), MappingProxyType({}), (), 0)


class ConfigCache:
    def __init__(self) -> None:
        self._world = empty_world()
        self._wakers: set[asyncio.Event] = set()
        self._keys: dict[ProxyId, tuple[int, ...]] = {}  # per proxy, its bundles' keys while scopes stay
        self.ready = False  # set once the first real world is in
        # Called with a role the world leaves out (RenderedWorld.deferred_roles) when a proxy of that role
        # wants serving: the owner builds a world with it (ControlPlane turns gRPC targets on).
        self.on_demand: Callable[[str], None] | None = None
        self._gated: set[asyncio.Event] = set()  # proxies waiting for a world that covers their role

    @property
    def world(self) -> RenderedWorld:
        return self._world

    def set_world(self, world: RenderedWorld) -> None:
        if world.selection_key() != self._world.selection_key():
            self._keys = {}  # scopes or node labels changed: which bundles a proxy gets may have too
        self._world = world
        self.ready = True
        for ev in self._wakers:
            ev.set()
        for ev in self._gated:
            ev.set()

    @property
    def waiting(self) -> int:
        """Proxies waiting for a world that covers their role (`wait_covered`)."""
        return len(self._gated)

    def covers(self, proxy: ProxyId) -> bool:
        return proxy.role not in self._world.deferred_roles

    async def wait_covered(self, proxy: ProxyId) -> None:
        """Return once the world has `proxy`'s config: asks for a role left out of it, then waits for
        a world with it (a proxy is never served from a world that lacks its role's config: it would
        be told its resources do not exist)."""
        while not self.covers(proxy):
            if self.on_demand is not None:
                self.on_demand(proxy.role)
            ev = asyncio.Event()
            self._gated.add(ev)
            try:
                await ev.wait()
            finally:
                self._gated.discard(ev)

    def resources_for(self, proxy: ProxyId) -> ProxyResources:
        """Each stream asks on every pass; matching scopes once per proxy and world keeps that O(1)."""
        # While no bundle's scope changed, a proxy's bundles are the same ones: no matching per change. The
        # view of those bundles is the world's own memo (one per distinct set of bundles).
        return self._world.view_of(self._bundle_keys(proxy))

    def _bundle_keys(self, proxy: ProxyId) -> tuple[int, ...]:
        keys = self._keys.get(proxy)
        if keys is None:
            if len(self._keys) >= MAX_REMEMBERED_PROXIES:
                self._keys.clear()
            keys = self._keys[proxy] = self._world.keys_for(proxy)
        return keys

    def viewer(self, proxy: ProxyId) -> Callable[[ProxyId], ProxyResources]:
        """`resources_for`, for one stream: its proxy's view is kept with the world it came from, so each
        pass of a stream's writer costs an identity check while the world is the same (no ProxyId hash)."""
        # The world and its view for `proxy`; the selection memo (`_keys`, replaced when scopes change) the
        # proxy's bundle keys were found under, and those keys: a new world with the same scopes costs one
        # memo lookup, not a ProxyId hash.
        seen: list[Any] = [None, None, None, None]

        def view(asked: ProxyId) -> ProxyResources:
            world = self._world
            if asked is not proxy:
                return self.resources_for(asked)
            if seen[0] is world:
                return seen[1]  # type: ignore[no-any-return]
            memo = self._keys
            if seen[2] is not memo:
                seen[2], seen[3] = memo, self._bundle_keys(proxy)
            resources = world.view_of(seen[3])
            seen[0], seen[1] = world, resources
            return resources

        return view

    def register(self, waker: asyncio.Event) -> None:
        self._wakers.add(waker)

    def unregister(self, waker: asyncio.Event) -> None:
        self._wakers.discard(waker)

    @property
    def stream_count(self) -> int:
        return len(self._wakers)
