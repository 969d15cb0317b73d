"""KubernetesSource against the fake API server, through the real kubernetes-asyncio client."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

import cilia.k8s.kinds  # noqa: F401  (registers every kind)
from cilia.k8s import registry
from cilia.k8s.kubeapi import KubeApi
from cilia.k8s.kubesource import KubernetesSource, WatchOptions
from cilia.k8s.registry import KindSpec
from cilia.k8s.store import Store
from kubefake import DEFAULT_RESOURCES, FakeApiServer, ResourceType
from support.kubecp import wait_until

FAST = WatchOptions(page_size=2, backoff_initial_s=0.02, backoff_max_s=0.2, crd_retry_s=0.15,
                    initial_sync_timeout_s=3.0)
CILIUM = "cilium.io"

LEASE = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "c", "namespace": "default"}}


def svc(name: str, vip: str = "127.96.0.10", port: Any = 80, ns: str = "default") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": vip, "ports": [{"name": "http", "port": port}]}}


def cec(name: str, listener_name: str = "l", ns: str = "default") -> dict[str, Any]:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumEnvoyConfig", "metadata": {"name": name, "namespace": ns},
            "spec": {"resources": [{"@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
                                    "name": listener_name}]}}


class Harness:
    def __init__(self, api: FakeApiServer, kube: KubeApi, store: Store, source: KubernetesSource) -> None:
        self.api, self.kube, self.store, self.source = api, kube, store, source
        self.task: asyncio.Task[None] | None = None
        self.restarts: list[tuple[str, str]] = []

    async def start(self) -> None:
        await self.source.initial_sync()
        self.task = asyncio.create_task(self.source.run())
        await self.api.wait_for_watches(1, "services")

    def names(self, kind: str) -> list[str]:
        return [o.meta.name for o in self.store.snapshot().list(kind)]

    def get(self, kind: str, name: str, ns: str = "default") -> Any:
        return self.store.get(kind, ns, name)


@pytest.fixture
async def api() -> AsyncIterator[FakeApiServer]:
    async with FakeApiServer(bookmark_interval=0.1, absent_groups=[CILIUM]) as server:
        yield server
        assert server.server_errors == []


@pytest.fixture
async def h(api: FakeApiServer) -> AsyncIterator[Harness]:
    kube = await KubeApi.connect(api.kubeconfig_path())
    store = Store()
    source = KubernetesSource(store, kube, options=FAST)
    harness = Harness(api, kube, store, source)
    source.on_watch_restart = lambda kind, reason: harness.restarts.append((kind, reason))
    try:
        yield harness
    finally:
        if harness.task is not None:
            harness.task.cancel()
            await asyncio.gather(harness.task, return_exceptions=True)
        await kube.close()


async def test_initial_list_sets_kind_and_pages(h: Harness) -> None:
    for i in range(5):
        h.api.create(svc(f"s{i}", f"127.96.0.{i + 1}"))
    h.api.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "labels": {"zone": "a"}},
                  "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.5"}],
                             "conditions": [{"type": "Ready", "status": "True",
                                             "lastHeartbeatTime": "2025-01-01T00:00:00Z"}]}})
    await h.source.initial_sync()
    assert h.names("Service") == ["s0", "s1", "s2", "s3", "s4"]
    s0 = h.get("Service", "s0")
    assert s0.kind == "Service" and s0.api_version == "v1"  # list items come without kind/apiVersion
    assert s0.meta.resource_version and "managedFields" not in s0.raw["metadata"]
    assert h.names("Namespace") == ["default", "kube-node-lease", "kube-public", "kube-system"]
    node = h.get("Node", "n1", "")
    assert node.spec.addresses == (("InternalIP", "127.0.0.5"),)
    assert "conditions" not in node.raw["status"]  # heartbeats must not cause rebuilds
    pages = h.api.find_requests(verb="list", plural="services")
    assert len(pages) == 3 and pages[1].param("continue")  # 5 items, page size 2
    # Kinds whose CRD is absent are disabled, not fatal.
    assert h.source.served("CiliumEnvoyConfig") is False
    assert h.source.served("Service") is True


async def test_live_updates_and_deletes(h: Harness) -> None:
    h.api.create(svc("a"))
    await h.start()
    h.api.create(svc("b", "127.96.0.11"))
    await wait_until(lambda: h.names("Service") == ["a", "b"], what="ADDED b")
    h.api.update({**svc("b", "127.96.0.12")})
    await wait_until(lambda: h.get("Service", "b").spec.cluster_ips == ("127.96.0.12",), what="MODIFIED b")
    h.api.delete("v1", "Service", "a", "default")
    await wait_until(lambda: h.names("Service") == ["b"], what="DELETED a")
    served = [k for k in h.source._kinds if h.source.served(k)]
    assert h.source.relists == len(served) >= 7  # one list per served kind; the rest came by watch


def configmap(name: str, data: dict[str, str], ns: str = "default") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "data": data,
            "metadata": {"name": name, "namespace": ns, "annotations": {"big": "x" * 1000}}}


async def test_only_configmaps_with_a_ca_cert_are_kept_and_only_that_key(h: Harness) -> None:
    h.api.create(configmap("ca", {"ca.crt": "PEM", "other": "y" * 1000}))
    h.api.create(configmap("plain", {"a": "b"}))
    await h.start()
    assert h.names("ConfigMap") == ["ca"]
    kept = h.get("ConfigMap", "ca")
    assert kept.spec.ca_crt == "PEM" and kept.raw["data"] == {"ca.crt": "PEM"}
    assert "annotations" not in kept.raw["metadata"]
    # Unrelated ConfigMaps change nothing; one that gains the key arrives, one that loses it leaves.
    rev = h.store.revision
    h.api.create(configmap("noise", {"k": "v"}))
    h.api.update(configmap("plain", {"ca.crt": "PEM2"}))
    await wait_until(lambda: h.names("ConfigMap") == ["ca", "plain"], what="plain gained ca.crt")
    assert h.store.revision == rev + 1
    h.api.update(configmap("ca", {"other": "z"}))
    await wait_until(lambda: h.names("ConfigMap") == ["plain"], what="ca lost ca.crt")


async def test_invalid_object_is_an_issue_and_last_good_version_stays(h: Harness) -> None:
    h.api.create(svc("a", port=80))
    await h.start()
    rev = h.store.revision
    h.api.update(svc("a", port=70000))
    await wait_until(lambda: any("Service default/a" in str(i) for i in h.store.issues()), what="issue")
    issue = next(i for i in h.store.issues() if i.object == "Service default/a")
    assert issue.field == "spec.ports[0].port" and "last valid version" in issue.message
    assert h.get("Service", "a").spec.ports[0].port == 80
    observed = h.source.observed("Service", "default", "a")
    assert observed is not None and observed.resource_version != h.get("Service", "a").meta.resource_version
    h.api.update(svc("a", port=81))
    await wait_until(lambda: h.get("Service", "a").spec.ports[0].port == 81, what="fixed object")
    assert not h.store.issues()
    assert h.store.revision > rev
    # An object invalid from the start is ignored, with an issue; the relist keeps it out too.
    h.api.create(svc("bad", port="x"))
    await wait_until(lambda: any(i.object == "Service default/bad" for i in h.store.issues()), what="bad")
    assert h.get("Service", "bad") is None


async def test_watch_drop_and_abort_resume_from_resource_version(h: Harness) -> None:
    await h.start()
    lists_before = len(h.api.find_requests(verb="list", plural="services"))
    for abort, name in ((False, "x"), (True, "y")):
        watches_before = len(h.api.find_requests(verb="watch", plural="services"))
        rv_before = h.source._kinds["Service"].rv
        assert h.api.drop_watches("services", abort=abort) == 1
        h.api.create(svc(name, "127.96.0.20"))  # changed while no watch is open
        await wait_until(lambda n=name: n in h.names("Service"), what=f"{name} after drop")
        resumed = h.api.find_requests(verb="watch", plural="services")[watches_before:]
        assert resumed and resumed[0].param("resourceVersion") == rv_before
    assert len(h.api.find_requests(verb="list", plural="services")) == lists_before  # no relist
    reasons = {r for k, r in h.restarts if k == "Service"}
    assert reasons == {"closed", "error"}  # clean end, then aborted connection


async def test_bookmarks_advance_the_resume_point(h: Harness) -> None:
    await h.start()
    h.api.create(LEASE)  # a kind cilia does not read: only the resourceVersion moves
    rv = str(h.api.resource_version)
    await wait_until(lambda: h.source._kinds["Service"].rv == rv, what="bookmark RV")
    watches_before = len(h.api.find_requests(verb="watch", plural="services"))
    h.api.drop_watches("services")
    await h.api.wait_for_watches(1, "services")
    assert h.api.find_requests(verb="watch", plural="services")[watches_before].param("resourceVersion") == rv
    assert all(r.param("allowWatchBookmarks") == "true" for r in h.api.find_requests(verb="watch"))


async def test_410_relists_without_emptying_the_store(h: Harness) -> None:
    h.api.create(svc("keep"))
    h.api.create(svc("gone", "127.96.0.11"))
    await h.start()
    rev = h.store.revision
    removed: list[frozenset[str]] = []
    h.store.subscribe(removed.append)
    h.api.drop_watches("services")
    h.api.create(LEASE)  # a kind cilia does not read: only the resourceVersion moves
    h.api.compact()  # the resume point is gone: 410 Expired
    await wait_until(lambda: ("Service", "expired") in h.restarts, what="410 seen")
    await wait_until(lambda: h.api.watch_count("services") == 1, what="watching again")
    assert h.store.revision == rev and removed == []  # relisted unchanged objects: no change at all
    # A change made during a gap in history arrives through the relist; deletions too.
    h.api.drop_watches("services")
    h.api.delete("v1", "Service", "gone", "default")
    h.api.update(svc("keep", "127.96.0.30"))
    h.api.compact()
    await wait_until(lambda: h.names("Service") == ["keep"], what="delete seen by relist")
    await wait_until(lambda: h.get("Service", "keep").spec.cluster_ips == ("127.96.0.30",), what="update")
    # ERROR events carrying 410 inside a stream also relist.
    await h.api.wait_for_watches(1, "services")
    before = h.source.relists
    assert h.api.send_watch_error(410, "Expired", plural="services") == 1
    await wait_until(lambda: h.source.relists > before, what="relist on ERROR 410")


async def test_crd_absent_then_installed_then_removed(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cilia.source.kube")
    await h.start()
    await asyncio.sleep(0.5)  # several retries while absent
    absent = [r for r in caplog.records if "CiliumEnvoyConfig (cilium.io/v2) is not served" in r.getMessage()]
    assert len(absent) == 1  # one clear line, not one per retry
    assert len([r for r in h.api.requests if r.path.endswith("/ciliumenvoyconfigs")]) >= 3  # but retried
    h.api.install_group(CILIUM)
    h.api.create(cec("one"))
    await wait_until(lambda: h.names("CiliumEnvoyConfig") == ["one"], what="CEC after install")
    assert any("CiliumEnvoyConfig is now served" in r.getMessage() for r in caplog.records)
    h.api.create(cec("two"))
    await wait_until(lambda: h.names("CiliumEnvoyConfig") == ["one", "two"], what="CEC by watch")
    h.api.uninstall_group(CILIUM)  # the CRD is deleted, and with it every object of the kind
    await wait_until(lambda: h.names("CiliumEnvoyConfig") == [], what="CEC gone with its CRD")
    assert h.source.served("CiliumEnvoyConfig") is False
    assert h.task is not None and not h.task.done()


async def test_errors_back_off_and_recover(h: Harness) -> None:
    h.api.create(svc("a"))
    h.api.inject_error(500, verb="list", plural="services", times=3)
    await h.start()  # initial sync retries through the errors
    assert h.names("Service") == ["a"]
    assert len(h.api.find_requests(verb="list", plural="services", status=500)) == 3
    h.api.inject_error(503, verb="watch", plural="services", times=2)
    h.api.drop_watches("services")
    h.api.create(svc("b", "127.96.0.11"))
    await wait_until(lambda: h.names("Service") == ["a", "b"], within=5, what="recovered after watch errors")
    assert h.restarts.count(("Service", "error")) >= 2
    assert h.task is not None and not h.task.done()


async def test_first_served_version_is_used() -> None:
    """A kind registered as (v1, v1beta1) on a server that only serves v1beta1 is read at v1beta1."""
    widget = ResourceType("example.io", "widgets", "Widget", True, ("v1beta1",))
    spec = KindSpec("Widget", "example.io", ("v1", "v1beta1"), True, lambda raw, meta: dict(raw["spec"]), "widgets")
    async with FakeApiServer(resources=(*DEFAULT_RESOURCES, widget)) as api:
        api.create({"apiVersion": "example.io/v1beta1", "kind": "Widget",
                    "metadata": {"name": "w", "namespace": "default"}, "spec": {"size": 3}})
        kube = await KubeApi.connect(api.kubeconfig_path())
        try:
            registry._KINDS["Widget"] = spec  # parse_object looks kinds up in the registry
            store = Store()
            source = KubernetesSource(store, kube, options=FAST, kinds=[spec])
            await source.initial_sync()
            res = source.resource("Widget")
            assert res is not None and res.api_version == "example.io/v1beta1"
            w = store.get("Widget", "default", "w")
            assert w is not None and w.api_version == "example.io/v1beta1" and w.spec == {"size": 3}
            tried = [r.path for r in api.requests if r.path.endswith("/widgets")]
            assert tried == ["/apis/example.io/v1/widgets", "/apis/example.io/v1beta1/widgets"]
        finally:
            registry._KINDS.pop("Widget", None)
            await kube.close()


def secret(name: str, ns: str, value: str = "x") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": name, "namespace": ns},
            "data": {"k": base64.b64encode(value.encode()).decode()}}


async def test_secrets_are_read_only_in_the_configured_namespaces(api: FakeApiServer,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    for ns in ("tls-a", "tls-b", "apps"):
        api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    api.create(secret("cert", "tls-a"))
    api.create(secret("cert", "tls-b"))
    api.create(secret("token", "apps"))
    api.create(secret("token", "default"))
    kube = await KubeApi.connect(api.kubeconfig_path())
    store = Store()
    opts = WatchOptions(page_size=2, backoff_initial_s=0.02, backoff_max_s=0.2, crd_retry_s=0.15,
                        initial_sync_timeout_s=3.0, secret_namespaces=("tls-a", "tls-b"))
    source = KubernetesSource(store, kube, options=opts)
    api.inject_error(403, verb="list", plural="secrets", namespace="tls-b", times=1,
                     message='secrets is forbidden: User "system:serviceaccount:cilia-system:cilia" cannot list')
    task: asyncio.Task[None] | None = None
    try:
        with caplog.at_level(logging.INFO, logger="cilia.source.kube"):
            await source.initial_sync()
            task = asyncio.create_task(source.run())
            await wait_until(lambda: {(o.meta.namespace, o.meta.name) for o in store.snapshot().list("Secret")}
                             == {("tls-a", "cert"), ("tls-b", "cert")}, what="both namespaces listed")
        await api.wait_for_watches(2, "secrets")
        # Never a Secret request across namespaces, nor in a namespace not configured.
        reads = api.find_requests(plural="secrets")
        assert {r.namespace for r in reads} == {"tls-a", "tls-b"}
        assert {r.verb for r in reads} == {"list", "watch"}
        assert source.served("Secret@tls-a") and source.served("Secret@tls-b") and source.served("Secret") is None
        text = caplog.text
        assert "Secrets are read only in: tls-a, tls-b (--secrets-namespace)" in text
        assert "Secret (namespace tls-b): list failed: 403 Forbidden" in text
        assert "needs list on secrets from a Role in namespace tls-b" in text
        # Each namespace's watch and relist touch only that namespace's Secrets.
        api.update(secret("cert", "tls-a", "y"))
        api.delete("v1", "Secret", "cert", "tls-b")
        api.create(secret("other", "apps"))
        await wait_until(lambda: store.get("Secret", "tls-b", "cert") is None, what="DELETED in tls-b")
        await wait_until(lambda: store.get("Secret", "tls-a", "cert").spec.data["k"] == b"y", what="MODIFIED tls-a")
        api.compact()
        api.drop_watches("secrets")
        relists = source.relists
        await wait_until(lambda: source.relists >= relists + 2, what="both namespaces relisted")
        assert {(o.meta.namespace, o.meta.name) for o in store.snapshot().list("Secret")} == {("tls-a", "cert")}
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await kube.close()


async def test_too_deep_object_is_an_issue_and_others_still_list_and_watch(h: Harness) -> None:
    """An object nested past the depth limit (the API server takes 10,000 levels in unknown fields) is an
    issue on that object alone: its last valid version stays, the list and the watch go on."""
    deep: Any = "leaf"
    for _ in range(150):
        deep = [deep]
    h.api.create(svc("a", port=80))
    h.api.create(svc("b", "127.96.0.11"))
    await h.start()
    h.api.update({**svc("a", port=81), "extra": deep})
    await wait_until(lambda: any(i.object == "Service default/a" for i in h.store.issues()), what="issue")
    issue = next(i for i in h.store.issues() if i.object == "Service default/a")
    assert issue.field.startswith("extra[0][0]") and "nested deeper than 100 levels" in issue.message
    assert "last valid version" in issue.message
    assert h.get("Service", "a").spec.ports[0].port == 80
    h.api.create(svc("c", "127.96.0.12"))  # the watch still delivers
    await wait_until(lambda: h.names("Service") == ["a", "b", "c"], what="ADDED c")
    await h.source._list(h.source._kinds["Service"])  # and a relist with the deep object in it works too
    assert h.names("Service") == ["a", "b", "c"] and h.get("Service", "a").spec.ports[0].port == 80


async def test_watch_event_over_the_size_limit_ends_the_watch_not_the_source(
        h: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from cilia.k8s import kubeapi

    h.api.create(svc("a"))
    await h.start()
    monkeypatch.setattr(kubeapi, "MAX_WATCH_EVENT_BYTES", 4000)
    big = svc("a", port=81)
    big["metadata"]["annotations"] = {"blob": "x" * 5000}
    with caplog.at_level(logging.WARNING, logger="cilia.source.kube"):
        h.api.update(big)
        await wait_until(lambda: ("Service", "error") in h.restarts, what="watch restarted")
    assert any("longer than 4000" in r.getMessage() for r in caplog.records)
    assert h.get("Service", "a").spec.ports[0].port == 80, "what served stays"
    monkeypatch.setattr(kubeapi, "MAX_WATCH_EVENT_BYTES", 1 << 20)
    await wait_until(lambda: h.get("Service", "a").spec.ports[0].port == 81, within=10, what="resumed")
