"""The API permissions cilia's Kubernetes code needs, derived from what the code calls.

`deploy/rbac.yaml` must grant exactly these (a test compares them, and another checks every request
the code makes against them): list/watch on every kind the source reads, patch on the status of the
kinds the status writer updates, and get/create/update on Leases in cilia's own namespace (a Role,
not a ClusterRole). API discovery is not needed: the source finds served versions by listing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cilia.k8s.kubesource import SOURCE_VERBS
from cilia.k8s.leader import LEASE_VERBS, LEASES
from cilia.k8s.registry import KindSpec, known_kinds
from cilia.k8s.statuswriter import STATUS_KINDS, STATUS_VERBS


@dataclass(frozen=True, slots=True, order=True)
class Permission:
    """One RBAC grant: `verb` on `resource` (e.g. "gateways/status") of API `group`."""

    group: str
    resource: str
    verb: str


def cluster_permissions(kinds: Iterable[KindSpec] | None = None) -> frozenset[Permission]:
    """What the ClusterRole must grant: reading every kind, patching the status of some."""
    specs = list(known_kinds() if kinds is None else kinds)
    perms = {Permission(s.group, s.plural, v) for s in specs for v in SOURCE_VERBS}
    perms |= {Permission(s.group, f"{s.plural}/status", v) for s in specs if s.kind in STATUS_KINDS
              for v in STATUS_VERBS}
    return frozenset(perms)


def lease_permissions() -> frozenset[Permission]:
    """What the Role in cilia's namespace must grant for leader election."""
    return frozenset(Permission(LEASES.group, LEASES.plural, v) for v in LEASE_VERBS)
