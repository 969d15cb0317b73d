"""Holds the current rendered world and wakes every stream when it changes."""

from __future__ import annotations

import asyncio
from types import MappingProxyType

from cilia.identity import ProxyId
from cilia.render.world import ProxyResources, RenderedWorld


def empty_world() -> RenderedWorld:
    return RenderedWorld((), MappingProxyType({}), MappingProxyType({}), (), 0)


class ConfigCache:
    def __init__(self) -> None:
        self._world = empty_world()
        self._wakers: set[asyncio.Event] = set()
        self._views: dict[ProxyId, ProxyResources] = {}  # per proxy, for the current world
        self.ready = False  # set once the first real world is in

    @property
    def world(self) -> RenderedWorld:
        return self._world

    def set_world(self, world: RenderedWorld) -> None:
        self._world = world
        self._views = {}
        self.ready = True
        for ev in self._wakers:
            ev.set()

    def resources_for(self, proxy: ProxyId) -> ProxyResources:
        """Each stream asks on every pass; matching scopes once per proxy and world keeps that O(1)."""
        view = self._views.get(proxy)
        if view is None:
            view = self._views[proxy] = self._world.for_proxy(proxy)
        return view

    def register(self, waker: asyncio.Event) -> None:
        self._wakers.add(waker)

    def unregister(self, waker: asyncio.Event) -> None:
        self._wakers.discard(waker)

    @property
    def stream_count(self) -> int:
        return len(self._wakers)
