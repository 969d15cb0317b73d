"""The xDS server against the xDS REST/gRPC protocol specification (envoy api-docs/xds_protocol.rst).

Each test names the rule it checks. An in-process gRPC client plays the proxy.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from envoy.service.cluster.v3 import cds_pb2_grpc
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.endpoint.v3 import eds_pb2_grpc

from cilia.render.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from cilia.xds.server import ServerLimits
from cilia.xds.stream import StreamLimits
from support.xds_client import (
    NODE,
    Call,
    Harness,
    cluster_names,
    delta,
    dreq,
    harness,
    no_message,
    node,
    read,
    req,
    rpc_error,
    sotw,
    world,
)

XDSTP = "xdstp://cilia.test/envoy.config.endpoint.v3.ClusterLoadAssignment/ns/svc"


# -- SotW: nonces ---------------------------------------------------------------------------------------
async def test_sotw_nonce_from_an_earlier_stream_is_not_stale(h: Harness) -> None:
    """'the nonce is valid only in the context of an individual xDS stream; it does not survive stream
    restarts': a first request carrying an old stream's nonce must still be answered."""
    call = sotw(h)
    await call.write(discovery_pb2.DiscoveryRequest(node=node(), type_url=CLUSTER, response_nonce="7"))
    r = await read(call)
    assert cluster_names(r) == ["c1", "c2"]
    call.cancel()


async def test_sotw_stale_ack_still_releases_make_before_break(h: Harness) -> None:
    """Two CDS responses in flight: the proxy ACKs both in order, the first one with a now-stale nonce.
    Routes waiting for the clusters must go out once both are ACKed, not after the ACK wait runs out."""
    await h.stop()
    h = await harness(ack_wait_s=5.0)
    try:
        h.cache.set_world(world(clusters=("c1",), routes={"rc": "c1"}))
        call = sotw(h)
        await call.write(req(first=True))
        r = await read(call)
        await call.write(req(version=r.version_info, nonce=r.nonce))
        await call.write(req(ROUTE, ("rc",)))
        rr = await read(call)
        await call.write(req(ROUTE, ("rc",), rr.version_info, rr.nonce))
        await asyncio.sleep(0.05)
        h.cache.set_world(world(clusters=("c1", "c2"), routes={"rc": "c2"}, gen=2))
        a = await read(call)
        assert a.type_url == CLUSTER
        h.cache.set_world(world(clusters=("c1", "c2", "c3"), routes={"rc": "c3"}, gen=3))
        b = await read(call)
        assert b.type_url == CLUSTER and cluster_names(b) == ["c1", "c2", "c3"]
        await call.write(req(version=a.version_info, nonce=a.nonce))  # stale by now
        await call.write(req(version=b.version_info, nonce=b.nonce))
        route = await read(call, within=1.5)
        assert route.type_url == ROUTE
        call.cancel()
    finally:
        await h.stop()


# -- SotW: wildcard and named ----------------------------------------------------------------------------
async def test_sotw_legacy_wildcard_only_until_names_are_given(h: Harness) -> None:
    """The spec's SotW example: [] is '*'; ['*','c1'] keeps '*' and adds c1; ['c1'] drops '*'; [] after
    that unsubscribes from everything and is no longer a wildcard."""
    call = sotw(h)
    await call.write(req(first=True))
    r = await read(call)
    assert cluster_names(r) == ["c1", "c2"]
    await call.write(req(names=("*", "c1"), version=r.version_info, nonce=r.nonce))
    r = await read(call)
    assert cluster_names(r) == ["c1", "c2"]
    await call.write(req(names=("c1",), version=r.version_info, nonce=r.nonce))
    r = await read(call)
    assert cluster_names(r) == ["c1"]
    await call.write(req(names=(), version=r.version_info, nonce=r.nonce))
    r = await read(call)
    assert cluster_names(r) == [], "an empty list after explicit names unsubscribes from everything"
    await call.write(req(names=(), version=r.version_info, nonce=r.nonce))
    h.cache.set_world(world(clusters=("c1", "c2", "c3"), gen=2))
    assert await no_message(call), "no subscription left: a change sends nothing"
    call.cancel()


async def test_sotw_named_cluster_subscription_then_explicit_wildcard(h: Harness) -> None:
    """A client (gRPC-style) that names its clusters gets just those; adding '*' later gets all."""
    call = sotw(h)
    await call.write(req(names=("c2",), first=True))
    r = await read(call)
    assert cluster_names(r) == ["c2"]
    await call.write(req(names=("c2", "*"), version=r.version_info, nonce=r.nonce))
    r = await read(call)
    assert cluster_names(r) == ["c1", "c2"]
    call.cancel()


# -- Delta ---------------------------------------------------------------------------------------------
async def test_delta_subscribing_to_a_held_resource_resends_it(h: Harness) -> None:
    """'A resource_names_subscribe field may contain resource names that the server believes the client
    is already subscribed to, and furthermore has the most recent versions of. However, the server
    *must* still provide those resources in the response.'"""
    call = delta(h)
    await call.write(dreq(ENDPOINT, sub=("c1",), first=True))
    r = await read(call)
    assert [x.name for x in r.resources] == ["c1"]
    await call.write(dreq(ENDPOINT, nonce=r.nonce))
    await call.write(dreq(ENDPOINT, sub=("c1",)))
    r2 = await read(call)
    assert [x.name for x in r2.resources] == ["c1"]
    call.cancel()


