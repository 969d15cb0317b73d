"""render_world reuses a Bundle it rendered last time whole, with the same issues and conflict warnings."""

from __future__ import annotations

from typing import Any

from cilia.identity import ProxyId
from cilia.ir import model as ir
from cilia.render.resources import CLUSTER
from cilia.render.world import ResourceCache, render_world

NODE = ir.ProxyScope(frozenset({"node"}))


def test_unchanged_bundles_are_reused_with_their_issues_and_warnings() -> None:
    a = ir.Bundle("a", NODE, clusters=(ir.Cluster("shared", connect_timeout_ms=1000),), sources=("A",))
    b = ir.Bundle("b", NODE, clusters=(ir.Cluster("shared", connect_timeout_ms=2000), ir.Cluster("own")),
                  sources=("B",))
    bad = ir.Bundle("c", NODE, clusters=(ir.Cluster("c1"),), raw=(ir.RawResource(CLUSTER, "broken", {"type": "NOPE"},
                                                                                 ("C",)),))
    cache = ResourceCache()
    first = render_world(ir.MeshIR((a, b, bad)), cache, 1)
    second = render_world(ir.MeshIR((a, b, bad)), cache, 2)
    assert [x.key for x in second.bundles] == ["a", "b"]  # the bundle that does not parse stays out
    assert all(x is y for x, y in zip(first.bundles, second.bundles, strict=True))
    assert [i.message for i in first.issues] == [i.message for i in second.issues]
    assert any("also defined, differently, by A" in i.message for i in second.issues)
    assert any("does not parse" in i.message for i in second.issues)
    view = second.for_proxy(ProxyId.parse("node~n"))
    assert view.of(CLUSTER)["shared"] is first.for_proxy(ProxyId.parse("node~n")).of(CLUSTER)["shared"]
    # A new Bundle object with an unchanged node re-uses that node's resource (identity cache carried over).
    b2 = ir.Bundle("b", NODE, clusters=(b.clusters[1], ir.Cluster("more")), sources=("B",))
    third = render_world(ir.MeshIR((a, b2)), cache, 3)
    own = third.for_proxy(ProxyId.parse("node~n")).of(CLUSTER)["own"]
    assert own is view.of(CLUSTER)["own"]
    assert "shared" in third.for_proxy(ProxyId.parse("node~n")).of(CLUSTER) and not third.issues


def test_conflict_warnings_after_edits_match_a_fresh_render() -> None:
    """Warnings are rechecked per changed name; over random edits they equal a render from scratch."""
    import random

    rng = random.Random(7)
    names = [f"c{i}" for i in range(6)]
    keys = [f"k{i}" for i in range(5)]

    def bundle(key: str) -> ir.Bundle:
        chosen = rng.sample(names, rng.randint(1, 4))
        return ir.Bundle(key, NODE, clusters=tuple(ir.Cluster(n, connect_timeout_ms=1000 * rng.randint(1, 2))
                                                   for n in chosen), sources=(key.upper(),))

    current = {k: bundle(k) for k in keys}
    cache = ResourceCache()
    warned = False
    for gen in range(60):
        for k in rng.sample(keys, rng.randint(0, 2)):
            if rng.random() < 0.2:
                current.pop(k, None)
            else:
                current[k] = bundle(k)
        model = ir.MeshIR(tuple(current.values()))
        got = render_world(model, cache, gen)
        fresh = render_world(model, ResourceCache(), gen)
        assert [(i.object, i.message) for i in got.issues] == [(i.object, i.message) for i in fresh.issues]
        warned = warned or any("differently" in i.message for i in got.issues)
    assert warned


def test_raw_resource_keys_are_equal_only_for_equal_bodies() -> None:
    import datetime

    from cilia.ir.model import RawResource
    from cilia.render.world import _raw_key

    t = "type.googleapis.com/envoy.config.cluster.v3.Cluster"

    def raw(body: dict[str, Any]) -> RawResource:
        return RawResource(t, "c", body, ("CiliumEnvoyConfig ns/x",), "spec.resources[0]")

    a = raw({"name": "c", "connect_timeout": "1s", "type": "EDS"})
    assert _raw_key(a) == _raw_key(raw({"name": "c", "connect_timeout": "1s", "type": "EDS"}))
    assert _raw_key(a) != _raw_key(raw({"name": "c", "connect_timeout": "2s", "type": "EDS"}))
    # what == takes for equal, the key does not: the parses differ (or one of them fails)
    for one, other in ((1, True), (1, 1.0), (0, False), ("1", 1), ([1], (1,))):
        assert _raw_key(raw({"name": "c", "x": one})) != _raw_key(raw({"name": "c", "x": other})), (one, other)
    day = datetime.date(2026, 12, 5)  # YAML dates are not JSON: compared as values
    assert _raw_key(raw({"name": "c", "when": day})) == _raw_key(raw({"name": "c", "when": day}))
    assert _raw_key(raw({"name": "c", "when": day})) != _raw_key(raw({"name": "c", "when": "2026-12-05"}))
    assert _raw_key(raw({"name": "c", 1: "x", "a": "y"})) != _raw_key(raw({"name": "c", "1": "x", "a": "y"}))
