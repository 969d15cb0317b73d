"""Per-unit memo (translate/incremental.py): what a unit read decides whether its output is reused, and
a one-object edit leaves other Gateways' bundles the very same objects."""

from __future__ import annotations

import json
from typing import Any

from cilia.k8s import kinds as _kinds  # noqa: F401 - registers the kinds
from cilia.k8s.manifest import parse_text
from cilia.k8s.store import Store
from cilia.translate import TranslationResult, translate
from cilia.translate.incremental import ObjectReads, UnitMemo, memo_disabled
from support.certs import TestCA, tls_secret

GW = "gateway.networking.k8s.io/v1"


def _svc(name: str, ns: str = "ns", port: int = 80) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": "127.96.0.1", "ports": [{"name": "http", "port": port}]}}


def _put(store: Store, source: str, *objs: dict[str, Any]) -> None:
    store.replace_source(source, parse_text("\n---\n".join(json.dumps(o) for o in objs), source))


def test_object_reads_validity_follows_what_was_read() -> None:
    store = Store()
    _put(store, "a", _svc("a"))
    _put(store, "b", _svc("b"))
    snap = store.snapshot()
    view = ObjectReads(snap)
    assert view.get("Service", "ns", "a") is not None
    assert view.get("Service", "ns", "missing") is None
    reads = view.record()
    assert reads is not None
    _put(store, "b", _svc("b", port=81))  # not read: still valid
    assert reads.still_valid(store.snapshot())
    _put(store, "m", _svc("missing"))  # was absent, now present
    assert not reads.still_valid(store.snapshot())

    view = ObjectReads(store.snapshot())
    list(view.list("Service"))
    listed = view.record()
    assert listed is not None and listed.still_valid(store.snapshot())
    _put(store, "b", _svc("b", port=82))  # any change of a listed kind
    assert not listed.still_valid(store.snapshot())

    view = ObjectReads(store.snapshot())
    _ = view.revision  # anything but get/list/count cannot be checked
    assert view.record() is None


def test_unit_memo_reuses_until_a_read_object_changes() -> None:
    store = Store()
    _put(store, "a", _svc("a"))
    _put(store, "b", _svc("b"))
    memo: UnitMemo[list[int]] = UnitMemo()
    calls: list[str] = []

    def build(snap: Any) -> list[int]:
        calls.append("a")
        return [p.port for p in snap.get("Service", "ns", "a").spec.ports]

    first = memo.compute("a", 1, store.snapshot(), build)
    memo.rotate()
    _put(store, "b", _svc("b", port=81))
    assert memo.compute("a", 1, store.snapshot(), build) is first
    assert memo.compute("a", 2, store.snapshot(), build) is not first  # another signature
    memo.rotate()
    _put(store, "a", _svc("a", port=90))
    assert memo.compute("a", 2, store.snapshot(), build) == [90]
    with memo_disabled():
        memo.compute("a", 2, store.snapshot(), build)
    assert len(calls) == 4


def _gateway(name: str, selector: bool = False) -> dict[str, Any]:
    listener: dict[str, Any] = {"name": "http", "port": 8080, "protocol": "HTTP"}
    if selector:
        listener["allowedRoutes"] = {"namespaces": {"from": "Selector", "selector": {"matchLabels": {"team": "a"}}}}
    return {"apiVersion": GW, "kind": "Gateway", "metadata": {"name": name, "namespace": "ns"},
            "spec": {"gatewayClassName": "cilia", "listeners": [listener]}}


def _route(name: str, gateway: str, backend_ns: str = "ns", path: str = "/") -> dict[str, Any]:
    return {"apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": name, "namespace": "ns"},
            "spec": {"parentRefs": [{"name": gateway}], "hostnames": [f"{name}.example"],
                     "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": path}}],
                                "backendRefs": [{"name": "a", "namespace": backend_ns, "port": 80}]}]}}


def _grant(to_kind: str) -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
            "metadata": {"name": "grant", "namespace": "other"},
            "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "ns"}],
                     "to": [{"group": "", "kind": to_kind}]}}


def _step(store: Store, result: TranslationResult) -> TranslationResult:
    snap = store.snapshot()
    out = translate(snap, None, result)
    with memo_disabled():
        full = translate(snap)
    assert out.ir == full.ir
    assert sorted(map(repr, out.statuses)) == sorted(map(repr, full.statuses))
    return out


def _resolved(result: TranslationResult, route: str) -> str:
    st = next(s for s in result.statuses if s.kind == "HTTPRoute" and s.name == route)
    return next(c["status"] for c in st.status["parents"][0]["conditions"] if c["type"] == "ResolvedRefs")