async def test_delta_reconnect_named_with_initial_versions_sends_only_the_rest(h: Harness) -> None:
    """On a new stream, initial_resource_versions say what the client holds: those are not resent."""
    call = delta(h)
    await call.write(dreq(ENDPOINT, sub=("c1",), first=True))
    r = await read(call)
    held = {x.name: x.version for x in r.resources}
    call.cancel()
    call2 = delta(h)
    await call2.write(dreq(ENDPOINT, sub=("c1", "c2"), first=True, initial=held))
    r2 = await read(call2)
    assert [x.name for x in r2.resources] == ["c2"] and not r2.removed_resources
    assert await no_message(call2)
    call2.cancel()


async def test_delta_legacy_wildcard_needs_empty_subscribe_and_unsubscribe(h: Harness) -> None:
    """Legacy wildcard: 'the request must have no resources in both resource_names_subscribe and
    resource_names_unsubscribe'. A first request that only unsubscribes subscribes to nothing."""
    call = delta(h)
    await call.write(dreq(CLUSTER, unsub=("x",), first=True))
    assert await no_message(call)
    call.cancel()


async def test_delta_first_wildcard_request_is_answered_even_when_empty(h: Harness) -> None:
    """A proxy with nothing configured for it yet must still get an answer to its first wildcard request
    (an empty one): Envoy's initialization waits for it, initial_fetch_timeout (15 s) per type otherwise.
    Named subscriptions and later requests keep the usual rule: only changes are sent."""
    h.cache.set_world(world(clusters=(), endpoints={}))
    call = delta(h)
    await call.write(dreq(CLUSTER, first=True))
    r = await read(call)
    assert r.type_url == CLUSTER and not r.resources and not r.removed_resources and r.nonce
    await call.write(dreq(CLUSTER, nonce=r.nonce))
    assert await no_message(call), "an ACK of the empty answer is not answered again"
    # A named subscription to something that does not exist is answered the usual way (removed).
    await call.write(dreq(ENDPOINT, sub=("nope",)))
    r = await read(call)
    assert r.type_url == ENDPOINT and list(r.removed_resources) == ["nope"]
    call.cancel()


async def test_delta_wildcard_plus_name_unsubscribe_is_answered(h: Harness) -> None:
    """With '*' and a specific name, unsubscribing that name must be answered: the resource again when
    the wildcard covers it, else its name in removed_resources."""
    call = delta(h)
    await call.write(dreq(CLUSTER, sub=("*", "nope"), first=True))
    r = await read(call)
    assert sorted(x.name for x in r.resources) == ["c1", "c2"] and list(r.removed_resources) == ["nope"]
    await call.write(dreq(CLUSTER, nonce=r.nonce))
    await call.write(dreq(CLUSTER, sub=("c1",)))
    r = await read(call)
    assert [x.name for x in r.resources] == ["c1"]
    await call.write(dreq(CLUSTER, nonce=r.nonce))
    await call.write(dreq(CLUSTER, unsub=("c1",)))
    r = await read(call)
    assert [x.name for x in r.resources] == ["c1"] and not r.removed_resources
    await call.write(dreq(CLUSTER, nonce=r.nonce))
    await call.write(dreq(CLUSTER, unsub=("nope",)))
    r = await read(call)
    assert not r.resources and list(r.removed_resources) == ["nope"]
    await call.write(dreq(CLUSTER, nonce=r.nonce))
    # Unsubscribing from '*' while still holding a name: only the named resource stays.
    await call.write(dreq(CLUSTER, sub=("c2",)))
    r = await read(call)
    await call.write(dreq(CLUSTER, nonce=r.nonce, unsub=("*",)))
    r = await read(call)
    assert list(r.removed_resources) == ["c1"]
    call.cancel()


