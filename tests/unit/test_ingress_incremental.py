"""Ingress translation per Ingress unit: after any sequence of edits of Ingresses, Services, EndpointSlices,
IngressClasses, Secrets and options, translating with the previous result (and rendering with the render
cache) equals translating from scratch; and an edit leaves what it does not touch as the very same objects."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cilia.ir.model import Bundle
from cilia.k8s import kinds as _kinds  # noqa: F401 - registers the kinds
from cilia.k8s.manifest import parse_text
from cilia.k8s.store import Store
from cilia.render.world import RenderedWorld, ResourceCache, render_world
from cilia.translate import TRANSLATORS, TranslationResult, translate
from cilia.translate.context import TranslateOptions
from cilia.translate.incremental import memo_disabled
from cilia.translate.ingress import translate_ingresses
from support.certs import TestCA, tls_secret

NS = "default"
_CA = TestCA()
PEMS = [_CA.issue("a.example", "*.w.example"), _CA.issue("b.example")]
OPTIONS = [
    TranslateOptions(),
    TranslateOptions(ingress_http_port=8080, ingress_https_port=8443, ingress_default_mode="shared",
                     ingress_status_address="lb.example", secret_namespaces=("kube-system",)),
    TranslateOptions(ingress_address="127.0.0.2", status_time="2024-01-01T00:00:00Z",
                     ingress_controllers=("cilia.io/ingress-controller", "example.io/other")),
    TranslateOptions(ingress_status_address="::"),
]
INGRESS_AT = TRANSLATORS.index(translate_ingresses)

BACKENDS: list[dict[str, Any]] = [
    {"service": {"name": "s1", "port": {"number": 80}}},
    {"service": {"name": "s2", "port": {"name": "http"}}},
    {"service": {"name": "s2", "port": {"number": 81}}},
    {"service": {"name": "gone", "port": {"number": 80}}},
    {"resource": {"apiGroup": "example.io", "kind": "Bucket", "name": "b"}},
]
HOSTS = ["a.example", "b.example", "*.w.example", "x.w.example", ""]
PATHS = [("/", "Prefix"), ("/a", "Prefix"), ("/a/", "Prefix"), ("/a", "Exact"), ("/a", "ImplementationSpecific"),
         ("/q?x", "Exact"), ("/", "ImplementationSpecific")]
CLASSES: list[dict[str, Any]] = [
    {"ingressClassName": "cilia"}, {"ingressClassName": "mine"}, {"ingressClassName": "other"}, {},
    {"annotation": "cilia"},
]
TIMES = [None, "2023-01-01T00:00:00Z", "2024-01-01T00:00:00Z"]

_path = st.tuples(st.sampled_from(PATHS), st.integers(0, len(BACKENDS) - 1))
_rule = st.tuples(st.sampled_from(HOSTS), st.lists(_path, min_size=1, max_size=2))
_tls = st.tuples(st.lists(st.sampled_from(HOSTS[:3]), max_size=2, unique=True),
                 st.sampled_from(["cert", "cert2", "missing", ""]))
INGRESS = st.fixed_dictionaries({
    "class": st.integers(0, len(CLASSES) - 1),
    "mode": st.sampled_from(["", "shared", "dedicated", "bogus"]),
    "force": st.booleans(),
    "created": st.integers(0, len(TIMES) - 1),
    "default": st.integers(-1, len(BACKENDS) - 1),
    "rules": st.lists(_rule, max_size=3),
    "tls": st.lists(_tls, max_size=2),
})


def _ingress(name: str, d: dict[str, Any]) -> dict[str, Any]:
    md: dict[str, Any] = {"name": name, "namespace": NS, "annotations": {}}
    spec: dict[str, Any] = {}
    cls = CLASSES[d["class"]]
    if "annotation" in cls:
        md["annotations"]["kubernetes.io/ingress.class"] = cls["annotation"]
    else:
        spec.update(cls)
    if d["mode"]:
        md["annotations"]["ingress.cilia.io/loadbalancer-mode"] = d["mode"]
    if d["force"]:
        md["annotations"]["ingress.cilia.io/force-https"] = "true"
    if TIMES[d["created"]] is not None:
        md["creationTimestamp"] = TIMES[d["created"]]
    if d["default"] >= 0:
        spec["defaultBackend"] = BACKENDS[d["default"]]
    spec["rules"] = [{**({"host": host} if host else {}), "http": {"paths": [
        {"path": path, "pathType": kind, "backend": BACKENDS[b]} for (path, kind), b in paths]}}
        for host, paths in d["rules"]]
    spec["tls"] = [{**({"hosts": hosts} if hosts else {}), **({"secretName": secret} if secret else {})}
                   for hosts, secret in d["tls"]]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": md, "spec": spec}


def _service(name: str, v: int) -> dict[str, Any]:
    if v % 4 == 3:
        spec: dict[str, Any] = {"type": "ExternalName", "externalName": f"{name}.example.net",
                                "ports": [{"name": "http", "port": 80}]}
    else:
        spec = {"clusterIP": f"127.96.0.{v % 4 + (1 if name == 's1' else 10)}",
                "ports": [{"name": "http", "port": 80 + v % 2}]}
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS, "labels": {"v": str(v)}},
            "spec": spec}


def _slice(name: str, v: int) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-1", "namespace": NS, "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": [f"127.1.0.{v % 4 + 1}"]}]}


def _class(name: str, v: int) -> dict[str, Any]:
    ours = v % 3 != 2 if name in ("mine", "cilia") else v % 3 == 2
    controller = "cilia.io/ingress-controller" if ours else "example.io/other"
    md: dict[str, Any] = {"name": name}
    if v % 2:
        md["annotations"] = {"ingressclass.kubernetes.io/is-default-class": "true"}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": md,
            "spec": {"controller": controller}}


def _secret(name: str, v: int) -> dict[str, Any]:
    if v % 3 == 2:
        return json.loads(tls_secret(name, crt=b"not a certificate", key=b"nor a key"))
    return json.loads(tls_secret(name, PEMS[v % 2]))


# (kind, names, maker(name, version)); Ingresses are edited with a drawn spec instead of a version.
MAKERS: list[tuple[str, tuple[str, ...], Any]] = [
    ("Service", ("s1", "s2"), _service), ("EndpointSlice", ("s1", "s2"), _slice),
    ("IngressClass", ("mine", "other", "cilia"), _class), ("Secret", ("cert", "cert2"), _secret),
]
EDIT = st.one_of(
    st.tuples(st.just("Ingress"), st.integers(0, 3), INGRESS, st.integers(0, 1)),  # last: which store
    st.tuples(st.integers(0, len(MAKERS) - 1), st.integers(0, 2), st.integers(-1, 5), st.integers(0, 1)),
    st.tuples(st.just("options"), st.integers(0, len(OPTIONS) - 1), st.just(0), st.integers(0, 1)),
    st.tuples(st.just("delete"), st.integers(0, 3), st.just(0), st.integers(0, 1)),
)


def _fingerprint(result: TranslationResult, world: RenderedWorld) -> dict[str, Any]:
    return {
        "statuses": [repr(s) for s in result.statuses],
        "issues": [str(i) for i in result.issues] + [str(i) for i in world.issues],
        "bundles": [(b.key, {t: {n: r.version for n, r in rs.items()} for t, rs in b.resources.items()})
                    for b in world.bundles],
    }


def _start(store: Store) -> None:
    for kind, names, make in MAKERS:
        for name in names:
            store.replace_source(f"{kind}/{name}", parse_text(json.dumps(make(name, 1)), f"{kind}/{name}"))
    first = {"class": 0, "mode": "", "force": False, "created": 0, "default": 0,
             "rules": [("a.example", [(("/", "Prefix"), 0)])], "tls": [(["a.example"], "cert")]}
    for i in range(4):  # of classes cilia, mine, other and none (the default class)
        spec = _ingress(f"i{i}", {**first, "class": i})
        store.replace_source(f"Ingress/i{i}", parse_text(json.dumps(spec), f"Ingress/i{i}"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(EDIT, min_size=1, max_size=12))
def test_incremental_ingress_translation_equals_full(edits: list[tuple[Any, int, Any, int]]) -> None:
    # Two control planes in one process share the module's memos: each must still equal its full translation.
    stores = [Store(), Store()]
    opts = [OPTIONS[0], OPTIONS[0]]
    caches = [ResourceCache(), ResourceCache()]
    results: list[TranslationResult] = []
    for k, store in enumerate(stores):
        _start(store)
        results.append(translate(store.snapshot(), opts[k]))
        render_world(results[k].ir, caches[k], 1)
    for step, (what, pick, value, which) in enumerate(edits, start=2):
        store = stores[which]
        if what == "options":
            opts[which] = OPTIONS[pick]
        elif what == "delete":
            store.replace_source(f"Ingress/i{pick}", parse_text("", f"Ingress/i{pick}"))
        elif what == "Ingress":
            name = f"i{pick}"
            store.replace_source(f"Ingress/{name}", parse_text(json.dumps(_ingress(name, value)), f"Ingress/{name}"))
        else:
            kind, names, make = MAKERS[what]
            name = names[pick % len(names)]
            text = "" if value < 0 else json.dumps(make(name, value))
            store.replace_source(f"{kind}/{name}", parse_text(text, f"{kind}/{name}"))
        snap = store.snapshot()
        result = results[which] = translate(snap, opts[which], results[which])
        world = render_world(result.ir, caches[which], step)
        with memo_disabled():
            full = translate(snap, opts[which])
        assert _fingerprint(result, world) == _fingerprint(full, render_world(full.ir)), edits[: step - 1]
        assert result.ir == full.ir
        mine, theirs = result.partials[INGRESS_AT], full.partials[INGRESS_AT]
        assert (mine.bundles, mine.statuses, mine.issues) == (theirs.bundles, theirs.statuses, theirs.issues)


# -- what an edit leaves alone ----------------------------------------------------------------------------
def _bench_store(n: int) -> Store:
    store = Store()
    for i in range(n):
        svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"s{i}", "namespace": NS},
               "spec": {"clusterIP": f"127.96.1.{i + 1}", "ports": [{"name": "http", "port": 80}]}}
        store.replace_source(f"svc-{i}", parse_text(json.dumps(svc), f"svc-{i}"))
        _put_ingress(store, i, "/p")
    return store


def _put_ingress(store: Store, i: int, path: str) -> None:
    backend = {"service": {"name": f"s{i}", "port": {"number": 80}}}
    ing = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": f"i{i}", "namespace": NS},
           "spec": {"ingressClassName": "cilia", "rules": [{"host": f"h{i}.example", "http": {"paths": [
               {"path": path, "pathType": "Prefix", "backend": backend}]}}]}}
    store.replace_source(f"ing-{i}", parse_text(json.dumps(ing), f"ing-{i}"))


def _ingress_bundle(result: TranslationResult) -> Bundle:
    (bundle,) = result.partials[INGRESS_AT].bundles
    return bundle


def test_ingress_edit_keeps_the_other_ingresses_nodes() -> None:
    store = _bench_store(20)
    before = translate(store.snapshot())
    _put_ingress(store, 3, "/q")
    after = translate(store.snapshot(), None, before)
    old, new = _ingress_bundle(before), _ingress_bundle(after)
    assert new is not old
    assert new.listeners is old.listeners and new.clusters is old.clusters
    (old_rc,), (new_rc,) = old.routes, new.routes
    changed = [vh.name for vh, was in zip(new_rc.virtual_hosts, old_rc.virtual_hosts, strict=True) if vh is not was]
    assert changed == ["h3.example"]
    (edited,) = [vh for vh in new_rc.virtual_hosts if vh.name == "h3.example"]
    assert edited.routes[0].match.path is not None and edited.routes[0].match.path.value == "/q"


def test_service_edit_keeps_the_ingress_bundle_unless_its_cluster_changes() -> None:
    store = _bench_store(20)
    before = translate(store.snapshot())
    relabelled: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "s5", "namespace": NS, "labels": {"a": "b"}},
        "spec": {"clusterIP": "127.96.1.6", "ports": [{"name": "http", "port": 80}]}}
    store.replace_source("svc-5", parse_text(json.dumps(relabelled), "svc-5"))
    after = translate(store.snapshot(), None, before)
    assert _ingress_bundle(after) is _ingress_bundle(before)
    equal = replace(OPTIONS[0])  # equal options, another object: units and groups still reused
    h2c = [{"name": "http", "port": 80, "appProtocol": "h2c"}]
    renamed = {**relabelled, "spec": {**relabelled["spec"], "ports": h2c}}
    store.replace_source("svc-5", parse_text(json.dumps(renamed), "svc-5"))
    again = translate(store.snapshot(), equal, after)
    old, new = _ingress_bundle(after), _ingress_bundle(again)
    assert new is not old
    assert [c.name for c, was in zip(new.clusters, old.clusters, strict=True) if c is not was] == ["default/s5:80"]
    assert new.routes is old.routes and new.listeners is old.listeners