def test_gateway_edits_reuse_other_gateways_and_follow_grants_and_namespaces() -> None:
    store = Store()
    _put(store, "base", {"apiVersion": GW, "kind": "GatewayClass", "metadata": {"name": "cilia"},
                         "spec": {"controllerName": "cilia.io/gateway-controller"}},
         _svc("a"), _svc("a", ns="other"), {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}})
    _put(store, "ns", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}})
    _put(store, "g1", _gateway("g1"))
    _put(store, "g2", _gateway("g2"))
    _put(store, "r1", _route("r1", "g1"))
    _put(store, "r2", _route("r2", "g2", backend_ns="other"))
    result = translate(store.snapshot())
    assert _resolved(result, "r2") == "False"  # no grant yet
    g2 = {b.key: b for b in result.ir.bundles if "g2" in b.key}

    _put(store, "r1", _route("r1", "g1", path="/v2"))  # an edit on g1 leaves g2's bundles untouched
    result = _step(store, result)
    assert {b.key: b for b in result.ir.bundles if "g2" in b.key} == g2
    assert all(b is g2[b.key] for b in result.ir.bundles if "g2" in b.key)

    _put(store, "grant", _grant("Service"))  # a grant appears: r2 resolves
    result = _step(store, result)
    assert _resolved(result, "r2") == "True"
    _put(store, "grant", _grant("Secret"))  # and no longer
    result = _step(store, result)
    assert _resolved(result, "r2") == "False"

    _put(store, "g1", _gateway("g1", selector=True))  # only namespaces labelled team=a attach to g1
    result = _step(store, result)
    g1 = next(s for s in result.statuses if s.kind == "Gateway" and s.name == "g1")
    assert g1.status["listeners"][0]["attachedRoutes"] == 0
    _put(store, "ns", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns", "labels": {"team": "a"}}})
    result = _step(store, result)
    g1 = next(s for s in result.statuses if s.kind == "Gateway" and s.name == "g1")
    assert g1.status["listeners"][0]["attachedRoutes"] == 1


PEM = TestCA().issue("i1.example", "i2.example")


def _ingress(name: str, shared: bool) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name, "namespace": "ns", "annotations": {
                "ingress.cilia.io/loadbalancer-mode": "shared" if shared else "dedicated"}},
            "spec": {"ingressClassName": "cilia", "tls": [{"hosts": [f"{name}.example"], "secretName": "tls"}],
                     "rules": [{"host": f"{name}.example", "http": {"paths": [
                         {"path": "/", "pathType": "Prefix",
                          "backend": {"service": {"name": "a", "port": {"number": 80}}}}]}}]}}


def _tls(valid: bool) -> dict[str, Any]:
    if valid:
        return dict(json.loads(tls_secret("tls", PEM, "ns")))
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tls", "namespace": "ns"},
            "type": "kubernetes.io/tls", "stringData": {"other": "x"}}


def test_ingress_groups_reuse_bundles_and_follow_their_secret() -> None:
    store = Store()
    _put(store, "base", {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": {"name": "cilia"},
                         "spec": {"controller": "cilia.io/ingress-controller"}}, _svc("a"))
    _put(store, "other", _svc("other"))
    _put(store, "i1", _ingress("i1", shared=False))
    _put(store, "i2", _ingress("i2", shared=True))
    _put(store, "tls", _tls(True))
    result = translate(store.snapshot())
    before = {b.key: b for b in result.ir.bundles if b.key.startswith("ingress")}
    assert set(before) == {"ingress:cilia", "ingress:shared"}
    assert all(b.secrets for b in before.values())

    _put(store, "other", _svc("other", port=81))  # a Service no Ingress uses: the very same bundles
    result = _step(store, result)
    assert all(b is before[b.key] for b in result.ir.bundles if b.key.startswith("ingress"))

    _put(store, "tls", _tls(False))  # both groups use the Secret: both lose it
    result = _step(store, result)
    assert not any(b.secrets for b in result.ir.bundles if b.key.startswith("ingress"))
    _put(store, "tls", _tls(True))
    result = _step(store, result)
    assert all(b.secrets for b in result.ir.bundles if b.key.startswith("ingress"))


def test_store_snapshots_carry_what_changed_since_recent_ones() -> None:
    store = Store()
    _put(store, "a", _svc("a"))
    first = store.snapshot()
    _put(store, "b", _svc("b"))
    second = store.snapshot()
    _put(store, "a", _svc("a", port=81))
    _put(store, "gw", _gateway("g1"))
    third = store.snapshot()
    assert third.changes_since(third.revision) == (frozenset(), frozenset())
    assert third.changes_since(second.revision) == (frozenset({"Service", "Gateway"}),
                                                    frozenset({("Service", "ns", "a"), ("Gateway", "ns", "g1")}))
    _, keys = third.changes_since(first.revision) or (frozenset(), frozenset())
    assert ("Service", "ns", "b") in keys and ("Service", "ns", "a") in keys
    assert third.changes_since(first.revision - 1) is None  # before the store's first snapshot
    assert [o.meta.name for o in third.list("Service")] == ["a", "b"]  # listed in key order
    for i in range(70):  # the store remembers a bounded number of snapshots
        _put(store, "b", _svc("b", port=100 + i))
        store.snapshot()
    assert store.snapshot().changes_since(third.revision) is None


