"""Certificate issuance in Kubernetes mode: a proxy proves who it is with its ServiceAccount token.

The client (`cilia cert --kubernetes`) keeps its private key and sends a CSR with the token as bearer
credential. cilia checks the token with a TokenReview (audience `cilia`), decides from the review alone
which identity the token entitles (`entitle`, pure), and signs the CSR with the SANs *it* chose; the
CSR's own SANs are ignored. docs/security.md has the mapping as a table.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cilia.errors import CiliaError
from cilia.identity import ProxyId
from cilia.security.ca import DEFAULT_LEAF_TTL, CertificateAuthority
from cilia.security.spiffe import proxy_id_uri, workload_uri

log = logging.getLogger("cilia.issuer")

AUDIENCE = "cilia"
POD_NAME = "authentication.kubernetes.io/pod-name"
NODE_NAME = "authentication.kubernetes.io/node-name"
MAX_REQUEST_BYTES = 64 * 1024
MAX_TTL = dt.timedelta(hours=48)


class NotEntitled(CiliaError):
    """The token is valid but does not entitle the identity asked for."""


@dataclass(frozen=True, slots=True)
class TokenReview:
    """What the API server said of a token (TokenReview status)."""

    authenticated: bool
    username: str = ""
    audiences: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    error: str = ""

    @property
    def service_account(self) -> tuple[str, str] | None:
        """(namespace, name) for `system:serviceaccount:NS:NAME`."""
        parts = self.username.split(":")
        if len(parts) == 4 and parts[:2] == ["system", "serviceaccount"]:
            return parts[2], parts[3]
        return None

    def claim(self, key: str) -> str:
        values = self.extra.get(key, ())
        return values[0] if len(values) == 1 else ""

    @classmethod
    def from_status(cls, status: Mapping[str, Any]) -> TokenReview:
        user = status.get("user") or {}
        extra = {str(k): tuple(str(x) for x in (v or ())) for k, v in (user.get("extra") or {}).items()}
        return cls(bool(status.get("authenticated")), str(user.get("username") or ""),
                   tuple(str(a) for a in status.get("audiences") or ()), extra, str(status.get("error") or ""))


@dataclass(frozen=True, slots=True)
class IssuancePolicy:
    """Which ServiceAccounts stand for the shared proxies (all in cilia's namespace unless said)."""

    trust_domain: str = "cluster.local"
    cilia_namespace: str = "cilia-system"
    node_service_accounts: tuple[str, ...] = ("cilia-node-envoy",)
    agent_service_accounts: tuple[str, ...] = ("cilia-agent",)
    ingress_service_accounts: tuple[str, ...] = ("cilia-ingress",)
    gateway_service_account: str = "cilia-gateway"  # in the Gateway's own namespace
    ttl: dt.timedelta = DEFAULT_LEAF_TTL


def entitle(review: TokenReview, proxy: ProxyId, policy: IssuancePolicy) -> tuple[str, ...]:
    """The URI SANs to certify for `proxy`, or NotEntitled saying why. Pure."""
    if not review.authenticated:
        raise NotEntitled(f"the token was not accepted: {review.error or 'unauthenticated'}")
    if AUDIENCE not in review.audiences:
        raise NotEntitled(f"the token is not for audience {AUDIENCE!r} (it is for {list(review.audiences)})")
    sa = review.service_account
    if sa is None:
        raise NotEntitled(f"{review.username!r} is not a ServiceAccount")
    ns, name = sa
    who = f"ServiceAccount {ns}/{name}"
    td = policy.trust_domain
    if proxy.role in ("sidecar", "grpc"):  # a pod's proxy, or the pod itself as a proxyless gRPC client
        pod = review.claim(POD_NAME)
        if not pod:
            raise NotEntitled(f"{who}: the token is not bound to a pod (use a projected token)")
        if (ns, pod) != (proxy.namespace, proxy.short_name):
            raise NotEntitled(f"{who}: the token belongs to pod {ns}/{pod}, not {proxy.name}")
        return proxy_id_uri(td, proxy), workload_uri(td, ns, name)
    if proxy.role in ("node", "agent"):
        allowed = policy.node_service_accounts if proxy.role == "node" else policy.agent_service_accounts
        if ns != policy.cilia_namespace or name not in allowed:
            raise NotEntitled(f"{who} may not act for {proxy.role} proxies "
                              f"(allowed: {', '.join(f'{policy.cilia_namespace}/{a}' for a in allowed)})")
        node = review.claim(NODE_NAME)
        if node != proxy.name:
            raise NotEntitled(f"{who}: the token's pod runs on node {node or '(none)'!r}, not {proxy.name!r}")
        return (proxy_id_uri(td, proxy),)
    if proxy.role == "ingress":
        if ns != policy.cilia_namespace or name not in policy.ingress_service_accounts:
            raise NotEntitled(f"{who} may not act for ingress proxies")
        return (proxy_id_uri(td, proxy),)
    if proxy.role == "gateway":
        if (ns, name) != (proxy.namespace, policy.gateway_service_account):
            raise NotEntitled(f"{who} may not act for {proxy}: gateway proxies run as ServiceAccount "
                              f"{proxy.namespace}/{policy.gateway_service_account}")
        return (proxy_id_uri(td, proxy),)
    raise NotEntitled(f"no ServiceAccount entitles role {proxy.role!r}")


def sign_csr(ca: CertificateAuthority, csr_pem: bytes, uris: Sequence[str], ttl: dt.timedelta) -> bytes:
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise ValueError(f"csr: not a PEM certificate request: {exc}") from None
    if not csr.is_signature_valid:
        raise ValueError("csr: the signature does not verify")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("csr: the key must be ECDSA (P-256)")
    cert = ca.sign(key, uris=uris, ttl=min(ttl, MAX_TTL))
    return cert.public_bytes(serialization.Encoding.PEM)


Reviewer = Callable[[str], Awaitable[TokenReview]]  # token -> review (a TokenReview call)


def make_issuer_app(ca_source: Callable[[], CertificateAuthority], reviewer: Reviewer,
                    policy: IssuancePolicy) -> web.Application:
    """`POST /v1/certificates` {"proxy": "ROLE~NAME", "csr": PEM} with `Authorization: Bearer TOKEN` ->
    {"certificate": PEM, "ca": bundle PEM}. 401 bad token, 403 not entitled, 400 bad request."""

    async def issue(req: web.Request) -> web.Response:
        auth = req.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or len(auth) < 10:
            return _error(401, "a ServiceAccount token is required (Authorization: Bearer TOKEN)")
        if req.content_length is not None and req.content_length > MAX_REQUEST_BYTES:
            return _error(400, f"request over {MAX_REQUEST_BYTES} bytes")
        try:
            body = json.loads(await req.content.read(MAX_REQUEST_BYTES + 1))
            proxy = ProxyId.parse(str(body["proxy"]))
            csr = str(body["csr"]).encode()
        except (ValueError, KeyError, TypeError, CiliaError) as exc:
            return _error(400, f"expected JSON {{proxy, csr}}: {exc}")
        review = await reviewer(auth[len("Bearer "):].strip())
        try:
            uris = entitle(review, proxy, policy)
        except NotEntitled as exc:
            log.warning("certificate for %s refused: %s", proxy, exc)
            return _error(403 if review.authenticated else 401, str(exc))
        ca = ca_source()
        try:
            cert = sign_csr(ca, csr, uris, policy.ttl)
        except ValueError as exc:
            return _error(400, str(exc))
        log.info("issued a certificate for %s (%s)", proxy, ", ".join(uris))
        return web.json_response({"certificate": cert.decode(), "ca": ca.bundle_pem.decode()})

    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app.router.add_post("/v1/certificates", issue)
    return app


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
