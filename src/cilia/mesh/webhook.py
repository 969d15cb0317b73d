"""Sidecar injection admission webhook: AdmissionReview v1 over HTTPS (aiohttp).

POST /mutate takes an `admission.k8s.io/v1` AdmissionReview and answers with the same apiVersion
and kind; for a Pod CREATE whose mesh mode is `sidecar` (or `proxyless`: the gRPC xDS bootstrap, no
proxy) the response carries a base64 JSONPatch
computed by `json_patch_for(pod, inject_pod_spec(pod, ...))`, so the API server ends up with
exactly what `cilia inject` prints for that pod.

Error policy:
- a request that is not a well-formed AdmissionReview (bad JSON, wrong apiVersion/kind, no
  request.uid, body over MAX_REVIEW_BYTES, nested deeper than MAX_REVIEW_DEPTH) gets HTTP 400 with a
  plain-text reason;
- a pod that cannot be injected as written (bad `cilia.io/mesh` value, malformed spec) and any
  internal error are answered by the `fail_open` setting: admitted unchanged with a warning, or
  denied with a status message saying why.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from cilia.mesh.inject import InjectConfig, InjectError, inject_pod_spec, json_patch_for
from cilia.untrusted import MAX_NESTING_DEPTH, InputLimitError, loads_json

log = logging.getLogger(__name__)

ADMISSION_API_VERSION = "admission.k8s.io/v1"
ADMISSION_KIND = "AdmissionReview"
MAX_REVIEW_BYTES = 1024 * 1024
"""Largest AdmissionReview body accepted (1 MiB); larger bodies get HTTP 400 unread."""
BODY_READ_TIMEOUT_S = 10.0
MAX_REVIEW_DEPTH = MAX_NESTING_DEPTH + 2
"""Deepest nesting accepted in a review: the Pod sits two levels down (`request.object`) and may itself
nest MAX_NESTING_DEPTH levels; deeper bodies get HTTP 400 without being decoded."""

NamespaceLookup = Callable[[str], tuple[Mapping[str, str], Mapping[str, str]] | None]
"""namespace name -> (labels, annotations), or None when the namespace is not known."""
NamespaceWait = Callable[[str], Awaitable[None]]
"""Returns once the namespace is known to the lookup, or gives up (bounded) and returns anyway."""


class ReviewError(Exception):
    """The request body is not a usable AdmissionReview (answered with HTTP 400)."""


def _bad_request(reason: str) -> web.Response:
    log.info("webhook: rejected admission request: %s", reason)
    return web.Response(status=400, text=f"bad AdmissionReview: {reason}\n")


async def _read_body(request: web.Request, limit: int) -> bytes:
    """Read at most `limit` bytes of body, refusing early on a too large Content-Length."""
    size = request.content_length
    if size is not None and size > limit:
        raise ReviewError(f"body of {size} bytes is over the {limit} byte limit")
    buf = bytearray()
    try:
        async with asyncio.timeout(BODY_READ_TIMEOUT_S):
            async for chunk in request.content.iter_chunked(64 * 1024):
                buf += chunk
                if len(buf) > limit:
                    raise ReviewError(f"body is over the {limit} byte limit")
    except TimeoutError as exc:
        raise ReviewError(f"body not received within {BODY_READ_TIMEOUT_S:.0f} s") from exc
    return bytes(buf)


def _parse_review(body: bytes) -> dict[str, Any]:
    """The review's `request`, after checking the envelope; raises ReviewError."""
    if not body:
        raise ReviewError("empty body")
    try:
        review = loads_json(body, max_depth=MAX_REVIEW_DEPTH)
    except InputLimitError as exc:
        raise ReviewError(f"body is {exc}") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise ReviewError(f"body is not valid JSON: {exc}") from exc
    if not isinstance(review, dict):
        raise ReviewError(f"body must be a JSON object, got {type(review).__name__}")
    if review.get("apiVersion") != ADMISSION_API_VERSION:
        raise ReviewError(f"apiVersion must be {ADMISSION_API_VERSION!r}, got {review.get('apiVersion')!r}")
    if review.get("kind") != ADMISSION_KIND:
        raise ReviewError(f"kind must be {ADMISSION_KIND!r}, got {review.get('kind')!r}")
    request = review.get("request")
    if not isinstance(request, dict):
        raise ReviewError("request is missing or not an object")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise ReviewError("request.uid is missing or empty")
    return request


def _is_pod_create(request: Mapping[str, Any]) -> bool:
    kind = request.get("kind")
    if not isinstance(kind, dict) or kind.get("kind") != "Pod" or kind.get("group", "") != "":
        return False
    return request.get("operation") == "CREATE" and not request.get("subResource")


