"""xDS protocol behaviour with an in-process gRPC client: SotW and Delta state machines."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from cilia.render.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from cilia.xds.status import StatusRegistry
from support.xds_client import NODE, Call, Harness, delta, no_message, node, read, sotw, world


def open_sotw(h: Harness) -> Call:
    return sotw(h)


def open_delta(h: Harness) -> Call:
    return delta(h)


def names(resp: Any) -> list[str]:
    out = []
    for a in resp.resources:
        if a.type_url == CLUSTER:
            c = cluster_pb2.Cluster()
            a.Unpack(c)
            out.append(c.name)
        else:
            out.append(a.type_url)
    return sorted(out)


# -- State of the World ---------------------------------------------------------------------------------
async def test_sotw_ack_nack_and_stale_nonce(h: Harness) -> None:
    call = open_sotw(h)
    await call.write(discovery_pb2.DiscoveryRequest(node=node(), type_url=CLUSTER))
    r1 = await read(call)
    assert r1.type_url == CLUSTER and names(r1) == ["c1", "c2"] and r1.nonce and r1.version_info
    await call.write(discovery_pb2.DiscoveryRequest(type_url=CLUSTER, version_info=r1.version_info,
                                                    response_nonce=r1.nonce))
    await asyncio.sleep(0.1)
    ts = h.status.proxies[NODE].types[CLUSTER]
    assert ts.version_acked == r1.version_info and ts.state == "SYNCED"

    h.cache.set_world(world(clusters=("c1", "c2", "c3")))
    r2 = await read(call)
    assert names(r2) == ["c1", "c2", "c3"] and r2.nonce != r1.nonce and r2.version_info != r1.version_info
    # NACK: the last ACKed version stays, the error is recorded.
    await call.write(discovery_pb2.DiscoveryRequest(
        type_url=CLUSTER, version_info=r1.version_info, response_nonce=r2.nonce,
        error_detail=status_pb2.Status(code=3, message="bad cluster c3")))
    await asyncio.sleep(0.1)
    ts = h.status.proxies[NODE].types[CLUSTER]
    assert ts.version_acked == r1.version_info
    assert ts.last_nack == "bad cluster c3" and ts.state == "NACKED"
    assert await no_message(call), "a NACK must not make the server resend the same version"

    # A request carrying a stale nonce is ignored: no response, no state change.
    await call.write(discovery_pb2.DiscoveryRequest(type_url=CLUSTER, version_info=r2.version_info,
                                                    response_nonce=r1.nonce))
    assert await no_message(call)
    assert h.status.proxies[NODE].types[CLUSTER].version_acked == r1.version_info
    call.cancel()


async def test_sotw_named_resources_only(h: Harness) -> None:
    call = open_sotw(h)
    await call.write(discovery_pb2.DiscoveryRequest(node=node(), type_url=ENDPOINT, resource_names=["c2"]))
    r = await read(call)
    assert len(r.resources) == 1 and r.resources[0].type_url == ENDPOINT
    # An endpoint change of a resource not subscribed sends nothing.
    await call.write(discovery_pb2.DiscoveryRequest(type_url=ENDPOINT, resource_names=["c2"],
                                                    version_info=r.version_info, response_nonce=r.nonce))
    h.cache.set_world(world(endpoints={"c1": 9999, "c2": 8080}))
    assert await no_message(call)
    h.cache.set_world(world(endpoints={"c1": 9999, "c2": 7070}))
    r2 = await read(call)
    assert len(r2.resources) == 1 and r2.version_info != r.version_info
    call.cancel()


async def test_sotw_reconnect_with_current_version_sends_nothing(h: Harness) -> None:
    call = open_sotw(h)
    await call.write(discovery_pb2.DiscoveryRequest(node=node(), type_url=CLUSTER))
    r = await read(call)
    call.cancel()
    call2 = open_sotw(h)
    await call2.write(discovery_pb2.DiscoveryRequest(node=node(), type_url=CLUSTER, version_info=r.version_info))
    assert await no_message(call2)
    h.cache.set_world(world(clusters=("c1",)))
    r2 = await read(call2)
    assert names(r2) == ["c1"]
    call2.cancel()


# -- Delta ------------------------------------------------------------------------------------------------
async def test_delta_subscribe_unsubscribe_removal(h: Harness) -> None:
    call = open_delta(h)
    await call.write(discovery_pb2.DeltaDiscoveryRequest(node=node(), type_url=ENDPOINT,
                                                         resource_names_subscribe=["c1"]))
    r = await read(call)
    assert [x.name for x in r.resources] == ["c1"] and not r.removed_resources
    await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=ENDPOINT, response_nonce=r.nonce,
                                                         resource_names_subscribe=["c2", "nope"]))
    r2 = await read(call)
    assert [x.name for x in r2.resources] == ["c2"]
    assert list(r2.removed_resources) == ["nope"], "a subscribed name that does not exist is reported removed"
    await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=ENDPOINT, response_nonce=r2.nonce,
                                                         resource_names_unsubscribe=["c1"]))
    assert await no_message(call), "unsubscribing sends nothing"
    # c1 changing now is not sent (unsubscribed); c2 removed from the world is sent as removed.
    h.cache.set_world(world(clusters=("c1",), endpoints={"c1": 1234}))
    r3 = await read(call)
    assert not r3.resources and list(r3.removed_resources) == ["c2"]
    # Re-subscribing c1 sends it again, at its current version.
    await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=ENDPOINT, response_nonce=r3.nonce,
                                                         resource_names_subscribe=["c1"]))
    r4 = await read(call)
    assert [x.name for x in r4.resources] == ["c1"]
    call.cancel()


async def test_delta_wildcard_and_unchanged_not_resent(h: Harness) -> None:
    call = open_delta(h)
    await call.write(discovery_pb2.DeltaDiscoveryRequest(node=node(), type_url=CLUSTER))
    r = await read(call)
    assert sorted(x.name for x in r.resources) == ["c1", "c2"]
    versions = {x.name: x.version for x in r.resources}
    await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, response_nonce=r.nonce))
    # Rebuilding an identical world sends nothing: per-resource versions are content hashes.
    h.cache.set_world(world(gen=2))
    assert await no_message(call)
    h.cache.set_world(world(clusters=("c1", "c2", "c3"), gen=3))
    r2 = await read(call)
    assert [x.name for x in r2.resources] == ["c3"]
    await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, response_nonce=r2.nonce))
    h.cache.set_world(world(clusters=("c1", "c3"), gen=4))
    r3 = await read(call)
    assert not r3.resources and list(r3.removed_resources) == ["c2"]
    assert versions["c1"]
    call.cancel()


async def test_delta_reconnect_initial_versions_gets_only_changes(h: Harness) -> None:
    call = open_delta(h)
    await call.write(discovery_pb2.DeltaDiscoveryRequest(node=node(), type_url=CLUSTER))
    r = await read(call)
    versions = {x.name: x.version for x in r.resources}
    call.cancel()
    h.cache.set_world(world(clusters=("c1", "c2", "c3"), gen=2))
    call2 = open_delta(h)
    held = dict(versions)
    held["gone"] = "v-old"
    await call2.write(discovery_pb2.DeltaDiscoveryRequest(node=node(), type_url=CLUSTER,
                                                          initial_resource_versions=held))
    r2 = await read(call2)
    assert [x.name for x in r2.resources] == ["c3"], "only what changed since the versions the client holds"
    r3 = await read(call2)
    assert list(r3.removed_resources) == ["gone"]
    call2.cancel()


async def test_delta_nack_recorded_and_stale_nonce_ignored(h: Harness) -> None:
    call = open_delta(h)
    await call.write(discovery_pb2.DeltaDiscoveryRequest(node=node(), type_url=CLUSTER))
    r = await read(call)
    await call.write(discovery_pb2.DeltaDiscoveryRequest(
        type_url=CLUSTER, response_nonce=r.nonce, error_detail=status_pb2.Status(code=3, message="nope")))
    await asyncio.sleep(0.1)
    ts = h.status.proxies[NODE].types[CLUSTER]
    assert ts.last_nack == "nope" and ts.state == "NACKED" and ts.version_acked == ""
    await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, response_nonce="999"))
    await asyncio.sleep(0.1)
    assert h.status.proxies[NODE].types[CLUSTER].acks == 0
    call.cancel()


# -- errors and ordering ------------------------------------------------------------------------------------
@pytest.mark.parametrize("delta", [True, False])
async def test_unknown_type_url_is_a_clear_error(h: Harness, delta: bool) -> None:
    if delta:
        call = open_delta(h)
        await call.write(discovery_pb2.DeltaDiscoveryRequest(node=node(), type_url="type.googleapis.com/foo.Bar"))
    else:
        call = open_sotw(h)
        await call.write(discovery_pb2.DiscoveryRequest(node=node(), type_url="type.googleapis.com/foo.Bar"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await read(call)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "foo.Bar" in (err.value.details() or "")
    # The server is still fine.
    ok = open_sotw(h)
    await ok.write(discovery_pb2.DiscoveryRequest(node=node(), type_url=CLUSTER))
    assert (await read(ok)).resources
    ok.cancel()


async def test_unknown_role_rejected(h: Harness) -> None:
    call = open_delta(h)
    await call.write(discovery_pb2.DeltaDiscoveryRequest(node=node("mystery~x"), type_url=CLUSTER))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await read(call)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown role" in (err.value.details() or "")


async def test_make_before_break_routes_wait_for_cluster_ack(h: Harness) -> None:
    h.cache.set_world(world(clusters=("c1",), routes={"rc": "c1"}))
    call = open_delta(h)
    await call.write(discovery_pb2.DeltaDiscoveryRequest(node=node(), type_url=CLUSTER))
    r = await read(call)
    await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, response_nonce=r.nonce))
    await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=ROUTE, resource_names_subscribe=["rc"]))
    r = await read(call)
    assert r.type_url == ROUTE
    await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=ROUTE, response_nonce=r.nonce))
    await asyncio.sleep(0.05)
    # The route moves to a new cluster and the old one goes: the new cluster comes first, the route
    # only after its ACK, and the old cluster's removal last.
    h.cache.set_world(world(clusters=("c2",), routes={"rc": "c2"}, gen=2))
    first = await read(call)
    assert first.type_url == CLUSTER and [x.name for x in first.resources] == ["c2"]
    assert await no_message(call, 0.2), "the route must wait for the cluster ACK"
    await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, response_nonce=first.nonce))
    second = await read(call)
    assert second.type_url == ROUTE
    # Removing c1 comes last, after the route no longer uses it.
    await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=ROUTE, response_nonce=second.nonce))
    third = await read(call)
    assert third.type_url == CLUSTER and list(third.removed_resources) == ["c1"]
    call.cancel()


async def test_sotw_cluster_removal_held_until_listeners_updated(h: Harness) -> None:
    h.cache.set_world(world(clusters=("c1",), routes={"rc": "c1"}))
    call = open_sotw(h)
    await call.write(discovery_pb2.DiscoveryRequest(node=node(), type_url=CLUSTER))
    r = await read(call)
    await call.write(discovery_pb2.DiscoveryRequest(type_url=CLUSTER, version_info=r.version_info,
                                                    response_nonce=r.nonce))
    await call.write(discovery_pb2.DiscoveryRequest(type_url=ROUTE, resource_names=["rc"]))
    rr = await read(call)
    await call.write(discovery_pb2.DiscoveryRequest(type_url=ROUTE, resource_names=["rc"],
                                                    version_info=rr.version_info, response_nonce=rr.nonce))
    await asyncio.sleep(0.05)
    h.cache.set_world(world(clusters=("c2",), routes={"rc": "c2"}, gen=2))
    first = await read(call)
    assert first.type_url == CLUSTER and names(first) == ["c1", "c2"], "old cluster held while routes move"
    await call.write(discovery_pb2.DiscoveryRequest(type_url=CLUSTER, version_info=first.version_info,
                                                    response_nonce=first.nonce))
    second = await read(call)
    assert second.type_url == ROUTE
    await call.write(discovery_pb2.DiscoveryRequest(type_url=ROUTE, resource_names=["rc"],
                                                    version_info=second.version_info, response_nonce=second.nonce))
    third = await read(call)
    assert third.type_url == CLUSTER and names(third) == ["c2"]
    call.cancel()


async def test_per_type_service_rejects_other_types(h: Harness) -> None:
    from envoy.service.cluster.v3 import cds_pb2_grpc

    stub = cds_pb2_grpc.ClusterDiscoveryServiceStub(h.channels[0])
    call = Call(stub.DeltaClusters())
    await call.write(discovery_pb2.DeltaDiscoveryRequest(node=node(), type_url=CLUSTER))
    r = await read(call)
    assert sorted(x.name for x in r.resources) == ["c1", "c2"]
    call.cancel()
    call = Call(stub.StreamClusters())
    await call.write(discovery_pb2.DiscoveryRequest(node=node(), type_url=LISTENER))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await read(call)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_delta_decoder_reads_only_plain_acks_as_acks() -> None:
    from cilia.xds.server import DeltaDecoder, PlainAck

    decode = DeltaDecoder(limit=2).decode
    raw = discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, response_nonce="7").SerializeToString()
    ack = decode(raw)
    assert isinstance(ack, PlainAck) and (ack.type_url, ack.nonce, ack.raw) == (CLUSTER, "7", raw)
    assert decode(bytes(bytearray(raw))) is ack, "the same encoding is parsed once"
    implied = decode(discovery_pb2.DeltaDiscoveryRequest(response_nonce="1").SerializeToString())
    assert isinstance(implied, PlainAck) and implied.type_url == ""
    others = [
        discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER),
        discovery_pb2.DeltaDiscoveryRequest(node=node(), type_url=CLUSTER, response_nonce="7"),
        discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, response_nonce="7", resource_names_subscribe=["c1"]),
        discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, response_nonce="7", resource_names_unsubscribe=["c1"]),
        discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, response_nonce="7",
                                            initial_resource_versions={"c1": "v"}),
        discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, response_nonce="7", error_detail=status_pb2.Status()),
        discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, response_nonce="n" * 300),  # over the limits
    ]
    for msg in others:
        out = decode(msg.SerializeToString())
        assert isinstance(out, discovery_pb2.DeltaDiscoveryRequest) and out == msg
    unknown = raw + b"\xf8\x01\x01"  # field 31, varint: a field this server does not know
    assert isinstance(decode(unknown), discovery_pb2.DeltaDiscoveryRequest)


async def test_delta_plain_acks_first_and_with_implied_type(h: Harness) -> None:
    from envoy.service.cluster.v3 import cds_pb2_grpc

    # A plain ACK as a stream's first request names no node: refused as any request without one.
    call = open_delta(h)
    await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, response_nonce="1"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await read(call)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    call.cancel()
    # On a per-type service the ACK may leave the type out.
    call = Call(cds_pb2_grpc.ClusterDiscoveryServiceStub(h.channel()).DeltaClusters())
    await call.write(discovery_pb2.DeltaDiscoveryRequest(node=node(), type_url=CLUSTER))
    r = await read(call)
    await call.write(discovery_pb2.DeltaDiscoveryRequest(response_nonce=r.nonce))
    await asyncio.sleep(0.1)
    ts = h.status.proxies[NODE].types[CLUSTER]
    assert (ts.acks, ts.state, ts.version_acked) == (1, "SYNCED", r.system_version_info)
    call.cancel()


def test_status_registry_forgets_old_disconnected_proxies() -> None:
    reg = StatusRegistry(forget_after_s=3600, max_disconnected=2)
    for i in range(5):
        reg.connected(f"sidecar~ns/p{i}", "delta", "envoy")
        reg.disconnected(f"sidecar~ns/p{i}")
    reg.connected("node~n1", "delta", "envoy")
    assert set(reg.proxies) == {"sidecar~ns/p3", "sidecar~ns/p4", "node~n1"}
    assert reg.proxies["node~n1"].streams == 1


# -- Fan-out: streams in the same state share their diff, yet keep their own protocol state ---------------
async def test_delta_streams_share_state_until_one_diverges(h: Harness) -> None:
    calls = [Call(h.ads(h.channel()).DeltaAggregatedResources()) for _ in range(3)]
    first = []
    for i, call in enumerate(calls):
        await call.write(discovery_pb2.DeltaDiscoveryRequest(node=node(f"node~p{i}"), type_url=ENDPOINT,
                                                             resource_names_subscribe=["c1", "c2"]))
        r = await read(call)
        await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=ENDPOINT, response_nonce=r.nonce))
        first.append(r)
    await asyncio.sleep(0.1)
    streams = [h.server.streams[f"node~p{i}"][0] for i in range(3)]
    known = [s.types[ENDPOINT].known for s in streams]
    assert known[0] is known[1] is known[2], "streams in the same state share one mapping of what they hold"
    # The third proxy unsubscribes from c2: its state is copied, the others' is untouched.
    await calls[2].write(discovery_pb2.DeltaDiscoveryRequest(type_url=ENDPOINT, resource_names_unsubscribe=["c2"]))
    await asyncio.sleep(0.1)
    assert dict(streams[0].types[ENDPOINT].known) == {r.name: r.version for r in first[0].resources}
    assert set(streams[2].types[ENDPOINT].known) == {"c1"}
    h.cache.set_world(world(endpoints={"c1": 1111, "c2": 2222}, gen=2))
    out = [await read(c) for c in calls]
    assert [sorted(x.name for x in r.resources) for r in out] == [["c1", "c2"], ["c1", "c2"], ["c1"]]
    # Each stream has its own nonce sequence, and each ACK is tracked per stream.
    assert out[0].nonce == out[1].nonce == out[2].nonce == "2"
    await calls[0].write(discovery_pb2.DeltaDiscoveryRequest(type_url=ENDPOINT, response_nonce=out[0].nonce))
    await calls[1].write(discovery_pb2.DeltaDiscoveryRequest(
        type_url=ENDPOINT, response_nonce=out[1].nonce, error_detail=status_pb2.Status(code=3, message="bad")))
    await asyncio.sleep(0.1)
    states = [h.status.proxies[f"node~p{i}"].types[ENDPOINT].state for i in range(3)]
    assert states == ["SYNCED", "NACKED", "STALE"]
    for c in calls:
        c.cancel()


async def test_delta_removal_worked_out_once_for_streams_in_the_same_state(h: Harness) -> None:
    calls = [Call(h.ads(h.channel()).DeltaAggregatedResources()) for _ in range(3)]
    for i, call in enumerate(calls):
        await call.write(discovery_pb2.DeltaDiscoveryRequest(node=node(f"node~r{i}"), type_url=ENDPOINT,
                                                             resource_names_subscribe=["c1", "c2"]))
        r = await read(call)
        await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=ENDPOINT, response_nonce=r.nonce))
    await asyncio.sleep(0.1)
    streams = [h.server.streams[f"node~r{i}"][0] for i in range(3)]
    # The third unsubscribes from c2 and so holds another state; the world then loses c2.
    await calls[2].write(discovery_pb2.DeltaDiscoveryRequest(type_url=ENDPOINT, resource_names_unsubscribe=["c2"]))
    await asyncio.sleep(0.1)
    h.cache.set_world(world(endpoints={"c1": 1111}, gen=2))
    # Updates first, removals last (make before break): two responses for those that held c2.
    out = [(await read(c), await read(c)) for c in calls[:2]]
    shape = [[(list(r.removed_resources), [x.name for x in r.resources]) for r in pair] for pair in out]
    assert shape == [[([], ["c1"]), (["c2"], [])]] * 2
    third = await read(calls[2])
    assert [x.name for x in third.resources] == ["c1"] and not third.removed_resources
    assert await no_message(calls[2])
    updates = [s.types[ENDPOINT].last_tr for s in streams]
    assert updates[0] is updates[1] is not None and updates[0].removal is not None
    assert updates[0].removal.absent == ("c2",)
    assert updates[2] is not updates[0] and (updates[2].removal is None or not updates[2].removal.absent)
    assert [dict(s.types[ENDPOINT].known).get("c2") for s in streams] == ["", "", None]
    for c in calls:
        c.cancel()


def test_config_cache_reselects_bundles_only_when_scopes_change() -> None:
    from cilia.identity import ProxyId
    from cilia.ir import model as ir
    from cilia.render.world import render_world
    from cilia.xds.cache import ConfigCache

    def scoped(names: frozenset[str] | None, cluster: str) -> Any:
        b = ir.Bundle("b", ir.ProxyScope(frozenset({"node"}), names=names), clusters=(ir.Cluster(cluster),))
        return render_world(ir.MeshIR((b,)))

    cache = ConfigCache()
    n1, n2 = ProxyId.parse("node~n1"), ProxyId.parse("node~n2")
    cache.set_world(scoped(frozenset({"n1"}), "a"))
    assert set(cache.resources_for(n1).of(CLUSTER)) == {"a"} and not cache.resources_for(n2).of(CLUSTER)
    cache.set_world(scoped(frozenset({"n1"}), "b"))  # same scopes, new content: the selection is kept
    assert set(cache.resources_for(n1).of(CLUSTER)) == {"b"} and not cache.resources_for(n2).of(CLUSTER)
    cache.set_world(scoped(frozenset({"n2"}), "b"))  # the scope moved: selected again
    assert not cache.resources_for(n1).of(CLUSTER) and set(cache.resources_for(n2).of(CLUSTER)) == {"b"}


def test_a_streams_viewer_follows_the_world_and_keeps_its_view_while_it_stays() -> None:
    from cilia.identity import ProxyId
    from cilia.ir import model as ir
    from cilia.render.world import render_world
    from cilia.xds.cache import ConfigCache

    def with_cluster(cluster: str, scope: str = "node") -> Any:
        return render_world(ir.MeshIR((ir.Bundle("b", ir.ProxyScope(frozenset({scope})),
                                                 clusters=(ir.Cluster(cluster),)),)))

    cache = ConfigCache()
    n1 = ProxyId.parse("node~n1")
    view = cache.viewer(n1)
    cache.set_world(with_cluster("a"))
    first = view(n1)
    assert set(first.of(CLUSTER)) == {"a"}
    calls: list[ProxyId] = []
    real = cache._bundle_keys
    cache._bundle_keys = lambda p: calls.append(p) or real(p)  # type: ignore[method-assign]
    assert view(n1) is first and calls == []  # the same world: no look-up at all
    cache.set_world(with_cluster("b"))
    assert set(view(n1).of(CLUSTER)) == {"b"} and calls == []  # same scopes: the stream's own bundle keys
    other = ProxyId.parse("node~n2")
    assert set(view(other).of(CLUSTER)) == {"b"} and calls == [other]  # another proxy is looked up
    cache.set_world(with_cluster("c", scope="gateway"))  # scopes changed: the stream's bundles looked up again
    assert set(view(n1).of(CLUSTER)) == set() and calls == [other, n1]
    cache.set_world(with_cluster("d"))
    assert set(view(n1).of(CLUSTER)) == {"d"} and calls == [other, n1, n1]
