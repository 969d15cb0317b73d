"""Proxy identity: Envoy `node.id` is `ROLE~NAME` (DESIGN §4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from cilia.errors import UnknownProxyRole

ROLES: Final = ("node", "sidecar", "gateway", "ingress", "agent", "grpc")
# Roles whose NAME is NAMESPACE/NAME.
NAMESPACED_ROLES: Final = frozenset({"sidecar", "gateway", "grpc"})


@dataclass(frozen=True, slots=True)
class ProxyId:
    role: str
    name: str

    @property
    def namespace(self) -> str:
        """For `sidecar`, `gateway` and `grpc`, the namespace part of NAME."""
        return self.name.split("/", 1)[0] if "/" in self.name else ""

    @property
    def short_name(self) -> str:
        return self.name.split("/", 1)[1] if "/" in self.name else self.name

    def __str__(self) -> str:
        return f"{self.role}~{self.name}"

    @classmethod
    def parse(cls, node_id: str) -> ProxyId:
        role, sep, name = node_id.partition("~")
        if not sep or not name:
            raise UnknownProxyRole(
                f"node id {node_id!r} is not ROLE~NAME (roles: {', '.join(ROLES)})"
            )
        if role not in ROLES:
            raise UnknownProxyRole(f"node id {node_id!r}: unknown role {role!r} (roles: {', '.join(ROLES)})")
        if role in NAMESPACED_ROLES and (name.count("/") != 1 or not all(name.split("/"))):
            raise UnknownProxyRole(f"node id {node_id!r}: {role} NAME must be NAMESPACE/NAME")
        return cls(role, name)
