"""SPIFFE identities cilia issues and accepts (docs/security.md has the table).

- `spiffe://TD/proxy/ROLE/NAME`  a proxy's xDS client identity; NAME keeps its `/` (`sidecar/ns/pod`)
- `spiffe://TD/ns/NS/sa/SA`      a workload (ServiceAccount) identity
- `spiffe://TD/node/NODE`        a node proxy acting for its node (the egress gateway's tunnel listener)
- `spiffe://TD/admin/NAME`       an operator or tool allowed to read every proxy's config (CSDS)
- `spiffe://TD/cilia/xds`        the control plane itself (the xDS server certificate)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cilia.errors import CiliaError
from cilia.identity import ProxyId

TRUST_DOMAIN_RE = re.compile(r"^[a-z0-9._-]{1,255}$")
SERVER_PATH = "cilia/xds"


class IdentityError(CiliaError):
    """An identity or trust domain is malformed."""


def check_trust_domain(td: str) -> str:
    if not TRUST_DOMAIN_RE.match(td):
        raise IdentityError(f"trust domain {td!r} must be lower-case letters, digits, '.', '_' or '-'")
    return td


def proxy_id_uri(td: str, proxy: ProxyId) -> str:
    return f"spiffe://{td}/proxy/{proxy.role}/{proxy.name}"


def workload_uri(td: str, namespace: str, service_account: str) -> str:
    return f"spiffe://{td}/ns/{namespace}/sa/{service_account or 'default'}"


def node_uri(td: str, node: str) -> str:
    return f"spiffe://{td}/node/{node}"


def admin_uri(td: str, name: str) -> str:
    return f"spiffe://{td}/admin/{name}"


def server_uri(td: str) -> str:
    return f"spiffe://{td}/{SERVER_PATH}"


@dataclass(frozen=True, slots=True)
class SpiffeId:
    trust_domain: str
    path: str  # without the leading '/'

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        if not uri.startswith("spiffe://"):
            raise IdentityError(f"{uri!r} is not a SPIFFE ID")
        td, sep, path = uri[len("spiffe://"):].partition("/")
        if not sep or not path or not TRUST_DOMAIN_RE.match(td):
            raise IdentityError(f"{uri!r} is not a SPIFFE ID with a path")
        return cls(td, path)

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}/{self.path}"

    @property
    def proxy(self) -> ProxyId | None:
        """The proxy this identity names (`proxy/ROLE/NAME`), if any."""
        kind, _, rest = self.path.partition("/")
        role, sep, name = rest.partition("/")
        if kind != "proxy" or not sep:
            return None
        try:
            return ProxyId.parse(f"{role}~{name}")
        except CiliaError:
            return None

    @property
    def workload(self) -> tuple[str, str] | None:
        """(namespace, service account) for `ns/NS/sa/SA`."""
        parts = self.path.split("/")
        if len(parts) == 4 and parts[0] == "ns" and parts[2] == "sa" and parts[1] and parts[3]:
            return parts[1], parts[3]
        return None

    @property
    def is_admin(self) -> bool:
        kind, sep, name = self.path.partition("/")
        return kind == "admin" and bool(sep and name)
