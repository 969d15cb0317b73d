"""Kubernetes Events against the fake API server: one Event per problem, repeats counted on it, rate-bounded,
written only by the leader, adopted by a new leader (cilia.k8s.events)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

import cilia.k8s.kinds  # noqa: F401
from cilia import __version__
from cilia.diagnostics import Issue
from cilia.k8s.events import (
    NACKED,
    NOTE_LIMIT,
    REJECTED,
    WARNING,
    EventLimits,
    EventRecorder,
    Problem,
    event_name,
    problems_from,
)
from cilia.k8s.kubeapi import KubeApi
from cilia.k8s.kubesource import KubernetesSource, ObservedObject, WatchOptions
from cilia.k8s.leader import LeaseConfig
from cilia.k8s.registry import kind_spec
from cilia.k8s.store import Store
from cilia.translate.context import ObjectStatus
from kubefake import FakeApiServer
from support.kubecp import KubeControlPlane, wait_until

FAST = WatchOptions(backoff_initial_s=0.02, backoff_max_s=0.2, crd_retry_s=0.2, initial_sync_timeout_s=3.0)
LIMITS = EventLimits(rate_per_s=500, burst=100, series_min_interval_s=0.2, poll_s=0.02)
EV = "events.k8s.io/v1"


def cec(name: str, namespace: str = "default") -> dict[str, Any]:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumEnvoyConfig",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"resources": []}}


def problem(name: str = "demo", message: str = "spec.resources[0].@type: unknown type",
            reason: str = REJECTED) -> Problem:
    return Problem("CiliumEnvoyConfig", "default", name, reason, message)


def test_problems_from_issues_and_nack_conditions() -> None:
    issues = [
        Issue("CiliumEnvoyConfig default/demo", "spec.resources[0].@type", "unknown type"),
        Issue("Ingress shop/site", "spec.rules[0].host", "not a DNS name", "kubernetes", "warning"),
        Issue("CiliumEnvoyConfig a/x, CiliumClusterwideEnvoyConfig y", "spec.resources[1].address", "port clash"),
        Issue("GatewayClass cilia", "", "controller is not cilia's"),
        Issue("TranslateOptions", "mesh_default_mode", "bad value"),  # names no object
        Issue("", "", "cannot parse", "/tmp/x.yaml"),
    ]
    nacked = ObjectStatus("cilium.io/v2", "CiliumEnvoyConfig", "default", "demo", 3, {"conditions": [
        {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "ok"},
        {"type": "Programmed", "status": "False", "reason": "Nacked", "message": "node~a rejected Listener: x"}]})
    fine = ObjectStatus("cilium.io/v2", "CiliumEnvoyConfig", "default", "ok", 1, {"conditions": [
        {"type": "Programmed", "status": "True", "reason": "Programmed", "message": "fine"}]})
    got = problems_from(issues, [nacked, fine])
    assert got == tuple(sorted([
        Problem("CiliumEnvoyConfig", "default", "demo", REJECTED, "spec.resources[0].@type: unknown type"),
        Problem("Ingress", "shop", "site", WARNING, "spec.rules[0].host: not a DNS name"),
        Problem("CiliumEnvoyConfig", "a", "x", REJECTED, "spec.resources[1].address: port clash"),
        Problem("CiliumClusterwideEnvoyConfig", "", "y", REJECTED, "spec.resources[1].address: port clash"),
        Problem("GatewayClass", "", "cilia", REJECTED, "controller is not cilia's"),
        Problem("CiliumEnvoyConfig", "default", "demo", NACKED, "node~a rejected Listener: x"),
    ]))
    # Names are stable, valid object names, and differ per problem.
    long = Problem("Ingress", "ns", "a" * 253, REJECTED, "m")
    assert len(event_name(long)) <= 253 and event_name(long) == event_name(long)
    assert event_name(problem()) != event_name(problem(message="other"))


class Rig:
    def __init__(self, api: FakeApiServer, kube: KubeApi, source: KubernetesSource) -> None:
        self.api, self.kube, self.source = api, kube, source
        self.recorders: list[EventRecorder] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.leader: dict[str, bool] = {}

    def recorder(self, instance: str, limits: EventLimits = LIMITS) -> EventRecorder:
        self.leader[instance] = True
        rec = EventRecorder(self.kube, self.source, instance=instance, limits=limits,
                            is_leader=lambda: self.leader[instance])
        self.recorders.append(rec)
        self.tasks.append(asyncio.create_task(rec.run()))
        return rec

    def events(self, namespace: str = "default") -> list[dict[str, Any]]:
        return self.api.list_objects(EV, "Event", namespace)

    def writes(self) -> list[Any]:
        return [r for r in self.api.find_requests(plural="events", writes_only=True)]


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with FakeApiServer(bookmark_interval=0.1) as api:
        api.create(cec("demo"))
        api.create({"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideEnvoyConfig",
                    "metadata": {"name": "wide"}, "spec": {"resources": []}})
        kube = await KubeApi.connect(api.kubeconfig_path())
        kinds = [k for k in (kind_spec("CiliumEnvoyConfig"), kind_spec("CiliumClusterwideEnvoyConfig")) if k]
        source = KubernetesSource(Store(), kube, options=FAST, kinds=kinds)
        r = Rig(api, kube, source)
        try:
            await source.initial_sync()
            r.tasks.append(asyncio.create_task(source.run()))
            yield r
        finally:
            for t in r.tasks:
                t.cancel()
            await asyncio.gather(*r.tasks, return_exceptions=True)
            await kube.close()
        assert api.server_errors == []


async def quiet(seconds: float = 0.3) -> None:
    await asyncio.sleep(seconds)


async def test_one_event_per_problem_and_repeats_bump_its_count(rig: Rig) -> None:
    rec = rig.recorder("cilia-a")
    rec.set_problems([problem()])
    await wait_until(lambda: len(rig.events()) == 1, what="Event created")
    (ev,) = rig.events()
    uid = rig.api.get("cilium.io/v2", "CiliumEnvoyConfig", "demo", "default")["metadata"]["uid"]
    assert ev["metadata"]["name"] == event_name(problem())
    assert ev["type"] == "Warning" and ev["reason"] == REJECTED and ev["action"] == "Translate"
    assert ev["note"] == "spec.resources[0].@type: unknown type"
    assert ev["regarding"] == {"apiVersion": "cilium.io/v2", "kind": "CiliumEnvoyConfig", "namespace": "default",
                               "name": "demo", "uid": uid}
    assert ev["reportingController"] == "cilia.io/control-plane" and ev["reportingInstance"] == "cilia-a"
    assert ev["eventTime"].endswith("Z") and "series" not in ev

    # Rebuilds that still report it are the same occurrence: nothing is written.
    for _ in range(5):
        rec.set_problems([problem()])
    await quiet()
    assert len(rig.writes()) == 1

    # It goes away and comes back twice within the interval: one patch, count 3, still one Event.
    for _ in range(2):
        rec.set_problems([])
        rec.set_problems([problem()])
    await wait_until(lambda: (rig.events()[0].get("series") or {}).get("count") == 3, what="series count 3")
    assert len(rig.events()) == 1
    creates = rig.api.find_requests(plural="events", verb="create")
    patches = rig.api.find_requests(plural="events", verb="patch")
    assert len(creates) == 1 and len(patches) == 1
    assert rig.events()[0]["series"]["lastObservedTime"].endswith("Z")

    # Another message on the same object is another Event.
    rec.set_problems([problem(), problem(message="spec.resources[1].name: is required")])
    await wait_until(lambda: len(rig.events()) == 2, what="second Event")
    await quiet()
    assert len(rig.writes()) == 3
    assert rec.stats.created == 2 and rec.stats.bumped == 1


async def test_only_the_leader_writes_and_a_new_leader_adopts(rig: Rig) -> None:
    a = rig.recorder("cilia-a")
    b = rig.recorder("cilia-b")
    rig.leader["cilia-b"] = False
    for rec in (a, b):
        rec.set_problems([problem()])
    await wait_until(lambda: len(rig.events()) == 1, what="leader's Event")
    a.set_problems([])
    a.set_problems([problem()])
    b.set_problems([])
    b.set_problems([problem()])
    await wait_until(lambda: (rig.events()[0].get("series") or {}).get("count") == 2, what="leader bumped")
    await quiet()
    assert b.stats.created == b.stats.bumped == b.stats.adopted == 0

    # Failover: b leads. It finds the Event a wrote (create answered 409, adopted), and counts nothing
    # that happened before it led.
    rig.leader["cilia-a"], rig.leader["cilia-b"] = False, True
    b.wake()
    await wait_until(lambda: b.stats.adopted == 1, what="adopted")
    await quiet()
    assert len(rig.events()) == 1 and rig.events()[0]["series"]["count"] == 2
    # A new occurrence under b continues the same Event's count.
    a.set_problems([])
    b.set_problems([])
    b.set_problems([problem()])
    await wait_until(lambda: rig.events()[0]["series"]["count"] == 3, what="b bumped")
    assert a.stats.created == 1 and a.stats.bumped == 1
    assert b.stats.created == 0 and b.stats.bumped == 1


async def test_restart_does_not_count_a_standing_problem_again(rig: Rig) -> None:
    first = rig.recorder("cilia-1")
    first.set_problems([problem()])
    await wait_until(lambda: len(rig.events()) == 1, what="Event")
    rig.leader["cilia-1"] = False  # the process is gone
    again = rig.recorder("cilia-2")
    again.set_problems([problem()])  # its first view of the world: the problem stands
    await wait_until(lambda: again.stats.adopted == 1, what="adopted after restart")
    await quiet()
    assert len(rig.events()) == 1 and "series" not in rig.events()[0]


async def test_rate_limits(rig: Rig) -> None:
    # Per object: 3 new Events at once, then nothing until the bucket refills.
    rec = rig.recorder("cilia-a", EventLimits(rate_per_s=500, burst=100, per_object_burst=3,
                                              per_object_refill_s=3600, series_min_interval_s=0.2, poll_s=0.02))
    rec.set_problems([problem(message=f"problem {i}") for i in range(10)])
    await wait_until(lambda: rec.stats.dropped == 7, what="7 dropped")
    await quiet()
    assert len(rig.events()) == 3
    # Globally: a burst of 2, then 1 per second.
    rec2 = rig.recorder("cilia-b", EventLimits(rate_per_s=1.0, burst=2, series_min_interval_s=0.2, poll_s=0.02))
    rig.leader["cilia-a"] = False
    rec2.set_problems([Problem("CiliumClusterwideEnvoyConfig", "", "wide", REJECTED, f"p{i}") for i in range(5)])
    await quiet(0.4)
    assert len(rig.events()) == 3 + 2  # (the cluster-scoped object's Events live in `default`)
    await wait_until(lambda: len(rig.events()) == 3 + 5, within=6, what="the rest, one per second")


async def test_objects_not_in_the_api_get_no_event_and_notes_are_clipped(rig: Rig) -> None:
    rec = rig.recorder("cilia-a")
    rec.set_problems([problem(name="missing"), problem(message="x" * 5000)])
    await wait_until(lambda: len(rig.events()) == 1, what="one Event")
    await quiet()
    (ev,) = rig.events()
    assert ev["regarding"]["name"] == "demo" and len(ev["note"].encode()) == NOTE_LIMIT
    assert ev["note"].endswith("...")


async def test_control_plane_reports_an_invalid_config_as_an_event() -> None:
    """The whole path: an invalid CEC -> issue -> status writer -> Event, by the leader of two replicas."""
    async with FakeApiServer(bookmark_interval=0.1) as api:
        bad = cec("broken")
        bad["spec"]["resources"] = [{"@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
                                     "name": "x"}]
        api.create(bad)
        # Lease timings that survive a loaded machine: leadership must not move during the test.
        lease = LeaseConfig("cilia-leader", "default", "", 5.0, 4.0, 0.2)
        planes = [await KubeControlPlane(api, identity=i, lease=lease).start() for i in ("a", "b")]
        try:
            await wait_until(lambda: sum(p.kube.is_leader() for p in planes) == 1, what="a leader")
            await wait_until(lambda: len(api.list_objects(EV, "Event", "default")) == 1, what="Event")
            (ev,) = api.list_objects(EV, "Event", "default")
            assert ev["regarding"]["name"] == "broken" and ev["reason"] == REJECTED
            assert "TypedExtensionConfig" in ev["note"]
            leader = next(p for p in planes if p.kube.is_leader())
            assert ev["reportingInstance"] == leader.kube.identity
            follower = next(p for p in planes if p is not leader)
            await wait_until(lambda: leader.kube.events.stats.created == 1, what="the leader's count")
            assert follower.kube.events.stats.created == 0
            agents = {r.user_agent for r in api.find_requests(plural="events", writes_only=True)}
            assert agents == {f"cilia/{__version__} ({leader.kube.identity})"}
        finally:
            for p in planes:
                await p.stop()


async def test_refusals_that_pass_are_retried_and_terminating_namespaces_skipped(rig: Rig) -> None:
    # 403 (e.g. an API server whose RBAC caches are still empty after a restart) is tried again.
    rig.api.inject_error(403, verb="create", plural="events", times=1)
    rec = rig.recorder("cilia-a", EventLimits(rate_per_s=500, burst=100, series_min_interval_s=0.2, poll_s=0.02,
                                              error_backoff_max_s=0.3))
    rec.set_problems([problem()])
    await wait_until(lambda: len(rig.events()) == 1, what="created after a 403")
    assert rec.stats.errors == 1 and rec.stats.created == 1

    # In a namespace being deleted the API server refuses new objects: no attempt is made.
    class Terminating:
        phase = "Terminating"

        def observed(self, kind: str, namespace: str, name: str) -> ObservedObject | None:
            if kind == "Namespace":
                return ObservedObject(kind, "", name, "v1", 0, "1", {"phase": self.phase})
            return rig.source.observed(kind, namespace, name)

    view = Terminating()
    rig.leader["cilia-a"] = False
    other = EventRecorder(rig.kube, view, instance="cilia-b", limits=LIMITS)
    rig.tasks.append(asyncio.create_task(other.run()))
    creates = len(rig.api.find_requests(plural="events", verb="create"))
    other.set_problems([problem(message="another")])
    await quiet()
    assert len(rig.events()) == 1 and len(rig.api.find_requests(plural="events", verb="create")) == creates
    view.phase = "Active"
    other.wake()
    await wait_until(lambda: len(rig.events()) == 2, what="created once the namespace is not terminating")
