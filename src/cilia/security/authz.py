"""Who may receive which proxy's view: pure decisions over a peer's authenticated identities.

A stream over mTLS carries the URI SANs of the client certificate. Plaintext streams reach cilia only on
loopback (or where the operator said `--xds-insecure`), and are trusted as the local host.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cilia.errors import CiliaError
from cilia.identity import ProxyId
from cilia.security.spiffe import IdentityError, SpiffeId, proxy_id_uri

# (namespace, pod) -> the pod's ServiceAccount, or None when the pod is unknown
PodServiceAccount = Callable[[str, str], str | None]


@dataclass(frozen=True, slots=True)
class Peer:
    """An xDS client as authenticated by the transport."""

    authenticated: bool  # mTLS with a certificate from cilia's CA
    uris: tuple[str, ...] = ()  # URI SANs of that certificate

    @property
    def description(self) -> str:
        if not self.authenticated:
            return "plaintext peer"
        return ", ".join(self.uris) or "certificate without URI SAN"


LOCAL_PEER = Peer(False)
POD_ROLES = frozenset({"sidecar", "grpc"})  # roles whose NAME is a pod (NAMESPACE/POD)


class PermissionDenied(CiliaError):
    """The peer's identity does not entitle what it asked for."""


@dataclass(frozen=True, slots=True)
class Authorizer:
    trust_domain: str
    pod_service_account: PodServiceAccount | None = None

    def _ids(self, peer: Peer) -> list[SpiffeId]:
        out = []
        for uri in peer.uris:
            try:
                sid = SpiffeId.parse(uri)
            except IdentityError:
                continue
            if sid.trust_domain == self.trust_domain:
                out.append(sid)
        return out

    def check_proxy(self, peer: Peer, proxy: ProxyId) -> None:
        """Raise PermissionDenied unless `peer` may hold `proxy`'s xDS view.

        Entitled: the proxy identity `spiffe://TD/proxy/ROLE/NAME` itself; for `sidecar~NS/POD` and
        `grpc~NS/POD` (a proxyless gRPC client is the pod's own process), also the workload identity
        `spiffe://TD/ns/NS/sa/SA` of that pod's ServiceAccount (a certificate from another issuer that
        names only the workload).
        """
        if not peer.authenticated:
            return
        want = proxy_id_uri(self.trust_domain, proxy)
        ids = self._ids(peer)
        if any(str(i) == want for i in ids):
            return
        if proxy.role in POD_ROLES and self.pod_service_account is not None:
            sa = self.pod_service_account(proxy.namespace, proxy.short_name)
            for i in ids:
                if sa is not None and i.workload == (proxy.namespace, sa):
                    return
        raise PermissionDenied(f"{peer.description} may not receive the configuration of {proxy} "
                               f"(its certificate would have to name {want})")

    def is_admin(self, peer: Peer) -> bool:
        """Operators' tools (CSDS, every proxy's config): loopback plaintext or `spiffe://TD/admin/NAME`."""
        if not peer.authenticated:
            return True
        return any(i.is_admin for i in self._ids(peer))

    def check_admin(self, peer: Peer, what: str) -> None:
        if not self.is_admin(peer):
            raise PermissionDenied(f"{peer.description} is not an admin identity "
                                   f"(spiffe://{self.trust_domain}/admin/NAME); {what} is refused")
