"""Raw (CiliumEnvoyConfig) resources at scale: defaults shared by many bodies (SharedJson) are converted
once and copied, with the same message and the same rule checks as a private copy; a raw resource is
looked up by content only among those of its type and name; and what a translation and render leave
behind holds no cyclic garbage, which `cilia serve` relies on when it freezes a stage's allocations."""

from __future__ import annotations

import copy
import gc
import pickle
from typing import Any

import pytest
from google.protobuf import json_format

from cilia.app import FREEZE_MIN_YOUNG, collect_and_freeze, collector_paused, release_frozen
from cilia.ir import model as ir
from cilia.ir.model import SharedJson
from cilia.render.raw import RawValidationError, parse_raw
from cilia.render.world import ResourceCache, render_world

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
NODE = ir.ProxyScope(frozenset({"node"}))


def _plain(value: Any) -> Any:
    """`value` with every SharedJson made a private dict."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


ADS = SharedJson({"ads": SharedJson(), "resource_api_version": "V3"})
BREAKERS = SharedJson({"thresholds": [SharedJson({"max_retries": 128, "max_connections": 1024})]})


def _cluster(name: str, **extra: Any) -> dict[str, Any]:
    return {"@type": CLUSTER, "name": name, "type": "EDS", "connect_timeout": "1s",
            "circuit_breakers": BREAKERS, "eds_cluster_config": {"eds_config": ADS}, **extra}


def test_shared_values_cannot_change_and_copy_as_themselves() -> None:
    with pytest.raises(TypeError):
        ADS["ads"] = {}
    with pytest.raises(TypeError):
        ADS.update({"x": 1})
    with pytest.raises(TypeError):
        del ADS["ads"]
    assert copy.deepcopy(ADS) is ADS and copy.copy(ADS) is ADS
    body = copy.deepcopy({"a": ADS})
    assert body["a"] is ADS
    again = pickle.loads(pickle.dumps(ADS))
    assert again == ADS and type(again) is SharedJson


@pytest.mark.parametrize("body", [
    _cluster("a"),
    _cluster("b", lb_policy="RING_HASH"),
    {"@type": ROUTE, "name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]},
])
def test_a_shared_value_converts_as_a_private_copy(body: dict[str, Any]) -> None:
    for _ in range(2):  # converted, then copied from the first conversion
        shared = parse_raw(body["@type"], body)
        private = parse_raw(body["@type"], _plain(body))
        assert shared.SerializeToString(deterministic=True) == private.SerializeToString(deterministic=True)
        expected = type(shared)()
        json_format.ParseDict({k: v for k, v in _plain(body).items() if k != "@type"}, expected)
        assert shared == expected


def test_a_broken_rule_in_a_shared_value_is_reported_every_time() -> None:
    panic = SharedJson({"healthy_panic_threshold": {"value": 200}})  # Percent: at most 100
    for name in ("a", "b"):
        with pytest.raises(RawValidationError, match="100"):
            parse_raw(CLUSTER, _cluster(name, common_lb_config=panic))
    assert parse_raw(CLUSTER, _cluster("c"))  # the memo holds no error for a value without one


def _raw(name: str, body: dict[str, Any], source: str) -> ir.RawResource:
    return ir.RawResource(CLUSTER, name, body, (source,), "spec.resources[0]")


def test_raw_resources_are_shared_by_type_name_and_content() -> None:
    cache = ResourceCache()
    same_a = _raw("c", _cluster("c"), "CiliumEnvoyConfig ns/a")
    same_b = _raw("c", _cluster("c"), "CiliumEnvoyConfig ns/b")
    other = _raw("c", _cluster("c", lb_policy="RING_HASH"), "CiliumEnvoyConfig ns/c")
    bundles = tuple(ir.Bundle(f"cec:{k}", NODE, raw=(r,)) for k, r in (("a", same_a), ("b", same_b), ("c", other)))
    world = render_world(ir.MeshIR(bundles), cache, 1)
    by_key = {b.key: b.resources[CLUSTER]["c"] for b in world.bundles}
    assert by_key["cec:a"] is by_key["cec:b"]  # equal content: one parse
    assert by_key["cec:c"] is not by_key["cec:a"] and by_key["cec:c"].version != by_key["cec:a"].version
    # the next render: new objects (a config edited), the same content, found among the last render's
    again = tuple(ir.Bundle(b.key, NODE, raw=(_raw("c", _cluster("c"), "CiliumEnvoyConfig ns/a"),))
                  for b in bundles[:1])
    world2 = render_world(ir.MeshIR(again), cache, 2)
    assert world2.bundles[0].resources[CLUSTER]["c"] is by_key["cec:a"]
    # a resource of another name with that content is its own
    named = render_world(ir.MeshIR((ir.Bundle("cec:d", NODE, raw=(_raw("d", _cluster("d"), "x"),)),)), cache, 3)
    assert named.bundles[0].resources[CLUSTER]["d"].version != by_key["cec:a"].version


def test_translation_and_render_leave_no_cyclic_garbage() -> None:
    from bench.translate_bench import _load

    from cilia.k8s.store import Store
    from cilia.translate import translate
    from cilia.translate.context import TranslateOptions

    store = Store()
    _load(store, 200, 4)  # Services, EndpointSlices, CiliumEnvoyConfigs, Gateways, HTTPRoutes, Ingresses
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        cache = ResourceCache()
        result = translate(store.snapshot(), TranslateOptions())
        world = render_world(result.ir, cache, 1)
        assert len(world.bundles) > 20
        for _ in range(2):  # and again, from the last: the first world's parts are dropped or reused
            result = translate(store.snapshot(), TranslateOptions(grpc_targets=False), result)
            world = render_world(result.ir, cache, 2)
        del result, world, cache
        assert gc.collect() == 0
    finally:
        if was:
            gc.enable()


def test_a_frozen_stage_leaves_nothing_young_and_grown_freezes_are_collected(monkeypatch: pytest.MonkeyPatch) -> None:
    import cilia.app

    monkeypatch.setattr(cilia.app, "FROZEN_SLACK", 0)
    monkeypatch.setattr(cilia.app, "_FROZEN_BASELINE", [])
    gc.collect()
    base = gc.get_freeze_count()
    try:
        assert not release_frozen()  # no full collection yet (a process not started): nothing to measure from
        gc.disable()  # as under a high young threshold (many streams): objects left young before the stage
        young = [[i] for i in range(FREEZE_MIN_YOUNG // 2)]
        with collector_paused(freeze=True):
            small = [[i] for i in range(FREEZE_MIN_YOUNG // 2 + 1_000)]
        assert gc.get_count()[0] >= FREEZE_MIN_YOUNG  # together past the line, the stage alone not
        gc.enable()
        assert gc.get_freeze_count() == base  # an edit's objects: not frozen, whatever was young before
        with collector_paused(freeze=True):
            kept = [[i] for i in range(FREEZE_MIN_YOUNG)]
        assert gc.get_count()[0] < 100  # the stage's allocations are not left for a young collection
        assert gc.get_freeze_count() >= base + FREEZE_MIN_YOUNG
        collect_and_freeze()
        assert not release_frozen()  # not grown: left alone
        cycles = []
        for _ in range(10_000):
            a: list[Any] = []
            a.append(a)
            cycles.append(a)
        del cycles  # cyclic garbage, frozen below (another thread's, in serve) where no collection sees it
        monkeypatch.setattr(cilia.app, "_FROZEN_BASELINE", [gc.get_freeze_count() // 4])
        assert not release_frozen()  # grown, but no stage froze anything since the last look: not even counted
        with collector_paused(freeze=True):
            more = [[i] for i in range(FREEZE_MIN_YOUNG)]
        grown = gc.get_freeze_count()
        monkeypatch.setattr(cilia.app, "_FROZEN_BASELINE", [grown // 2])
        assert release_frozen()
        assert not release_frozen()  # looked at once per freeze
        assert gc.get_freeze_count() < grown - 9_000  # the cycles were collected, the rest frozen again
        del kept, small, young, more
    finally:
        gc.unfreeze()
        gc.collect()