def _admit(
    request: Mapping[str, Any], cfg: InjectConfig, namespace_lookup: NamespaceLookup
) -> dict[str, Any]:
    """Response fields (without uid) for one review; raises InjectError or internal errors."""
    if not _is_pod_create(request):
        return {"allowed": True}
    pod = request.get("object")
    if not isinstance(pod, dict):
        raise ReviewError("request.object must be the Pod being created")
    raw_meta = pod.get("metadata")
    meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
    namespace = request.get("namespace") or meta.get("namespace")
    name = meta.get("name") or request.get("name") or meta.get("generateName") or "<unnamed>"
    if not isinstance(namespace, str) or not namespace:
        raise InjectError(f"Pod {name}: the request names no namespace")
    found = namespace_lookup(namespace)
    ns_labels, ns_annotations = found if found is not None else ({}, {})
    mutated = inject_pod_spec(pod, namespace, ns_labels, ns_annotations, cfg, where=f"Pod {namespace}/{name}")
    ops = json_patch_for(pod, mutated)
    if not ops:
        return {"allowed": True}
    patch = base64.b64encode(json.dumps(ops, separators=(",", ":")).encode()).decode("ascii")
    return {"allowed": True, "patchType": "JSONPatch", "patch": patch}


def _refused(cfg: InjectConfig, code: int, message: str) -> dict[str, Any]:
    if cfg.fail_open:
        return {"allowed": True, "warnings": [f"cilia sidecar not injected: {message}"]}
    return {"allowed": False, "status": {"status": "Failure", "code": code, "message": message}}


def make_webhook_app(
    cfg: InjectConfig | Callable[[], InjectConfig],
    namespace_lookup: NamespaceLookup,
    *,
    max_body_bytes: int = MAX_REVIEW_BYTES,
    namespace_wait: NamespaceWait | None = None,
) -> web.Application:
    """The webhook as an aiohttp application: POST /mutate, GET /healthz. `cfg` may be a callable, read
    per review (the CA bundle it carries changes on rotation).

    `namespace_wait` covers a namespace created just before its first Pod (one `kubectl apply` of both):
    the API server admits the Pod before cilia's watch has delivered the namespace, whose labels decide
    the mesh mode, so a Pod in a namespace not known yet waits for it (bounded) instead of being judged
    without them."""
    config = cfg if callable(cfg) else (lambda: cfg)

    async def mutate(request: web.Request) -> web.Response:
        cfg = config()
        try:
            review_request = _parse_review(await _read_body(request, max_body_bytes))
        except ReviewError as exc:
            return _bad_request(str(exc))
        uid = review_request["uid"]
        namespace = review_request.get("namespace")
        if namespace_wait is not None and _is_pod_create(review_request) and isinstance(namespace, str) \
                and namespace and namespace_lookup(namespace) is None:
            await namespace_wait(namespace)
        try:
            response = _admit(review_request, cfg, namespace_lookup)
        except ReviewError as exc:
            return _bad_request(str(exc))
        except InjectError as exc:
            log.warning("webhook: review %s: %s", uid, exc)
            response = _refused(cfg, 400, str(exc))
        except Exception as exc:
            log.exception("webhook: review %s failed", uid)
            response = _refused(cfg, 500, f"cilia sidecar injection failed: {type(exc).__name__}: {exc}")
        envelope = {"apiVersion": ADMISSION_API_VERSION, "kind": ADMISSION_KIND}
        return web.json_response({**envelope, "response": {"uid": uid, **response}})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application(client_max_size=max_body_bytes)
    app.router.add_post("/mutate", mutate)
    app.router.add_get("/healthz", healthz)
    return app


def server_ssl_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """TLS >= 1.2 server context for the webhook certificate (PEM files)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


async def serve_webhook(
    app: web.Application, host: str, port: int, cert_file: str, key_file: str
) -> web.AppRunner:
    """Start `app` over HTTPS with the certificate in those files (see `serve_https`)."""
    return await serve_https(app, host, port, server_ssl_context(cert_file, key_file))


async def serve_https(app: web.Application, host: str, port: int, ctx: ssl.SSLContext) -> web.AppRunner:
    """Start `app` over HTTPS; the caller owns the runner and must `await runner.cleanup()`.

    With port 0 the bound port is `webhook_port(runner)`.
    """
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=ctx).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def webhook_port(runner: web.AppRunner) -> int:
    """The TCP port the runner's first site listens on."""
    addresses = runner.addresses
    if not addresses:
        raise RuntimeError("webhook runner has no listening socket")
    return int(addresses[0][1])