def test_a_route_edit_revisits_only_the_routes_it_can_affect() -> None:
    from cilia.translate import gateway

    store = Store()
    _put(store, "base", {"apiVersion": GW, "kind": "GatewayClass", "metadata": {"name": "cilia"},
                         "spec": {"controllerName": "cilia.io/gateway-controller"}},
         _svc("a"), _svc("a", ns="other"), _svc("b"))
    _put(store, "g", _gateway("g1"), _gateway("g2"))
    for i in range(30):
        _put(store, f"r{i}", _route(f"r{i}", "g1" if i % 2 else "g2", backend_ns="other" if i == 7 else "ns"))
    _put(store, "slice", {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                          "metadata": {"name": "a-1", "namespace": "ns",
                                       "labels": {"kubernetes.io/service-name": "a"}},
                          "addressType": "IPv4", "endpoints": [{"addresses": ["127.1.0.1"]}]})
    result = _step(store, translate(store.snapshot()))

    def misses_after(source: str, *objs: dict[str, Any]) -> int:
        nonlocal result
        before = gateway._ROUTES.misses + gateway._ROUTES.hits
        _put(store, source, *objs)
        result = _step(store, result)
        return gateway._ROUTES.misses + gateway._ROUTES.hits - before

    assert misses_after("r3", _route("r3", "g1", path="/v2")) == 1  # only the edited route is looked at
    # An EndpointSlice edit does not re-run the Gateway API translator; the next route edit stays cheap.
    _put(store, "slice", {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                          "metadata": {"name": "a-1", "namespace": "ns",
                                       "labels": {"kubernetes.io/service-name": "a"}},
                          "addressType": "IPv4", "endpoints": [{"addresses": ["127.1.0.2"]}]})
    result = _step(store, result)
    assert misses_after("r4", _route("r4", "g2", path="/v3")) == 1
    assert misses_after("grant", _grant("Service")) == 30  # a grant can change any route: all are checked
    assert _resolved(result, "r7") == "True"
    assert misses_after("r5", _route("r5", "g1", path="/v4")) == 1  # and then it is back to one
    assert misses_after("base", {"apiVersion": GW, "kind": "GatewayClass", "metadata": {"name": "cilia"},
                                 "spec": {"controllerName": "cilia.io/gateway-controller"}},
                        _svc("a", port=81), _svc("a", ns="other"), _svc("b")) == 29  # routes reading ns/a
    assert misses_after("g", _gateway("g1"), _gateway("g2", selector=True)) == 30  # a Gateway changed: all


def test_translation_follows_the_store_changes_since_the_previous_one() -> None:
    from cilia.translate import TRANSLATORS

    store = Store()
    _put(store, "base", {"apiVersion": GW, "kind": "GatewayClass", "metadata": {"name": "cilia"},
                         "spec": {"controllerName": "cilia.io/gateway-controller"}}, _svc("a"))
    _put(store, "g", _gateway("g1"))
    _put(store, "r", _route("r1", "g1"))
    result = translate(store.snapshot())
    again = translate(store.snapshot(), None, result)  # nothing changed: every translator's output reused
    assert again.reused == len(TRANSLATORS)
    assert again.ir == result.ir
    _put(store, "r", _route("r1", "g1", path="/moved"))
    store.snapshot()  # taken and never translated: its change must not be lost
    later = translate(store.snapshot(), None, again)
    with memo_disabled():
        full = translate(store.snapshot())
    assert later.ir == full.ir
    assert later.reused < len(TRANSLATORS)


def test_a_translation_that_fails_half_way_leaves_nothing_stale(monkeypatch: Any) -> None:
    import pytest

    from cilia.translate import gateway

    store = Store()
    _put(store, "base", {"apiVersion": GW, "kind": "GatewayClass", "metadata": {"name": "cilia"},
                         "spec": {"controllerName": "cilia.io/gateway-controller"}}, _svc("a"), _svc("b"))
    _put(store, "g", _gateway("g1"))
    for i in range(6):
        _put(store, f"r{i}", _route(f"r{i}", "g1"))
    result = _step(store, translate(store.snapshot()))
    result = _step(store, result)
    real = gateway._route_outcome

    def failing(snapshot: Any, gateways: Any, listener_sets: Any, route: Any, opts: Any) -> Any:
        if route.meta.name == "r3":
            raise RuntimeError("translation failed")
        return real(snapshot, gateways, listener_sets, route, opts)

    monkeypatch.setattr(gateway, "_route_outcome", failing)
    # Every route reads Service ns/a: all are affected; r0-r2 are redone, then r3 fails.
    _put(store, "base", {"apiVersion": GW, "kind": "GatewayClass", "metadata": {"name": "cilia"},
                         "spec": {"controllerName": "cilia.io/gateway-controller"}}, _svc("a", port=81), _svc("b"))
    with pytest.raises(RuntimeError):
        translate(store.snapshot(), None, result)
    monkeypatch.setattr(gateway, "_route_outcome", real)
    _put(store, "r0", _route("r0", "g1", path="/x"))
    result = _step(store, result)  # r4 and r5 were never redone for Service a's edit: they must be now
    assert all(c["status"] == "False" for s in result.statuses if s.kind == "HTTPRoute"
               for c in s.status["parents"][0]["conditions"] if c["type"] == "ResolvedRefs")
