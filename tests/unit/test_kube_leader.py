"""Lease leader election between in-process replicas, against the fake API server."""

from __future__ import annotations

import asyncio
import logging
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


# -- an election that cannot work is loud --------------------------------------------------------------------
def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "cilia.leader" and r.levelno == logging.ERROR]


async def test_missing_lease_namespace_is_reported_and_heals_without_restart(
        caplog: pytest.LogCaptureFixture) -> None:
    lease = LeaseConfig(name="cilia-leader", namespace="nope", identity="a", lease_duration_s=0.8,
                        renew_deadline_s=0.5, retry_period_s=0.1, error_log_interval_s=60.0)
    async with FakeApiServer() as server:
        api = await KubeApi.connect(server.kubeconfig_path())
        elector = LeaderElector(api, lease)
        task = asyncio.create_task(elector.run())
        try:
            with caplog.at_level(logging.INFO, logger="cilia.leader"):
                # Within one retry period (plus jitter and a loaded machine): error log, counter, message.
                await wait_until(lambda: _errors(caplog), within=lease.retry_period_s * 1.2 + 0.5, what="error log")
                assert 'lease nope/cilia-leader (namespace_not_found): namespaces "nope" not found' in \
                    _errors(caplog)[0]
                assert elector.errors["namespace_not_found"] >= 1
                assert elector.message() == 'not leading: namespaces "nope" not found'
                st = elector.status()
                assert st["leading"] is False and st["error_reason"] == "namespace_not_found"
                # Not ready only once nobody has led for longer than the lease (plus takeover time).
                await wait_until(lambda: not elector.healthy()[0], within=lease.stall_limit_s + 1, what="not ready")
                ok, why = elector.healthy()
                assert not ok and 'namespaces "nope" not found' in why and "no replica has led" in why
                failures = elector.errors["namespace_not_found"]
                assert failures >= 5 and len(_errors(caplog)) == 1  # rate-limited: the same error once
                # The namespace appears: this replica leads, without a restart.
                server.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "nope"}})
                await wait_until(lambda: elector.is_leader, within=3, what="leads once the namespace exists")
                assert elector.healthy() == (True, "leading") and elector.status()["error"] == ""
                assert "reachable again" in caplog.text
                assert elector.errors["namespace_not_found"] >= failures  # a counter never goes back
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await api.close()


async def test_rbac_denied_is_reported_again_when_the_reason_changes(caplog: pytest.LogCaptureFixture) -> None:
    lease = LeaseConfig(name="cilia-leader", namespace="default", identity="a", lease_duration_s=0.8,
                        renew_deadline_s=0.5, retry_period_s=0.1, error_log_interval_s=60.0)
    async with FakeApiServer() as server:
        api = await KubeApi.connect(server.kubeconfig_path())
        elector = LeaderElector(api, lease)
        denied = ('leases.coordination.k8s.io "cilia-leader" is forbidden: User "system:serviceaccount:cilia-system:'
                  'cilia" cannot get resource "leases" in API group "coordination.k8s.io" in the namespace "default"')
        server.inject_error(403, plural="leases", message=denied, times=None)
        task = asyncio.create_task(elector.run())
        try:
            with caplog.at_level(logging.INFO, logger="cilia.leader"):
                await wait_until(lambda: elector.errors["forbidden"] >= 3, what="forbidden counted")
                assert len(_errors(caplog)) == 1 and "(forbidden): " + denied in _errors(caplog)[0]
                assert elector.message() == f"not leading: {denied}"
                server.clear_faults()
                server.inject_error(503, plural="leases", message="etcd is busy", times=None)
                await wait_until(lambda: elector.errors["server_error"] >= 1, what="server error counted")
                await wait_until(lambda: len(_errors(caplog)) == 2, what="a new reason is logged at once")
                assert "(server_error): etcd is busy" in _errors(caplog)[1]
                server.clear_faults()
                await wait_until(lambda: elector.is_leader, within=3, what="leads once allowed")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await api.close()


async def test_unreachable_api_server_and_unexpected_errors_are_reported() -> None:
    lease = LeaseConfig(name="cilia-leader", namespace="default", identity="a", lease_duration_s=0.8,
                        renew_deadline_s=0.5, retry_period_s=0.1)
    async with FakeApiServer() as server:
        api = await KubeApi.connect(server.kubeconfig_path())
    try:  # the server is gone now
        elector = LeaderElector(api, lease)
        await elector.tick()
        assert elector.errors["unreachable"] == 1 and not elector.is_leader
        assert elector.message().startswith("not leading: ")

        async def broken(*_: object) -> dict[str, object]:
            raise RuntimeError("a bug")

        elector.api.get = broken  # type: ignore[method-assign]
        await elector.tick()  # reported, and the election goes on
        assert elector.errors["error"] == 1 and elector.status()["error"] == "RuntimeError: a bug"
    finally:
        await api.close()


async def test_followers_stay_ready_while_another_replica_renews(
        pair: tuple[FakeApiServer, Replica, Replica]) -> None:
    server, a, b = pair
    a.start()
    await wait_until(lambda: a.elector.is_leader, what="a leads")
    b.start()
    await asyncio.sleep(LEASE.stall_limit_s + 0.5)
    assert not b.elector.is_leader
    assert b.elector.healthy() == (True, "following a")
    assert b.elector.message() == "not leading: lease default/cilia-leader is held by a"
    assert sum(b.elector.errors.values()) == 0
    # The leader stops renewing without releasing and nobody can take over: followers turn not ready.
    server.inject_error(403, verb="update", plural="leases", times=None)
    await a.stop(release=False)
    await wait_until(lambda: not b.elector.healthy()[0], within=LEASE.stall_limit_s + 2, what="b not ready")
    assert b.elector.errors["forbidden"] >= 1
    server.clear_faults()
    await wait_until(lambda: b.elector.is_leader and b.elector.healthy()[0], within=3, what="b leads")
