"""Lease leader election between in-process replicas, against the fake API server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from cilia.k8s.kubeapi import KubeApi
from cilia.k8s.leader import LeaderElector, LeaseConfig
from kubefake import FakeApiServer
from support.kubecp import wait_until

LEASE = LeaseConfig(name="cilia-leader", namespace="default", lease_duration_s=0.8, renew_deadline_s=0.5,
                    retry_period_s=0.1)


class Replica:
    def __init__(self, api: KubeApi, identity: str, lease: LeaseConfig = LEASE) -> None:
        self.api = api
        self.elector = LeaderElector(api, LeaseConfig(lease.name, lease.namespace, identity, lease.lease_duration_s,
                                                      lease.renew_deadline_s, lease.retry_period_s))
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.elector.run())

    async def stop(self, release: bool = True) -> None:
        if not release:
            async def no_release() -> None:  # a killed process does not get to release
                return None
            self.elector.release = no_release  # type: ignore[method-assign]
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[FakeApiServer, Replica, Replica]]:
    async with FakeApiServer() as server:
        apis = [await KubeApi.connect(server.kubeconfig_path()) for _ in range(2)]
        a, b = Replica(apis[0], "a"), Replica(apis[1], "b")
        overlap: list[float] = []
        stop = asyncio.Event()

        async def watchdog() -> None:  # leadership must never overlap
            while not stop.is_set():
                if a.elector.is_leader and b.elector.is_leader:
                    overlap.append(time.monotonic())
                await asyncio.sleep(0.005)

        dog = asyncio.create_task(watchdog())
        try:
            yield server, a, b
        finally:
            stop.set()
            await dog
            await a.stop()
            await b.stop()
            for api in apis:
                await api.close()
        assert overlap == []
        assert server.server_errors == []


def holder(server: FakeApiServer) -> str | None:
    lease = server.get("coordination.k8s.io/v1", "Lease", LEASE.name, LEASE.namespace)
    return None if lease is None else lease["spec"].get("holderIdentity")


async def test_one_leader_then_failover_after_expiry(pair: tuple[FakeApiServer, Replica, Replica]) -> None:
    server, a, b = pair
    a.start()
    await wait_until(lambda: a.elector.is_leader, what="a leads")
    b.start()
    await asyncio.sleep(1.2)  # longer than the lease: renewals keep a in charge
    assert a.elector.is_leader and not b.elector.is_leader and holder(server) == "a"
    lease = server.get("coordination.k8s.io/v1", "Lease", LEASE.name, LEASE.namespace)
    assert lease is not None and lease["spec"]["leaseDurationSeconds"] == 1 and lease["spec"]["renewTime"]
    await a.stop(release=False)
    t0 = time.monotonic()
    await wait_until(lambda: b.elector.is_leader, within=3, what="b takes over")
    took = time.monotonic() - t0
    # b waits for the lease to expire, measured from when it last saw a renewal.
    assert LEASE.lease_duration_s - 1.2 * LEASE.retry_period_s - 0.05 <= took
    assert took <= LEASE.lease_duration_s + 2 * 1.2 * LEASE.retry_period_s + 0.6  # slack for a loaded machine
    assert holder(server) == "b"
    assert server.get("coordination.k8s.io/v1", "Lease", LEASE.name, LEASE.namespace)["spec"]["leaseTransitions"] == 1


async def test_release_on_shutdown_hands_over_at_once() -> None:
    # A long lease, so that "at once" is clearly distinguishable from "after expiry" on a loaded machine.
    lease = LeaseConfig(name="cilia-leader", namespace="default", lease_duration_s=6.0, renew_deadline_s=4.0,
                        retry_period_s=0.1)
    async with FakeApiServer() as server:
        a = Replica(await KubeApi.connect(server.kubeconfig_path()), "a", lease)
        b = Replica(await KubeApi.connect(server.kubeconfig_path()), "b", lease)
        try:
            a.start()
            await wait_until(lambda: a.elector.is_leader, what="a leads")
            b.start()
            await asyncio.sleep(0.3)
            assert not b.elector.is_leader
            t0 = time.monotonic()
            await a.stop(release=True)
            await wait_until(lambda: b.elector.is_leader, within=5, what="b takes over")
            assert time.monotonic() - t0 < lease.lease_duration_s / 2  # no waiting for expiry
        finally:
            await a.stop()
            await b.stop()
            await a.api.close()
            await b.api.close()


async def test_leader_that_cannot_renew_steps_down(pair: tuple[FakeApiServer, Replica, Replica]) -> None:
    server, a, b = pair
    a.start()
    await wait_until(lambda: a.elector.is_leader, what="a leads")
    b.start()
    await asyncio.sleep(0.2)
    server.inject_error(500, plural="leases", times=None)  # the API is unreachable for everyone
    t0 = time.monotonic()
    await wait_until(lambda: not a.elector.is_leader, within=3, what="a steps down")
    assert time.monotonic() - t0 <= LEASE.renew_deadline_s + 2 * LEASE.retry_period_s + 0.1
    assert not b.elector.is_leader
    server.clear_faults()
    await wait_until(lambda: a.elector.is_leader or b.elector.is_leader, within=3, what="a leader again")


def test_timings_are_checked() -> None:
    with pytest.raises(ValueError, match="retry period < renew deadline < lease duration"):
        LeaseConfig(lease_duration_s=1, renew_deadline_s=2, retry_period_s=0.1).check()
