"""xDS over mutual TLS with an in-process gRPC client: who gets which view, and what a refusal leaks (nothing)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc

from cilia.identity import ProxyId
from cilia.ir import model as ir
from cilia.render.resources import CLUSTER, SECRET
from cilia.render.world import ResourceCache, render_world
from cilia.security.authz import Authorizer
from cilia.security.ca import CertificateAuthority, Leaf, key_pem, new_ca
from cilia.security.spiffe import admin_uri, proxy_id_uri, workload_uri
from cilia.xds.cache import ConfigCache
from cilia.xds.server import ServerLimits, XdsServer
from cilia.xds.status import StatusRegistry
from cilia.xds.tls import ServerTls

TD = "cluster.local"
KEY_MARK = b"-----BEGIN PRIVATE KEY----- secret of "
PROXIES = ("node~a", "node~b", "ingress~X", "gateway~ns/gw", "sidecar~ns/p")


def _tag(pid: str) -> str:
    return pid.replace("~", "-").replace("/", "-")


ALL_SECRETS = [f"s-{_tag(p)}" for p in PROXIES]  # a client may ask for any name; it gets only its own


def _world() -> Any:
    """One bundle per proxy, each with a cluster and an SDS secret whose key names its owner."""
    bundles = []
    for pid in PROXIES:
        p = ProxyId.parse(pid)
        tag = _tag(pid)
        bundles.append(ir.Bundle(tag, ir.ProxyScope(frozenset({p.role}), frozenset({p.name})),
                                 clusters=(ir.Cluster(f"c-{tag}"),),
                                 secrets=(ir.Secret(f"s-{tag}", certificate_chain=b"cert",
                                                    private_key=KEY_MARK + pid.encode()),)))
    return render_world(ir.MeshIR(tuple(bundles), {}), ResourceCache(), 1)


@dataclass
class Env:
    ca: CertificateAuthority
    server: XdsServer
    pods: dict[tuple[str, str], str]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.tls_port}"

    def creds(self, *uris: str, ca: CertificateAuthority | None = None, ttl: dt.timedelta | None = None,
              leaf: Leaf | None = None) -> grpc.ChannelCredentials:
        signer = ca or self.ca
        leaf = leaf or signer.issue(uris=list(uris), ttl=ttl or dt.timedelta(hours=1))
        return grpc.ssl_channel_credentials(self.ca.bundle_pem, leaf.key_pem, leaf.cert_pem)

    def channel(self, creds: grpc.ChannelCredentials) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(self.target, creds, options=[("grpc.use_local_subchannel_pool", 1)])


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    ca = new_ca(TD)
    pods = {("ns", "p"): "web"}
    cache = ConfigCache()
    cache.set_world(_world())
    tls = ServerTls(lambda: ca)
    server = XdsServer(cache, StatusRegistry(), ServerLimits(max_streams_per_proxy=3), tls=tls,
                       authorizer=Authorizer(TD, lambda ns, pod: pods.get((ns, pod))))
    await server.start(None, "127.0.0.1:0")
    yield Env(ca, server, pods)
    await server.stop(0)


async def _sotw_all(ch: grpc.aio.Channel, node_id: str, within: float = 3.0) -> tuple[bytes, grpc.StatusCode | None]:
    """Ask for clusters and secrets on one ADS stream; every byte received, and the status it ended with."""
    call = ch.stream_stream("/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
                            request_serializer=lambda m: m.SerializeToString(), response_deserializer=lambda b: b)
    stream = call()
    received = b""
    code: grpc.StatusCode | None = None
    try:
        # One request at a time: a write racing the server's end of the call would fail on the client
        # (INTERNAL) and hide the status the server gave.
        for request in (discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id=node_id), type_url=CLUSTER),
                        discovery_pb2.DiscoveryRequest(type_url=SECRET, resource_names=ALL_SECRETS)):
            await stream.write(request)
            msg = await asyncio.wait_for(stream.read(), within)
            if msg is grpc.aio.EOF:
                break
            received += msg
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
    except TimeoutError:
        pass
    stream.cancel()
    return received, code


async def test_own_identity_gets_its_view_with_its_secret(env: Env) -> None:
    async with env.channel(env.creds(proxy_id_uri(TD, ProxyId.parse("ingress~X")))) as ch:
        data, code = await _sotw_all(ch, "ingress~X")
    assert code is None
    assert b"c-ingress-X" in data and KEY_MARK + b"ingress~X" in data
    assert b"node~a" not in data and b"gateway" not in data


@pytest.mark.parametrize("claimed", ["node~b", "ingress~X", "gateway~ns/gw", "sidecar~ns/p"])
async def test_node_certificate_claiming_another_proxy_is_denied_before_any_byte(env: Env, claimed: str) -> None:
    async with env.channel(env.creds(proxy_id_uri(TD, ProxyId.parse("node~a")))) as ch:
        data, code = await _sotw_all(ch, claimed)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert data == b"" and b"PRIVATE KEY" not in data
    assert env.server.denied >= 1


async def test_denial_names_both_identities(env: Env) -> None:
    async with env.channel(env.creds(proxy_id_uri(TD, ProxyId.parse("node~a")))) as ch:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch)
        call = stub.StreamAggregatedResources()
        await call.write(discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id="node~b"), type_url=CLUSTER))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(call.read(), 3)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "spiffe://cluster.local/proxy/node/a" in str(err.value.details())
    assert "node~b" in str(err.value.details())


async def test_no_client_certificate_is_refused(env: Env) -> None:
    async with env.channel(grpc.ssl_channel_credentials(env.ca.bundle_pem)) as ch:
        data, code = await _sotw_all(ch, "node~a")
    assert data == b"" and code == grpc.StatusCode.UNAVAILABLE


async def test_certificate_from_another_ca_is_refused(env: Env) -> None:
    other = new_ca(TD)
    async with env.channel(env.creds(proxy_id_uri(TD, ProxyId.parse("node~a")), ca=other)) as ch:
        data, code = await _sotw_all(ch, "node~a")
    assert data == b"" and code == grpc.StatusCode.UNAVAILABLE


async def test_expired_certificate_is_refused(env: Env) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(env.ca.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=3)).not_valid_after(now - dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(
                proxy_id_uri(TD, ProxyId.parse("node~a")))]), critical=True)
            .sign(env.ca.key, hashes.SHA256()))
    from cryptography.hazmat.primitives.serialization import Encoding

    leaf = Leaf(cert.public_bytes(Encoding.PEM), key_pem(key), cert.not_valid_after_utc)
    async with env.channel(env.creds(leaf=leaf)) as ch:
        data, code = await _sotw_all(ch, "node~a")
    assert data == b"" and code == grpc.StatusCode.UNAVAILABLE


async def test_other_trust_domain_is_denied(env: Env) -> None:
    async with env.channel(env.creds("spiffe://evil.example/proxy/node/a")) as ch:
        data, code = await _sotw_all(ch, "node~a")
    assert code == grpc.StatusCode.PERMISSION_DENIED and data == b""


async def test_workload_identity_entitles_only_its_own_pods(env: Env) -> None:
    async with env.channel(env.creds(workload_uri(TD, "ns", "web"))) as ch:
        data, code = await _sotw_all(ch, "sidecar~ns/p")
        assert code is None and KEY_MARK + b"sidecar~ns/p" in data
    env.pods[("ns", "p")] = "other"  # the pod now runs as another ServiceAccount
    async with env.channel(env.creds(workload_uri(TD, "ns", "web"))) as ch:
        data, code = await _sotw_all(ch, "sidecar~ns/p")
    assert code == grpc.StatusCode.PERMISSION_DENIED and data == b""


async def test_delta_is_authorized_too(env: Env) -> None:
    async with env.channel(env.creds(proxy_id_uri(TD, ProxyId.parse("node~a")))) as ch:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch)
        call = stub.DeltaAggregatedResources()
        await call.write(discovery_pb2.DeltaDiscoveryRequest(node=base_pb2.Node(id="gateway~ns/gw"),
                                                             type_url=SECRET, resource_names_subscribe=["*"]))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(call.read(), 3)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_fetch_is_authorized(env: Env) -> None:
    from envoy.service.secret.v3 import sds_pb2_grpc

    async with env.channel(env.creds(proxy_id_uri(TD, ProxyId.parse("node~a")))) as ch:
        stub = sds_pb2_grpc.SecretDiscoveryServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.FetchSecrets(discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id="ingress~X")))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        own = await stub.FetchSecrets(discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id="node~a"),
                                                                     resource_names=ALL_SECRETS))
        assert [r.type_url for r in own.resources] == [SECRET]


async def test_csds_needs_an_admin_identity_and_shows_no_private_key(env: Env) -> None:
    async with env.channel(env.creds(proxy_id_uri(TD, ProxyId.parse("node~a")))) as proxy_ch:
        data, code = await _sotw_all(proxy_ch, "node~a")  # something to report on
        assert code is None and KEY_MARK in data
        stub = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(proxy_ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.FetchClientStatus(csds_pb2.ClientStatusRequest())
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        stream = stub.StreamClientStatus()
        await stream.write(csds_pb2.ClientStatusRequest())
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(stream.read(), 3)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # an admin sees every proxy, with secrets but without their keys (the proxy's stream is still open)
        call = proxy_ch.stream_stream(
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
            request_serializer=lambda m: m.SerializeToString(), response_deserializer=lambda b: b)()
        await call.write(discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id="node~a"), type_url=SECRET,
                                                        resource_names=ALL_SECRETS))
        assert KEY_MARK in await asyncio.wait_for(call.read(), 3)
        async with env.channel(env.creds(admin_uri(TD, "ops"))) as admin_ch:
            answer = await csds_pb2_grpc.ClientStatusDiscoveryServiceStub(admin_ch).FetchClientStatus(
                csds_pb2.ClientStatusRequest())
        call.cancel()
    raw = answer.SerializeToString()
    assert [c.node.id for c in answer.config] == ["node~a"]
    assert b"s-node-a" in raw and KEY_MARK not in raw and b"PRIVATE KEY" not in raw


async def test_long_node_id_and_per_proxy_stream_limit(env: Env) -> None:
    creds = env.creds(proxy_id_uri(TD, ProxyId.parse("node~a")))
    async with env.channel(creds) as ch:
        _, code = await _sotw_all(ch, "node~" + "x" * 100_000)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch)
        calls = []
        for _ in range(3):
            c = stub.StreamAggregatedResources()
            await c.write(discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id="node~a"), type_url=CLUSTER))
            await asyncio.wait_for(c.read(), 3)
            calls.append(c)
        data, code = await _sotw_all(ch, "node~a")
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and data == b""
        for c in calls:
            c.cancel()


async def test_ca_rotation_is_picked_up_for_new_handshakes() -> None:
    """The server re-reads its CA source: after a rotation both roots are trusted, so certificates signed
    by the old CA keep working through the overlap, and new ones work at once."""
    old = new_ca(TD)
    current = {"ca": old}
    cache = ConfigCache()
    cache.set_world(_world())
    server = XdsServer(cache, StatusRegistry(), tls=ServerTls(lambda: current["ca"], check_interval_s=0.05))
    await server.start(None, "127.0.0.1:0")
    try:
        fresh = new_ca(TD)
        rotated = CertificateAuthority(fresh.cert, fresh.key, (fresh.cert, old.cert))
        current["ca"] = rotated
        await asyncio.sleep(0.1)
        uri = proxy_id_uri(TD, ProxyId.parse("node~a"))
        for signer in (old, fresh):
            leaf = signer.issue(uris=[uri])
            creds = grpc.ssl_channel_credentials(rotated.bundle_pem, leaf.key_pem, leaf.cert_pem)
            async with grpc.aio.secure_channel(f"127.0.0.1:{server.tls_port}", creds) as ch:
                data, code = await _sotw_all(ch, "node~a")
            assert code is None and b"c-node-a" in data, signer
    finally:
        await server.stop(0)