async def test_delta_ack_of_an_older_nonce_records_that_version(h: Harness) -> None:
    """Several responses may be in flight; an ACK names the one it acknowledges by nonce."""
    call = delta(h)
    await call.write(dreq(CLUSTER, first=True))
    r1 = await read(call)
    h.cache.set_world(world(clusters=("c1", "c2", "c3"), gen=2))
    r2 = await read(call)
    assert r1.system_version_info and r2.system_version_info != r1.system_version_info
    await call.write(dreq(CLUSTER, nonce=r1.nonce))
    await asyncio.sleep(0.1)
    ts = h.status.proxies[NODE].types[CLUSTER]
    assert ts.version_acked == r1.system_version_info and ts.state == "STALE"
    await call.write(dreq(CLUSTER, nonce=r2.nonce))
    await asyncio.sleep(0.1)
    ts = h.status.proxies[NODE].types[CLUSTER]
    assert ts.version_acked == r2.system_version_info and ts.state == "SYNCED"
    call.cancel()


async def test_delta_stale_nonce_still_changes_subscriptions(h: Harness) -> None:
    """'the server must honor changes to the subscription state even if the nonce is stale'."""
    call = delta(h)
    await call.write(dreq(ENDPOINT, sub=("c1",), first=True))
    r = await read(call)
    await call.write(dreq(ENDPOINT, sub=("c2",), nonce="stale-" + r.nonce))
    r2 = await read(call)
    assert [x.name for x in r2.resources] == ["c2"]
    call.cancel()


# -- resource names -------------------------------------------------------------------------------------
async def test_xdstp_names_are_opaque_and_reported_absent(h: Harness) -> None:
    call = delta(h)
    await call.write(dreq(ENDPOINT, sub=(XDSTP,), first=True))
    r = await read(call)
    assert not r.resources and list(r.removed_resources) == [XDSTP]
    call.cancel()
    call = sotw(h)
    await call.write(req(ENDPOINT, (XDSTP, "c1"), first=True))
    r = await read(call)
    assert len(r.resources) == 1
    call.cancel()


# -- per-type services ----------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["sotw", "delta"])
async def test_per_type_service_type_url_is_implicit(h: Harness, variant: str) -> None:
    """DiscoveryRequest.type_url 'is implicit in requests made via singleton xDS APIs such as CDS, LDS,
    etc. but is required for ADS'."""
    stub = cds_pb2_grpc.ClusterDiscoveryServiceStub(h.channels[0])
    if variant == "sotw":
        call = Call(stub.StreamClusters())
        await call.write(discovery_pb2.DiscoveryRequest(node=node()))
        r = await read(call)
        assert r.type_url == CLUSTER and cluster_names(r) == ["c1", "c2"]
        await call.write(discovery_pb2.DiscoveryRequest(version_info=r.version_info, response_nonce=r.nonce))
        await asyncio.sleep(0.1)
        assert h.status.proxies[NODE].types[CLUSTER].version_acked == r.version_info
    else:
        call = Call(stub.DeltaClusters())
        await call.write(discovery_pb2.DeltaDiscoveryRequest(node=node()))
        r = await read(call)
        assert r.type_url == CLUSTER and sorted(x.name for x in r.resources) == ["c1", "c2"]
    call.cancel()
    # ADS still needs it.
    ads = sotw(h)
    await ads.write(discovery_pb2.DiscoveryRequest(node=node()))
    assert (await rpc_error(ads)).code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_fetch_named_version_follows_the_named_resources(h: Harness) -> None:
    """Fetch answers 'no change' when the requested resources did not change, whatever else did."""
    stub = eds_pb2_grpc.EndpointDiscoveryServiceStub(h.channels[0])
    r = await stub.FetchEndpoints(discovery_pb2.DiscoveryRequest(node=node(), resource_names=["c1"]))
    assert len(r.resources) == 1
    h.cache.set_world(world(endpoints={"c1": 8080, "c2": 9999}, gen=2))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.FetchEndpoints(discovery_pb2.DiscoveryRequest(node=node(), resource_names=["c1"],
                                                                 version_info=r.version_info))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    h.cache.set_world(world(endpoints={"c1": 7070, "c2": 9999}, gen=3))
    r2 = await stub.FetchEndpoints(discovery_pb2.DiscoveryRequest(node=node(), resource_names=["c1"],
                                                                  version_info=r.version_info))
    assert len(r2.resources) == 1 and r2.version_info != r.version_info


