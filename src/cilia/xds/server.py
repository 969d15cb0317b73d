"""The gRPC xDS server: ADS and per-type discovery services, State-of-the-World and Delta, on one port.

Responses are written as pre-serialised bytes (see cilia.render.resources), so the handlers are
registered with an identity serializer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from envoy.service.accesslog.v3 import als_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.status.v3 import csds_pb2
from google.protobuf import json_format

from cilia.errors import UnknownProxyRole
from cilia.identity import ProxyId
from cilia.render.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    REDIRECT_POLICY,
    ROUTE,
    SECRET,
    Resource,
    field_bytes,
    set_version,
    sotw_response,
)
from cilia.security.authz import LOCAL_PEER, Authorizer, Peer, PermissionDenied
from cilia.security.ca import certificate_info
from cilia.xds.cache import ConfigCache
from cilia.xds.csds import MatcherError, client_status
from cilia.xds.hooks import XdsObserver
from cilia.xds.limits import (
    SMALL_REQUEST_BYTES,
    RequestLimitError,
    check_delta_request,
    check_discovery_request,
    check_node_id,
    error_detail_text,
)
from cilia.xds.status import StatusRegistry
from cilia.xds.stream import BaseStream, DeltaStream, ResponseMemo, SotwStream, StreamLimits
from cilia.xds.tls import ServerTls

log = logging.getLogger("cilia.xds")

ALL_TYPES = frozenset({LISTENER, ROUTE, CLUSTER, ENDPOINT, SECRET, REDIRECT_POLICY})
PER_TYPE_SERVICES = {
    "envoy.service.listener.v3.ListenerDiscoveryService": ("Listeners", LISTENER),
    "envoy.service.route.v3.RouteDiscoveryService": ("Routes", ROUTE),
    "envoy.service.cluster.v3.ClusterDiscoveryService": ("Clusters", CLUSTER),
    "envoy.service.endpoint.v3.EndpointDiscoveryService": ("Endpoints", ENDPOINT),
    "envoy.service.secret.v3.SecretDiscoveryService": ("Secrets", SECRET),
}
ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
CSDS_SERVICE = "envoy.service.status.v3.ClientStatusDiscoveryService"
ALS_SERVICE = "envoy.service.accesslog.v3.AccessLogService"
RBAC_DENIED = "rbac_access_denied_matched_policy["


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Every bound the server enforces; a client past one gets a gRPC status naming it."""

    max_streams: int = 10_000  # xDS streams held at once, all clients together
    max_streams_per_proxy: int = 16  # streams one node id may hold (ADS + per-type + reconnect overlap)
    max_streams_per_connection: int = 128  # HTTP/2 concurrent streams one connection may open
    max_receive_bytes: int = 4 * 1024 * 1024
    max_send_bytes: int = 64 * 1024 * 1024
    handshake_timeout_s: float = 10.0  # a connection that has not finished TLS/HTTP/2 set-up by then is closed
    idle_connection_s: float = 300.0  # a connection with no call open for this long is closed
    stream: StreamLimits = StreamLimits()


def _identity(b: bytes) -> bytes:
    return b


def _serialize(message: Any) -> bytes:
    return bytes(message.SerializeToString())


_DELTA_FIELDS = discovery_pb2.DeltaDiscoveryRequest.DESCRIPTOR.fields_by_name
_TYPE_URL_FIELD = _DELTA_FIELDS["type_url"].number
_NONCE_FIELD = _DELTA_FIELDS["response_nonce"].number


class PlainAck:
    """A Delta request that carries a response nonce, a type_url at most, and nothing else: the ACK a
    proxy sends for every response. It passes the request limits on its size alone (as `check_delta_request`
    lets it) and is handled without a protobuf message."""

    __slots__ = ("nonce", "raw", "type_url")

    def __init__(self, type_url: str, nonce: str, raw: bytes) -> None:
        self.type_url = type_url
        self.nonce = nonce
        self.raw = raw  # the encoding, for where the message itself is needed (a stream's first request)


