"""The fake API server against the real kubernetes-asyncio client: wire protocol and semantics."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.dynamic import DynamicClient

from kubefake import FakeApiServer

GW = "gateway.networking.k8s.io"
MERGE = "application/merge-patch+json"
APPLY = "application/apply-patch+yaml"
# The generated client accepts ``_content_type`` at run time, but its type stubs omit it.
AS_MERGE: dict[str, Any] = {"_content_type": MERGE}
AS_APPLY: dict[str, Any] = {"_content_type": APPLY}
AS_STRATEGIC: dict[str, Any] = {"_content_type": "application/strategic-merge-patch+json"}
RAW: dict[str, Any] = {"_preload_content": False}


@pytest.fixture
async def api() -> AsyncIterator[FakeApiServer]:
    async with FakeApiServer(bookmark_interval=0.2) as server:
        yield server
        assert server.server_errors == []


@pytest.fixture
async def kc(api: FakeApiServer) -> AsyncIterator[ApiClient]:
    c = await api.new_client()
    async with c:
        yield c


def pod(name: str, ns: str = "default", node: str = "n1", labels: dict[str, str] | None = None) -> Any:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels or {"app": "web"}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
    }


def gateway(name: str, ns: str = "default") -> Any:
    return {
        "apiVersion": f"{GW}/v1",
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "gatewayClassName": "cilia",
            "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}],
        },
    }


async def next_event(stream: watch.Watch, within: float = 3.0) -> dict[str, Any]:
    return await asyncio.wait_for(stream.__anext__(), within)  # type: ignore[no-any-return]


# ---------------------------------------------------------------- discovery, config, auth


async def test_discovery_and_kubeconfig(api: FakeApiServer, kc: ApiClient, tmp_path: Path) -> None:
    groups = await client.ApisApi(kc).get_api_versions()
    names = {g.name for g in groups.groups}
    assert {GW, "cilium.io", "networking.k8s.io", "discovery.k8s.io", "coordination.k8s.io"} <= names
    gw = next(g for g in groups.groups if g.name == GW)
    assert gw.preferred_version.version == "v1"
    core = await client.CoreV1Api(kc).get_api_resources()
    by_name = {r.name: r for r in core.resources}
    assert by_name["pods"].namespaced and by_name["pods"].kind == "Pod"
    assert "pods/status" in by_name and "secrets/status" not in by_name
    assert not by_name["nodes"].namespaced
    cil = await client.CustomObjectsApi(kc).get_api_resources("cilium.io", "v2")
    scope = {r.name: r.namespaced for r in cil.resources}
    assert scope == {
        "ciliumenvoyconfigs": True,
        "ciliumenvoyconfigs/status": True,
        "ciliumclusterwideenvoyconfigs": False,
        "ciliumclusterwideenvoyconfigs/status": False,
        "ciliumnetworkpolicies": True,
        "ciliumnetworkpolicies/status": True,
        "ciliumclusterwidenetworkpolicies": False,
        "ciliumclusterwidenetworkpolicies/status": False,
        "ciliumegressgatewaypolicies": False,
    }

    # the dynamic client discovers kinds purely from /api and /apis
    dyn = await DynamicClient(kc, cache_file=str(tmp_path / "discovery.json"))
    tls = await dyn.resources.get(api_version=f"{GW}/v1alpha2", kind="TLSRoute")
    assert tls.name == "tlsroutes" and tls.namespaced


async def test_token_required(api: FakeApiServer) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{api.url}/api/v1/namespaces") as r:
            assert r.status == 401
            assert (await r.json())["reason"] == "Unauthorized"
        async with s.get(f"{api.url}/api/v1/namespaces", headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 401
        async with s.get(f"{api.url}/readyz") as r:
            assert r.status == 200


async def test_load_kube_config_global(api: FakeApiServer) -> None:
    await config.load_kube_config(
        config_file=api.kubeconfig_path(), client_configuration=(cfg := client.Configuration())
    )
    async with ApiClient(cfg) as c:
        nss = await client.CoreV1Api(c).list_namespace()
    assert {n.metadata.name for n in nss.items} == {
        "default",
        "kube-system",
        "kube-public",
        "kube-node-lease",
    }
    assert nss.items[0].metadata.labels["kubernetes.io/metadata.name"] == nss.items[0].metadata.name


# ---------------------------------------------------------------- CRUD and concurrency


async def test_crud_resource_versions_and_conflict(api: FakeApiServer, kc: ApiClient) -> None:
    core = client.CoreV1Api(kc)
    created = await core.create_namespaced_pod("default", pod("a"))
    rv1 = int(created.metadata.resource_version)
    assert created.metadata.uid and created.metadata.generation == 1 and created.metadata.creation_timestamp
    with pytest.raises(ApiException) as exc:
        await core.create_namespaced_pod("default", pod("a"))
    assert exc.value.status == 409 and json.loads(exc.value.body or b"{}")["reason"] == "AlreadyExists"
    with pytest.raises(ApiException) as exc:
        await core.create_namespaced_pod("nope", pod("a", ns="nope"))
    assert exc.value.status == 404

    # label change: new resourceVersion, same generation
    created.metadata.labels["tier"] = "x"
    relabelled = await core.replace_namespaced_pod("a", "default", created)
    assert int(relabelled.metadata.resource_version) > rv1
    assert relabelled.metadata.generation == 1
    # stale resourceVersion: 409 Conflict, object unchanged
    created.spec.node_name = "n2"
    with pytest.raises(ApiException) as exc:
        await core.replace_namespaced_pod("a", "default", created)
    assert exc.value.status == 409 and json.loads(exc.value.body or b"{}")["reason"] == "Conflict"
    relabelled.spec.node_name = "n2"
    moved = await core.replace_namespaced_pod("a", "default", relabelled)
    assert moved.metadata.generation == 2 and moved.spec.node_name == "n2"
    # a no-op write keeps the resourceVersion
    same = await core.replace_namespaced_pod("a", "default", moved)
    assert same.metadata.resource_version == moved.metadata.resource_version

    deleted = await core.delete_namespaced_pod("a", "default")
    assert deleted.metadata.name == "a"
    with pytest.raises(ApiException) as exc:
        await core.read_namespaced_pod("a", "default")
    assert exc.value.status == 404
    assert [r.verb for r in api.writes] == [
        "create",
        "create",
        "create",
        "update",
        "update",
        "update",
        "update",
        "delete",
    ]
    assert [r.status for r in api.writes] == [201, 409, 404, 200, 409, 200, 200, 200]


async def test_custom_object_update_requires_resource_version(api: FakeApiServer, kc: ApiClient) -> None:
    co = client.CustomObjectsApi(kc)
    await co.create_namespaced_custom_object(GW, "v1", "default", "gateways", gateway("g"))
    body = gateway("g")
    with pytest.raises(ApiException) as exc:
        await co.replace_namespaced_custom_object(GW, "v1", "default", "gateways", "g", body)
    assert exc.value.status == 422
    # served at v1beta1 too, from the same storage
    beta = await co.get_namespaced_custom_object(GW, "v1beta1", "default", "gateways", "g")
    assert beta["apiVersion"] == f"{GW}/v1beta1"
    # the CRD status default applies on create
    assert [c["reason"] for c in beta["status"]["conditions"]] == ["Pending", "Pending"]


async def test_finalizers_delay_deletion(api: FakeApiServer, kc: ApiClient) -> None:
    core = client.CoreV1Api(kc)
    body: Any = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s", "finalizers": ["x.io/keep"]},
        "data": {},
    }
    await core.create_namespaced_secret("default", body)
    await core.delete_namespaced_secret("s", "default")
    marked = await core.read_namespaced_secret("s", "default")
    assert marked.metadata.deletion_timestamp is not None
    await core.patch_namespaced_secret("s", "default", {"metadata": {"finalizers": None}})
    assert api.get("v1", "Secret", "s", "default") is None


# ---------------------------------------------------------------- list


async def test_list_selectors_and_pagination(api: FakeApiServer, kc: ApiClient) -> None:
    api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}})
    for i in range(5):
        api.create(pod(f"p{i}", node="n1" if i % 2 else "n2", labels={"app": "web" if i < 3 else "db"}))
    api.create(pod("q", ns="other"))
    core = client.CoreV1Api(kc)

    everything = await core.list_pod_for_all_namespaces()
    assert [p.metadata.name for p in everything.items] == ["p0", "p1", "p2", "p3", "p4", "q"]
    assert int(everything.metadata.resource_version) == api.resource_version
    web = await core.list_namespaced_pod("default", label_selector="app=web")
    assert [p.metadata.name for p in web.items] == ["p0", "p1", "p2"]
    notweb = await core.list_namespaced_pod("default", label_selector="app notin (web),app")
    assert [p.metadata.name for p in notweb.items] == ["p3", "p4"]
    on_n1 = await core.list_pod_for_all_namespaces(field_selector="spec.nodeName=n1")
    assert [p.metadata.name for p in on_n1.items] == ["p1", "p3", "q"]
    with pytest.raises(ApiException) as exc:
        await core.list_namespaced_pod("default", field_selector="spec.bogus=1")
    assert exc.value.status == 400

    # raw JSON: built-in list items carry no kind/apiVersion, CRD items do
    raw: Any = await core.list_namespaced_pod("default", **RAW)
    assert "kind" not in json.loads(await raw.read())["items"][0]

    page1 = await core.list_namespaced_pod("default", limit=2)
    assert [p.metadata.name for p in page1.items] == ["p0", "p1"] and page1.metadata.remaining_item_count == 3
    api.create(pod("p9"))  # a consistent snapshot: later pages do not see it
    page2 = await core.list_namespaced_pod("default", limit=2, _continue=page1.metadata._continue)
    page3 = await core.list_namespaced_pod("default", limit=2, _continue=page2.metadata._continue)
    assert [p.metadata.name for p in page2.items + page3.items] == ["p2", "p3", "p4"]
    assert page3.metadata._continue is None
    assert page3.metadata.resource_version == page1.metadata.resource_version

    api.compact()
    with pytest.raises(ApiException) as exc:
        await core.list_namespaced_pod("default", limit=2, _continue=page1.metadata._continue)
    assert exc.value.status == 410 and json.loads(exc.value.body or b"{}")["reason"] == "Expired"


# ---------------------------------------------------------------- watch


async def test_list_then_watch_events(api: FakeApiServer, kc: ApiClient) -> None:
    core = client.CoreV1Api(kc)
    api.create(pod("a"))
    listed = await core.list_namespaced_pod("default")
    async with watch.Watch() as w:
        stream = w.stream(
            core.list_namespaced_pod,
            "default",
            resource_version=listed.metadata.resource_version,
            label_selector="app=web",
        )
        first = asyncio.ensure_future(next_event(stream))
        await api.wait_for_watches(1, "pods")
        api.create(pod("b"))
        ev = await first
        assert (ev["type"], ev["object"].metadata.name) == ("ADDED", "b")
        b = api.get("v1", "Pod", "b", "default")
        assert b is not None
        b["metadata"]["labels"]["app"] = "db"  # leaves the selector: DELETED for this watch
        api.update(b)
        ev = await next_event(stream)
        assert (ev["type"], ev["object"].metadata.labels["app"]) == ("DELETED", "db")
        api.delete("v1", "Pod", "a", "default")
        ev = await next_event(stream)
        assert ev["type"] == "DELETED" and ev["object"].metadata.name == "a"
        assert int(ev["object"].metadata.resource_version) == api.resource_version
        assert ev["raw_object"]["apiVersion"] == "v1" and ev["raw_object"]["kind"] == "Pod"


async def test_watch_without_resource_version_sends_current_state(api: FakeApiServer, kc: ApiClient) -> None:
    api.create(pod("a"))
    api.create(pod("b"))
    core = client.CoreV1Api(kc)
    async with watch.Watch() as w:
        stream = w.stream(core.list_namespaced_pod, "default", timeout_seconds=1)
        names = [(e["type"], e["object"].metadata.name) async for e in stream]
    assert names == [("ADDED", "a"), ("ADDED", "b")]  # then the stream ends at timeoutSeconds


async def test_watch_resumes_after_drop(api: FakeApiServer, kc: ApiClient) -> None:
    core = client.CoreV1Api(kc)
    rv = (await core.list_namespaced_pod("default")).metadata.resource_version
    async with watch.Watch() as w:
        stream = w.stream(core.list_namespaced_pod, "default", resource_version=rv)
        first = asyncio.ensure_future(next_event(stream))
        await api.wait_for_watches(1, "pods")
        api.create(pod("a"))
        assert (await first)["object"].metadata.name == "a"
        seen_rv = api.resource_version
        assert api.drop_watches("pods") == 1
        api.create(pod("b"))  # while no watch is open
        ev = await next_event(stream)  # the client re-watches from the last resourceVersion it saw
        assert (ev["type"], ev["object"].metadata.name) == ("ADDED", "b")
    await api.wait_until(lambda: len(api.find_requests(verb="watch")) == 2, within=1.0)
    watches = api.find_requests(verb="watch")
    assert len(watches) == 2 and watches[1].param("resourceVersion") == str(seen_rv)


async def test_watch_abort_is_a_connection_error(api: FakeApiServer, kc: ApiClient) -> None:
    core = client.CoreV1Api(kc)
    async with watch.Watch() as w:
        stream = w.stream(core.list_namespaced_pod, "default", resource_version=str(api.resource_version))
        pending = asyncio.ensure_future(next_event(stream))
        await api.wait_for_watches(1, "pods")
        api.drop_watches(abort=True)
        with pytest.raises(aiohttp.ClientError):
            await pending


async def test_watch_410_when_history_compacted(api: FakeApiServer, kc: ApiClient) -> None:
    core = client.CoreV1Api(kc)
    rv = (await core.list_namespaced_pod("default")).metadata.resource_version
    api.create(pod("a"))
    api.compact()
    # direct: a 200 response whose only event is ERROR with a 410 Expired Status
    raw: Any = await core.list_namespaced_pod("default", watch=True, resource_version=rv, **RAW)
    assert raw.status == 200
    line = json.loads(await raw.content.readline())
    assert line["type"] == "ERROR"
    assert (line["object"]["kind"], line["object"]["code"], line["object"]["reason"]) == (
        "Status",
        410,
        "Expired",
    )
    assert await raw.content.readline() == b""
    raw.release()
    # through Watch: it retries once from the same resourceVersion, then raises
    async with watch.Watch() as w:
        with pytest.raises(ApiException) as exc:
            await next_event(w.stream(core.list_namespaced_pod, "default", resource_version=rv))
    assert exc.value.status == 410


async def test_watch_410_after_drop_then_relist(api: FakeApiServer, kc: ApiClient) -> None:
    core = client.CoreV1Api(kc)
    rv = (await core.list_namespaced_pod("default")).metadata.resource_version
    async with watch.Watch() as w:
        stream = w.stream(core.list_namespaced_pod, "default", resource_version=rv)
        pending = asyncio.ensure_future(next_event(stream))
        await api.wait_for_watches(1, "pods")
        api.create(pod("a"))
        assert (await pending)["object"].metadata.name == "a"
        # the stream ends; before the client is back, "b" is written and history compacted
        api.drop_watches()
        api.create(pod("b"))
        api.compact()
        with pytest.raises(ApiException) as exc:
            await next_event(stream)
        assert exc.value.status == 410
    relisted = await core.list_namespaced_pod("default")
    assert [p.metadata.name for p in relisted.items] == ["a", "b"]


async def test_history_limit_expires_old_resource_versions() -> None:
    async with FakeApiServer(history_limit=3) as small:
        rv = small.resource_version
        for i in range(5):
            small.create(pod(f"p{i}"))
        async with await small.new_client() as c:
            core = client.CoreV1Api(c)
            raw: Any = await core.list_namespaced_pod(
                "default", watch=True, resource_version=str(rv), timeout_seconds=1, **RAW
            )
            assert json.loads(await raw.content.readline())["object"]["code"] == 410
            raw.release()
            recent = small.resource_version - 3
            async with watch.Watch() as w:
                names = [
                    e["object"].metadata.name
                    async for e in w.stream(
                        core.list_namespaced_pod, "default", resource_version=str(recent), timeout_seconds=1
                    )
                ]
            assert names == ["p2", "p3", "p4"]


async def test_bookmarks(api: FakeApiServer, kc: ApiClient) -> None:
    core = client.CoreV1Api(kc)
    api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}})
    rv = (await core.list_namespaced_pod("default")).metadata.resource_version
    async with watch.Watch() as w:
        stream = w.stream(
            core.list_namespaced_pod, "default", resource_version=rv, allow_watch_bookmarks=True
        )
        pending = asyncio.ensure_future(next_event(stream))
        await api.wait_for_watches(1, "pods")
        api.create(pod("elsewhere", ns="other"))  # not visible to this watch, but moves the resourceVersion
        ev = await pending  # periodic bookmark (interval 0.2 s)
        assert ev["type"] == "BOOKMARK"
        assert ev["raw_object"]["metadata"]["resourceVersion"] == str(api.resource_version)
        assert w.resource_version == str(api.resource_version)
        api.create(pod("here"))
        api.send_bookmarks()
        ev = await next_event(stream)
        assert (ev["type"], ev["object"].metadata.name) == ("ADDED", "here")
        ev = await next_event(stream)
        assert ev["type"] == "BOOKMARK" and ev["raw_object"]["metadata"]["resourceVersion"] == str(
            api.resource_version
        )


async def test_send_initial_events_ends_with_marked_bookmark(api: FakeApiServer, kc: ApiClient) -> None:
    api.create(pod("a"))
    core = client.CoreV1Api(kc)
    raw: Any = await core.list_namespaced_pod(
        "default",
        watch=True,
        send_initial_events=True,
        allow_watch_bookmarks=True,
        resource_version_match="NotOlderThan",
        timeout_seconds=1,
        **RAW,
    )
    lines = [json.loads(x) for x in (await raw.read()).splitlines()]
    assert [x["type"] for x in lines[:2]] == ["ADDED", "BOOKMARK"]
    assert lines[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


async def test_injected_errors(api: FakeApiServer, kc: ApiClient) -> None:
    core = client.CoreV1Api(kc)
    api.inject_error(500, verb="list", plural="pods", times=2)
    for _ in range(2):
        with pytest.raises(ApiException) as exc:
            await core.list_namespaced_pod("default")
        assert exc.value.status == 500
    await core.list_namespaced_pod("default")  # the fault is used up
    api.inject_error(429, verb="watch", retry_after=1)
    raw: Any = await core.list_namespaced_pod("default", watch=True, **RAW)
    assert raw.status == 429 and raw.headers["Retry-After"] == "1"
    raw.release()

    async with watch.Watch() as w:
        stream = w.stream(
            core.list_namespaced_pod, "default", resource_version=str(api.resource_version), timeout_seconds=5
        )
        pending = asyncio.ensure_future(next_event(stream))
        await api.wait_for_watches(1, "pods")
        api.send_watch_error(500, "InternalError", "etcd hiccup")
        with pytest.raises(ApiException) as exc:
            await pending
        assert exc.value.status == 500


# ---------------------------------------------------------------- CRDs absent, then installed


async def test_crd_absent_then_installed() -> None:
    async with FakeApiServer(absent_groups=[GW]) as api:
        async with await api.new_client() as c:
            co = client.CustomObjectsApi(c)
            with pytest.raises(ApiException) as exc:
                await co.list_cluster_custom_object(GW, "v1", "gateways")
            assert exc.value.status == 404 and exc.value.body == "404 page not found\n"
            groups = await client.ApisApi(c).get_api_versions()
            assert GW not in {g.name for g in groups.groups}
            ext = client.ApiextensionsV1Api(c)
            crds = await ext.list_custom_resource_definition()
            assert all(crd.spec.group != GW for crd in crds.items)

            async with watch.Watch() as w:
                stream = w.stream(
                    ext.list_custom_resource_definition, resource_version=crds.metadata.resource_version
                )
                pending = asyncio.ensure_future(next_event(stream))
                await api.wait_for_watches(1, "customresourcedefinitions")
                assert "gateways" in api.install_group(GW)
                ev = await pending
                assert ev["type"] == "ADDED" and ev["object"].spec.group == GW

            api.create(gateway("g"))
            listed = await co.list_cluster_custom_object(GW, "v1", "gateways")
            assert [i["metadata"]["name"] for i in listed["items"]] == ["g"]
            assert listed["items"][0]["kind"] == "Gateway"

            # removing the CRD ends open watches and takes the objects with it
            async with watch.Watch() as w:
                stream = w.stream(
                    co.list_namespaced_custom_object,
                    GW,
                    "v1",
                    "default",
                    "gateways",
                    resource_version=listed["metadata"]["resourceVersion"],
                    timeout_seconds=5,
                )
                pending = asyncio.ensure_future(next_event(stream))
                await api.wait_for_watches(1, "gateways")
                api.uninstall_group(GW, kinds=["Gateway"])
                with pytest.raises(StopAsyncIteration):
                    await pending
            with pytest.raises(ApiException) as exc:
                await co.list_cluster_custom_object(GW, "v1", "gateways")
            assert exc.value.status == 404
            await co.list_cluster_custom_object(GW, "v1", "httproutes")  # the rest of the group stays


# ---------------------------------------------------------------- status subresource, patch formats


async def test_status_subresource_merge_patch(api: FakeApiServer, kc: ApiClient) -> None:
    co = client.CustomObjectsApi(kc)
    created = await co.create_namespaced_custom_object(GW, "v1", "default", "gateways", gateway("g"))
    status = {
        "conditions": [
            {
                "type": "Accepted",
                "status": "True",
                "reason": "Accepted",
                "message": "",
                "observedGeneration": 1,
                "lastTransitionTime": "2024-01-01T00:00:00Z",
            }
        ]
    }
    api.clear_requests()
    # the client's default content type for a dict body is JSON patch, which the server rejects
    with pytest.raises(ApiException) as exc:
        await co.patch_namespaced_custom_object_status(
            GW, "v1", "default", "gateways", "g", {"status": status}
        )
    assert exc.value.status == 400
    with pytest.raises(ApiException) as exc:  # strategic merge is not available for custom resources
        await co.patch_namespaced_custom_object_status(
            GW,
            "v1",
            "default",
            "gateways",
            "g",
            {"status": status},
            **AS_STRATEGIC,
        )
    assert exc.value.status == 415

    patched = await co.patch_namespaced_custom_object_status(
        GW,
        "v1",
        "default",
        "gateways",
        "g",
        {"status": status, "spec": {"gatewayClassName": "other"}},
        **AS_MERGE,
    )
    assert patched["status"] == status
    assert patched["spec"]["gatewayClassName"] == "cilia"  # /status ignores everything but status
    assert patched["metadata"]["generation"] == 1
    assert int(patched["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    again = await co.patch_namespaced_custom_object_status(
        GW, "v1", "default", "gateways", "g", {"status": status}, **AS_MERGE
    )
    assert again["metadata"]["resourceVersion"] == patched["metadata"]["resourceVersion"]  # no-op

    # main-resource writes ignore status, and spec changes bump generation
    main = await co.patch_namespaced_custom_object(
        GW,
        "v1",
        "default",
        "gateways",
        "g",
        {"spec": {"gatewayClassName": "other"}, "status": {"conditions": []}},
        **AS_MERGE,
    )
    assert main["status"] == status and main["metadata"]["generation"] == 2

    status_writes = api.find_requests(writes_only=True, subresource="status", status=200)
    assert len(status_writes) == 2 and status_writes[0].content_type == MERGE
    assert status_writes[0].json["status"] == status and status_writes[1].json == {"status": status}


async def test_status_subresource_put_and_json_patch(api: FakeApiServer, kc: ApiClient) -> None:
    net = client.NetworkingV1Api(kc)
    ing: Any = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "i"},
        "spec": {
            "ingressClassName": "cilia",
            "defaultBackend": {"service": {"name": "s", "port": {"number": 80}}},
        },
        "status": {"loadBalancer": {"ingress": [{"ip": "127.96.0.9"}]}},
    }
    created = await net.create_namespaced_ingress("default", ing)
    assert created.status.load_balancer.ingress is None  # status is not settable on create
    created.status = client.V1IngressStatus(
        load_balancer=client.V1IngressLoadBalancerStatus(
            ingress=[client.V1IngressLoadBalancerIngress(ip="127.96.0.9")]
        )
    )
    updated = await net.replace_namespaced_ingress_status("i", "default", created)
    assert updated.status.load_balancer.ingress[0].ip == "127.96.0.9"
    with pytest.raises(ApiException) as exc:  # the same (now stale) resourceVersion again
        await net.replace_namespaced_ingress_status("i", "default", created)
    assert exc.value.status == 409
    patched = await net.patch_namespaced_ingress_status(
        "i",
        "default",
        [{"op": "replace", "path": "/status/loadBalancer/ingress/0/ip", "value": "127.96.0.10"}],
    )
    assert patched.status.load_balancer.ingress[0].ip == "127.96.0.10"
    assert api.writes[-1].content_type == "application/json-patch+json"


async def test_strategic_merge_on_builtin_status(api: FakeApiServer, kc: ApiClient) -> None:
    core = client.CoreV1Api(kc)
    api.create(
        {
            **pod("a"),
            "status": {
                "phase": "Running",
                "podIP": "127.1.0.5",
                "conditions": [
                    {"type": "Ready", "status": "False"},
                    {"type": "Initialized", "status": "True"},
                ],
            },
        }
    )
    patched = await core.patch_namespaced_pod_status(
        "a", "default", {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    )
    assert api.writes[-1].content_type == "application/strategic-merge-patch+json"
    conds = {c.type: c.status for c in patched.status.conditions}
    assert conds == {"Ready": "True", "Initialized": "True"}  # merged by type, not replaced
    assert patched.status.pod_ip == "127.1.0.5"


async def test_server_side_apply_status(api: FakeApiServer, kc: ApiClient) -> None:
    co = client.CustomObjectsApi(kc)
    api.create(gateway("g"))

    def cond(t: str, s: str = "True") -> dict[str, Any]:
        return {
            "type": t,
            "status": s,
            "reason": t,
            "message": "",
            "observedGeneration": 1,
            "lastTransitionTime": "2024-01-01T00:00:00Z",
        }

    def applied(*conds: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": f"{GW}/v1",
            "kind": "Gateway",
            "metadata": {"name": "g", "namespace": "default"},
            "status": {"conditions": list(conds)},
        }

    with pytest.raises(ApiException) as exc:  # apply needs a field manager
        await co.patch_namespaced_custom_object_status(
            GW, "v1", "default", "gateways", "g", applied(), **AS_APPLY
        )
    assert exc.value.status == 422
    first = await co.patch_namespaced_custom_object_status(
        GW,
        "v1",
        "default",
        "gateways",
        "g",
        applied(cond("Accepted"), cond("Programmed")),
        field_manager="cilia",
        **AS_APPLY,
    )
    # the CRD default conditions are replaced by key; ownership is recorded
    assert [c["reason"] for c in first["status"]["conditions"]] == ["Accepted", "Programmed"]
    mf = first["metadata"]["managedFields"]
    assert [(m["manager"], m["operation"], m.get("subresource")) for m in mf] == [
        ("cilia", "Apply", "status")
    ]
    assert 'k:{"type":"Accepted"}' in mf[0]["fieldsV1"]["f:status"]["f:conditions"]

    same = await co.patch_namespaced_custom_object_status(
        GW,
        "v1",
        "default",
        "gateways",
        "g",
        applied(cond("Accepted"), cond("Programmed")),
        field_manager="cilia",
        **AS_APPLY,
    )
    assert same["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]

    # dropping a condition from the applied config removes it; another manager cannot take it silently
    second = await co.patch_namespaced_custom_object_status(
        GW,
        "v1",
        "default",
        "gateways",
        "g",
        applied(cond("Accepted", "False")),
        field_manager="cilia",
        **AS_APPLY,
    )
    assert [(c["type"], c["status"]) for c in second["status"]["conditions"]] == [("Accepted", "False")]
    with pytest.raises(ApiException) as exc:
        await co.patch_namespaced_custom_object_status(
            GW,
            "v1",
            "default",
            "gateways",
            "g",
            applied(cond("Accepted")),
            field_manager="other",
            **AS_APPLY,
        )
    assert exc.value.status == 409 and "cilia" in json.loads(exc.value.body or b"{}")["message"]
    forced = await co.patch_namespaced_custom_object_status(
        GW,
        "v1",
        "default",
        "gateways",
        "g",
        applied(cond("Accepted")),
        field_manager="other",
        force=True,
        **AS_APPLY,
    )
    assert forced["status"]["conditions"][0]["status"] == "True"
    assert forced["metadata"]["generation"] == 1


async def test_apply_creates_main_resource(api: FakeApiServer, kc: ApiClient) -> None:
    co = client.CustomObjectsApi(kc)
    cec = {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumClusterwideEnvoyConfig",
        "metadata": {"name": "c"},
        "spec": {"resources": []},
    }
    # 201 Created, which the generated client does not decode (it maps only 200 for PATCH)
    await co.patch_cluster_custom_object(
        "cilium.io", "v2", "ciliumclusterwideenvoyconfigs", "c", cec, field_manager="t", **AS_APPLY
    )
    assert api.writes[-1].status == 201
    made = await co.get_cluster_custom_object("cilium.io", "v2", "ciliumclusterwideenvoyconfigs", "c")
    assert made["metadata"]["generation"] == 1
    assert made["metadata"]["managedFields"][0]["operation"] == "Apply"
    with pytest.raises(ApiException) as exc:  # status apply does not create
        await co.patch_namespaced_custom_object_status(
            "cilium.io",
            "v2",
            "default",
            "ciliumenvoyconfigs",
            "nope",
            {
                "apiVersion": "cilium.io/v2",
                "kind": "CiliumEnvoyConfig",
                "metadata": {"name": "nope", "namespace": "default"},
                "status": {},
            },
            field_manager="t",
            **AS_APPLY,
        )
    assert exc.value.status == 404


# ---------------------------------------------------------------- leases


async def test_lease_optimistic_concurrency(api: FakeApiServer, kc: ApiClient) -> None:
    coord = client.CoordinationV1Api(kc)
    lease = client.V1Lease(
        metadata=client.V1ObjectMeta(name="cilia", namespace="kube-system"),
        spec=client.V1LeaseSpec(
            holder_identity="a",
            lease_duration_seconds=2,
            renew_time=datetime(2024, 1, 1, 0, 0, 0, 500000, tzinfo=UTC),
        ),
    )
    await coord.create_namespaced_lease("kube-system", lease)
    seen_a = await coord.read_namespaced_lease("cilia", "kube-system")
    seen_b = await coord.read_namespaced_lease("cilia", "kube-system")
    assert seen_a.spec.renew_time.microsecond == 500000
    raw = api.get("coordination.k8s.io/v1", "Lease", "cilia", "kube-system")
    assert raw is not None and raw["spec"]["renewTime"] == "2024-01-01T00:00:00.500000Z"
    seen_a.spec.holder_identity = "a"
    seen_a.spec.lease_transitions = 0
    await coord.replace_namespaced_lease("cilia", "kube-system", seen_a)
    seen_b.spec.holder_identity = "b"
    with pytest.raises(ApiException) as exc:  # b lost the race
        await coord.replace_namespaced_lease("cilia", "kube-system", seen_b)
    assert exc.value.status == 409
    merged = await coord.patch_namespaced_lease("cilia", "kube-system", {"spec": {"holderIdentity": "b"}})
    assert merged.spec.holder_identity == "b"
    with pytest.raises(ApiException) as exc:
        await coord.patch_namespaced_lease("cilia", "kube-system", {"spec": {"renewTime": "yesterday"}})
    assert exc.value.status == 400


# ---------------------------------------------------------------- paths and verbs on the raw wire


async def test_raw_paths_verbs_and_dry_run(api: FakeApiServer) -> None:
    headers = {"Authorization": "Bearer kubefake-token"}
    api.create(pod("a"))
    api.create(pod("b", labels={"app": "db"}))
    async with aiohttp.ClientSession(api.url, headers=headers) as s:

        async def call(method: str, path: str, body: Any = None, **params: str) -> tuple[int, Any]:
            async with s.request(method, path, json=body, params=params) as r:
                text = await r.text()
                is_json = r.content_type == "application/json" and "/watch/" not in path
                return r.status, json.loads(text) if is_json and text else text

        # a known group/version with an unknown resource: a Status; an unknown group: plain text
        assert (await call("GET", "/api/v1/widgets"))[1]["reason"] == "NotFound"
        assert await call("GET", "/apis/example.com/v1/widgets") == (404, "404 page not found\n")
        # collection-level verbs and subresources that do not exist
        assert (await call("POST", "/api/v1/pods", pod("c")))[0] == 405
        assert (await call("PUT", "/api/v1/namespaces/default/secrets/x/status", {}))[0] == 404
        assert (await call("GET", "/api/v1/pods/a"))[0] == 404
        # dry run: validated and answered, not stored
        code, obj = await call("POST", "/api/v1/namespaces/default/pods", pod("c"), dryRun="All")
        assert code == 201 and obj["metadata"]["name"] == "c"
        assert api.get("v1", "Pod", "c", "default") is None
        # legacy watch path for one object, bounded by timeoutSeconds
        rv = str(api.resource_version)
        api.update({**pod("a", labels={"app": "web", "v": "2"})})
        code, text = await call(
            "GET", "/api/v1/watch/namespaces/default/pods/a", resourceVersion=rv, timeoutSeconds="1"
        )
        events = [json.loads(x) for x in text.splitlines()]
        assert [(e["type"], e["object"]["metadata"]["labels"]["v"]) for e in events] == [("MODIFIED", "2")]
        # deletecollection by label
        code, deleted = await call("DELETE", "/api/v1/namespaces/default/pods", labelSelector="app=db")
        assert code == 200 and [i["metadata"]["name"] for i in deleted["items"]] == ["b"]
        assert [p["metadata"]["name"] for p in api.list_objects("v1", "Pod")] == ["a"]
        # bad query values are rejected the way the real server does
        assert (await call("GET", "/api/v1/pods", watch="yes"))[0] == 400
        assert (await call("GET", "/api/v1/pods", resourceVersion="abc"))[0] == 400
        code, status = await call("GET", "/api/v1/pods", resourceVersion=str(api.resource_version + 5))
        assert (code, status["reason"]) == (504, "Timeout")
