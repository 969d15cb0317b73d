"""Proxyless gRPC targets built on demand: `cilia serve` translates without them until the first gRPC
client connects; that client's stream waits for the world that has them (it is never told its targets do
not exist), other proxies are served meanwhile, and the translation that adds them runs only the gRPC
translator again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from envoy.service.discovery.v3 import discovery_pb2
from test_xds_grpc import ECHO, GRPC, grpc_world

from cilia.app import ControlPlane, ServeOptions, starting_translate_options
from cilia.identity import ProxyId
from cilia.ir import model as ir
from cilia.k8s.manifest import parse_text
from cilia.k8s.store import Store
from cilia.render.resources import CLUSTER, LISTENER
from cilia.render.world import RenderedWorld, ResourceCache, render_world
from cilia.translate import TRANSLATORS, translate
from cilia.translate.context import TranslateOptions
from cilia.translate.grpc import translate_grpc
from support.xds_client import Harness, delta, harness, no_message, node, read, sotw, world

SERVICES = """
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec: {clusterIP: 127.96.0.1, ports: [{name: grpc, port: 7070}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: echo-1, namespace: default, labels: {kubernetes.io/service-name: echo}}
addressType: IPv4
ports: [{name: grpc, port: 7070}]
endpoints: [{addresses: [127.1.0.1], conditions: {ready: true}}]
"""


def deferred_world(gen: int = 1) -> RenderedWorld:
    """A world without gRPC targets, as `cilia serve` starts: the node proxies' config only."""
    model = ir.MeshIR(deferred_roles=frozenset({"grpc"}))
    assert render_world(model, ResourceCache(), gen).deferred_roles == {"grpc"}  # the model's say, rendered
    plain = world(gen=gen)
    return RenderedWorld(plain.bundles, plain.pool, plain.node_labels, (), gen, frozenset({"grpc"}))


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    hh = await harness()
    hh.cache.set_world(deferred_world())
    yield hh
    await hh.stop()


async def test_a_grpc_client_asks_for_its_targets_and_waits_for_them(h: Harness) -> None:
    asked: list[str] = []
    h.cache.on_demand = asked.append
    call = delta(h)
    try:
        await call.write(discovery_pb2.DeltaDiscoveryRequest(node=node(GRPC), type_url=LISTENER,
                                                             resource_names_subscribe=[ECHO]))
        assert await no_message(call, 0.3)  # not told ECHO does not exist: held until the targets are built
        assert asked and set(asked) == {"grpc"}
        h.cache.set_world(grpc_world("echo", gen=2))
        resp = await read(call)
        assert [r.name for r in resp.resources] == [ECHO] and not resp.removed_resources
    finally:
        call.cancel()


async def test_other_proxies_are_served_while_grpc_targets_are_deferred(h: Harness) -> None:
    asked: list[str] = []
    h.cache.on_demand = asked.append
    call = sotw(h)
    try:
        await call.write(discovery_pb2.DiscoveryRequest(node=node("node~n1"), type_url=CLUSTER))
        resp = await read(call)
        assert len(resp.resources) == 2 and not asked
    finally:
        call.cancel()


async def test_a_world_that_still_defers_keeps_the_client_waiting(h: Harness) -> None:
    call = sotw(h)
    try:
        await call.write(discovery_pb2.DiscoveryRequest(node=node(GRPC), type_url=LISTENER, resource_names=[ECHO]))
        h.cache.set_world(deferred_world(gen=2))  # a rebuild for another change, before the targets are in
        assert await no_message(call, 0.3)
        h.cache.set_world(grpc_world("echo", gen=3))
        resp = await read(call)
        assert len(resp.resources) == 1
    finally:
        call.cancel()


def _store() -> Store:
    store = Store()
    store.replace_source("m", parse_text(SERVICES, "m"))
    return store


def test_translation_without_targets_says_so_and_adding_them_reruns_only_grpc() -> None:
    store = _store()
    off = TranslateOptions(grpc_targets=False)
    first = translate(store.snapshot(), off)
    assert first.ir.deferred_roles == {"grpc"}
    assert not [b for b in first.ir.bundles if b.key.startswith("grpc")]
    added = translate(store.snapshot(), replace(off, grpc_targets=True), first)
    assert added.ir.deferred_roles == frozenset()
    assert added.reused == len(TRANSLATORS) - 1  # every translator but the gRPC one reused
    full = translate(store.snapshot(), TranslateOptions())
    assert [b.key for b in added.ir.bundles] == [b.key for b in full.ir.bundles]
    assert {b.key: b for b in added.ir.bundles}["grpc"] == {b.key: b for b in full.ir.bundles}["grpc"]
    # and back: a translation without them (not something serve does) leaves them out again
    assert not translate_grpc(store.snapshot(), off).bundles


async def test_serve_starts_without_targets_and_turns_them_on_for_good() -> None:
    cp = ControlPlane(ServeOptions(xds_address=None))
    assert starting_translate_options(ServeOptions()).grpc_targets is False
    assert cp.opts.translate.grpc_targets is False
    assert ControlPlane(ServeOptions(grpc_targets_on_demand=False)).opts.translate.grpc_targets is True
    cp.cache.on_demand("node")  # type: ignore[misc]
    assert cp.opts.translate.grpc_targets is False
    cp.cache.on_demand("grpc")  # type: ignore[misc]
    assert cp.opts.translate.grpc_targets is True
    assert cp._changed.is_set()  # a rebuild is due
    cp.store.replace_source("m", parse_text(SERVICES, "m"))
    cp.rebuild()
    assert cp.cache.covers(_grpc_proxy())
    assert ECHO in cp.cache.resources_for(_grpc_proxy()).of(LISTENER)


def _grpc_proxy() -> ProxyId:
    return ProxyId.parse(GRPC)


async def test_debug_config_of_a_grpc_client_waits_for_its_targets() -> None:
    cp = ControlPlane(ServeOptions(xds_address=None))
    cp.store.replace_source("m", parse_text(SERVICES, "m"))
    cp.rebuild()
    cp._changed.clear()
    assert not cp.cache.covers(_grpc_proxy())

    async def rebuild_when_asked() -> None:  # the debounce loop's part
        await cp._changed.wait()
        assert cp.opts.translate.grpc_targets
        cp.rebuild()

    await asyncio.wait_for(asyncio.gather(cp.wait_config(GRPC), rebuild_when_asked()), 5)
    listeners = cp.proxy_config(GRPC)["listeners"]
    assert ECHO in [li["name"] for li in listeners]
    await cp.wait_config("not a proxy id")  # proxy_config says why; nothing to wait for


async def test_a_failed_rebuild_is_retried_while_a_client_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    import cilia.app

    monkeypatch.setattr(cilia.app, "REBUILD_RETRY_S", 0.05)
    cp = ControlPlane(ServeOptions(xds_address=None))
    cp.store.replace_source("m", parse_text(SERVICES, "m"))
    cp.rebuild()
    cp._changed.clear()
    build, calls = cp._build, [0]

    def failing_once(*args: object) -> object:
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("a bug")
        return build(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(cp, "_build", failing_once)
    loop = asyncio.create_task(cp._debounce_loop())
    try:
        await asyncio.wait_for(cp.cache.wait_covered(_grpc_proxy()), 5)
        assert calls[0] == 2 and ECHO in cp.cache.resources_for(_grpc_proxy()).of(LISTENER)
    finally:
        loop.cancel()