class DeltaDecoder:
    """The deserializer of Delta requests: a `PlainAck` for a plain ACK, else the message. Streams in the
    same state ACK with byte-identical requests (nonces count per stream and type), so each distinct
    encoding is parsed once, not once per stream per change. Bounded: past `limit` entries it starts over."""

    def __init__(self, limit: int = 4096) -> None:
        self._acks: dict[bytes, PlainAck] = {}
        self.limit = limit

    def decode(self, raw: bytes) -> discovery_pb2.DeltaDiscoveryRequest | PlainAck:
        ack = self._acks.get(raw)
        if ack is not None:
            return ack
        req = discovery_pb2.DeltaDiscoveryRequest.FromString(raw)
        nonce = req.response_nonce
        if nonce and len(raw) <= SMALL_REQUEST_BYTES:
            type_url = req.type_url
            # The canonical encoding of those two fields alone: any other field set makes it differ.
            plain = field_bytes(_TYPE_URL_FIELD, type_url.encode()) if type_url else b""
            if raw == plain + field_bytes(_NONCE_FIELD, nonce.encode()):
                if len(self._acks) >= self.limit:
                    self._acks.clear()
                ack = self._acks[raw] = PlainAck(type_url, nonce, raw)
                return ack
        return req


class XdsServer:
    """`authorizer` decides which views an mTLS peer may read (plaintext peers are local and trusted);
    `tls` supplies the mTLS port's credentials."""

    def __init__(self, cache: ConfigCache, status: StatusRegistry, limits: ServerLimits | None = None,
                 observer: XdsObserver | None = None, *, authorizer: Authorizer | None = None,
                 tls: ServerTls | None = None) -> None:
        self.cache = cache
        self.status = status
        self.limits = limits or ServerLimits()
        self.observer = observer or XdsObserver()
        self.tls = tls
        self.authorizer = authorizer or Authorizer(tls.trust_domain if tls else "cluster.local")
        self._server: grpc.aio.Server | None = None
        self.port = 0
        self.tls_port = 0
        self.active_streams = 0
        self.denied = 0  # streams and fetches refused for identity
        self.streams: dict[str, list[BaseStream]] = {}  # proxy id -> its open streams
        self.memo = ResponseMemo()  # encoded responses shared by all streams
        self.decode_delta = DeltaDecoder().decode  # a bound method: grpc calls it per request

    # -- what was sent (debug views, CSDS) -------------------------------------------------------------
    def sent_resources(self, proxy_id: str, type_url: str) -> list[tuple[str, str, Resource | None]]:
        """What the proxy's open streams last sent of `type_url` (empty when it is not connected)."""
        merged: dict[str, tuple[str, str, Resource | None]] = {}
        for stream in self.streams.get(proxy_id, ()):
            if type_url in stream.types:
                for row in stream.sent_resources(type_url):
                    merged[row[0]] = row
        return [merged[n] for n in sorted(merged)]

    def sent_types(self, proxy_id: str) -> set[str]:
        return {t for stream in self.streams.get(proxy_id, ()) for t in stream.types}

    # -- lifecycle -----------------------------------------------------------------------------------
    async def start(self, address: str | None, tls_address: str | None = None) -> int:
        """Listen in plaintext on `address` and/or over mTLS on `tls_address` (needs `tls`)."""
        options = [
            ("grpc.max_receive_message_length", self.limits.max_receive_bytes),
            ("grpc.max_send_message_length", self.limits.max_send_bytes),
            ("grpc.max_concurrent_streams", self.limits.max_streams_per_connection),
            ("grpc.server_handshake_timeout_ms", int(self.limits.handshake_timeout_s * 1000)),
            ("grpc.max_connection_idle_ms", int(self.limits.idle_connection_s * 1000)),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.so_reuseport", 0),
            # Calls grpc core holds until the app picks them up; past the soft limit it starts refusing
            # (default 1,000 / 3,000), which cancels streams of proxies reconnecting all at once.
            ("grpc.server.max_pending_requests", max(1000, self.limits.max_streams)),
            ("grpc.server.max_pending_requests_hard_limit", max(3000, 2 * self.limits.max_streams)),
        ]
        server = grpc.aio.server(options=options, maximum_concurrent_rpcs=None)
        server.add_generic_rpc_handlers(self._handlers())
        if address:
            self.port = server.add_insecure_port(address)
            if self.port == 0:
                raise OSError(f"cannot bind xDS server to {address}")
        if tls_address:
            if self.tls is None:
                raise ValueError("an mTLS xDS address needs TLS credentials (a CA)")
            self.tls_port = server.add_secure_port(tls_address, self.tls.credentials())
            if self.tls_port == 0:
                raise OSError(f"cannot bind xDS mTLS server to {tls_address}")
        await server.start()
        self._server = server
        if address:
            log.info("xDS server listening on %s (port %d, plaintext)", address, self.port)
        if tls_address:
            log.info("xDS server listening on %s (port %d, mTLS, trust domain %s)", tls_address, self.tls_port,
                     self.authorizer.trust_domain)
        return self.port or self.tls_port

    async def stop(self, grace: float = 0.5) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    def _handlers(self) -> list[grpc.GenericRpcHandler]:
        handlers = []
        ads = {
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self._sotw_handler(ALL_TYPES), discovery_pb2.DiscoveryRequest.FromString, _identity),
            "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self._delta_handler(ALL_TYPES), self.decode_delta, _identity),
        }
        handlers.append(grpc.method_handlers_generic_handler(ADS_SERVICE, ads))
        for service, (suffix, type_url) in PER_TYPE_SERVICES.items():
            allowed = frozenset({type_url})
            methods = {
                f"Stream{suffix}": grpc.stream_stream_rpc_method_handler(
                    self._sotw_handler(allowed), discovery_pb2.DiscoveryRequest.FromString, _identity),
                f"Delta{suffix}": grpc.stream_stream_rpc_method_handler(
                    self._delta_handler(allowed), self.decode_delta, _identity),
                f"Fetch{suffix}": grpc.unary_unary_rpc_method_handler(
                    self._fetch_handler(type_url), discovery_pb2.DiscoveryRequest.FromString, _identity),
            }
            handlers.append(grpc.method_handlers_generic_handler(service, methods))
        csds = {
            "StreamClientStatus": grpc.stream_stream_rpc_method_handler(
                self._csds_stream, csds_pb2.ClientStatusRequest.FromString, _serialize),
            "FetchClientStatus": grpc.unary_unary_rpc_method_handler(
                self._csds_fetch, csds_pb2.ClientStatusRequest.FromString, _serialize),
        }
        handlers.append(grpc.method_handlers_generic_handler(CSDS_SERVICE, csds))
        als = {"StreamAccessLogs": grpc.stream_unary_rpc_method_handler(
            self._access_logs, als_pb2.StreamAccessLogsMessage.FromString, _identity)}
        handlers.append(grpc.method_handlers_generic_handler(ALS_SERVICE, als))
        return handlers

    # -- access logs (mesh inbound RBAC denials) --------------------------------------------------------
    async def _access_logs(self, requests: AsyncIterator[als_pb2.StreamAccessLogsMessage],
                           context: grpc.aio.ServicerContext) -> bytes:
        """Envoy's gRPC access log of 403s from mesh inbound listeners: each RBAC denial is counted for the
        observer. The stream speaks for the node id of its first message, which the peer must hold."""
        proxy: ProxyId | None = None
        async for msg in requests:
            if proxy is None:
                proxy = await self._proxy_id(msg.identifier.node.id, context)
                await self._authorize(proxy, context)
            for entry in msg.http_logs.log_entry:
                details = entry.response.response_code_details
                if details.startswith(RBAC_DENIED) and details.endswith("]"):
                    self.observer.access_denied(str(proxy), details[len(RBAC_DENIED):-1],
                                                entry.common_properties.route_name)
        return b""  # an empty StreamAccessLogsResponse

    # -- CSDS ------------------------------------------------------------------------------------------
    async def _csds_answer(self, req: csds_pb2.ClientStatusRequest,
                           context: grpc.aio.ServicerContext) -> csds_pb2.ClientStatusResponse:
        try:
            self.authorizer.check_admin(peer_of(context), "CSDS")
        except PermissionDenied as exc:
            self.denied += 1
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
            raise
        try:
            return client_status(req, [p for _, p in sorted(self.status.proxies.items())], self.sent_resources)
        except MatcherError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise

    async def _csds_fetch(self, req: csds_pb2.ClientStatusRequest,
                          context: grpc.aio.ServicerContext) -> csds_pb2.ClientStatusResponse:
        return await self._csds_answer(req, context)

    async def _csds_stream(self, requests: AsyncIterator[csds_pb2.ClientStatusRequest],
                           context: grpc.aio.ServicerContext) -> AsyncIterator[csds_pb2.ClientStatusResponse]:
        async for req in requests:
            yield await self._csds_answer(req, context)

    # -- handlers --------------------------------------------------------------------------------------
    def _sotw_handler(self, allowed: frozenset[str]) -> Callable[..., Any]:
        async def handler(requests: AsyncIterator[discovery_pb2.DiscoveryRequest],
                          context: grpc.aio.ServicerContext) -> None:
            await self._serve_stream(requests, context, allowed, delta=False)
        return handler

    def _delta_handler(self, allowed: frozenset[str]) -> Callable[..., Any]:
        async def handler(requests: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
                          context: grpc.aio.ServicerContext) -> None:
            await self._serve_stream(requests, context, allowed, delta=True)
        return handler

    def _fetch_handler(self, type_url: str) -> Callable[..., Any]:
        async def handler(req: discovery_pb2.DiscoveryRequest, context: grpc.aio.ServicerContext) -> bytes:
            try:
                check_discovery_request(req)
            except RequestLimitError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            proxy = await self._proxy_id(req.node.id, context)
            await self._authorize(proxy, context)
            if req.type_url and req.type_url != type_url:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"type_url {req.type_url!r} is not served by this method (wants {type_url})")
            if not self.cache.covers(proxy):
                await self.cache.wait_covered(proxy)
            view = self.cache.resources_for(proxy)
            resources = view.of(type_url)
            names = set(req.resource_names)
            if not names or "*" in names:
                chosen = list(resources.values())
                version = view.version(type_url)
            else:
                # The version covers what was asked for, so "no change" means no change to those.
                chosen = [r for n, r in resources.items() if n in names]
                version = set_version(chosen)
            if req.version_info == version:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "no change since version " + version)
            return sotw_response(version, chosen, type_url, "")
        return handler

    async def _proxy_id(self, node_id: str, context: grpc.aio.ServicerContext) -> ProxyId:
        try:
            check_node_id(node_id)  # before anything keeps or prints it
            return ProxyId.parse(node_id)
        except (UnknownProxyRole, RequestLimitError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise

    async def _authorize(self, proxy: ProxyId, context: grpc.aio.ServicerContext) -> None:
        """End the call with PERMISSION_DENIED, before anything is sent, unless the peer may hold `proxy`."""
        try:
            self.authorizer.check_proxy(peer_of(context), proxy)
        except PermissionDenied as exc:
            self.denied += 1
            self.observer.stream_denied(proxy.role)
            log.warning("xDS: %s", exc)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))

    async def _serve_stream(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext,
                            allowed: frozenset[str], *, delta: bool) -> None:
        if self.active_streams >= self.limits.max_streams:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"too many xDS streams (limit {self.limits.max_streams})")
        # Counted from the moment it opens: streams still waiting for their first request hold a slot too,
        # or a burst of new streams would all pass the check above.
        self.active_streams += 1
        try:
            await self._serve_counted(requests, context, allowed, delta=delta)
        finally:
            self.active_streams -= 1

    async def _serve_counted(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext,
                             allowed: frozenset[str], *, delta: bool) -> None:
        iterator = requests.__aiter__()
        try:
            first = await iterator.__anext__()
        except StopAsyncIteration:
            return
        if isinstance(first, PlainAck):
            first = discovery_pb2.DeltaDiscoveryRequest.FromString(first.raw)
        node = first.node
        try:
            (check_delta_request if delta else check_discovery_request)(first)
        except RequestLimitError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        proxy = await self._proxy_id(node.id, context)
        await self._authorize(proxy, context)
        if not self.cache.covers(proxy):
            await self.cache.wait_covered(proxy)
        if len(self.streams.get(str(proxy), ())) >= self.limits.max_streams_per_proxy:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"{proxy} holds {self.limits.max_streams_per_proxy} xDS streams already "
                                "(the per-proxy limit)")
        user_agent = f"{node.user_agent_name}/{node.user_agent_version or node.user_agent_build_version.version}"
        variant = "delta" if delta else "sotw"
        pstatus = self.status.connected(str(proxy), variant, user_agent)
        pstatus.node = node
        pstatus.peer = peer_certificate(context)
        self.observer.stream_opened(proxy.role, variant)
        max_send = self.limits.max_send_bytes
        context_write = context.write

        def write(payload: bytes) -> Awaitable[None]:
            # Only the stream's writer task writes, one response at a time: no lock needed. A plain function
            # handing back grpc's own write: no coroutine of ours per response.
            if len(payload) > max_send:
                # grpc would fail the write deep inside its batch code; end the stream with a clear status.
                raise _StreamAbort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"response for {proxy} is {len(payload)} bytes, over the server's "
                                   f"max_send_bytes ({max_send})")
            return context_write(payload)  # type: ignore[no-any-return]

        cls = DeltaStream if delta else SotwStream
        stream: BaseStream = cls(proxy, self.cache.viewer(proxy), pstatus, write, allowed, self.limits.stream,
                                 self.observer, self.memo)
        waker = stream.wake
        self.cache.register(waker)
        self.streams.setdefault(str(proxy), []).append(stream)
        log.info("%s connected (%s)", proxy, "delta" if delta else "sotw", extra={"proxy_id": str(proxy)})
        try:
            async with asyncio.TaskGroup() as tg:
                writer = tg.create_task(stream.run_writer())
                try:
                    await self._read_loop(first, iterator, stream, context, allowed, delta)
                finally:
                    writer.cancel()
        except* asyncio.CancelledError:
            pass
        except* _StreamAbort as group:
            exc = group.exceptions[0]
            assert isinstance(exc, _StreamAbort)
            await context.abort(exc.code, exc.message)
        finally:
            self.cache.unregister(waker)
            open_streams = self.streams.get(str(proxy), [])
            if stream in open_streams:
                open_streams.remove(stream)
            if not open_streams:
                self.streams.pop(str(proxy), None)
            self.observer.stream_closed(proxy.role, variant)
            self.status.disconnected(str(proxy))
            log.info("%s disconnected", proxy, extra={"proxy_id": str(proxy)})

    async def _read_loop(self, first: Any, iterator: AsyncIterator[Any], stream: BaseStream,
                         context: grpc.aio.ServicerContext, allowed: frozenset[str], delta: bool) -> None:
        req = first
        # Per-type services (CDS, EDS, ...) imply the type: the spec makes type_url optional there.
        implied = next(iter(allowed)) if len(allowed) == 1 else ""
        check = check_delta_request if delta else check_discovery_request
        ack = stream.ack if isinstance(stream, DeltaStream) else None
        while True:
            if req.__class__ is PlainAck:
                type_url = req.type_url or implied
                if type_url not in allowed:
                    _unsupported(type_url, allowed)
                assert ack is not None
                ack(type_url, req.nonce)
                try:
                    req = await iterator.__anext__()
                except StopAsyncIteration:
                    return
                continue
            try:
                check(req)
            except RequestLimitError as exc:
                raise _StreamAbort(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
            if req.HasField("node"):
                if req.node.id and req.node.id != first.node.id:
                    # The stream serves the first request's node; spec: the node must stay the same.
                    raise _StreamAbort(grpc.StatusCode.INVALID_ARGUMENT,
                                       f"node id changed on the stream from {first.node.id!r} to {req.node.id!r}")
                if "cilia_agent" in req.node.metadata.fields:
                    # The node agent reports its state (programs attached, map sizes) with each request.
                    stream.status.reported = json_format.MessageToDict(req.node.metadata.fields["cilia_agent"])
            type_url = req.type_url or implied
            if type_url not in allowed:
                _unsupported(type_url, allowed)
            error = error_detail_text(req)
            try:
                if delta:
                    assert isinstance(stream, DeltaStream)
                    # The map itself: only a stream's first request of a type reads it (and copies it).
                    stream.handle(type_url, req.resource_names_subscribe, req.resource_names_unsubscribe,
                                  req.initial_resource_versions, req.response_nonce, error)
                else:
                    assert isinstance(stream, SotwStream)
                    stream.handle(type_url, req.version_info, req.resource_names, req.response_nonce, error)
            except ValueError as exc:
                raise _StreamAbort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None
            try:
                req = await iterator.__anext__()
            except StopAsyncIteration:
                return


def _unsupported(type_url: str, allowed: frozenset[str]) -> NoReturn:
    known = ", ".join(sorted(t.rsplit("/", 1)[-1] for t in allowed))
    raise _StreamAbort(grpc.StatusCode.INVALID_ARGUMENT,
                       f"unsupported type_url {type_url!r} on this stream (served: {known})")


def peer_of(context: grpc.aio.ServicerContext) -> Peer:
    """The transport's word on who the client is: mTLS URI SANs, or a plaintext (local) peer."""
    auth = context.auth_context()
    if auth.get("transport_security_type") != [b"ssl"]:
        return LOCAL_PEER
    uris = tuple(u.decode(errors="replace") for u in auth.get("peer_uri", ()))
    return Peer(True, uris)


def peer_certificate(context: grpc.aio.ServicerContext) -> dict[str, Any]:
    """Identity, serial and expiry of the client certificate, for status views (empty for plaintext)."""
    pem = context.auth_context().get("x509_pem_cert")
    if not pem:
        return {}
    try:
        return certificate_info(pem[0])
    except ValueError:
        return {}


class _StreamAbort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