# -- node identity -----------------------------------------------------------------------------------------
async def test_node_only_on_first_request_and_must_not_change(h: Harness) -> None:
    """'The node identifier should always be identical if present more than once on the stream.' A later
    request without a node is fine; the same node again is fine; another node is a clear error, since
    the stream serves the first node's configuration."""
    call = sotw(h)
    await call.write(req(first=True))
    r = await read(call)
    await call.write(discovery_pb2.DiscoveryRequest(node=node(), type_url=CLUSTER, version_info=r.version_info,
                                                    response_nonce=r.nonce))
    await call.write(req(ENDPOINT, ("c1",)))
    assert (await read(call)).type_url == ENDPOINT
    await call.write(discovery_pb2.DiscoveryRequest(node=node("node~other"), type_url=LISTENER))
    err = await rpc_error(call)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "node~other" in (err.details() or "")


# -- limits ---------------------------------------------------------------------------------------------
async def test_max_streams_counts_streams_still_waiting_for_their_first_request() -> None:
    h = await harness(max_streams=1)
    try:
        idle = Call(h.ads(h.channel()).StreamAggregatedResources())
        for _ in range(50):  # the server has seen the idle stream once it is counted or parked
            await asyncio.sleep(0.02)
            if h.server.active_streams:
                break
        second = Call(h.ads(h.channel()).StreamAggregatedResources())
        await second.write(req(first=True))
        err = await rpc_error(second)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        idle.cancel()
        for _ in range(50):
            await asyncio.sleep(0.02)
            if not h.server.active_streams:
                break
        third = Call(h.ads(h.channel()).StreamAggregatedResources())
        await third.write(req(first=True))
        assert cluster_names(await read(third)) == ["c1", "c2"]
        third.cancel()
    finally:
        await h.stop()


async def test_too_many_names_is_resource_exhausted() -> None:
    h = Harness(ServerLimits(stream=StreamLimits(max_subscriptions=3)))
    h.cache.set_world(world())
    await h.start()
    try:
        call = delta(h)
        await call.write(dreq(ENDPOINT, sub=("a", "b", "c", "d"), first=True))
        assert (await rpc_error(call)).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert h.server.active_streams == 0
    finally:
        await h.stop()


async def test_response_over_max_send_bytes_is_a_clear_error() -> None:
    h = await harness(max_send_bytes=2000)
    try:
        h.cache.set_world(world(clusters=tuple(f"c{i}" for i in range(200))))
        call = sotw(h)
        await call.write(req(first=True))
        err = await rpc_error(call)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert NODE in (err.details() or "") and "max_send_bytes" in (err.details() or "")
        for _ in range(50):
            if not h.server.active_streams:
                break
            await asyncio.sleep(0.02)
        assert h.server.active_streams == 0 and h.cache.stream_count == 0
    finally:
        await h.stop()


# -- fan-out and lifecycle ----------------------------------------------------------------------------------
async def test_a_client_that_does_not_read_does_not_hold_up_others() -> None:
    """Each stream writes on its own task: one proxy with a full flow-control window cannot delay another."""
    h = await harness()
    big = tuple(f"cluster-with-a-long-name-{i:04d}" for i in range(400))
    try:
        h.cache.set_world(world(clusters=big))
        # No BDP probing: the slow client's window stays at its initial 64 KiB.
        slow_channel = h.channel(("grpc.http2.bdp_probe", 0))
        slow = Call(h.ads(slow_channel).StreamAggregatedResources(), pump=False)
        await slow.write(discovery_pb2.DiscoveryRequest(node=node("node~slow"), type_url=CLUSTER))
        fast = Call(h.ads(h.channel()).StreamAggregatedResources())
        await fast.write(discovery_pb2.DiscoveryRequest(node=node("node~fast"), type_url=CLUSTER))
        r = await read(fast)
        for gen in range(2, 32):
            await fast.write(req(version=r.version_info, nonce=r.nonce))
            h.cache.set_world(world(clusters=big[: 400 - gen], gen=gen))
            t0 = time.monotonic()
            r = await read(fast, within=2.0)
            assert len(r.resources) == 400 - gen
            assert time.monotonic() - t0 < 1.0
        slow_sent = h.status.proxies["node~slow"].types[CLUSTER].nonce_sent
        assert int(slow_sent) < 31, "the slow client should be stuck behind its own flow-control window"
        slow.cancel()
        fast.cancel()
    finally:
        await h.stop()


