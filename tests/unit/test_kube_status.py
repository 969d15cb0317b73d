"""StatusWriter against the fake API server: written only on change, coalesced, rate-bounded, leader-only."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import cilia.k8s.kinds  # noqa: F401
from cilia.diagnostics import Issue
from cilia.k8s.kubeapi import KubeApi
from cilia.k8s.kubesource import KubernetesSource, ObservedObject, WatchOptions
from cilia.k8s.registry import KindSpec, register_kind
from cilia.k8s.statuswriter import Nack, StatusWriter, WriteLimits, current_nacks, envoy_config_statuses
from cilia.k8s.store import Store
from cilia.translate.context import ObjectStatus
from kubefake import FakeApiServer
from support.kubecp import wait_until

GW = "gateway.networking.k8s.io"
ME = "cilia.io/gateway-controller"
FAST = WatchOptions(backoff_initial_s=0.02, backoff_max_s=0.2, crd_retry_s=0.2, initial_sync_timeout_s=3.0)


def _opaque(raw: Any, meta: Any) -> Any:
    return dict(raw.get("spec") or {})


# The writer works on any kind the source reads. Gateway API kinds are registered by their own module when
# it exists; until then these tests register stand-ins (same group, versions and plurals).
TEST_KINDS = (
    KindSpec("Gateway", GW, ("v1", "v1beta1"), True, _opaque, "gateways"),
    KindSpec("HTTPRoute", GW, ("v1", "v1beta1"), True, _opaque, "httproutes"),
)


@pytest.fixture(scope="module", autouse=True)
def _kinds() -> Iterator[None]:
    from cilia.k8s import registry

    added = [k for k in TEST_KINDS if registry.kind_spec(k.kind) is None]
    for k in added:
        register_kind(k.kind, k.group, k.versions, k.namespaced, k.parse, k.plural)
    yield
    for k in added:  # leave the registry as other test modules expect it
        registry._KINDS.pop(k.kind, None)


def gateway(name: str, status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": f"{GW}/v1", "kind": "Gateway",
                           "metadata": {"name": name, "namespace": "default", "generation": 1},
                           "spec": {"gatewayClassName": "cilia", "listeners": [{"name": "http", "port": 80,
                                                                                "protocol": "HTTP"}]}}
    if status is not None:
        obj["status"] = status
    return obj


def cond(type_: str, status: str = "True", reason: str = "Accepted", message: str = "ok") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message, "observedGeneration": 1}


def gw_status(name: str, *conds: dict[str, Any], **extra: Any) -> ObjectStatus:
    return ObjectStatus(f"{GW}/v1", "Gateway", "default", name, 1, {"conditions": list(conds), **extra})


class Rig:
    def __init__(self, api: FakeApiServer, writer: StatusWriter, source: KubernetesSource) -> None:
        self.api, self.writer, self.source = api, writer, source
        self.leader = True

    def patches(self, name: str | None = None) -> list[Any]:
        return [r for r in self.api.find_requests(verb="patch", subresource="status")
                if name is None or r.name == name]

    def status(self, name: str, kind: str = "Gateway") -> Any:
        obj = self.api.get(f"{GW}/v1", kind, name, "default")
        return (obj or {}).get("status")


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with FakeApiServer(bookmark_interval=0.1) as api:
        kube = await KubeApi.connect(api.kubeconfig_path())
        source = KubernetesSource(Store(), kube, options=FAST, kinds=TEST_KINDS)
        holder: dict[str, Rig] = {}
        writer = StatusWriter(kube, source, limits=WriteLimits(min_interval_s=0.05, rate_per_s=500, burst=100,
                                                               poll_s=0.05),
                              is_leader=lambda: holder["rig"].leader)
        r = holder["rig"] = Rig(api, writer, source)
        tasks = []
        try:
            await source.initial_sync()
            tasks = [asyncio.create_task(source.run()), asyncio.create_task(writer.run())]
            yield r
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await kube.close()
        assert api.server_errors == []


async def echoed(r: Rig, name: str, kind: str = "Gateway") -> None:
    """Wait until the watch has brought back what the server has (so the writer compares with it)."""
    def same() -> bool:
        seen = r.source.observed(kind, "default", name)
        obj = r.api.get(f"{GW}/v1", kind, name, "default")
        return seen is not None and obj is not None and seen.resource_version == obj["metadata"]["resourceVersion"]
    await wait_until(same, what=f"{name} echoed by the watch")


async def test_status_written_once_per_real_change(rig: Rig) -> None:
    rig.api.create(gateway("g"))
    await wait_until(lambda: rig.source.observed("Gateway", "default", "g") is not None)
    for _ in range(5):  # the same desired status, as every rebuild would produce it
        rig.writer.set_inputs([gw_status("g", cond("Accepted"), cond("Programmed"))], [])
        await asyncio.sleep(0.01)
    await wait_until(lambda: len(rig.patches("g")) == 1, what="first write")
    await echoed(rig, "g")
    first = rig.status("g")["conditions"]
    assert [c["type"] for c in first] == ["Accepted", "Programmed"] and all(c["lastTransitionTime"] for c in first)
    patch = rig.patches("g")[0]
    assert patch.content_type.startswith("application/merge-patch+json") and patch.field_manager == "cilia"
    for _ in range(5):
        rig.writer.set_inputs([gw_status("g", cond("Accepted"), cond("Programmed"))], [])
        await asyncio.sleep(0.02)
    assert len(rig.patches("g")) == 1  # unchanged: no request at all
    # A real change: one more write; the unchanged condition keeps its transition time.
    rig.writer.set_inputs([gw_status("g", cond("Accepted"), cond("Programmed", "False", "Invalid", "bad"))], [])
    await wait_until(lambda: len(rig.patches("g")) == 2, what="second write")
    await echoed(rig, "g")
    now = {c["type"]: c for c in rig.status("g")["conditions"]}
    assert now["Accepted"]["lastTransitionTime"] == first[0]["lastTransitionTime"]
    assert now["Programmed"]["status"] == "False"
    await asyncio.sleep(0.2)
    assert len(rig.patches("g")) == 2


async def test_someone_else_changing_the_status_is_corrected(rig: Rig) -> None:
    rig.api.create(gateway("g"))
    await wait_until(lambda: rig.source.observed("Gateway", "default", "g") is not None)
    desired = [gw_status("g", cond("Accepted"))]
    rig.writer.set_inputs(desired, [])
    await wait_until(lambda: len(rig.patches("g")) == 1)
    await echoed(rig, "g")
    obj = rig.api.get(f"{GW}/v1", "Gateway", "g", "default")
    assert obj is not None
    rig.api.update({**obj, "status": {"conditions": [cond("Accepted", "Unknown", "Pending")]}})
    await echoed(rig, "g")
    rig.writer.set_inputs(desired, [])  # the rebuild that the status change triggers
    await wait_until(lambda: len(rig.patches("g")) == 2, what="status restored")
    await echoed(rig, "g")
    assert rig.status("g")["conditions"][0]["status"] == "True"


async def test_dropped_fields_are_removed_and_foreign_parents_kept(rig: Rig) -> None:
    other = {"parentRef": {"name": "other-gw"}, "controllerName": "example.com/other",
             "conditions": [cond("Accepted")]}
    rig.api.create({"apiVersion": f"{GW}/v1", "kind": "HTTPRoute",
                    "metadata": {"name": "r", "namespace": "default", "generation": 1},
                    "spec": {"parentRefs": [{"name": "g"}]}, "status": {"parents": [other]}})
    await wait_until(lambda: rig.source.observed("HTTPRoute", "default", "r") is not None)
    ours = {"parentRef": {"name": "g"}, "controllerName": ME, "conditions": [cond("Accepted")]}
    route = ObjectStatus(f"{GW}/v1", "HTTPRoute", "default", "r", 1, {"parents": [ours]})
    rig.writer.set_inputs([route], [])
    await wait_until(lambda: len(rig.patches("r")) == 1)
    body = rig.patches("r")[0].json
    assert body["metadata"]["resourceVersion"]  # a list shared with others: optimistic concurrency
    await echoed(rig, "r", "HTTPRoute")
    parents = rig.status("r", "HTTPRoute")["parents"]
    assert [p["controllerName"] for p in parents] == ["example.com/other", ME]
    # Gateway: a status field cilia no longer produces is removed.
    rig.api.create(gateway("g"))
    await wait_until(lambda: rig.source.observed("Gateway", "default", "g") is not None)
    rig.writer.set_inputs([gw_status("g", cond("Accepted"), addresses=[{"type": "IPAddress",
                                                                         "value": "127.0.0.9"}])], [])
    await wait_until(lambda: "addresses" in (rig.status("g") or {}), what="addresses written")
    await echoed(rig, "g")
    rig.writer.set_inputs([gw_status("g", cond("Accepted"))], [])
    await wait_until(lambda: "addresses" not in rig.status("g"), what="addresses removed")


async def test_flapping_object_is_rate_limited(rig: Rig) -> None:
    rig.writer.limits = WriteLimits(min_interval_s=0.25, rate_per_s=500, burst=100, poll_s=0.05)
    rig.api.create(gateway("flap"))
    await wait_until(lambda: rig.source.observed("Gateway", "default", "flap") is not None)
    t0 = time.monotonic()
    n = 150
    for i in range(n):
        state = "True" if i % 2 else "False"
        rig.writer.set_inputs([gw_status("flap", cond("Accepted", state, message=f"flip {i}"))], [])
        await asyncio.sleep(0.005)
    elapsed = time.monotonic() - t0
    await asyncio.sleep(0.4)
    writes = len(rig.patches("flap"))
    assert 2 <= writes <= elapsed / 0.25 + 2  # one per min interval, not one per change
    await echoed(rig, "flap")
    assert rig.status("flap")["conditions"][0]["message"] == f"flip {n - 1}"  # the newest state wins


async def test_global_token_bucket_bounds_the_write_rate(rig: Rig) -> None:
    rig.writer._bucket.rate, rig.writer._bucket.burst, rig.writer._bucket.tokens = 40.0, 4.0, 4.0
    names = [f"g{i}" for i in range(16)]
    for name in names:
        rig.api.create(gateway(name))
    await wait_until(lambda: all(rig.source.observed("Gateway", "default", n) for n in names))
    t0 = time.monotonic()
    rig.writer.set_inputs([gw_status(n, cond("Accepted")) for n in names], [])
    await wait_until(lambda: len(rig.patches()) == 16, within=5, what="all written")
    assert time.monotonic() - t0 >= (16 - 4) / 40 * 0.9


async def test_errors_conflicts_and_rejections(rig: Rig) -> None:
    rig.api.create(gateway("g"))
    await wait_until(lambda: rig.source.observed("Gateway", "default", "g") is not None)
    rig.api.inject_error(409, verb="patch", subresource="status", times=1)
    rig.api.inject_error(503, verb="patch", subresource="status", times=1)
    # A real API server answers 403 right after a restart, until its RBAC caches are filled: retried.
    rig.api.inject_error(403, verb="patch", subresource="status", times=1)
    rig.writer.set_inputs([gw_status("g", cond("Accepted"))], [])
    await wait_until(lambda: rig.writer.stats.writes == 1, what="written after 409, 503 and 403")
    assert rig.writer.stats.conflicts == 1 and rig.writer.stats.errors == 2
    await echoed(rig, "g")
    rig.api.inject_error(422, verb="patch", subresource="status", times=1)
    bad = [gw_status("g", cond("Accepted", "False", "Invalid"))]
    rig.writer.set_inputs(bad, [])
    await wait_until(lambda: rig.writer.stats.errors == 3, what="rejected")
    for _ in range(3):
        rig.writer.set_inputs(bad, [])
        await asyncio.sleep(0.05)
    assert len(rig.patches("g")) == 5  # the rejected patch is not retried while unchanged
    rig.writer.set_inputs([gw_status("g", cond("Accepted", "False", "Invalid", "other"))], [])
    await wait_until(lambda: rig.writer.stats.writes == 2, what="a new status is tried again")


async def test_only_the_leader_writes(rig: Rig) -> None:
    rig.leader = False
    rig.api.create(gateway("g"))
    await wait_until(lambda: rig.source.observed("Gateway", "default", "g") is not None)
    rig.writer.set_inputs([gw_status("g", cond("Accepted"))], [])
    await asyncio.sleep(0.3)
    assert rig.patches() == []
    rig.leader = True  # taking over: everything is checked again without a new rebuild
    await wait_until(lambda: len(rig.patches("g")) == 1, what="write after becoming leader")


async def test_kinds_cilia_may_not_patch_are_skipped(rig: Rig) -> None:
    rig.writer.set_inputs([ObjectStatus("v1", "Service", "default", "kubernetes", 1,
                                        {"loadBalancer": {"ingress": [{"ip": "127.0.0.1"}]}})], [])
    await asyncio.sleep(0.2)
    assert rig.patches() == []


def test_envoy_config_conditions_and_nack_attribution() -> None:
    def obs(kind: str, ns: str, name: str) -> ObservedObject:
        return ObservedObject(kind, ns, name, "cilium.io/v2", 3, "1", None)

    configs = [obs("CiliumEnvoyConfig", "default", "web"), obs("CiliumEnvoyConfig", "team-default", "web"),
               obs("CiliumClusterwideEnvoyConfig", "", "web"), obs("CiliumEnvoyConfig", "default", "broken"),
               obs("CiliumEnvoyConfig", "default", "stale")]
    issues = [Issue("CiliumEnvoyConfig default/broken", "spec.resources[0].@type", "unsupported resource type"),
              Issue("CiliumEnvoyConfig default/stale", "spec.resources[1]", "must be a mapping; the last valid "
                    "version is still in use", "kubernetes"),
              Issue("CiliumEnvoyConfig default/web", "", "served anyway", severity="warning")]
    nacks = [Nack("node~n1", "type.googleapis.com/envoy.config.listener.v3.Listener",
                  "Error adding/updating listener(s) default/web/listener: duplicate filter chain match")]
    out = {(s.kind, s.namespace, s.name): {c["type"]: c for c in s.status["conditions"]}
           for s in envoy_config_statuses(configs, issues, nacks)}
    web = out[("CiliumEnvoyConfig", "default", "web")]
    assert web["Accepted"]["status"] == "True"
    assert web["Programmed"]["status"] == "False" and web["Programmed"]["reason"] == "Nacked"
    assert "node~n1 rejected Listener" in web["Programmed"]["message"]
    assert web["Programmed"]["observedGeneration"] == 3
    # Same config name in a namespace ending in the same letters, or cluster-wide: not matched.
    assert out[("CiliumEnvoyConfig", "team-default", "web")]["Programmed"]["status"] == "True"
    assert out[("CiliumClusterwideEnvoyConfig", "", "web")]["Programmed"]["status"] == "True"
    broken = out[("CiliumEnvoyConfig", "default", "broken")]
    assert broken["Accepted"]["status"] == "False" and "spec.resources[0].@type" in broken["Accepted"]["message"]
    assert broken["Programmed"]["reason"] == "Invalid"
    stale = out[("CiliumEnvoyConfig", "default", "stale")]  # invalid in the API, last good version served
    assert stale["Accepted"]["status"] == "False" and stale["Programmed"]["status"] == "True"
    ccec_nack = [Nack("node~n1", "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                      "cluster /web/backend: bad")]
    out2 = {(s.kind, s.namespace): s.status["conditions"][1]["status"]
            for s in envoy_config_statuses(configs[:3], [], ccec_nack)}
    assert out2 == {("CiliumEnvoyConfig", "default"): "True", ("CiliumEnvoyConfig", "team-default"): "True",
                    ("CiliumClusterwideEnvoyConfig", ""): "False"}


def test_each_rejected_resource_keeps_its_own_nack_until_fixed_or_removed() -> None:
    """Envoy's words per rejected resource: a later NACK or ACK of other resources (Delta sends only
    what changed) does not end an earlier rejection; an ACKed new version or a removal does."""
    from cilia.xds.status import StatusRegistry, TypeStatus, about

    lds = "type.googleapis.com/envoy.config.listener.v3.Listener"
    cds = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    reg = StatusRegistry()
    ps = reg.connected("node~n1", "delta", "envoy")
    ts: TypeStatus = ps.type(lds)
    ts.version_sent = "v1"
    ts.settle((["/a/a"], False), "Error adding/updating listener(s) /a/a: route: unknown cluster '/x'\n")
    ts.version_sent = "v2"
    ts.settle((["/b/b", "default/ok/l"], False),
              "Error adding/updating listener(s) /b/b: route: unknown cluster '/y'\n")
    assert ts.rejected == {"/a/a": "route: unknown cluster '/x'", "/b/b": "route: unknown cluster '/y'"}
    assert ts.state == "NACKED"
    cl = ps.type(cds)
    cl.version_sent = "v1"
    cl.settle((["/a/c", "/b/c:80", "/b/c"], False),
              "Error adding/updating cluster(s) /a/c: bad one, with a comma, /b/c:80: bad two")
    assert cl.rejected == {"/a/c": "bad one, with a comma", "/b/c:80": "bad two"}  # /b/c was applied

    configs = [ObservedObject("CiliumClusterwideEnvoyConfig", "", n, "cilium.io/v2", 1, "1", None)
               for n in ("a", "b", "ok")]
    out = {s.name: s.status["conditions"][1] for s in envoy_config_statuses(configs, [], current_nacks(reg))}
    assert out["a"]["status"] == "False" and "unknown cluster '/x'" in out["a"]["message"] \
        and "bad one, with a comma" in out["a"]["message"] and "/y" not in out["a"]["message"]
    assert out["b"]["status"] == "False" and "unknown cluster '/y'" in out["b"]["message"] \
        and "bad two" in out["b"]["message"] and "bad one" not in out["b"]["message"]
    assert out["ok"]["status"] == "True"

    ts.settle((["/a/a"], False), "")  # a fixed /a/a is ACKed
    ts.forget(["/b/b"])  # /b/b removed
    assert ts.rejected == {} and ts.state != "NACKED"
    # SotW: every response is the whole set; what it lacks is gone.
    cl.settle((["/a/c"], True), "")
    assert cl.rejected == {}
    # A NACK naming none of several resources is kept as text; one resource: that resource.
    cl.settle((["/a/c", "/b/c"], False), "something went wrong")
    assert cl.unattributed == "something went wrong" and cl.rejected == {}
    cl.settle((["/a/c"], False), "something else")
    assert cl.rejected == {"/a/c": "something else"}
    assert about("x /a/ab: no", "/a/a") == "x /a/ab: no"  # a longer name is not this one


def test_current_nacks_without_resource_names_fall_back_to_the_text() -> None:
    from cilia.xds.status import StatusRegistry

    reg = StatusRegistry()
    rds = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
    ts = reg.connected("node~n1", "sotw", "envoy").type(rds)
    ts.version_sent = "v1"
    ts.last_nack, ts.last_nack_version = "route: unknown cluster 'default/web/x'", "v1"
    (n,) = current_nacks(reg)
    assert (n.resource, n.message) == ("", "route: unknown cluster 'default/web/x'")
