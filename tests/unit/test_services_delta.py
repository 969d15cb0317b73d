"""translate_services recomputes only the Services whose object or slices changed; over random edits its
result equals a translation from scratch."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from cilia.k8s import kinds as _kinds  # noqa: F401 - registers the kinds
from cilia.k8s.manifest import parse_text
from cilia.k8s.store import Store
from cilia.render.world import ResourceCache, render_world
from cilia.translate import services, translate
from cilia.translate.context import TranslateOptions
from cilia.translate.incremental import memo_disabled

NAMES = ("a", "b", "c", "d")


def _svc(rng: random.Random, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"clusterIP": "127.96.0.1",
                            "ports": [{"name": rng.choice(["http", "web"]), "port": rng.choice([80, 81])}]}
    meta: dict[str, Any] = {"name": name, "namespace": "ns"}
    if rng.random() < 0.15:
        spec = {"type": "ExternalName", "externalName": "x.example"}
    if rng.random() < 0.3:
        meta["annotations"] = {"cilia.io/lb-policy": rng.choice(["ring-hash", "bogus"])}
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec}


def _slice(rng: random.Random, name: str) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "ns",
                         "labels": {"kubernetes.io/service-name": rng.choice(NAMES)}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": [f"10.1.0.{rng.randint(1, 4)}"],
                           "conditions": {"ready": rng.random() < 0.8}}]}


def _put(store: Store, source: str, objs: list[dict[str, Any]]) -> None:
    store.replace_source(source, parse_text("\n---\n".join(json.dumps(o) for o in objs) + "\n", source))


def test_random_service_and_slice_edits_match_a_full_translation(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(3)
    used: list[bool] = []
    real = services._delta

    def spy(*args: Any) -> Any:
        got = real(*args)
        used.append(got is not None)
        return got

    monkeypatch.setattr(services, "_delta", spy)
    store = Store()
    for n in NAMES:
        _put(store, f"svc-{n}", [_svc(rng, n)])
    for i in range(5):
        _put(store, f"slice-{i}", [_slice(rng, f"s{i}")])
    opts = TranslateOptions()
    result = translate(store.snapshot(), opts)
    cache = ResourceCache()
    render_world(result.ir, cache, 1)
    for gen in range(80):
        roll = rng.random()
        if roll < 0.4:
            _put(store, f"svc-{rng.choice(NAMES)}", [_svc(rng, rng.choice(NAMES))] if rng.random() < 0.9 else [])
        else:
            i = rng.randrange(6)
            _put(store, f"slice-{i}", [_slice(rng, f"s{i}")] if rng.random() < 0.85 else [])
        snap = store.snapshot()
        result = translate(snap, opts, result)
        with memo_disabled():
            full = translate(snap, opts)
        assert list(result.ir.endpoints.items()) == list(full.ir.endpoints.items())
        assert result.issues == full.issues
        pool = render_world(result.ir, cache, gen + 2).pool  # the endpoint pool reuses unchanged resources
        assert [(n, x.version) for n, x in pool.items()] == \
            [(n, x.version) for n, x in render_world(full.ir, ResourceCache()).pool.items()]
    assert sum(used) > 20 and not all(used)