def _stream_tasks() -> list[asyncio.Task[Any]]:
    names = ("run_writer", "all_acked", "_serve_stream")
    return [t for t in asyncio.all_tasks() if any(n in repr(t.get_coro()) for n in names)]


async def test_no_stream_task_left_after_disconnects() -> None:
    """Clients going away at any point (idle, mid make-before-break wait) leave no task or registration."""
    h = await harness(ack_wait_s=5.0)
    try:
        h.cache.set_world(world(clusters=("c1",), routes={"rc": "c1"}))
        for i in range(10):
            call = delta(h) if i % 2 else sotw(h)
            if i % 2:
                await call.write(dreq(CLUSTER, first=True))
                r = await read(call)
                await call.write(dreq(CLUSTER, nonce=r.nonce))
                await call.write(dreq(ROUTE, sub=("rc",)))
                await read(call)
                # A new cluster makes the route wait for its ACK, which never comes.
                h.cache.set_world(world(clusters=(f"n{i}",), routes={"rc": f"n{i}"}, gen=i + 2))
                assert (await read(call)).type_url == CLUSTER
            else:
                await call.write(req(first=True))
                await read(call)
            call.cancel()
        for _ in range(100):
            await asyncio.sleep(0.02)
            if not h.server.active_streams and not _stream_tasks():
                break
        assert h.server.active_streams == 0
        assert h.server.streams == {} and h.cache.stream_count == 0
        assert _stream_tasks() == []
        assert all(p.streams == 0 for p in h.status.proxies.values())
    finally:
        await h.stop()


# -- make before break -----------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["sotw", "delta"])
async def test_secret_change_goes_before_the_listener_that_uses_it(variant: str) -> None:
    h = await harness(ack_wait_s=5.0)
    try:
        h.cache.set_world(world(secrets={"s1": b"cert-1"}, listener_secret="s1"))
        if variant == "delta":
            call = delta(h)
            await call.write(dreq(LISTENER, first=True))
            r = await read(call)
            await call.write(dreq(LISTENER, nonce=r.nonce))
            await call.write(dreq(SECRET, sub=("s1", "s2")))
            r = await read(call)
            assert [x.name for x in r.resources] == ["s1"]
            await call.write(dreq(SECRET, nonce=r.nonce))
        else:
            call = sotw(h)
            await call.write(req(LISTENER, first=True))
            r = await read(call)
            await call.write(req(LISTENER, version=r.version_info, nonce=r.nonce))
            await call.write(req(SECRET, ("s1", "s2")))
            r = await read(call)
            assert len(r.resources) == 1
            await call.write(req(SECRET, ("s1", "s2"), r.version_info, r.nonce))
        await asyncio.sleep(0.05)
        # The listener moves to a new secret: the secret first, the listener only after its ACK.
        h.cache.set_world(world(secrets={"s1": b"cert-1", "s2": b"cert-2"}, listener_secret="s2", gen=2))
        first = await read(call)
        assert first.type_url == SECRET
        assert await no_message(call, 0.3), "the listener waits for the secret's ACK"
        if variant == "delta":
            await call.write(dreq(SECRET, nonce=first.nonce))
        else:
            await call.write(req(SECRET, ("s1", "s2"), first.version_info, first.nonce))
        second = await read(call)
        assert second.type_url == LISTENER
        call.cancel()
    finally:
        await h.stop()


async def test_delta_endpoint_and_cluster_removals_come_after_the_route_moves(h: Harness) -> None:
    h.cache.set_world(world(clusters=("c1", "c2"), routes={"rc": "c1"}))
    call = delta(h)
    await call.write(dreq(CLUSTER, first=True))
    r = await read(call)
    await call.write(dreq(CLUSTER, nonce=r.nonce))
    await call.write(dreq(ENDPOINT, sub=("c1", "c2")))
    r = await read(call)
    await call.write(dreq(ENDPOINT, nonce=r.nonce))
    await call.write(dreq(ROUTE, sub=("rc",)))
    r = await read(call)
    await call.write(dreq(ROUTE, nonce=r.nonce))
    await asyncio.sleep(0.05)
    h.cache.set_world(world(clusters=("c2",), routes={"rc": "c2"}, gen=2))
    seen = []
    for _ in range(3):
        m = await read(call)
        seen.append((m.type_url, [x.name for x in m.resources], list(m.removed_resources)))
    assert seen[0] == (ROUTE, ["rc"], [])
    assert sorted(seen[1:]) == sorted([(ENDPOINT, [], ["c1"]), (CLUSTER, [], ["c1"])])
    call.cancel()
