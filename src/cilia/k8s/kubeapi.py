"""A thin JSON client for the Kubernetes API on top of kubernetes-asyncio's ApiClient.

cilia reads kinds that other modules register at import time (built-in, Gateway API, Cilium CRDs), so
it talks to the API by resource path with plain dicts instead of the generated typed classes. That
also sidesteps three traps of the generated layer: ``CustomObjectsApi.patch_*`` sends a dict as JSON
patch (400), ``watch.Watch`` hands non-JSON lines (a missing CRD's plain-text 404) back as strings and
retries 410 once on its own, and built-in list items come without ``kind``/``apiVersion``. Config
loading, TLS, bearer tokens (with in-cluster token refresh) stay kubernetes-asyncio's.

Every call names its RBAC verb; ``calls`` counts ``(verb, group, resource)`` so tests can check the
verbs cilia uses against the ClusterRole in ``deploy/``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from cilia.errors import SourceError
from cilia.untrusted import MAX_NESTING_DEPTH, InputLimitError, loads_json

log = logging.getLogger("cilia.kube")

MERGE_PATCH = "application/merge-patch+json"
# How far below the top of an answer objects sit: a list's items two levels down, a watch event's object
# one. Subtrees below MAX_NESTING_DEPTH of an object are cut to a marker when decoding (cilia.untrusted),
# which parse_object then reports on that object alone, so one hostile object never sinks a whole list.
_ANSWER_DEPTH = MAX_NESTING_DEPTH + 2
_EVENT_DEPTH = MAX_NESTING_DEPTH + 1
MAX_WATCH_EVENT_BYTES = 8 * 1024 * 1024
"""Longest watch event (one JSON line) read. The API server keeps objects far smaller (etcd refuses
values over 1.5 MiB by default); a longer line is a broken stream: the watch ends and resumes."""


@dataclass(frozen=True, slots=True, order=True)
class Resource:
    """One resource type at one version: enough to build every path of it."""

    group: str
    version: str
    plural: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str = "") -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{quote(name, safe='')}"
        if subresource:
            base += f"/{subresource}"
        return base


class KubeApiError(SourceError):
    """A non-2xx answer (or a Status object in a watch stream) from the API server."""

    def __init__(self, status: int, reason: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """Worth trying again unchanged, as opposed to a rejected request: throttling, server trouble, and
        401/403, which pass: an API server that has just started answers 403 until its RBAC caches are
        filled, RBAC applied after cilia grants its permissions late, and a rotated token is re-read."""
        return self.status in (0, 401, 403, 408, 429) or self.status >= 500


class WatchStreamError(SourceError):
    """The watch stream broke or carried something that is not a watch event."""


def _error_from_body(status: int, body: Any, headers: Mapping[str, str] | None = None) -> KubeApiError:
    reason, message = "", ""
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")
    try:
        st = loads_json(text, max_depth=_ANSWER_DEPTH)
    except (ValueError, InputLimitError):
        st = None
    if isinstance(st, dict):
        reason = str(st.get("reason") or "")
        message = str(st.get("message") or "")
    else:
        message = text.strip()[:200]  # e.g. "404 page not found" for a group that is not served
    retry_after = None
    if headers is not None:
        value = headers.get("Retry-After")
        if value and value.isdigit():
            retry_after = float(value)
    return KubeApiError(status, reason or "Error", message or f"HTTP {status}", retry_after)


def _watch_event(line: bytes) -> dict[str, Any] | None:
    """One line of a watch stream as an event (None for a blank line). ERROR events raise KubeApiError,
    anything else that is not an event WatchStreamError."""
    if len(line) > MAX_WATCH_EVENT_BYTES:
        raise WatchStreamError(f"watch event of {len(line)} bytes, longer than {MAX_WATCH_EVENT_BYTES}")
    line = line.strip()
    if not line:
        return None
    try:
        event = loads_json(line, max_depth=_EVENT_DEPTH, cap=True)
    except ValueError:
        raise WatchStreamError(f"not a watch event: {line[:120]!r}") from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise WatchStreamError(f"not a watch event: {line[:120]!r}")
    obj = event.get("object")
    if event["type"] == "ERROR":
        st = obj if isinstance(obj, dict) else {}
        code = st.get("code")
        raise KubeApiError(code if isinstance(code, int) and not isinstance(code, bool) else 500,
                           str(st.get("reason") or "Error"), str(st.get("message") or "watch error"))
    if not isinstance(obj, dict):
        raise WatchStreamError(f"{event['type']} event without an object")
    return event


class KubeApi:
    """Raw-path JSON calls over an ApiClient. Closing it closes the client."""

    def __init__(self, client: Any, user_agent: str = "cilia") -> None:
        self.client = client
        client.user_agent = user_agent
        self.calls: Counter[tuple[str, str, str]] = Counter()

    @classmethod
    async def connect(cls, kubeconfig: str | None = None, user_agent: str = "cilia") -> KubeApi:
        """From `kubeconfig`, else the in-cluster service account, else ~/.kube/config."""
        from kubernetes_asyncio import client, config
        from kubernetes_asyncio.config.config_exception import ConfigException

        if kubeconfig:
            return cls(await config.new_client_from_config(config_file=kubeconfig), user_agent)
        cfg = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=cfg)
        except ConfigException:
            await config.load_kube_config(client_configuration=cfg)
        return cls(client.ApiClient(configuration=cfg), user_agent)

    async def close(self) -> None:
        await self.client.close()

    # -- plumbing ------------------------------------------------------------------------------------
    def _count(self, verb: str, res: Resource, subresource: str = "") -> None:
        self.calls[(verb, res.group, res.plural + (f"/{subresource}" if subresource else ""))] += 1

    async def _call(self, method: str, path: str, *, query: list[tuple[str, str]] | None = None,
                    body: Any = None, content_type: str = "application/json",
                    request_timeout: aiohttp.ClientTimeout | float | None = None) -> Any:
        """One request; returns the aiohttp response (not yet read). Raises KubeApiError on non-2xx."""
        from kubernetes_asyncio.client.exceptions import ApiException

        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            resp = await self.client.call_api(
                path, method, query_params=query or [], header_params=headers, body=body,
                auth_settings=["BearerToken"], _preload_content=False, _request_timeout=request_timeout)
        except ApiException as exc:
            raise _error_from_body(exc.status or 0, exc.body, exc.headers) from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise KubeApiError(0, "ConnectionError", f"{type(exc).__name__}: {exc}") from None
        if not 200 <= resp.status <= 299:
            try:
                data = await resp.read()
            except (TimeoutError, aiohttp.ClientError, OSError):
                data = b""
            finally:
                resp.release()
            raise _error_from_body(resp.status, data, resp.headers)
        return resp

    async def _json(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        resp = await self._call(method, path, **kw)
        try:
            data = await resp.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise KubeApiError(0, "ConnectionError", f"{type(exc).__name__}: {exc}") from None
        finally:
            resp.release()
        try:
            out = loads_json(data, max_depth=_ANSWER_DEPTH, cap=True)
        except ValueError:
            raise KubeApiError(resp.status, "BadResponse", f"not JSON: {data[:120]!r}") from None
        if not isinstance(out, dict):
            raise KubeApiError(resp.status, "BadResponse", f"expected an object, got {type(out).__name__}")
        return out

    # -- verbs ------------------------------------------------------------------------------------------
    async def list(self, res: Resource, *, namespace: str | None = None, limit: int = 0, continue_token: str = "",
                   request_timeout: float = 60.0) -> dict[str, Any]:
        """List `res` in every namespace (or cluster-scoped), or only in `namespace`."""
        self._count("list", res)
        query = []
        if limit:
            query.append(("limit", str(limit)))
        if continue_token:
            query.append(("continue", continue_token))
        return await self._json("GET", res.path(namespace), query=query, request_timeout=request_timeout)

    async def watch(self, res: Resource, resource_version: str, *, timeout_s: int, read_timeout_s: float,
                    namespace: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """Yield decoded watch events (dicts with `type` and `object`) until the server ends the stream.

        ERROR events are raised as KubeApiError (410 Expired included), anything that is not an event
        as WatchStreamError; a broken connection raises KubeApiError(0, ...).
        """
        self._count("watch", res)
        query = [("watch", "true"), ("allowWatchBookmarks", "true"), ("timeoutSeconds", str(timeout_s))]
        if resource_version:
            query.append(("resourceVersion", resource_version))
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=read_timeout_s)
        resp = await self._call("GET", res.path(namespace), query=query, request_timeout=timeout)
        try:
            # Lines are cut here rather than by the client's readline, so that the length limit is ours.
            pending: list[bytes] = []
            pending_size = 0
            while True:
                try:
                    chunk = await resp.content.readany()
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    raise KubeApiError(0, "ConnectionError", f"watch stream broke: {type(exc).__name__}: {exc}") \
                        from None
                if not chunk:
                    if pending:
                        event = _watch_event(b"".join(pending))
                        if event is not None:
                            yield event
                    return
                *complete, tail = chunk.split(b"\n")
                if complete:
                    complete[0] = b"".join([*pending, complete[0]])
                    pending.clear()
                    pending_size = 0
                    for line in complete:
                        event = _watch_event(line)
                        if event is not None:
                            yield event
                if tail:
                    pending.append(tail)
                    pending_size += len(tail)
                    if pending_size > MAX_WATCH_EVENT_BYTES:
                        raise WatchStreamError(f"watch event longer than {MAX_WATCH_EVENT_BYTES} bytes")
        finally:
            resp.release()
            resp.close()

    async def get(self, res: Resource, namespace: str | None, name: str) -> dict[str, Any]:
        self._count("get", res)
        return await self._json("GET", res.path(namespace, name), request_timeout=30.0)

    async def create(self, res: Resource, namespace: str | None, body: Mapping[str, Any]) -> dict[str, Any]:
        self._count("create", res)
        return await self._json("POST", res.path(namespace), body=dict(body), request_timeout=30.0)

    async def update(self, res: Resource, namespace: str | None, name: str,
                     body: Mapping[str, Any]) -> dict[str, Any]:
        """PUT (replace); carries `metadata.resourceVersion` so a concurrent change answers 409."""
        self._count("update", res)
        return await self._json("PUT", res.path(namespace, name), body=dict(body), request_timeout=30.0)

    async def patch(self, res: Resource, namespace: str | None, name: str, patch: Mapping[str, Any],
                    field_manager: str = "cilia") -> dict[str, Any]:
        """JSON merge patch (RFC 7386) on the object itself; an empty patch returns it unchanged."""
        self._count("patch", res)
        return await self._json("PATCH", res.path(namespace, name), body=dict(patch), content_type=MERGE_PATCH,
                                query=[("fieldManager", field_manager)], request_timeout=30.0)

    async def patch_status(self, res: Resource, namespace: str | None, name: str,
                           patch: Mapping[str, Any], field_manager: str = "cilia") -> dict[str, Any]:
        """JSON merge patch (RFC 7386) on the status subresource."""
        self._count("patch", res, "status")
        return await self._json("PATCH", res.path(namespace, name, "status"), body=dict(patch),
                                content_type=MERGE_PATCH, query=[("fieldManager", field_manager)],
                                request_timeout=30.0)
